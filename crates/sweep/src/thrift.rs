//! A reader of Thrift's compact protocol
//! (<https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md>), in
//! which a Parquet file's footer and page headers are written, for the checks scope makes on
//! them before the Parquet reader sees them ([`crate::footer`], [`crate::pages`]). It reads a
//! slice and never allocates; a length or count beyond the bytes left ends the reading.

/// Thrift's own limit on nested values while skipping, which the Parquet reader uses too.
pub(crate) const MAX_VALUE_DEPTH: usize = 64;

pub(crate) const STOP: u8 = 0;
pub(crate) const BOOL_TRUE: u8 = 1;
pub(crate) const BOOL_FALSE: u8 = 2;
pub(crate) const BYTE: u8 = 3;
pub(crate) const I16: u8 = 4;
pub(crate) const I32: u8 = 5;
pub(crate) const I64: u8 = 6;
pub(crate) const DOUBLE: u8 = 7;
pub(crate) const BINARY: u8 = 8;
pub(crate) const LIST: u8 = 9;
pub(crate) const SET: u8 = 10;
pub(crate) const MAP: u8 = 11;
pub(crate) const STRUCT: u8 = 12;
pub(crate) const UUID: u8 = 13;

/// What a format gives a field: its Thrift type and, for a list, a struct or a union, what it
/// holds. A struct's fields not named in its list are the format's later additions or a
/// writer's own: they are skipped by their declared type, as a Thrift reader skips them. A
/// union holds exactly one of its fields, a named one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Spec {
    Bool,
    Byte,
    I16,
    I32,
    I64,
    Double,
    Binary,
    List(&'static Spec),
    Struct(&'static [(i16, Spec)]),
    Union(&'static [(i16, Spec)]),
}

/// A reader of Thrift's compact protocol over a slice; every method returns `None` where
/// the bytes run out or make no sense.
pub(crate) struct Compact<'a> {
    bytes: &'a [u8],
}

impl<'a> Compact<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Compact { bytes }
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    pub(crate) fn advance(&mut self, n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        self.bytes = self.bytes.get(n..)?;
        Some(())
    }

    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    pub(crate) fn zigzag(&mut self) -> Option<i64> {
        let n = self.varint()?;
        Some((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    /// The next field's id and type (`STOP` ends a struct); ids are deltas from `last_id`.
    pub(crate) fn field_header(&mut self, last_id: &mut i16) -> Option<(i16, u8)> {
        let header = self.byte()?;
        let kind = header & 0x0f;
        if kind == STOP {
            return Some((0, STOP));
        }
        let delta = header >> 4;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).ok()?
        } else {
            last_id.checked_add(i16::from(delta))?
        };
        *last_id = id;
        Some((id, kind))
    }

    /// A list's or set's element type and length.
    pub(crate) fn list_header(&mut self) -> Option<(u8, u64)> {
        let header = self.byte()?;
        let length = match header >> 4 {
            15 => self.varint()?,
            short => u64::from(short),
        };
        Some((header & 0x0f, length))
    }

    /// Reads the fields of a struct, each named in `fields` only when its declared type is
    /// the one `fields` gives it, and the nested values likewise; the others skipped.
    pub(crate) fn strict_struct(&mut self, fields: &[(i16, Spec)], depth: usize) -> Option<()> {
        let depth = depth.checked_sub(1)?;
        let mut last_id = 0i16;
        loop {
            let (id, kind) = self.field_header(&mut last_id)?;
            if kind == STOP {
                return Some(());
            }
            match fields.iter().find(|(known, _)| *known == id) {
                Some(&(_, spec)) => self.strict_field(spec, kind, depth)?,
                None => self.skip_field(kind, depth)?,
            }
        }
    }

    /// The value of a struct's field declared as `kind`, which must be `spec`'s type.
    pub(crate) fn strict_field(&mut self, spec: Spec, kind: u8, depth: usize) -> Option<()> {
        match spec {
            Spec::Bool => matches!(kind, BOOL_TRUE | BOOL_FALSE).then_some(()),
            _ => (kind == spec.kind()).then_some(()),
        }?;
        self.strict_value(spec, depth)
    }

    /// A value of `spec`'s type whose type is already checked (a struct field's boolean has
    /// no bytes; lists of booleans are not in any spec).
    pub(crate) fn strict_value(&mut self, spec: Spec, depth: usize) -> Option<()> {
        match spec {
            Spec::Bool => Some(()),
            Spec::Byte | Spec::I16 | Spec::I32 | Spec::I64 | Spec::Double | Spec::Binary => {
                self.skip(spec.kind(), depth)
            }
            Spec::List(element) => {
                let (kind, length) = self.list_header()?;
                if kind != element.kind() || matches!(element, Spec::Bool) {
                    return None;
                }
                if length > self.bytes.len() as u64 {
                    return None;
                }
                (0..length).try_for_each(|_| self.strict_value(*element, depth))
            }
            Spec::Struct(fields) => self.strict_struct(fields, depth),
            Spec::Union(fields) => self.strict_union(fields, depth),
        }
    }

    /// A union: one field named in `fields`, of the type given there, and the end.
    fn strict_union(&mut self, fields: &[(i16, Spec)], depth: usize) -> Option<()> {
        let depth = depth.checked_sub(1)?;
        let mut last_id = 0i16;
        let (id, kind) = self.field_header(&mut last_id)?;
        let &(_, spec) = fields.iter().find(|(known, _)| *known == id)?;
        self.strict_field(spec, kind, depth)?;
        let (_, end) = self.field_header(&mut last_id)?;
        (end == STOP).then_some(())
    }

    /// Skips the value of a struct's field of type `kind` (a boolean field's value is its
    /// type: no byte follows).
    pub(crate) fn skip_field(&mut self, kind: u8, depth: usize) -> Option<()> {
        match kind {
            BOOL_TRUE | BOOL_FALSE => Some(()),
            _ => self.skip(kind, depth),
        }
    }

    /// Skips one value of type `kind` (a boolean in a list or map is a byte).
    pub(crate) fn skip(&mut self, kind: u8, depth: usize) -> Option<()> {
        let depth = depth.checked_sub(1)?;
        match kind {
            BOOL_TRUE | BOOL_FALSE | BYTE => self.advance(1),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => self.advance(8),
            UUID => self.advance(16),
            BINARY => {
                let length = self.varint()?;
                self.advance(length)
            }
            LIST | SET => {
                let (element, length) = self.list_header()?;
                self.skip_values(element, length, depth)
            }
            MAP => {
                let length = self.varint()?;
                if length > self.bytes.len() as u64 {
                    return None;
                }
                if length == 0 {
                    return Some(());
                }
                let types = self.byte()?;
                for _ in 0..length {
                    self.skip(types >> 4, depth)?;
                    self.skip(types & 0x0f, depth)?;
                }
                Some(())
            }
            STRUCT => {
                let mut last_id = 0i16;
                loop {
                    match self.field_header(&mut last_id)? {
                        (_, STOP) => return Some(()),
                        (_, field) => self.skip_field(field, depth)?,
                    }
                }
            }
            _ => None,
        }
    }

    /// Skips `length` values of type `kind`, each at least a byte long (booleans in a list are
    /// a byte each), so a length beyond the bytes left ends at once.
    pub(crate) fn skip_values(&mut self, kind: u8, length: u64, depth: usize) -> Option<()> {
        if length > self.bytes.len() as u64 {
            return None;
        }
        for _ in 0..length {
            self.skip(kind, depth)?;
        }
        Some(())
    }
}

impl Spec {
    /// The compact protocol's type of a value of this spec (a boolean's is that of `true`).
    fn kind(self) -> u8 {
        match self {
            Spec::Bool => BOOL_TRUE,
            Spec::Byte => BYTE,
            Spec::I16 => I16,
            Spec::I32 => I32,
            Spec::I64 => I64,
            Spec::Double => DOUBLE,
            Spec::Binary => BINARY,
            Spec::List(_) => LIST,
            Spec::Struct(_) | Spec::Union(_) => STRUCT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIR: &[(i16, Spec)] = &[(1, Spec::I32), (2, Spec::List(&Spec::Binary))];

    fn read(bytes: &[u8]) -> Option<()> {
        Compact::new(bytes).strict_struct(PAIR, MAX_VALUE_DEPTH)
    }

    #[test]
    fn a_struct_of_the_declared_types_reads() {
        // { 1: i32 7, 2: ["a"], 5: unknown i64 3 }
        assert_eq!(
            read(&[0x15, 0x0e, 0x19, 0x18, 0x01, b'a', 0x36, 0x06, 0x00]),
            Some(())
        );
    }

    #[test]
    fn a_known_field_of_another_type_is_refused() {
        // { 1: i64 7 }
        assert_eq!(read(&[0x16, 0x0e, 0x00]), None);
        // { 2: [i32 1] }
        assert_eq!(read(&[0x29, 0x15, 0x02, 0x00]), None);
    }

    #[test]
    fn a_list_longer_than_the_bytes_left_is_refused() {
        // { 2: a list of 2^31 binaries }, and an unknown field 3 holding a list of 2^31
        // values of type 14, which the protocol does not have
        assert_eq!(
            read(&[0x29, 0xf8, 0x80, 0x80, 0x80, 0x80, 0x08, 0x00]),
            None
        );
        assert_eq!(
            read(&[0x39, 0xfe, 0x80, 0x80, 0x80, 0x80, 0x08, 0x00]),
            None
        );
    }
}
