//! The workflows with Gemma Scope 2 SAEs and transcoders on the tiny Gemma 3 model, against
//! `fixtures/expected/tiny-gemma3/sae2.*`: placement, steering (graph and engine), evaluation,
//! latents, patching and the logit lens.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gemma_model::{Batch, GemmaModel, GenerationConfig, Sampling};
use intervene::{ForwardOptions, HookedModel, NoHooks, Site, SiteKind};
use sae::{Sae, SaeFamily, SaeSites};
use scope::{Placement, SaeAt, SteerRequest};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn model() -> GemmaModel {
    GemmaModel::from_dir(
        fixtures().join("models/tiny-gemma3"),
        Kind::Float,
        Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

struct Fixture {
    json: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let dir = fixtures().join("expected/tiny-gemma3");
    let text = std::fs::read_to_string(dir.join("sae2.json")).unwrap();
    Fixture {
        json: serde_json::from_str(&text).unwrap(),
        tensors: Tensor::read_safetensors(dir.join("sae2.safetensors"))
            .unwrap()
            .into_iter()
            .collect(),
    }
}

impl Fixture {
    fn saes(&self) -> &[serde_json::Value] {
        self.json["saes"].as_array().unwrap()
    }

    fn entry(&self, name: &str) -> &serde_json::Value {
        self.saes().iter().find(|e| e["name"] == name).unwrap()
    }

    fn t(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("no {key}"))
    }
}

fn folder(entry: &serde_json::Value) -> PathBuf {
    fixtures()
        .join(entry["path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sae_at(entry: &serde_json::Value, model: &GemmaModel) -> SaeAt {
    SaeAt::from_pretrained(folder(entry).to_str().unwrap(), model).unwrap_or_else(|e| panic!("{e}"))
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

const TRANSCODER: &str = "transcoder/layer_2_width_128_l0_small";
const AFFINE: &str = "transcoder/layer_2_width_128_l0_small_affine";

fn transcoder_sites(layer: usize) -> SaeSites {
    SaeSites {
        read: Site::new(layer, SiteKind::MlpInput),
        write: Site::new(layer, SiteKind::PostFeedforwardNormOutput),
    }
}

#[test]
fn saes_are_placed_where_their_folders_say() {
    let m = model();
    let f = fixture();
    for entry in f.saes() {
        let at = sae_at(entry, &m);
        let layer = entry["layer"].as_u64().unwrap() as usize;
        let want = match entry["site"].as_str().unwrap() {
            "resid_post" => SaeSites::at(Site::new(layer, SiteKind::BlockOutput)),
            "attn_out" => SaeSites::at(Site::new(layer, SiteKind::AttentionValueOutput)),
            "mlp_out" => SaeSites::at(Site::new(layer, SiteKind::PostFeedforwardNormOutput)),
            _ => transcoder_sites(layer),
        };
        assert_eq!(at.sites(), want, "{}", entry["name"]);
        assert_eq!(at.site, want.read);
        assert_eq!(at.sae.sites(), Some(want));
    }
    // --layer moves both sites of a transcoder; --site overrides what the folder says.
    let affine = Sae::from_path(folder(f.entry(AFFINE)), Device::Cpu).unwrap();
    let moved = SaeAt::place(
        affine.clone(),
        Placement {
            layer: Some(4),
            family: None,
        },
        &m,
    )
    .unwrap();
    assert_eq!(moved.sites(), transcoder_sites(4));
    let plain = Sae::from_path(folder(f.entry(TRANSCODER)), Device::Cpu).unwrap();
    let as_mlp_sae = SaeAt::place(
        plain,
        Placement {
            layer: None,
            family: Some(SaeFamily::Mlp),
        },
        &m,
    )
    .unwrap();
    assert_eq!(
        as_mlp_sae.sites(),
        SaeSites::at(Site::new(2, SiteKind::PostFeedforwardNormOutput))
    );
    assert!(!as_mlp_sae.is_transcoder());
    // An affine skip cannot sit at one site; a layer past the model is refused.
    let err = SaeAt::place(
        affine.clone(),
        Placement {
            layer: None,
            family: Some(SaeFamily::Residual),
        },
        &m,
    )
    .unwrap_err();
    assert!(err.to_string().contains("affine_skip_connection"), "{err}");
    let err = SaeAt::place(
        affine,
        Placement {
            layer: Some(6),
            family: None,
        },
        &m,
    )
    .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert_eq!(
        Placement::parse_site("transcoder_all").unwrap(),
        SaeFamily::Transcoder
    );
    assert!(Placement::parse_site("resid").is_err());
}

/// Greedy generation with `magnitude · W_dec[latent]` added at the write site gives the
/// recorded ids, through the intervention graph and through the engine.
#[test]
fn steering_matches_sae2_fixture() {
    let _guard = tch::no_grad_guard();
    let m = model();
    let f = fixture();
    for entry in f.saes() {
        let at = sae_at(entry, &m);
        let name = entry["name"].as_str().unwrap();
        let steer = &entry["steer"];
        let prompt = ids(&steer["input_ids"]);
        let want = ids(&steer["output_ids"]);
        let pairs = [(
            steer["latent"].as_i64().unwrap(),
            steer["magnitude"].as_f64().unwrap(),
        )];
        let config = GenerationConfig::greedy(want.len() - prompt.len());
        let generated = scope::steer(&m, &at, &prompt, &pairs, &config).unwrap();
        let mut got = prompt.clone();
        got.extend(&generated.new_tokens[0]);
        assert_eq!(got, want, "{name}: graph");
        assert_ne!(
            want,
            ids(&steer["unsteered_output_ids"]),
            "{name}: steering shows"
        );

        let request = SteerRequest {
            id: name.to_string(),
            prompt: prompt.clone(),
            steer: pairs.to_vec(),
            max_new_tokens: want.len() - prompt.len(),
            sampling: Sampling::Greedy,
            top_latents: Some(3),
        };
        let limits = scope_engine::Limits {
            max_rows: 2,
            context: 64,
        };
        let mut finished = Vec::new();
        let mut engine = scope_engine::Engine::new(&m, limits).unwrap();
        scope::steer_many(&mut engine, Some(&at), &[request], &mut |_, r| {
            finished.push(r.unwrap())
        })
        .unwrap();
        let mut got = prompt.clone();
        got.extend(&finished[0].tokens);
        assert_eq!(got, want, "{name}: engine");
        assert_eq!(finished[0].readouts[0].len(), want.len() - prompt.len());
    }
}

/// `scope::eval` over the fixture's prompts (one left-padded batch) gives the recorded pooled
/// metrics, transcoders measured against the post-feedforward norm's output.
#[test]
fn eval_matches_sae2_fixture() {
    let _guard = tch::no_grad_guard();
    let m = model();
    let f = fixture();
    let mut worst = 0f64;
    for entry in f.saes() {
        let at = sae_at(entry, &m);
        let name = entry["name"].as_str().unwrap();
        let prompts: Vec<Vec<i64>> = entry["per_prompt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| ids(&p["input_ids"]))
            .collect();
        let (rec, splice) = scope::eval(&m, &at, &prompts, 0.0).unwrap();
        let want = &entry["metrics_excluding_bos"];
        assert_eq!(rec.tokens as u64, want["tokens"].as_u64().unwrap());
        for (got, key) in [
            (rec.mse, "mse"),
            (rec.explained_variance, "explained_variance_tutorial"),
            (
                rec.explained_variance_per_token,
                "explained_variance_saelens",
            ),
            (
                rec.explained_variance_conventional,
                "explained_variance_conventional",
            ),
        ] {
            let w = want[key].as_f64().unwrap();
            let rel = (got - w).abs() / w.abs();
            worst = worst.max(rel);
            assert!(rel < 1e-4, "{name} {key}: {got} vs {w}");
        }
        assert!(
            splice.kl > 0.0 && splice.kl_with_error.abs() < 1e-4,
            "{name}: {splice:?}"
        );
    }
    println!("PARITY|scope eval Gemma Scope 2 (left-padded batch)|1e-4 rel|{worst:.2e}");
}

/// A transcoder's latents are read at the MLP input.
#[test]
fn transcoder_latents_read_the_mlp_input() {
    let _guard = tch::no_grad_guard();
    let m = model();
    let f = fixture();
    for name in [TRANSCODER, AFFINE] {
        let entry = f.entry(name);
        let at = sae_at(entry, &m);
        let prompt = ids(&entry["per_prompt"][0]["input_ids"]);
        let latents = scope::latents(&m, &at, &prompt).unwrap();
        let want = f.t(&format!("{name}.p0.acts"));
        let diff = (latents.activations() - want).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{name}: {diff}");
    }
}

/// The last position's logits of `ids` with `hooks`.
fn last_logits(m: &GemmaModel, ids: &[i64], hooks: &mut dyn intervene::Hooks) -> Tensor {
    let out = m
        .forward_hooked(&Batch::from_ids(ids), &ForwardOptions::default(), hooks)
        .unwrap();
    out.logits.unwrap().select(0, 0).select(0, -1)
}

/// Patching a transcoder latent: the base's own value swapped in with the error term changes
/// nothing; without it, it is the transcoder spliced in at that one position.
#[test]
fn transcoder_patch_writes_the_mlp_output() {
    let _guard = tch::no_grad_guard();
    let m = model();
    let f = fixture();
    for name in [TRANSCODER, AFFINE] {
        let entry = f.entry(name);
        let at = sae_at(entry, &m);
        let prompt = ids(&entry["per_prompt"][0]["input_ids"]);
        let pos = 4;
        let acts = f.t(&format!("{name}.p0.acts"));
        let latent = acts.get(pos).argmax(0, false).int64_value(&[]);
        let patch = |keep_error: bool, source: &[i64]| {
            scope::patch(
                &m,
                &at,
                &scope::Patch {
                    base: &prompt,
                    source,
                    base_pos: pos,
                    source_pos: pos,
                    latent,
                    keep_error,
                    top_k: 5,
                },
            )
            .unwrap()
        };
        let same = patch(true, &prompt);
        let want = acts.get(pos).get(latent).double_value(&[]);
        assert!((same.base_value - want).abs() < 1e-4, "{name}");
        assert!((same.source_value - want).abs() < 1e-4, "{name}");
        assert!(
            same.top.iter().all(|(_, d)| d.abs() < 1e-3),
            "{name}: {:?}",
            same.top
        );

        let spliced = patch(false, &prompt);
        let mut mask = vec![false; prompt.len()];
        mask[pos as usize] = true;
        let mask = Tensor::from_slice(&mask).unsqueeze(0);
        let clean = last_logits(&m, &prompt, &mut NoHooks);
        let mut hooks = sae::SpliceHooks::new(&at.sae, at.sites(), false, Some(&mask));
        let want = last_logits(&m, &prompt, &mut hooks) - &clean;
        for (token, d) in &spliced.top {
            let w = want.get(*token).double_value(&[]);
            assert!((d - w).abs() < 1e-4, "{name} token {token}: {d} vs {w}");
        }
        assert!(
            spliced.top[0].1.abs() > 1e-3,
            "{name}: the splice moves logits"
        );

        // Another source moves the logits and reports its own value.
        let other = ids(&entry["per_prompt"][1]["input_ids"]);
        let swapped = patch(false, &other);
        let source_acts = f.t(&format!("{name}.p1.acts"));
        let w = source_acts.get(pos).get(latent).double_value(&[]);
        assert!((swapped.source_value - w).abs() < 1e-4, "{name}");
    }
}

/// An attention SAE's decoder rows are the heads entering `o_proj`: the logit lens maps them
/// through `o_proj` first; other SAEs read their rows as they are.
#[test]
fn explain_maps_attention_rows_through_o_proj() {
    let _guard = tch::no_grad_guard();
    let m = model();
    let f = fixture();
    for entry in f.saes() {
        let at = sae_at(entry, &m);
        let name = entry["name"].as_str().unwrap();
        let latent = 5;
        let lens = scope::explain(&m, &at, latent, 4).unwrap();
        let row = at.sae.w_dec().get(latent);
        let dir = if entry["site"] == "attn_out" {
            let o_proj = &m.layers()[at.site.layer].self_attn.o_proj;
            o_proj.to_kind(Kind::Float).matmul(&row)
        } else {
            row
        };
        let scores = m.unembedding().to_kind(Kind::Float).matmul(&dir);
        let (values, indices) = scores.topk(4, 0, true, true);
        let want: Vec<i64> = Vec::try_from(&indices).unwrap();
        let got: Vec<i64> = lens.promoted.iter().map(|(t, _)| *t).collect();
        assert_eq!(got, want, "{name}");
        let top = values.double_value(&[0]);
        assert!((f64::from(lens.promoted[0].1) - top).abs() < 1e-4, "{name}");
    }
}
