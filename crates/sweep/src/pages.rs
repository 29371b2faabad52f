//! The page headers of a Parquet file's column chunks, checked before the Parquet reader reads
//! them.
//!
//! The reader trusts a page header's numbers. It reserves room for a dictionary page's
//! `num_values` before it reads the values, so a damaged header that claims 470 million of
//! them makes it ask for 11 GB (found by fuzzing `sweep_tables`), and it reserves a page's
//! `uncompressed_page_size` before it decompresses the page. It reads a header's fields by the
//! types it expects, whatever the bytes declare, and it skips other fields a byte at a time
//! from the file, so a header that claims a list of two billion values reads past the file's
//! end for seconds (also found by fuzzing `sweep_tables`). So each column chunk's pages are
//! walked here first, as the reader will walk them, their headers read strictly (as
//! [`crate::footer`] reads the schema) and their numbers checked against the bytes they
//! describe.
//!
//! A page header is `PageHeader` of `parquet.thrift`: 1 `type`, 2 `uncompressed_page_size`,
//! 3 `compressed_page_size`, 4 `crc` (i32 each), then one of 5 `data_page_header`,
//! 6 `index_page_header`, 7 `dictionary_page_header`, 8 `data_page_header_v2` (structs).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use parquet::basic::{Compression, Type as Physical};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};

use crate::footer::STATISTICS;
use crate::thrift::{Compact, BOOL_FALSE, BOOL_TRUE, I32, MAX_VALUE_DEPTH, STOP, STRUCT};

/// The most bytes a compressed byte can stand for in a codec scope reads: deflate (gzip)
/// reaches 1032 to 1, snappy less, and an uncompressed page is its own size. (The reader
/// refuses the other codecs by name before it reads a page.)
const MAX_COMPRESSION_RATIO: i64 = 1032;

/// The first read of a page header; a header that does not fit (long statistics) is read
/// again with 16 times as much, up to the end of its column chunk or [`MAX_HEADER`].
const FIRST_HEADER_READ: u64 = 4096;

/// Longer page headers are refused: writers cap the statistics in them at a few KiB.
const MAX_HEADER: u64 = 64 << 20;

/// `Err(why)` when a page of a column chunk in `metadata` (the footer of `file`) has a header
/// the Parquet reader would misread, or numbers that do not fit the bytes it has.
pub(crate) fn check_pages(file: &mut File, metadata: &ParquetMetaData) -> Result<(), String> {
    let file_size = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        for chunk in row_group.columns() {
            check_chunk(file, file_size, chunk).map_err(|why| {
                format!(
                    "row group {group}, column `{}`: {why}",
                    chunk.column_path().string()
                )
            })?;
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Walks the pages of one column chunk from its first byte to its last, as the reader does.
fn check_chunk(file: &mut File, file_size: u64, chunk: &ColumnChunkMetaData) -> Result<(), String> {
    let start = chunk
        .dictionary_page_offset()
        .unwrap_or(chunk.data_page_offset());
    let length = chunk.compressed_size();
    let end = u64::try_from(start)
        .ok()
        .zip(u64::try_from(length).ok())
        .and_then(|(start, length)| start.checked_add(length))
        .filter(|&end| end <= file_size)
        .ok_or_else(|| {
            format!(
                "its pages (from byte {start}, {length} bytes) lie outside the file's \
                 {file_size} bytes"
            )
        })?;
    let mut at = start as u64;
    while at < end {
        let (header_size, header) = read_header(file, at, end)?;
        let body = at + header_size;
        let page_end = u64::try_from(header.compressed)
            .ok()
            .and_then(|size| body.checked_add(size))
            .filter(|&page_end| page_end <= end)
            .ok_or_else(|| {
                format!(
                    "the page at byte {at} claims {} bytes, more than its column chunk has \
                     left",
                    header.compressed
                )
            })?;
        header
            .check(chunk)
            .map_err(|why| format!("the page at byte {at} {why}"))?;
        at = page_end;
    }
    Ok(())
}

/// Reads the header of the page at `at`, and its size in bytes.
fn read_header(file: &mut File, at: u64, end: u64) -> Result<(u64, PageHeader), String> {
    let mut window = FIRST_HEADER_READ;
    loop {
        let length = window.min(end - at).min(MAX_HEADER);
        let mut bytes = vec![0u8; usize::try_from(length).map_err(|e| e.to_string())?];
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| format!("its page at byte {at} could not be read: {e}"))?;
        let mut input = Compact::new(&bytes);
        if let Some(header) = input.page_header() {
            return Ok((length - input.remaining() as u64, header));
        }
        if length == end - at || length == MAX_HEADER {
            return Err(format!(
                "the page header at byte {at} is not one the Parquet format allows (a field of \
                 another type, a number out of range, a length past its column chunk, or more \
                 than 64 MiB): a damaged file?"
            ));
        }
        window = window.saturating_mul(16);
    }
}

/// The numbers of a page header that the reader trusts.
#[derive(Debug, Default, PartialEq)]
struct PageHeader {
    uncompressed: i32,
    compressed: i32,
    /// A dictionary page's `num_values`.
    dictionary_values: Option<i32>,
    /// A data page's `num_values` (version 1 or 2).
    data_values: Option<i32>,
    /// A version 2 data page's `num_nulls`, `num_rows` and the byte lengths of its
    /// definition and repetition levels.
    v2: Option<[i32; 4]>,
}

impl PageHeader {
    /// `Err(why)` when the numbers do not fit the page's bytes.
    fn check(&self, chunk: &ColumnChunkMetaData) -> Result<(), String> {
        let (compressed, uncompressed) = (i64::from(self.compressed), i64::from(self.uncompressed));
        let read_here = matches!(
            chunk.compression(),
            Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::GZIP(_)
        );
        if uncompressed < 0 || (read_here && uncompressed > compressed * MAX_COMPRESSION_RATIO) {
            return Err(format!(
                "claims to hold {uncompressed} bytes in {compressed}, beyond any codec scope \
                 reads"
            ));
        }
        if let Some(values) = self.dictionary_values {
            let bits = i64::from(values) * value_bits(chunk);
            if values < 0 || bits > uncompressed * 8 {
                return Err(format!(
                    "is a dictionary of {values} values in {uncompressed} bytes"
                ));
            }
        }
        if self.data_values.is_some_and(|values| values < 0) {
            return Err("claims a negative number of values".to_string());
        }
        if let (Some(values), Some([nulls, rows, definition, repetition])) =
            (self.data_values, self.v2)
        {
            let levels = i64::from(definition) + i64::from(repetition);
            if nulls < 0 || rows < 0 || nulls > values || rows > values {
                return Err(format!(
                    "claims {nulls} nulls and {rows} rows among {values} values"
                ));
            }
            if definition < 0 || repetition < 0 || levels > compressed.min(uncompressed) {
                return Err(format!(
                    "claims levels of {definition} and {repetition} bytes in {compressed}"
                ));
            }
        }
        Ok(())
    }
}

/// The fewest bits a value of the chunk's type takes in a dictionary page (plain encoded): a
/// byte array's is its 4-byte length.
fn value_bits(chunk: &ColumnChunkMetaData) -> i64 {
    match chunk.column_type() {
        Physical::BOOLEAN => 1,
        Physical::INT32 | Physical::FLOAT | Physical::BYTE_ARRAY => 32,
        Physical::INT64 | Physical::DOUBLE => 64,
        Physical::INT96 => 96,
        Physical::FIXED_LEN_BYTE_ARRAY => 8 * i64::from(chunk.column_descr().type_length().max(1)),
    }
}

impl Compact<'_> {
    /// A `PageHeader`, its known fields with the format's types, unknown ones skipped; `None`
    /// where it has others or lacks its sizes.
    fn page_header(&mut self) -> Option<PageHeader> {
        let mut header = PageHeader::default();
        let (mut uncompressed, mut compressed) = (None, None);
        let mut last_id = 0i16;
        loop {
            match self.field_header(&mut last_id)? {
                (_, STOP) => break,
                (2, I32) => uncompressed = Some(self.int()?),
                (3, I32) => compressed = Some(self.int()?),
                (1 | 4, I32) => drop(self.int()?),
                (5, STRUCT) => header.data_values = Some(self.data_page_header()?),
                (6, STRUCT) => self.strict_struct(&[], MAX_VALUE_DEPTH)?,
                (7, STRUCT) => header.dictionary_values = Some(self.dictionary_page_header()?),
                (8, STRUCT) => {
                    let (values, v2) = self.data_page_header_v2()?;
                    header.data_values = Some(values);
                    header.v2 = Some(v2);
                }
                (1..=8, _) => return None,
                (_, kind) => self.skip_field(kind, MAX_VALUE_DEPTH)?,
            }
        }
        header.uncompressed = uncompressed?;
        header.compressed = compressed?;
        Some(header)
    }

    /// A `DataPageHeader`'s `num_values`.
    fn data_page_header(&mut self) -> Option<i32> {
        let mut values = None;
        let mut last_id = 0i16;
        loop {
            match self.field_header(&mut last_id)? {
                (_, STOP) => return values,
                (1, I32) => values = Some(self.int()?),
                (2..=4, I32) => drop(self.int()?),
                (5, STRUCT) => self.statistics()?,
                (1..=5, _) => return None,
                (_, kind) => self.skip_field(kind, MAX_VALUE_DEPTH)?,
            }
        }
    }

    /// A `DictionaryPageHeader`'s `num_values`.
    fn dictionary_page_header(&mut self) -> Option<i32> {
        let mut values = None;
        let mut last_id = 0i16;
        loop {
            match self.field_header(&mut last_id)? {
                (_, STOP) => return values,
                (1, I32) => values = Some(self.int()?),
                (2, I32) => drop(self.int()?),
                (3, BOOL_TRUE | BOOL_FALSE) => {}
                (1..=3, _) => return None,
                (_, kind) => self.skip_field(kind, MAX_VALUE_DEPTH)?,
            }
        }
    }

    /// A `DataPageHeaderV2`'s `num_values`, and its `num_nulls`, `num_rows`,
    /// `definition_levels_byte_length` and `repetition_levels_byte_length`.
    fn data_page_header_v2(&mut self) -> Option<(i32, [i32; 4])> {
        let mut numbers = [None; 7];
        let mut last_id = 0i16;
        loop {
            match self.field_header(&mut last_id)? {
                (_, STOP) => break,
                (id @ 1..=6, I32) => numbers[id as usize] = Some(self.int()?),
                (7, BOOL_TRUE | BOOL_FALSE) => {}
                (8, STRUCT) => self.statistics()?,
                (1..=8, _) => return None,
                (_, kind) => self.skip_field(kind, MAX_VALUE_DEPTH)?,
            }
        }
        let [_, values, nulls, rows, _, definition, repetition] = numbers;
        Some((values?, [nulls?, rows?, definition?, repetition?]))
    }

    /// A `Statistics`, as the footer's column statistics are read.
    fn statistics(&mut self) -> Option<()> {
        self.strict_value(STATISTICS, MAX_VALUE_DEPTH)
    }

    /// An i32 field's value.
    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.zigzag()?).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `PageHeader { 1: type 2 (dictionary), 2: uncompressed, 3: compressed,
    /// 7: { 1: num_values, 2: encoding 0 } }`, as writers write it.
    fn dictionary_header(uncompressed: u8, compressed: u8, values: u8) -> Vec<u8> {
        vec![
            0x15,
            0x04, // 1: type, zigzag(2)
            0x15,
            uncompressed * 2, // 2
            0x15,
            compressed * 2, // 3
            0x4c,           // 7: struct (delta 4)
            0x15,
            values * 2, // 1: num_values
            0x15,
            0x00, // 2: encoding
            0x00,
            0x00, // stops
        ]
    }

    #[test]
    fn a_dictionary_header_reads() {
        let bytes = dictionary_header(40, 30, 5);
        let mut input = Compact::new(&bytes);
        let header = input.page_header().unwrap();
        assert_eq!(input.remaining(), 0);
        assert_eq!(
            header,
            PageHeader {
                uncompressed: 40,
                compressed: 30,
                dictionary_values: Some(5),
                ..PageHeader::default()
            }
        );
    }

    #[test]
    fn a_size_with_another_type_is_refused() {
        let mut bytes = dictionary_header(40, 30, 5);
        bytes[2] = 0x16; // field 2 as i64
        assert_eq!(Compact::new(&bytes).page_header(), None);
    }

    #[test]
    fn a_list_longer_than_the_header_is_refused() {
        // Field 9 (unknown): a list of 2^31 bytes, then nothing.
        let mut bytes = vec![0x15, 0x04, 0x15, 0x02, 0x15, 0x02];
        bytes.extend([0x69, 0xf3, 0x80, 0x80, 0x80, 0x80, 0x08]);
        assert_eq!(Compact::new(&bytes).page_header(), None);
    }
}
