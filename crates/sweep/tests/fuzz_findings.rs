//! Parquet files found by fuzzing (kept in the fuzz corpus), refused at once with the problem
//! named: page headers and footers the Parquet reader would trust are checked first.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn found(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/sweep_tables")
        .join(name)
}

/// The first document's error of the corpus file `name` that fuzzing `corpus_parquet` found.
fn corpus_error(name: &str) -> String {
    let found = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/corpus_parquet")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.parquet"));
    std::fs::copy(found, &path).unwrap();
    let started = Instant::now();
    let corpus = scope_sweep::Corpus::open(&[path], "text").unwrap();
    let err = corpus.documents().next().unwrap().unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(1), "{name}");
    err
}

#[test]
fn a_dictionary_page_claiming_values_beyond_i32_is_refused() {
    let path = found("dictionary-page-claims-470m-values");
    let err = scope_sweep::tables::read_latents(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dictionary-page-claims-470m-values")
            && err.contains("row group 0, column `density`: the page header at byte 216 is not")
            && err.contains("a number out of range"),
        "{err}"
    );
}

#[test]
fn a_page_header_with_a_list_past_its_end_is_refused_at_once() {
    let path = found("page-header-list-past-the-end");
    let started = Instant::now();
    let err = scope_sweep::tables::read_latents(&path)
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        err.contains("page-header-list-past-the-end")
            && err.contains("column `latent`: the page header at byte 36 is not"),
        "{err}"
    );
}

#[test]
fn a_dictionary_page_claiming_more_values_than_its_bytes_hold_is_refused() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/corpus/c.parquet");
    let mut bytes = std::fs::read(fixture).unwrap();
    // The `id` column's dictionary page, at byte 4: type 2, 32 bytes (4 int64 values) in 28,
    // then its header's num_values (zigzag 4): claim 63, the most one byte holds.
    assert_eq!(
        bytes[4..13],
        [0x15, 0x04, 0x15, 0x40, 0x15, 0x38, 0x4c, 0x15, 0x08]
    );
    bytes[12] = 0x7e;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.parquet");
    std::fs::write(&path, bytes).unwrap();
    let corpus = scope_sweep::Corpus::open(std::slice::from_ref(&path), "text").unwrap();
    let err = corpus.documents().next().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("lying.parquet")
            && err.contains(
                "row group 0, column `id`: the page at byte 4 is a dictionary of 63 \
                             values in 32 bytes"
            ),
        "{err}"
    );
}

/// A footer field after the schema that the reader would skip for a second (a list of two
/// billion values of an unknown type, as one of these holds): the whole footer is read
/// strictly, not only the schema.
#[test]
fn footers_with_lists_past_their_end_are_refused_at_once() {
    for name in ["footer-list-past-the-end-1", "footer-list-past-the-end-2"] {
        let err = corpus_error(name);
        assert!(
            err.contains(name) && err.contains("does not have the types the Parquet format"),
            "{err}"
        );
    }
}
