//! A Parquet file's footer, read and its schema checked before the Parquet reader builds it.
//!
//! The reader turns the footer's flat list of schema elements into a tree, and it trusts two
//! numbers there. It reserves room for a group's `num_children` before it looks at the list, so
//! a damaged footer that claims two billion children makes it ask for 16 GB, and where memory
//! is limited that is an abort, not an error (found by fuzzing `sweep_tables`). And it recurses
//! once per level of nesting, so a footer of nested groups can overflow the stack. Both abort
//! the process, which no boundary catches, so they are checked here first, on the footer's own
//! bytes. The reader also skips a field it does not know a value at a time, so a footer field
//! that claims a list of two billion values of no known type holds it for a second or more
//! (found by fuzzing `corpus_parquet`).
//!
//! The footer is Thrift's compact protocol ([`crate::thrift`]): `FileMetaData`'s field 2 is
//! the list of `SchemaElement`s, whose field 5 is `num_children`. The Parquet reader reads a
//! field it knows by the type it expects, whatever type the bytes declare, so a reading that
//! skipped by the declared type could see other numbers than it does. This one is strict
//! instead: every field the format names, in `FileMetaData` and in the structs it holds, must
//! declare the type the format gives it (as every writer does), and a footer that does not is
//! refused. Unknown fields are skipped by their declared type, as the Parquet reader skips
//! them, but a list or map longer than the bytes left, or a type the protocol does not have,
//! ends the reading.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use crate::thrift::{Compact, Spec, BINARY, I32, LIST, MAX_VALUE_DEPTH, STOP, STRUCT};

/// Deeper schemas are refused. A corpus needs one level (a text column under the root);
/// datasets with nested lists and structs use a handful.
pub(crate) const MAX_SCHEMA_DEPTH: usize = 64;

/// `Err(why)` when the footer of `file` holds a schema whose numbers would make the Parquet
/// reader allocate beyond the file's size or recurse beyond [`MAX_SCHEMA_DEPTH`].
pub(crate) fn check_schema(file: &mut File) -> Result<(), String> {
    let Some(footer) = read_footer(file) else {
        return Ok(());
    };
    match schema_children(&footer) {
        Found(children) => check_tree(&children),
        Absent => Ok(()),
        Unreadable => Err(
            "its footer does not have the types the Parquet format gives its \
                           fields, or holds a list longer than itself (a damaged file?)"
                .to_string(),
        ),
    }
}

/// The footer's bytes, if the file ends as a Parquet file does: the footer, its length as a
/// little-endian u32, and `PAR1`.
fn read_footer(file: &mut File) -> Option<Vec<u8>> {
    let size = file.seek(SeekFrom::End(0)).ok()?;
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::End(-8)).ok()?;
    file.read_exact(&mut tail).ok()?;
    let (length, magic) = tail.split_at(4);
    if magic != b"PAR1" {
        return None;
    }
    let length = u64::from(u32::from_le_bytes(length.try_into().ok()?));
    let start = size.checked_sub(8)?.checked_sub(length)?;
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut footer = Vec::new();
    file.take(length).read_to_end(&mut footer).ok()?;
    let _ = file.seek(SeekFrom::Start(0));
    Some(footer)
}

/// `FileMetaData`'s fields but the schema (2, read by [`Compact::schema_list`]), with their
/// types and those of the structs they hold, as `parquet.thrift` gives them.
const FILE_META_DATA: &[(i16, Spec)] = &[
    (1, Spec::I32),
    (3, Spec::I64),
    (4, Spec::List(&ROW_GROUP)),
    (5, Spec::List(&KEY_VALUE)),
    (6, Spec::Binary),
    (7, Spec::List(&COLUMN_ORDER)),
    (8, ENCRYPTION_ALGORITHM),
    (9, Spec::Binary),
];

const KEY_VALUE: Spec = Spec::Struct(&[(1, Spec::Binary), (2, Spec::Binary)]);

/// A union of one empty struct (`TypeDefinedOrder`).
const COLUMN_ORDER: Spec = Spec::Struct(&[(1, Spec::Struct(&[]))]);

/// A union of `AesGcmV1` and `AesGcmCtrV1`, which have the same fields.
const ENCRYPTION_ALGORITHM: Spec = Spec::Struct(&[(1, AES_GCM), (2, AES_GCM)]);
const AES_GCM: Spec = Spec::Struct(&[(1, Spec::Binary), (2, Spec::Binary), (3, Spec::Bool)]);

const ROW_GROUP: Spec = Spec::Struct(&[
    (1, Spec::List(&COLUMN_CHUNK)),
    (2, Spec::I64),
    (3, Spec::I64),
    (4, Spec::List(&SORTING_COLUMN)),
    (5, Spec::I64),
    (6, Spec::I64),
    (7, Spec::I16),
]);

const SORTING_COLUMN: Spec = Spec::Struct(&[(1, Spec::I32), (2, Spec::Bool), (3, Spec::Bool)]);

const COLUMN_CHUNK: Spec = Spec::Struct(&[
    (1, Spec::Binary),
    (2, Spec::I64),
    (3, COLUMN_META_DATA),
    (4, Spec::I64),
    (5, Spec::I32),
    (6, Spec::I64),
    (7, Spec::I32),
    (8, COLUMN_CRYPTO_META_DATA),
    (9, Spec::Binary),
]);

/// A union of `EncryptionWithFooterKey` (empty) and `EncryptionWithColumnKey`.
const COLUMN_CRYPTO_META_DATA: Spec = Spec::Struct(&[
    (1, Spec::Struct(&[])),
    (
        2,
        Spec::Struct(&[(1, Spec::List(&Spec::Binary)), (2, Spec::Binary)]),
    ),
]);

const COLUMN_META_DATA: Spec = Spec::Struct(&[
    (1, Spec::I32),
    (2, Spec::List(&Spec::I32)),
    (3, Spec::List(&Spec::Binary)),
    (4, Spec::I32),
    (5, Spec::I64),
    (6, Spec::I64),
    (7, Spec::I64),
    (8, Spec::List(&KEY_VALUE)),
    (9, Spec::I64),
    (10, Spec::I64),
    (11, Spec::I64),
    (12, STATISTICS),
    (13, Spec::List(&PAGE_ENCODING_STATS)),
    (14, Spec::I64),
    (15, Spec::I32),
    (16, SIZE_STATISTICS),
    (17, GEOSPATIAL_STATISTICS),
]);

/// A column chunk's or a page's statistics.
pub(crate) const STATISTICS: Spec = Spec::Struct(&[
    (1, Spec::Binary),
    (2, Spec::Binary),
    (3, Spec::I64),
    (4, Spec::I64),
    (5, Spec::Binary),
    (6, Spec::Binary),
    (7, Spec::Bool),
    (8, Spec::Bool),
]);

const PAGE_ENCODING_STATS: Spec = Spec::Struct(&[(1, Spec::I32), (2, Spec::I32), (3, Spec::I32)]);

const SIZE_STATISTICS: Spec = Spec::Struct(&[
    (1, Spec::I64),
    (2, Spec::List(&Spec::I64)),
    (3, Spec::List(&Spec::I64)),
]);

const GEOSPATIAL_STATISTICS: Spec = Spec::Struct(&[
    (
        1,
        Spec::Struct(&[
            (1, Spec::Double),
            (2, Spec::Double),
            (3, Spec::Double),
            (4, Spec::Double),
            (5, Spec::Double),
            (6, Spec::Double),
            (7, Spec::Double),
            (8, Spec::Double),
        ]),
    ),
    (2, Spec::List(&Spec::I32)),
]);

/// A `SchemaElement`'s `LogicalType`: one of its variants, each a struct.
const LOGICAL_TYPE: Spec = Spec::Union(&[
    (1, EMPTY),
    (2, EMPTY),
    (3, EMPTY),
    (4, EMPTY),
    (5, Spec::Struct(&[(1, Spec::I32), (2, Spec::I32)])),
    (6, EMPTY),
    (7, TIME),
    (8, TIME),
    (10, Spec::Struct(&[(1, Spec::Byte), (2, Spec::Bool)])),
    (11, EMPTY),
    (12, EMPTY),
    (13, EMPTY),
    (14, EMPTY),
    (15, EMPTY),
    (16, Spec::Struct(&[(1, Spec::Byte)])),
    (17, Spec::Struct(&[(1, Spec::Binary)])),
    (18, Spec::Struct(&[(1, Spec::Binary), (2, Spec::I32)])),
]);

const EMPTY: Spec = Spec::Struct(&[]);

/// `TimeType` and `TimestampType`: whether adjusted to UTC, and a `TimeUnit` (milliseconds,
/// microseconds or nanoseconds).
const TIME: Spec = Spec::Struct(&[
    (1, Spec::Bool),
    (2, Spec::Union(&[(1, EMPTY), (2, EMPTY), (3, EMPTY)])),
]);

/// What the footer says of its schema.
#[derive(Debug, PartialEq)]
enum Schema {
    /// Each schema element's `num_children` (`None` for a leaf), in the footer's order.
    Found(Vec<Option<i64>>),
    /// The footer ends without one (the Parquet reader refuses it).
    Absent,
    /// Fields with other types than the format's, or bytes that run out.
    Unreadable,
}
use Schema::{Absent, Found, Unreadable};

/// The schema of a footer, every field of which has the type the format gives it.
fn schema_children(footer: &[u8]) -> Schema {
    let mut input = Compact::new(footer);
    let mut schema = None;
    let mut last_id = 0i16;
    loop {
        let read = match input.field_header(&mut last_id) {
            Some((_, STOP)) => return schema.map_or(Absent, Found),
            Some((2, LIST)) => input.schema_list().map(|children| schema = Some(children)),
            Some((2, _)) => None,
            Some((id, kind)) => match FILE_META_DATA.iter().find(|(known, _)| *known == id) {
                Some(&(_, spec)) => input.strict_field(spec, kind, MAX_VALUE_DEPTH),
                None => input.skip_field(kind, MAX_VALUE_DEPTH),
            },
            None => None,
        };
        if read.is_none() {
            return Unreadable;
        }
    }
}

/// Walks the elements as the Parquet reader will, refusing a count that is negative or
/// larger than the elements left, and nesting deeper than [`MAX_SCHEMA_DEPTH`].
fn check_tree(children: &[Option<i64>]) -> Result<(), String> {
    let total = children.len();
    // The children still to come of each open group, innermost last.
    let mut open: Vec<i64> = Vec::new();
    for (index, count) in children.iter().enumerate() {
        if let Some(left) = open.last_mut() {
            *left -= 1;
        }
        let count = count.unwrap_or(0);
        let remaining = (total - index - 1) as i64;
        if count < 0 || count > remaining {
            return Err(format!(
                "its schema's element {index} claims {count} children, but only {remaining} \
                 elements follow"
            ));
        }
        if count > 0 {
            open.push(count);
            if open.len() > MAX_SCHEMA_DEPTH {
                return Err(format!(
                    "its schema nests deeper than {MAX_SCHEMA_DEPTH} levels"
                ));
            }
        }
        while open.last() == Some(&0) {
            open.pop();
        }
    }
    Ok(())
}

impl Compact<'_> {
    /// The `num_children` of each element of `FileMetaData.schema`.
    fn schema_list(&mut self) -> Option<Vec<Option<i64>>> {
        let (kind, length) = self.list_header()?;
        if kind != STRUCT || length > self.remaining() as u64 {
            return None;
        }
        (0..length).map(|_| self.schema_element()).collect()
    }

    /// A `SchemaElement`: its fields 1 to 9 (i32 but the name, 4, a string) and 10 (the
    /// logical type) with their own types, unknown ones skipped.
    fn schema_element(&mut self) -> Option<Option<i64>> {
        let mut children = None;
        let mut last_id = 0i16;
        loop {
            match self.field_header(&mut last_id)? {
                (_, STOP) => return Some(children),
                (5, I32) => children = Some(self.zigzag()?),
                (4, BINARY) => self.skip(BINARY, 1)?,
                (1..=9, I32) => self.skip(I32, 1)?,
                (10, STRUCT) => self.strict_value(LOGICAL_TYPE, MAX_VALUE_DEPTH)?,
                (1..=10, _) => return None,
                (_, kind) => self.skip_field(kind, MAX_VALUE_DEPTH)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_flat_schema_passes() {
        assert!(check_tree(&[Some(2), None, None]).is_ok());
    }

    #[test]
    fn nested_groups_pass() {
        assert!(check_tree(&[Some(2), Some(1), None, None]).is_ok());
    }

    #[test]
    fn a_count_beyond_the_elements_is_refused() {
        let error = check_tree(&[Some(2_000_000_000), None]).unwrap_err();
        assert!(
            error.contains("element 0 claims 2000000000 children"),
            "{error}"
        );
    }

    #[test]
    fn a_negative_count_is_refused() {
        assert!(check_tree(&[Some(1), Some(-3), None]).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut children = vec![Some(1); MAX_SCHEMA_DEPTH + 1];
        children.push(None);
        let error = check_tree(&children).unwrap_err();
        assert!(error.contains("deeper than 64"), "{error}");
        let mut fits = vec![Some(1); MAX_SCHEMA_DEPTH];
        fits.push(None);
        assert!(check_tree(&fits).is_ok());
    }

    #[test]
    fn a_logical_type_is_one_known_variant() {
        let read = |bytes: &[u8]| Compact::new(bytes).strict_value(LOGICAL_TYPE, MAX_VALUE_DEPTH);
        // TIMESTAMP { 1: adjusted true, 2: TimeUnit { 2: MICROS {} } }
        let timestamp = [0x8c, 0x11, 0x1c, 0x2c, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(read(&timestamp), Some(()));
        // a TimeUnit of two units (MILLIS, MICROS)
        assert_eq!(
            read(&[0x8c, 0x11, 0x1c, 0x1c, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00]),
            None
        );
        // STRING and DECIMAL { 1: scale 2, 2: precision 9 }, then a second variant
        assert_eq!(read(&[0x1c, 0x00, 0x00]), Some(()));
        assert_eq!(read(&[0x5c, 0x15, 0x04, 0x15, 0x12, 0x00, 0x00]), Some(()));
        assert_eq!(read(&[0x1c, 0x00, 0x1c, 0x00, 0x00]), None);
        // variant 9 (none), an INTEGER whose bit width is an i32, no variant at all
        assert_eq!(read(&[0x9c, 0x00, 0x00]), None);
        assert_eq!(read(&[0xac, 0x15, 0x10, 0x00, 0x00]), None);
        assert_eq!(read(&[0x00]), None);
    }

    #[test]
    fn the_compact_reader_finds_num_children() {
        // FileMetaData { 1: version = 1, 2: schema = [ {4: name "s", 5: num_children 1},
        // {4: name "t"} ] }
        let footer = [
            0x15, 0x02, // field 1, i32, zigzag(1)
            0x19, 0x2c, // field 2, list of 2 structs
            0x48, 0x01, b's', 0x15, 0x02, 0x00, // name "s", num_children 1, stop
            0x48, 0x01, b't', 0x00, // name "t", stop
            0x00,
        ];
        assert_eq!(schema_children(&footer), Found(vec![Some(1), None]));
    }
}
