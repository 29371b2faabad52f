//! The fuzz corpus replayed without the fuzzer: every seed and every input that once made a
//! reader crash (`fuzz/corpus/TARGET/`) runs through its target, which must return within
//! a few seconds and without a panic, with the address space capped so that an allocation of
//! a lying size fails as it would on a small machine.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use scope_fuzz_targets::{cap_address_space, corpus_dir, TARGETS};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn every_corpus_input_returns_without_a_panic() {
    cap_address_space();
    let mut total = 0;
    for target in TARGETS {
        let dir = corpus_dir(Path::new(ROOT), target.name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has seeds)", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no seeds", dir.display());
        for input in inputs {
            let bytes = std::fs::read(&input).expect("read input");
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(|| (target.run)(&bytes));
            assert!(
                outcome.is_ok(),
                "{} panicked on {}",
                target.name,
                input.display()
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} took {:?} on {}",
                target.name,
                started.elapsed(),
                input.display()
            );
            total += 1;
        }
    }
    println!(
        "fuzz corpus: {total} inputs over {} targets, none panicked",
        TARGETS.len()
    );
}
