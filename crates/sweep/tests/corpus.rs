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
