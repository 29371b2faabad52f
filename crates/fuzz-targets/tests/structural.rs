//! Every target over the structure-aware variants of its seeds ([`structural`]): wrong
//! types, missing and extra keys, huge and negative numbers, deep nests, lying offsets,
//! shapes, dtypes and lengths. Each must return within a few seconds and without a panic,
//! with the address space capped so that an allocation of a lying size fails as it would on
//! a small machine.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use scope_fuzz_targets::{cap_address_space, corpus_dir, structural, TARGETS};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

#[test]
fn every_target_returns_on_every_structural_variant_of_its_seeds() {
    cap_address_space();
    let mut counts = Vec::new();
    for target in TARGETS {
        let dir = corpus_dir(Path::new(ROOT), target.name);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
            })
            .collect();
        seeds.sort();
        let mut count = 0;
        for seed in seeds {
            let variants = structural::variants(&target, &std::fs::read(&seed).unwrap());
            for (i, variant) in variants.iter().enumerate() {
                let started = Instant::now();
                let outcome = std::panic::catch_unwind(|| (target.run)(variant));
                let what = format!("{} on variant {i} of {}", target.name, seed.display());
                assert!(outcome.is_ok(), "{what}: panicked");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{what}: took {:?}",
                    started.elapsed()
                );
            }
            count += variants.len();
        }
        assert!(count > 0, "{}: no structural variants", target.name);
        counts.push(format!("{} {count}", target.name));
    }
    println!("structural variants: {}", counts.join(", "));
}
