//! The statistics on hand-made latents: ties, batching, merging, the histogram's bins, and
//! the state file's round trip.

#![allow(clippy::unwrap_used)]

use scope_sweep::state::{Coverage, SaeSpec, SweepSpec};
use scope_sweep::stats::{BatchDoc, Counted, HISTOGRAM_BINS};
use scope_sweep::{Context, SaeStats, SweepState};
use tch::Tensor;

/// Documents `first..first+n` of `len` tokens each; every position but `<bos>` counted.
fn docs(first: usize, n: usize, len: usize) -> (Vec<BatchDoc>, Counted) {
    let docs: Vec<BatchDoc> = (0..n)
        .map(|i| BatchDoc {
            index: first + i,
            ids: (0..len as i64)
                .map(|t| 100 * (first + i) as i64 + t)
                .collect(),
        })
        .collect();
    let at = (0..n).flat_map(|b| (1..len).map(move |t| (b, t))).collect();
    (docs, Counted { at })
}

fn stats(d_sae: usize, k: usize) -> SaeStats {
    SaeStats::new(
        d_sae,
        2,
        k,
        Context {
            before: 2,
            after: 1,
        },
        false,
    )
}

fn take(stats: &mut SaeStats, acts: &[f32], d_sae: usize, docs: &[BatchDoc], counted: &Counted) {
    let n = counted.at.len() as i64;
    let acts = Tensor::from_slice(acts).reshape([n, d_sae as i64]);
    let target = Tensor::ones([n, 2], (tch::Kind::Float, tch::Device::Cpu));
    let recon = target.shallow_clone() * 0.5;
    stats.update(&acts, &target, &recon, counted, docs).unwrap();
}

#[test]
fn ties_go_to_the_lower_document_and_position() {
    // Two documents of 4 tokens (3 counted each), one latent; five of six values tie at 2.
    let (docs, counted) = docs(0, 2, 4);
    let mut s = stats(1, 3);
    take(&mut s, &[2.0, 1.0, 2.0, 2.0, 2.0, 2.0], 1, &docs, &counted);
    let kept: Vec<(usize, usize)> = s.top[0].iter().map(|e| (e.doc, e.position)).collect();
    assert_eq!(kept, [(0, 1), (0, 3), (1, 1)]);
    // The context: two tokens before, one after, within the document.
    assert_eq!(s.top[0][0].context_start, 0);
    assert_eq!(s.top[0][0].context, [0, 1, 2]);
    assert_eq!(s.top[0][1].context, [1, 2, 3]);
}

#[test]
fn batches_and_merged_halves_equal_one_pass() {
    let d = 3;
    let values: Vec<f32> = (0..4 * 5 * d)
        .map(|i| {
            let v = ((i * 37) % 11) as f32 - 4.0;
            if v > 0.0 {
                v * 0.75
            } else {
                0.0
            }
        })
        .collect();
    // One pass over four documents of 6 tokens (5 counted each).
    let (all_docs, all_counted) = docs(0, 4, 6);
    let mut one = stats(d, 4);
    take(&mut one, &values, d, &all_docs, &all_counted);
    // Two halves, in two statistics, merged.
    let half = 2 * 5 * d;
    let (first, first_counted) = docs(0, 2, 6);
    let (second, second_counted) = docs(2, 2, 6);
    let mut a = stats(d, 4);
    take(&mut a, &values[..half], d, &first, &first_counted);
    let mut b = stats(d, 4);
    take(&mut b, &values[half..], d, &second, &second_counted);
    let mut merged = a.clone();
    merged.merge(&b).unwrap();
    // The same two halves in one statistics, a batch at a time.
    let mut batched = a;
    take(&mut batched, &values[half..], d, &second, &second_counted);
    for other in [&merged, &batched] {
        assert_eq!(other.count, one.count);
        assert_eq!(other.max, one.max);
        assert_eq!(other.histogram, one.histogram);
        assert_eq!(other.top, one.top);
        assert_eq!(other.reconstruction.tokens, one.reconstruction.tokens);
        for (x, y) in other.sum.iter().zip(&one.sum) {
            assert!((x - y).abs() < 1e-12);
        }
    }
}

#[test]
fn histogram_bins_are_tenths_of_a_decade() {
    let (docs, counted) = docs(0, 1, 7);
    let mut s = stats(1, 1);
    // 0.005 -> 0 (below 0.01); 0.5 -> 17; 1.0 -> 21; 2.0 -> 24; 12000 -> 61; 0 is not counted.
    take(
        &mut s,
        &[0.005, 0.5, 1.0, 2.0, 12000.0, 0.0],
        1,
        &docs,
        &counted,
    );
    let mut expected = vec![0; HISTOGRAM_BINS];
    for bin in [0, 17, 21, 24, 61] {
        expected[bin] += 1;
    }
    assert_eq!(s.histogram, expected);
    assert_eq!(s.count, [5]);
    let m = s.metrics();
    assert_eq!(m.mean_l0, 5.0 / 6.0);
    // Target 1, reconstruction 0.5 everywhere: MSE 0.25, and no variance to explain.
    assert!((m.mse - 0.25).abs() < 1e-12);
    assert_eq!(m.explained_variance, 0.0);
}

#[test]
fn the_state_file_round_trips() {
    let (docs, counted) = docs(3, 2, 5);
    let mut s = SaeStats::new(2, 2, 2, Context::default(), true);
    take(
        &mut s,
        &[
            0.0, 1.5, 2.5, 0.0, 3.0, 3.0, 0.1, 0.2, 0.0, 0.0, 4.0, 0.0, 1.0, 1.0, 0.0, 2.0,
        ],
        2,
        &docs,
        &counted,
    );
    let state = SweepState {
        spec: SweepSpec {
            model: "m".into(),
            saes: vec![SaeSpec {
                name: "s".into(),
                source: "src".into(),
                layer: 1,
                site: "block_output".into(),
                d_sae: 2,
                d_out: 2,
            }],
            corpus: vec![],
            text_field: "text".into(),
            max_len: 5,
            batch: 2,
            top_k: 2,
            context: Context::default(),
            include_bos: false,
            downstream: true,
        },
        coverage: Coverage {
            shard_count: 2,
            shards: vec![1],
            docs: 2,
            next_doc: 5,
            complete: false,
        },
        stats: vec![s],
    };
    let dir = tempfile::tempdir().unwrap();
    state.save(dir.path()).unwrap();
    assert_eq!(SweepState::load(dir.path()).unwrap(), state);
}

#[test]
fn a_damaged_state_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sweep-state.npz"), b"PK\x03\x04 not really").unwrap();
    let err = SweepState::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("sweep-state.npz"), "{err}");
}

#[test]
fn the_fuzz_seed_of_the_state_file_is_a_valid_state() {
    // fuzz/make_seeds.py writes it in Python: it checks that the layout is the one read here.
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/sweep_state/seed-two-latents");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(seed, dir.path().join("sweep-state.npz")).unwrap();
    let state = SweepState::load(dir.path()).unwrap();
    assert_eq!(state.stats[0].count, [1, 0]);
    assert_eq!(state.stats[0].top[0][0].context, [6, 7]);
}

#[test]
fn a_shard_without_documents_has_a_readable_summary() {
    let stats = SaeStats::new(3, 2, 2, Context::default(), false);
    let m = stats.metrics();
    assert!(m.mean_l0.is_nan() && m.explained_variance.is_nan());
    let sae = SaeSpec {
        name: "s".into(),
        source: "s".into(),
        layer: 0,
        site: "block_output".into(),
        d_sae: 3,
        d_out: 2,
    };
    let coverage = Coverage {
        shard_count: 2,
        shards: vec![1],
        docs: 0,
        next_doc: 0,
        complete: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = scope_sweep::tables::summary(&sae, "m", &coverage, &stats);
    scope_sweep::tables::write_outputs(dir.path(), &stats, &summary, &|_| String::new()).unwrap();
    let read = scope_sweep::tables::read_summary(&dir.path().join("summary.json")).unwrap();
    assert_eq!(read.tokens, 0);
    assert!(read.metrics.mse.is_nan());
    assert!(
        scope_sweep::tables::read_examples(&dir.path().join("examples.parquet"))
            .unwrap()
            .is_empty()
    );
}
