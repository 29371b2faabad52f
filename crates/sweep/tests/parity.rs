//! A sweep of the fixture corpus against the reference that `xtask/fixtures/sweep.py`
//! computes with transformers' hidden states and the SAE in PyTorch, one document at a time
//! (`fixtures/expected/sweep/expected.json`).
//!
//! Tolerances: counts, histograms and the (doc, position, token, context) of every top
//! example exact; activations (max, example values) within 1e-4 relative (float32 through
//! four layers, batched here and unbatched there); f64 sums and metrics within 1e-4 relative.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gemma_model::{GemmaModel, LoadOptions};
use scope::SaeAt;
use scope_sweep::stats::HISTOGRAM_BINS;
use scope_sweep::{folder_name, Context, Corpus, Sweep, SweepOptions, SweepSae, SweepState};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected/sweep/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn close(actual: f64, expected: f64, what: &str) {
    let tolerance = 1e-4 * expected.abs().max(1e-3);
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} against {expected}"
    );
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn integers(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Sweeps the fixture corpus with both SAEs in one pass.
fn sweep(include_bos: bool, batch: usize) -> (SweepState, Vec<SweepSae>) {
    let expected = expected();
    let model_dir = fixtures().join("models/tiny-f32");
    let (model, tokenizer) =
        GemmaModel::from_pretrained(model_dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let saes: Vec<SweepSae> = expected["saes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let source = fixtures()
                .join(s["path"].as_str().unwrap())
                .display()
                .to_string();
            SweepSae {
                name: folder_name(&source),
                sae: SaeAt::from_pretrained(&source, &model).unwrap(),
                source,
            }
        })
        .collect();
    let files: Vec<PathBuf> = expected["corpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| fixtures().join(p.as_str().unwrap()))
        .collect();
    let corpus = Corpus::open(&files, "text").unwrap();
    let options = SweepOptions {
        max_len: expected["max_len"].as_u64().unwrap() as usize,
        top_k: expected["top_k"].as_u64().unwrap() as usize,
        context: Context {
            before: expected["context"]["before"].as_u64().unwrap() as usize,
            after: expected["context"]["after"].as_u64().unwrap() as usize,
        },
        batch,
        include_bos,
        downstream: !include_bos,
        ..SweepOptions::default()
    };
    let sweep = Sweep {
        model: &model,
        tokenizer: &tokenizer,
        model_name: "tiny-f32",
        saes: &saes,
        corpus: &corpus,
        options: &options,
    };
    let out = tempfile::tempdir().unwrap();
    let state = sweep
        .run(
            sweep.start(out.path(), false).unwrap(),
            out.path(),
            &mut |_| {},
        )
        .unwrap();
    (state, saes)
}

#[test]
fn statistics_match_the_pytorch_reference() {
    let expected = expected();
    let (state, _) = sweep(false, 5);
    assert_eq!(
        state.coverage.docs,
        expected["docs"].as_array().unwrap().len()
    );
    for (stats, want) in state.stats.iter().zip(expected["saes"].as_array().unwrap()) {
        let name = want["path"].as_str().unwrap();
        assert_eq!(stats.count, integers(&want["count"]), "{name}: counts");
        for (i, (m, w)) in stats.max.iter().zip(numbers(&want["max"])).enumerate() {
            close(f64::from(*m), w, &format!("{name}: max of latent {i}"));
        }
        for (i, (s, w)) in stats.sum.iter().zip(numbers(&want["sum"])).enumerate() {
            close(*s, w, &format!("{name}: sum of latent {i}"));
        }
        let histogram: Vec<i64> = want["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(integers)
            .collect();
        assert_eq!(histogram.len(), stats.d_sae() * HISTOGRAM_BINS);
        assert_eq!(stats.histogram, histogram, "{name}: histograms");
        let examples = want["examples"].as_array().unwrap();
        let ours: Vec<(usize, usize, &scope_sweep::stats::Example)> = stats
            .top
            .iter()
            .enumerate()
            .flat_map(|(l, best)| best.iter().enumerate().map(move |(r, e)| (l, r, e)))
            .collect();
        assert_eq!(ours.len(), examples.len(), "{name}: number of examples");
        for ((latent, rank, e), w) in ours.iter().zip(examples) {
            let at = format!("{name}: latent {latent} rank {rank}");
            assert_eq!(*latent as i64, w["latent"].as_i64().unwrap(), "{at}");
            assert_eq!(*rank as i64, w["rank"].as_i64().unwrap(), "{at}");
            assert_eq!(e.doc as i64, w["doc"].as_i64().unwrap(), "{at}: doc");
            assert_eq!(
                e.position as i64,
                w["position"].as_i64().unwrap(),
                "{at}: position"
            );
            assert_eq!(e.token_id, w["token_id"].as_i64().unwrap(), "{at}: token");
            assert_eq!(
                e.context_start as i64,
                w["context_start"].as_i64().unwrap(),
                "{at}"
            );
            assert_eq!(e.context, integers(&w["context_ids"]), "{at}: context");
            close(f64::from(e.value), w["value"].as_f64().unwrap(), &at);
        }
        let summary = &want["summary"];
        assert_eq!(
            stats.reconstruction.tokens,
            summary["tokens"].as_u64().unwrap()
        );
        let m = stats.metrics();
        close(m.mean_l0, summary["mean_l0"].as_f64().unwrap(), "mean L0");
        close(m.mse, summary["mse"].as_f64().unwrap(), "MSE");
        close(
            m.explained_variance,
            summary["explained_variance"].as_f64().unwrap(),
            "EV",
        );
        close(
            m.explained_variance_tutorial,
            summary["explained_variance_tutorial"].as_f64().unwrap(),
            "tutorial EV",
        );
        close(
            m.ce_clean.unwrap(),
            summary["ce_clean"].as_f64().unwrap(),
            "CE clean",
        );
        close(
            m.ce_spliced.unwrap(),
            summary["ce_spliced"].as_f64().unwrap(),
            "CE spliced",
        );
        close(
            m.delta_ce.unwrap(),
            summary["delta_ce"].as_f64().unwrap(),
            "ΔCE",
        );
        close(m.kl.unwrap(), summary["kl"].as_f64().unwrap(), "KL");
    }
}

#[test]
fn counting_bos_matches_the_reference() {
    let expected = expected();
    let (state, _) = sweep(true, 4);
    for (stats, want) in state
        .stats
        .iter()
        .zip(expected["include_bos"].as_array().unwrap())
    {
        assert_eq!(
            stats.reconstruction.tokens,
            want["tokens"].as_u64().unwrap()
        );
        assert_eq!(stats.count, integers(&want["count"]));
        for (m, w) in stats.max.iter().zip(numbers(&want["max"])) {
            close(f64::from(*m), w, "max with <bos>");
        }
    }
}
