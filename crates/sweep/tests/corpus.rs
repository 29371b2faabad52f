//! The corpus readers: order, blank lines, Parquet from pyarrow, and errors that name the
//! file and line.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use scope_sweep::Corpus;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn texts(corpus: &Corpus) -> Vec<String> {
    corpus
        .documents()
        .map(|d| d.map(|d| d.text))
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn text_and_json_lines_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("b.txt");
    std::fs::write(&txt, "first\n\nthird\n").unwrap();
    let jsonl = dir.path().join("a.jsonl");
    std::fs::write(&jsonl, "{\"body\": \"x\", \"n\": 1}\n\n{\"body\": \"y\"}\n").unwrap();
    let corpus = Corpus::open(&[txt.clone(), jsonl.clone()], "body").unwrap();
    assert_eq!(texts(&corpus), ["first", "", "third", "x", "y"]);
    assert_eq!(corpus.count().unwrap(), 5);
    // A directory: its files by name.
    let corpus = Corpus::open(&[dir.path().to_path_buf()], "body").unwrap();
    assert_eq!(texts(&corpus), ["x", "y", "first", "", "third"]);
    let indices: Vec<usize> = corpus.documents().map(|d| d.unwrap().index).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
}

#[test]
fn a_bad_json_line_names_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("c.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{\"text\": 3}\n").unwrap();
    let corpus = Corpus::open(&[jsonl], "text").unwrap();
    let results: Vec<_> = corpus.documents().collect();
    assert_eq!(results.len(), 2);
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("c.jsonl") && err.contains("line 2") && err.contains("`text`"),
        "{err}"
    );
    let missing = dir.path().join("d.jsonl");
    std::fs::write(&missing, "{\"body\": \"ok\"}\n").unwrap();
    let err = Corpus::open(&[missing], "text")
        .unwrap()
        .documents()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("--text-field"), "{err}");
}

#[test]
fn files_that_are_not_a_corpus_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("x.csv");
    std::fs::write(&csv, "a,b\n").unwrap();
    let err = Corpus::open(&[csv], "text").unwrap_err().to_string();
    assert!(err.contains("x.csv"), "{err}");
    let err = Corpus::open(&[dir.path().to_path_buf()], "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no .txt"), "{err}");
    let err = Corpus::open(&[dir.path().join("gone.txt")], "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("gone.txt"), "{err}");
}

#[test]
fn parquet_as_pyarrow_writes_it() {
    let path = fixtures().join("corpus/c.parquet");
    let corpus = Corpus::open(std::slice::from_ref(&path), "text").unwrap();
    let all = texts(&corpus);
    assert!(all.len() >= 8, "{} rows", all.len());
    assert_eq!(corpus.count().unwrap(), all.len());
    let err = Corpus::open(&[path], "body")
        .unwrap()
        .documents()
        .next()
        .unwrap()
        .unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("no column `body`") && err.contains("text"),
        "{err}"
    );
}

#[test]
fn a_damaged_parquet_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.parquet");
    let mut bytes = std::fs::read(fixtures().join("corpus/c.parquet")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&path, bytes).unwrap();
    let corpus = Corpus::open(&[path], "text").unwrap();
    let err = corpus.documents().next().unwrap().unwrap_err().to_string();
    assert!(err.contains("broken.parquet"), "{err}");
}

/// A Parquet file of no rows whose footer's schema is `children` (each element's
/// `num_children`; `None` for a leaf, an optional byte-array column `text`), written in
/// Thrift's compact protocol by hand, as no writer would write a lying one.
fn parquet_with_schema(children: &[Option<i64>]) -> Vec<u8> {
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut footer = vec![0x15, 0x02, 0x19]; // version 1; field 2 is a list
    footer.push(0xfc); // of structs, its length next
    varint(children.len() as u64, &mut footer);
    for count in children {
        match count {
            Some(count) => {
                footer.extend([0x48, 0x01, b'g', 0x15]); // 4: name "g", 5: num_children
                varint(((count << 1) ^ (count >> 63)) as u64, &mut footer);
            }
            // 1: type BYTE_ARRAY, 3: repetition OPTIONAL, 4: name "text"
            None => footer.extend([0x15, 0x0c, 0x25, 0x02, 0x18, 0x04, b't', b'e', b'x', b't']),
        }
        footer.push(0x00);
    }
    footer.extend([0x16, 0x00, 0x19, 0x0c, 0x00]); // num_rows 0, no row groups, stop
    let mut file = b"PAR1".to_vec();
    file.extend(&footer);
    file.extend((footer.len() as u32).to_le_bytes());
    file.extend(b"PAR1");
    file
}

/// The first document of a corpus of `bytes` as one Parquet file, or the error.
fn first_document(bytes: &[u8]) -> Result<Option<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.parquet");
    std::fs::write(&path, bytes).unwrap();
    let corpus = Corpus::open(&[path], "text").map_err(|e| e.to_string())?;
    let first = corpus.documents().next().transpose();
    first.map(|d| d.map(|d| d.text)).map_err(|e| e.to_string())
}

#[test]
fn a_footer_claiming_billions_of_columns_is_refused_before_the_reader_allocates() {
    let err = first_document(&parquet_with_schema(&[Some(2_000_000_000), None])).unwrap_err();
    assert!(
        err.contains("lying.parquet") && err.contains("claims 2000000000 children"),
        "{err}"
    );
}

#[test]
fn a_footer_nesting_deeper_than_the_stack_allows_is_refused() {
    let mut schema = vec![Some(1); 100_000];
    schema.push(None);
    let err = first_document(&parquet_with_schema(&schema)).unwrap_err();
    assert!(
        err.contains("lying.parquet") && err.contains("nests deeper"),
        "{err}"
    );
}

#[test]
fn a_footer_written_by_hand_is_read_when_its_numbers_hold() {
    assert_eq!(
        first_document(&parquet_with_schema(&[Some(1), None])),
        Ok(None)
    );
}

#[test]
fn parquet_as_other_writer_settings_write_it() {
    let expected = texts(&Corpus::open(&[fixtures().join("corpus/c.parquet")], "text").unwrap());
    let variants = fixtures().join("corpus-variants");
    let mut names: Vec<_> = std::fs::read_dir(&variants)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    for path in names {
        let corpus = Corpus::open(std::slice::from_ref(&path), "text").unwrap();
        let name = path.file_stem().unwrap().to_string_lossy();
        if name == "zstd" {
            let err = corpus.documents().next().unwrap().unwrap_err().to_string();
            assert!(
                err.contains("zstd.parquet") && err.contains("compressed with zstd"),
                "{err}"
            );
            continue;
        }
        let got = texts(&corpus);
        match name.as_ref() {
            "long-row" => {
                assert_eq!(got[..expected.len()], expected[..], "{name}");
                assert_eq!(got.len(), expected.len() + 1);
                assert_eq!(got[expected.len()].len(), 20_000, "{name}");
            }
            _ => assert_eq!(got, expected, "{name}"),
        }
    }
}
