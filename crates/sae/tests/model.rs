//! Tests that need the model (`gemma-model`) and intervene's graph: ΔCE/KL of the spliced SAE,
//! and the pyvene SAE workflows (collect with encoder, steering generate, JumpReLU interchange).

use std::collections::HashMap;

use gemma_model::{Batch, DecodeMode, GemmaModel, GenerationConfig};
use intervene::{
    CallOptions, IntervenableModel, Locations, RepresentationConfig, Sources, Subspaces,
};
use sae::{EncodeCollect, JumpReluInterchange, Steer};
use tch::{Device, Kind, Tensor};

use crate::common::{assert_rel, max_abs_diff, read_json, read_st, Case, BF16, F32};

fn model(case: &Case, dtype: Kind) -> GemmaModel {
    GemmaModel::from_dir(case.model_dir(), dtype, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn pyvene(case: &Case) -> (serde_json::Value, HashMap<String, Tensor>) {
    let dir = case.expected_dir();
    (
        read_json(&dir.join("pyvene.json")),
        read_st(&dir.join("pyvene.safetensors")),
    )
}

fn component(layer: usize) -> String {
    format!("model.layers[{layer}].output")
}

fn splice_case(case: &Case, dtype: Kind, rel: f64) {
    let _guard = tch::no_grad_guard();
    let m = model(case, dtype);
    let sae = case.sae();
    sae.check_d_in(m.config().hidden_size).unwrap();
    let site = sae.site().unwrap();
    assert_eq!(site.layer, case.layer);
    let json = case.sae_json();
    let fwd = read_st(&case.expected_dir().join("forward.safetensors"));
    let mut worst = 0f64;
    for p in 0..case.prompts {
        let ids = &fwd[&format!("p{p}.input_ids")];
        let batch = Batch::new(ids.shallow_clone());
        let got = sae::splice_metrics(
            &sae,
            &m,
            &batch,
            ids,
            None,
            site,
            |o: gemma_model::ModelOutput| o.logits,
        )
        .unwrap();
        let want = &json["splice"]["per_prompt"][p];
        let pairs = [
            (got.ce_clean, "ce_clean"),
            (got.ce_spliced, "ce_spliced"),
            (got.ce_spliced_with_error, "ce_spliced_with_error_term"),
            (got.kl, "kl_clean_spliced_mean"),
        ];
        for (g, key) in pairs {
            let w = want[key].as_f64().unwrap();
            worst = worst.max((g - w).abs() / w.abs());
            assert_rel(g, w, rel, &format!("{} p{p} {key}", case.model));
        }
        assert!(
            (got.delta_ce - want["delta_ce"].as_f64().unwrap()).abs() < rel * 100.0,
            "{} p{p} delta_ce",
            case.model
        );
        assert!(
            got.kl_with_error.abs() < 1e-4,
            "{} p{p} kl with error {}",
            case.model,
            got.kl_with_error
        );
    }
    eprintln!("{}: splice metrics worst rel err {worst:e}", case.model);
}

#[test]
fn splice_delta_ce_and_kl_match_fixture_f32() {
    splice_case(&F32, Kind::Float, 1e-4);
}

#[test]
fn splice_delta_ce_and_kl_match_fixture_bf16() {
    // The fixture ran the model in bf16 (the SAE in f32, the reconstruction cast to bf16).
    splice_case(&BF16, Kind::BFloat16, 1e-4);
}

#[test]
fn pyvene_collect_sae_f32() {
    let _guard = tch::no_grad_guard();
    let m = model(&F32, Kind::Float);
    let sae = F32.sae();
    let (_, t) = pyvene(&F32);
    let pv = IntervenableModel::new(
        &m,
        vec![RepresentationConfig::new(
            component(2).as_str(),
            EncodeCollect::new(&sae),
        )],
    )
    .unwrap();
    let mut worst = 0f64;
    for key in ["p0", "p1", "batch"] {
        let ids = &t[&format!("collect_sae.{key}.input_ids")];
        let out = pv
            .forward(
                &Batch::new(ids.shallow_clone()),
                Sources::None,
                &CallOptions::new(),
            )
            .unwrap();
        assert_eq!(out.collected.len(), 1);
        let got = &out.collected[0];
        let want = &t[&format!("collect_sae.{key}.collected")];
        assert_eq!(got.kind(), Kind::Float);
        worst = worst.max(max_abs_diff(got, want));
        assert!(
            got.gt(0.0).equal(&want.gt(0.0)),
            "{key}: active latents differ"
        );
        // The model is not changed by a collect.
        let clean = m
            .forward(
                &Batch::new(ids.shallow_clone()),
                gemma_model::Call::default(),
                &mut intervene::NoHooks,
            )
            .unwrap()
            .logits
            .unwrap();
        assert_eq!(max_abs_diff(&out.intervened.logits.unwrap(), &clean), 0.0);
    }
    eprintln!("collect_sae: max|latent diff| {worst:e}");
    println!("PARITY|pyvene collect with JumpReLU encoder (f32 latents)|1e-4|{worst:.2e}");
    assert!(worst <= 1e-4);
}

#[test]
fn pyvene_steer_generate_f32() {
    let _guard = tch::no_grad_guard();
    let m = model(&F32, Kind::Float);
    let sae = F32.sae();
    let (json, t) = pyvene(&F32);
    let case = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "steer_generate")
        .unwrap();
    let subs = &case["call"]["subspaces"];
    let ids = &t["steer_generate.input_ids"];
    let batch = Batch::new(ids.shallow_clone());
    let steer = |name: &str, k: usize| {
        let s = &subs[name][k];
        Steer::new(
            &sae,
            &[(s["idx"].as_i64().unwrap(), s["mag"].as_f64().unwrap())],
        )
        .unwrap()
    };
    let cfg = GenerationConfig::greedy(20);
    let opts = CallOptions::new().intervene_on_prompt(true);
    let mut worst = 0f64;
    for name in ["a", "b", "two"] {
        let configs = if name == "two" {
            vec![
                RepresentationConfig::new(component(2).as_str(), steer(name, 0)),
                RepresentationConfig::new(component(3).as_str(), steer(name, 1)),
            ]
        } else {
            vec![RepresentationConfig::new(
                component(2).as_str(),
                steer(name, 0),
            )]
        };
        let pv = IntervenableModel::new(&m, configs).unwrap();
        let out = pv
            .forward(&batch, Sources::None, &CallOptions::new())
            .unwrap();
        let d = max_abs_diff(
            &out.intervened.logits.unwrap(),
            &t[&format!("steer_generate.{name}.forward_logits")],
        );
        worst = worst.max(d);
        let want = &t[&format!("steer_generate.{name}.output_ids")];
        // Per-step calls, and the fixed-shape steps a CUDA graph replays.
        for decode in [DecodeMode::Eager, DecodeMode::FixedShape] {
            let cfg = GenerationConfig {
                decode,
                ..cfg.clone()
            };
            let gen = pv.generate(&batch, Sources::None, &opts, &cfg).unwrap();
            assert_eq!(gen.intervened.decode, decode);
            assert_eq!(
                Vec::<i64>::try_from(gen.intervened.sequences.flatten(0, -1)).unwrap(),
                Vec::<i64>::try_from(want.flatten(0, -1)).unwrap(),
                "steered tokens ({name}, {decode:?})"
            );
        }
    }
    eprintln!("steer_generate: max|logit diff| {worst:e}");
    println!("PARITY|pyvene steering: logits + greedy tokens (exact; eager and fixed-shape steps)|1e-4|{worst:.2e}");
    assert!(worst <= 1e-4);
}

#[test]
fn pyvene_jumprelu_interchange_f32() {
    let _guard = tch::no_grad_guard();
    let m = model(&F32, Kind::Float);
    let sae = F32.sae();
    let (json, t) = pyvene(&F32);
    let case = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "jumprelu_interchange")
        .unwrap();
    let base = Batch::new(t["jumprelu_interchange.base.input_ids"].shallow_clone());
    let source = Batch::new(t["jumprelu_interchange.source.input_ids"].shallow_clone());
    let pv = IntervenableModel::new(
        &m,
        vec![RepresentationConfig::new(
            component(2).as_str(),
            JumpReluInterchange::new(&sae),
        )],
    )
    .unwrap();
    let mut worst = 0f64;
    for call in case["call"]["calls"].as_array().unwrap() {
        let name = call["case"].as_str().unwrap();
        let loc = &call["unit_locations"]["sources->base"];
        let (s, b) = (loc[0].as_i64().unwrap(), loc[1].as_i64().unwrap());
        let subspaces: Vec<i64> = call["subspaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let opts = CallOptions::new()
            .locations(Locations::pair(s, b))
            .subspaces(Subspaces::Shared(subspaces))
            .output_original_output(true);
        let out = pv.forward(&base, Sources::Shared(&source), &opts).unwrap();
        let original = out.original.unwrap().logits.unwrap();
        let intervened = out.intervened.logits.unwrap();
        let diff = intervened.select(1, -1) - original.select(1, -1);
        for (got, key) in [
            (&original, "original_logits"),
            (&intervened, "intervened_logits"),
            (&diff, "last_diff"),
        ] {
            let d = max_abs_diff(got, &t[&format!("jumprelu_interchange.{name}.{key}")]);
            worst = worst.max(d);
            assert!(d <= 1e-4, "{name} {key}: {d:e}");
        }
        // Only base position b and later change.
        let before = original.narrow(1, 0, b).equal(&intervened.narrow(1, 0, b));
        assert!(before, "{name}: positions before {b} changed");
    }
    eprintln!("jumprelu_interchange: max|logit diff| {worst:e}");
    println!("PARITY|pyvene JumpReLU interchange logits + last diff|1e-4|{worst:.2e}");
}
