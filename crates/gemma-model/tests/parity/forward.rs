//! Forward parity with HF transformers 5.17 eager (fixtures/expected/*/forward.safetensors).

use gemma_model::{Batch, Call, GemmaModel};
use intervene::HookedModel;
use intervene::{ForwardOptions, SiteKind};
use tch::{Kind, Tensor};

use crate::common::*;

/// f32 tolerance from the issue: 1e-4 absolute on logits (|logit| < 30 after the cap, so no
/// scaling is needed) and on every residual.
const F32_TOL: f64 = 1e-4;

pub(crate) fn residuals(model: &GemmaModel, batch: &Batch) -> (Tensor, Vec<Tensor>) {
    let mut rec = Recorder {
        kinds: vec![SiteKind::BlockOutput],
        ..Recorder::default()
    };
    let out = model
        .forward_hooked(batch, &ForwardOptions::default(), &mut rec)
        .expect("forward");
    let resid = rec.seen.into_iter().map(|(_, t)| t).collect();
    (out.logits.expect("logits"), resid)
}

/// Compares a model run to the `prefix`-prefixed keys; returns the max logit and resid errors.
fn check_prompts(
    model: &GemmaModel,
    exp: &std::collections::HashMap<String, Tensor>,
    prefix: &str,
) -> (f64, f64) {
    let (mut worst_logit, mut worst_resid) = (0f64, 0f64);
    for p in ["p0", "p1", "p2", "p3"] {
        let batch = Batch::new(exp[&format!("{p}.input_ids")].shallow_clone());
        let (logits, resid) = residuals(model, &batch);
        let embed = model.embed(&batch.input_ids).expect("embed");
        let e = max_abs_diff(&embed, &exp[&format!("{prefix}{p}.embed")]);
        worst_resid = worst_resid.max(e);
        worst_logit = worst_logit.max(max_abs_diff(&logits, &exp[&format!("{prefix}{p}.logits")]));
        for (l, r) in resid.iter().enumerate() {
            worst_resid = worst_resid.max(max_abs_diff(r, &exp[&format!("{prefix}{p}.resid.{l}")]));
        }
    }
    (worst_logit, worst_resid)
}

/// Left-padded batch with arange positions (HF forward) and with generate's positions.
pub(crate) fn check_batch(
    model: &GemmaModel,
    exp: &std::collections::HashMap<String, Tensor>,
    prefix: &str,
) -> (f64, f64) {
    let mask = exp["batch.attention_mask"].shallow_clone();
    let batch = fixture_batch(exp, "batch");
    let (logits, resid) = residuals(model, &batch);
    let mut worst_logit =
        max_abs_diff_masked(&logits, &exp[&format!("{prefix}batch.logits")], &mask);
    let mut worst_resid = 0f64;
    for (l, r) in resid.iter().enumerate() {
        worst_resid = worst_resid.max(max_abs_diff_masked(
            r,
            &exp[&format!("{prefix}batch.resid.{l}")],
            &mask,
        ));
    }
    let batch = fixture_batch(exp, "batch")
        .with_position_ids(exp["batch_gen_pos.position_ids"].shallow_clone());
    let logits = model
        .forward(&batch, Call::default(), &mut intervene::NoHooks)
        .expect("forward")
        .logits
        .expect("logits");
    worst_logit = worst_logit.max(max_abs_diff_masked(
        &logits,
        &exp[&format!("{prefix}batch_gen_pos.logits")],
        &mask,
    ));
    (worst_logit, worst_resid)
}

#[test]
fn f32_logits_and_residuals_match_hf() {
    let model = load("tiny-f32", Kind::Float);
    let exp = expected_forward("tiny-f32");
    let (logit, resid) = check_prompts(&model, &exp, "");
    let (blogit, bresid) = check_batch(&model, &exp, "");
    eprintln!("tiny-f32: prompts logits {logit:.3e} resid {resid:.3e}; batch logits {blogit:.3e} resid {bresid:.3e}");
    println!(
        "PARITY|model f32 logits (tiny-f32, prompts + padded batch)|{F32_TOL:e}|{:.2e}",
        logit.max(blogit)
    );
    println!(
        "PARITY|model f32 residuals, every layer (tiny-f32)|{F32_TOL:e}|{:.2e}",
        resid.max(bresid)
    );
    assert!(logit < F32_TOL && resid < F32_TOL && blogit < F32_TOL && bresid < F32_TOL);
}

#[test]
fn bf16_checkpoint_loaded_as_f32_matches_hf_f32() {
    let model = load("tiny-bf16-sharded", Kind::Float);
    let exp = expected_forward("tiny-bf16-sharded");
    let (logit, resid) = check_prompts(&model, &exp, "f32.");
    let (blogit, bresid) = check_batch(&model, &exp, "f32.");
    eprintln!("tiny-bf16-sharded as f32: prompts logits {logit:.3e} resid {resid:.3e}; batch logits {blogit:.3e} resid {bresid:.3e}");
    println!(
        "PARITY|model f32 logits (bf16 checkpoint upcast, sharded)|{F32_TOL:e}|{:.2e}",
        logit.max(blogit)
    );
    assert!(logit < F32_TOL && resid < F32_TOL && blogit < F32_TOL && bresid < F32_TOL);
}

/// HF's own bf16-vs-f32 gap for this fixture, from `fixtures/index.json`.
fn hf_bf16_gap(key: &str) -> f64 {
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("index.json")).expect("index.json"),
    )
    .expect("json");
    index["measured"]["tiny-bf16-sharded"]["bf16_vs_f32_max_abs"][key]
        .as_f64()
        .expect("gap")
}

#[test]
fn bf16_matches_hf_bf16() {
    // Tolerance = 5% of HF's own bf16-vs-f32 gap (logits 2.87, resid 1.87 on this stressed
    // fixture). Why 5%: mirroring every cast point on libtorch's CPU kernels gives bit-identical
    // results (measured 0 here); missing one cast point is as large as the whole gap (measured:
    // RMSNorm cast before the (1+w) multiply → 4.06 on logits), so 5% separates "same
    // computation, different kernel rounding on another CPU" from "a cast point missed".
    const K: f64 = 0.05;
    let model = load("tiny-bf16-sharded", Kind::BFloat16);
    let exp = expected_forward("tiny-bf16-sharded");
    let (logit, resid) = check_prompts(&model, &exp, "");
    let (blogit, bresid) = check_batch(&model, &exp, "");
    eprintln!("tiny-bf16-sharded bf16: prompts logits {logit:.3e} resid {resid:.3e}; batch logits {blogit:.3e} resid {bresid:.3e}");
    println!(
        "PARITY|model bf16 logits (5% of HF's bf16-f32 gap)|{:.2e}|{:.2e}",
        K * hf_bf16_gap("logits"),
        logit.max(blogit)
    );
    assert!(logit <= K * hf_bf16_gap("logits"), "{logit}");
    assert!(
        resid <= K * hf_bf16_gap("resid").min(hf_bf16_gap("embed")),
        "{resid}"
    );
    assert!(
        blogit <= K * hf_bf16_gap("batch.logits").min(hf_bf16_gap("batch_gen_pos.logits")),
        "{blogit}"
    );
    assert!(bresid <= K * hf_bf16_gap("batch.resid"), "{bresid}");
}

#[test]
fn fixture_distinguishes_position_conventions() {
    // In bf16 HF forward (arange positions, pads counted) and generate (cumsum - 1) differ on
    // real tokens of padded rows; both are matched above, so the comparison is not vacuous.
    let exp = expected_forward("tiny-bf16-sharded");
    let mask = exp["batch.attention_mask"].shallow_clone();
    let gap = max_abs_diff_masked(&exp["batch.logits"], &exp["batch_gen_pos.logits"], &mask);
    assert!(gap > 0.0);
}

#[test]
fn stop_after_layer_returns_no_logits() {
    let model = load("tiny-f32", Kind::Float);
    let exp = expected_forward("tiny-f32");
    let batch = Batch::new(exp["p0.input_ids"].shallow_clone());
    let out = model
        .forward_hooked(
            &batch,
            &ForwardOptions {
                stop_after_layer: Some(1),
                last_position_logits: false,
            },
            &mut intervene::NoHooks,
        )
        .expect("forward");
    assert!(out.logits.is_none());
    assert!(max_abs_diff(&out.hidden, &exp["p0.resid.1"]) < F32_TOL);
    let err = model.forward_hooked(
        &batch,
        &ForwardOptions {
            stop_after_layer: Some(4),
            last_position_logits: false,
        },
        &mut intervene::NoHooks,
    );
    assert!(matches!(
        err,
        Err(gemma_model::Error::LayerOutOfRange {
            layer: 4,
            num_layers: 4
        })
    ));
}

/// `last_position_logits` runs the final layer for the last position alone (keys and values of
/// all): its logits stay within the f32 tolerance of HF's last row, for every prompt and both
/// checkpoints; with a hook in the final layer the layer runs in full.
#[test]
fn last_position_logits_match_hf_last_row() {
    let options = ForwardOptions {
        stop_after_layer: None,
        last_position_logits: true,
    };
    let mut worst = 0f64;
    for (name, prefix) in [("tiny-f32", ""), ("tiny-bf16-sharded", "f32.")] {
        let model = load(name, Kind::Float);
        let exp = expected_forward(name);
        for p in ["p0", "p1", "p2", "p3"] {
            let batch = Batch::new(exp[&format!("{p}.input_ids")].shallow_clone());
            let out = model
                .forward_hooked(&batch, &options, &mut intervene::NoHooks)
                .expect("forward");
            assert_eq!(
                out.hidden.size()[1],
                1,
                "the final layer ran for one position"
            );
            let logits = out.logits.expect("logits");
            let hf = &exp[&format!("{prefix}{p}.logits")];
            let t = hf.size()[1];
            worst = worst.max(max_abs_diff(&logits, &hf.narrow(1, t - 1, 1)));
        }
        let last = model.config().num_hidden_layers - 1;
        let mut rec = Recorder {
            kinds: vec![SiteKind::MlpOutput],
            ..Recorder::default()
        };
        let batch = Batch::new(exp["p0.input_ids"].shallow_clone());
        let out = model
            .forward_hooked(&batch, &options, &mut rec)
            .expect("forward");
        let t = batch.input_ids.size()[1];
        assert_eq!(out.hidden.size()[1], t, "hooked final layer runs in full");
        assert!(rec.seen.iter().any(|(s, _)| s.layer == last));
    }
    println!("PARITY|model f32 last-position logits (final layer on one row)|1e-4|{worst:.2e}");
    assert!(worst < F32_TOL, "{worst}");
}
