//! The `scope` binary with Gemma Scope 2 SAEs and transcoders on the tiny Gemma 3 model
//! (`fixtures/saes/gemma-scope-2-tiny`, expected outputs in `fixtures/expected/tiny-gemma3/
//! sae2.json`): eval and steer against the fixture, `--site` and `--layer`, and a SAELens
//! release id downloaded from a local stand-in for the Hub.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

use std::process::Command;

use serde_json::Value;

mod common;
use common::{fixture, fixtures, scope, scope_json};

const MODEL: &str = "models/tiny-gemma3";
const AFFINE: &str = "saes/gemma-scope-2-tiny/transcoder/layer_2_width_128_l0_small_affine";

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected/tiny-gemma3/sae2.json"))
        .expect("sae2.json");
    serde_json::from_str(&text).expect("valid json")
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

/// The SAE's folder, from the fixture's `path` of its `params.safetensors`.
fn folder(entry: &Value) -> String {
    let path = fixtures().join(entry["path"].as_str().expect("path"));
    path.parent().expect("folder").display().to_string()
}

#[test]
fn eval_and_steer_match_the_sae2_fixture() {
    let expected = expected();
    let model = fixture(MODEL);
    let mut worst = 0f64;
    for entry in expected["saes"].as_array().expect("saes") {
        let name = entry["name"].as_str().expect("name");
        let sae = folder(entry);
        let mut args = vec!["eval", "--model", &model, "--sae", &sae];
        let prompts: Vec<&str> = entry["per_prompt"]
            .as_array()
            .expect("per_prompt")
            .iter()
            .map(|p| p["prompt"].as_str().expect("prompt"))
            .collect();
        for p in &prompts {
            args.extend(["--prompt", p]);
        }
        let got = scope_json(&args);
        let want = &entry["metrics_excluding_bos"];
        assert_eq!(got["tokens"], want["tokens"], "{name}");
        for (key, want) in [
            ("mse", &want["mse"]),
            ("explained_variance", &want["explained_variance_tutorial"]),
            (
                "explained_variance_per_token",
                &want["explained_variance_saelens"],
            ),
            (
                "explained_variance_conventional",
                &want["explained_variance_conventional"],
            ),
        ] {
            let (g, w) = (got[key].as_f64().expect(key), want.as_f64().expect(key));
            worst = worst.max((g - w).abs() / w.abs());
        }

        let steer = &entry["steer"];
        let (latent, magnitude) = (steer["latent"].to_string(), steer["magnitude"].to_string());
        let want_ids = ints(&steer["output_ids"]);
        let new_tokens = (want_ids.len() - ints(&steer["input_ids"]).len()).to_string();
        let got = scope_json(&[
            "steer",
            "--model",
            &model,
            "--sae",
            &sae,
            "--latent",
            &latent,
            "--magnitude",
            &magnitude,
            "--max-new-tokens",
            &new_tokens,
            "--prompt",
            steer["prompt"].as_str().expect("prompt"),
        ]);
        assert_eq!(ints(&got["output_ids"]), want_ids, "{name}: steered ids");
    }
    println!("PARITY|cli eval Gemma Scope 2 (4 metrics, 5 SAEs)|1e-4|{worst:.2e}");
    assert!(worst <= 1e-4, "worst rel {worst}");
}

#[test]
fn site_and_layer_flags_place_the_sae() {
    let model = fixture(MODEL);
    let sae = fixture(AFFINE);
    let prompt = "Would you be able to travel through time using a wormhole?";
    let latents = |extra: &[&str]| {
        let mut args = vec![
            "latents", "--model", &model, "--sae", &sae, "--prompt", prompt,
        ];
        args.extend(extra);
        scope_json(&args)
    };
    let at_name = latents(&[]);
    assert_eq!(at_name["site"], "mlp_input");
    assert_eq!(at_name["transcoder"], true);
    assert_eq!(at_name["layer"], 2);
    // The fixture's argmax at prompt 0 is read at the MLP input.
    let entry = expected()["saes"]
        .as_array()
        .expect("saes")
        .iter()
        .find(|e| e["name"] == "transcoder/layer_2_width_128_l0_small_affine")
        .cloned()
        .expect("affine entry");
    assert_eq!(
        ints(&at_name["max_latent"]),
        ints(&entry["per_prompt"][0]["argmax"])
    );
    let moved = latents(&["--layer", "4", "--site", "transcoder"]);
    assert_eq!(
        (moved["layer"].as_i64(), moved["site"].as_str()),
        (Some(4), Some("mlp_input"))
    );
    assert_ne!(moved["max_latent"], at_name["max_latent"]);

    // An affine transcoder cannot be an SAE at one site; an unknown site is a usage error.
    let out = scope(&[
        "latents",
        "--model",
        &model,
        "--sae",
        &sae,
        "--prompt",
        prompt,
        "--site",
        "resid_post",
        "--device",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("affine_skip_connection"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = scope(&[
        "latents", "--model", &model, "--sae", &sae, "--prompt", prompt, "--site", "resid",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// `scope download` of a SAELens release id through a stand-in Hub, then the same name offline
/// from the cache (at another layer with `--layer`: the tiny model has 6 layers, the release
/// layers 7, 13, 17 and 22).
#[test]
fn release_id_downloads_and_runs_offline() {
    let hub = scope_hub::mock::MockHub::start().expect("mock hub");
    let folder_in_repo = "transcoder/layer_7_width_16k_l0_small_affine";
    // Only the weights: the fixture's config.json names layer 2, which this folder name does
    // not (the Hub answers 404 for config.json, which is fine).
    hub.add(
        "google/gemma-scope-2-1b-pt",
        &format!("{folder_in_repo}/params.safetensors"),
        std::fs::read(fixtures().join(AFFINE).join("params.safetensors")).expect("fixture"),
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let release = "gemma-scope-2-1b-pt-transcoders/transcoder/layer_7_width_16k_l0_small_affine";
    let run = |args: &[&str], online: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_scope"));
        command.args(args).env("HF_HUB_CACHE", cache.path());
        if online {
            command
                .env("HF_ENDPOINT", hub.endpoint())
                .env_remove("HF_HUB_OFFLINE");
        } else {
            command.env("HF_HUB_OFFLINE", "1");
        }
        command.output().expect("scope runs")
    };
    let out = run(&["download", "--sae", release, "--json"], true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Value = serde_json::from_slice(&out.stdout).expect("json");
    let path = paths["paths"][0].as_str().expect("path");
    assert!(
        path.ends_with(&format!("{folder_in_repo}/params.safetensors")),
        "{path}"
    );

    let model = fixture(MODEL);
    let prompt = "Would you be able to travel through time using a wormhole?";
    let args = [
        "latents", "--model", &model, "--prompt", prompt, "--json", "--device", "cpu", "--sae",
    ];
    let mut by_release = args.to_vec();
    by_release.extend([release, "--layer", "2"]);
    let out = run(&by_release, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_release: Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut by_path = args.to_vec();
    let local = fixture(AFFINE);
    by_path.push(&local);
    let out = run(&by_path, false);
    let by_path: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(by_release["max_latent"], by_path["max_latent"]);
    assert_eq!(by_release["l0"], by_path["l0"]);
}
