//! Drives the `scope` binary: each command's JSON against the HF / pyvene fixtures, and every
//! kind of bad input to one clear line on stderr with the right exit code.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;
use common::{fixture, fixtures, scope, scope_json};
use tch::Tensor;

const F32_MODEL: &str = "models/tiny-f32";
const F32_SAE: &str = "saes/tiny-f32-res/layer_2/width_256/average_l0_20";
const BF16_SAE: &str = "saes/tiny-bf16-sharded-res/layer_3/width_192/average_l0_20";

fn read_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(rel)).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

fn read_tensor(rel: &str, name: &str) -> Tensor {
    Tensor::read_safetensors(fixtures().join(rel))
        .expect("fixture safetensors")
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("{rel} has no tensor {name}"))
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn parity(workflow: &str, tolerance: f64, worst: f64) {
    println!("PARITY|{workflow}|{tolerance:e}|{worst:.2e}");
    assert!(
        worst <= tolerance,
        "{workflow}: worst {worst} > {tolerance}"
    );
}

#[test]
fn generate_matches_hf_greedy() {
    let expected = read_json("expected/tiny-f32/generate.json");
    let model = fixture(F32_MODEL);
    let mut compared = 0;
    for case in expected["cases"].as_array().expect("cases") {
        let prompts = case["prompts"].as_array().expect("prompts");
        if prompts.len() != 1 {
            continue; // the padded batch is the model crate's test
        }
        let prompt = prompts[0].as_str().expect("prompt");
        let generate = |decode: &str| {
            scope_json(&[
                "generate",
                "--model",
                &model,
                "--prompt",
                prompt,
                "--max-new-tokens",
                "20",
                "--decode",
                decode,
            ])
        };
        let out = generate("auto");
        let want = ints(&case["output_ids"][0]);
        assert_eq!(
            ints(&out["output_ids"]),
            want,
            "greedy tokens for {prompt:?}"
        );
        assert_eq!(ints(&out["prompt_ids"]), ints(&case["input_ids"][0]));
        assert!(out["text"]
            .as_str()
            .expect("text")
            .starts_with(prompt.trim()));
        // `auto` on a CPU: the fused kernels where it has AVX2, else libtorch's calls; the
        // bit-identical path on request, with the same tokens.
        let auto = out["decode"].as_str().expect("decode");
        assert!(auto == "fused" || auto == "eager", "{auto}");
        let eager = generate("eager");
        assert_eq!(eager["decode"], "eager");
        assert_eq!(eager["output_ids"], out["output_ids"]);
        compared += 1;
    }
    assert!(compared >= 3, "too few single-prompt cases: {compared}");
    println!("PARITY|cli generate greedy tokens (tiny-f32, {compared} prompts)|exact|0");
}

#[test]
fn latents_match_the_sae_fixture() {
    let expected = read_json("expected/tiny-f32/sae.json");
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let mut worst = 0.0f64;
    for p in expected["per_prompt"].as_array().expect("per_prompt") {
        let prompt = p["prompt"].as_str().expect("prompt");
        for (threshold, key) in [("0", "l0_gt0"), ("1", "l0_gt1")] {
            let out = scope_json(&[
                "latents",
                "--model",
                &model,
                "--sae",
                &sae,
                "--prompt",
                prompt,
                "--threshold",
                threshold,
                "--top-k",
                "5",
            ]);
            assert_eq!(ints(&out["token_ids"]), ints(&p["input_ids"]));
            assert_eq!(ints(&out["l0"]), ints(&p[key]), "{key} for {prompt:?}");
            assert_eq!(
                ints(&out["max_latent"]),
                ints(&p["argmax"]),
                "argmax for {prompt:?}"
            );
            let top5: Vec<Vec<(i64, f64)>> =
                serde_json::from_value(p["top5"].clone()).expect("top5");
            for (t, want) in top5.iter().enumerate() {
                let got = out["top"][t].as_array().expect("top row");
                for (g, (latent, value)) in got.iter().zip(want) {
                    assert_eq!(g["latent"].as_i64(), Some(*latent), "token {t}");
                    let v = g["value"].as_f64().expect("value");
                    worst = worst.max((v - value).abs() / value.abs().max(1.0));
                }
            }
        }
    }
    parity("cli latents top-5 values (tiny-f32, rel.)", 1e-4, worst);
}

/// `--sae-dtype bf16` runs the SAE in bf16: the same tokens, per-token L0 close to the f32
/// SAE's (latents near the threshold may flip), the strongest latent of most tokens the same.
/// The strongest examples of some latents by brute force over the Python reference's
/// per-prompt latents: (text, position, value), best first, positions before `skip` left out.
fn reference_top(
    acts: &[Vec<Vec<f64>>],
    latent: usize,
    skip: usize,
    k: usize,
) -> Vec<(usize, usize, f64)> {
    let mut all: Vec<(usize, usize, f64)> = acts
        .iter()
        .enumerate()
        .flat_map(|(text, rows)| {
            rows.iter()
                .enumerate()
                .skip(skip)
                .map(move |(pos, row)| (text, pos, row[latent]))
        })
        .filter(|&(_, _, v)| v > 0.0)
        .collect();
    all.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    all.truncate(k);
    all
}

/// `scope top` over the fixture's prompts (batches of several texts, end-padded) finds the
/// strongest activations the Python reference (HF + the JumpReLU encoder, one prompt at a time)
/// has: the same values rank by rank, and each reported (text, position) holds that value in
/// the reference. From `--prompt`s without `<bos>`, and from a file with it.
#[test]
fn top_examples_match_the_sae_fixture() {
    let expected = read_json("expected/tiny-f32/sae.json");
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let prompts: Vec<String> = expected["per_prompt"]
        .as_array()
        .expect("per_prompt")
        .iter()
        .map(|p| p["prompt"].as_str().expect("prompt").to_string())
        .collect();
    let acts: Vec<Vec<Vec<f64>>> = (0..prompts.len())
        .map(|i| {
            let t = read_tensor("expected/tiny-f32/sae.safetensors", &format!("p{i}.acts"));
            Vec::<Vec<f64>>::try_from(t.to_kind(tch::Kind::Double)).expect("[T, d_sae]")
        })
        .collect();
    // The first prompt's strongest latents, and one that never fires after <bos>.
    let mut latents: Vec<i64> = Vec::new();
    for l in ints(&expected["per_prompt"][0]["argmax"])
        .into_iter()
        .skip(1)
    {
        if !latents.contains(&l) && latents.len() < 3 {
            latents.push(l);
        }
    }
    let silent = (0..256usize)
        .find(|&l| reference_top(&acts, l, 1, 1).is_empty())
        .map(|l| l as i64);
    latents.extend(silent);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("texts.txt");
    std::fs::write(
        &file,
        format!(
            "{}\n\n{}\n",
            prompts[..2].join("\n"),
            prompts[2..].join("\n")
        ),
    )
    .expect("texts file");
    let file = file.display().to_string();
    let latent_flags: Vec<String> = latents
        .iter()
        .flat_map(|l| ["--latent".to_string(), l.to_string()])
        .collect();
    let mut worst = 0.0f64;
    let k = 4;
    for (skip, source) in [(1usize, "prompts"), (0, "file")] {
        let mut args: Vec<String> = [
            "top", "--model", &model, "--sae", &sae, "--top-k", "4", "--batch", "3",
        ]
        .map(String::from)
        .to_vec();
        args.extend(latent_flags.iter().cloned());
        if source == "file" {
            args.extend([
                "--file".to_string(),
                file.clone(),
                "--include-bos".to_string(),
            ]);
        } else {
            args.extend(
                prompts
                    .iter()
                    .flat_map(|p| ["--prompt".to_string(), p.clone()]),
            );
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = scope_json(&refs);
        assert_eq!(out["texts"].as_u64(), Some(prompts.len() as u64));
        let tokens: usize = acts.iter().map(|a| a.len() - skip).sum();
        assert_eq!(out["tokens"].as_u64(), Some(tokens as u64), "{source}");
        for (i, &latent) in latents.iter().enumerate() {
            let got = &out["latents"][i];
            assert_eq!(got["latent"].as_i64(), Some(latent));
            let got = got["examples"].as_array().expect("examples");
            let want = reference_top(&acts, latent as usize, skip, k);
            assert_eq!(got.len(), want.len(), "{source}: latent {latent}");
            for (g, w) in got.iter().zip(&want) {
                let value = g["value"].as_f64().expect("value");
                let (text, pos) = (
                    g["text"].as_u64().expect("text") as usize,
                    g["position"].as_u64().expect("position") as usize,
                );
                let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
                worst = worst
                    .max(rel(value, w.2))
                    .max(rel(value, acts[text][pos][latent as usize]));
                assert!(pos >= skip, "{source}: <bos> reported for latent {latent}");
                let token = ints(&expected["per_prompt"][text]["input_ids"])[pos];
                assert_eq!(g["token_id"].as_i64(), Some(token));
                assert!(g["context"].as_str().expect("context").contains("[["));
            }
        }
    }
    assert!(
        silent.is_some(),
        "the fixture SAE has a latent that never fires"
    );
    parity(
        "cli top examples: values and places (tiny-f32, rel.)",
        1e-4,
        worst,
    );
}

#[test]
fn latents_with_a_bf16_sae_stay_close_to_f32() {
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let run = |dtype: &str| {
        scope_json(&[
            "latents",
            "--model",
            &model,
            "--sae",
            &sae,
            "--sae-dtype",
            dtype,
            "--prompt",
            "Would you be able to travel through time using a wormhole?",
            "--threshold",
            "1",
        ])
    };
    let (f32_out, bf16_out) = (run("f32"), run("bf16"));
    assert_eq!(ints(&f32_out["token_ids"]), ints(&bf16_out["token_ids"]));
    let (a, b) = (ints(&f32_out["l0"]), ints(&bf16_out["l0"]));
    let moved: i64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    let total: i64 = a.iter().sum();
    assert!(moved * 20 <= total, "L0 moved by {moved} of {total}");
    let (ma, mb) = (ints(&f32_out["max_latent"]), ints(&bf16_out["max_latent"]));
    let same = ma.iter().zip(&mb).filter(|(x, y)| x == y).count();
    assert!(
        same * 10 >= ma.len() * 8,
        "argmax agrees on {same} of {}",
        ma.len()
    );
    rejects(
        &[
            "latents",
            "--model",
            &model,
            "--sae",
            &sae,
            "--sae-dtype",
            "int8",
            "--prompt",
            "x",
        ],
        2,
        "--sae-dtype",
    );
}

#[test]
fn steer_matches_pyvene_tutorial_steering() {
    let spec = read_json("expected/tiny-f32/pyvene.json");
    let case = spec["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "steer_generate")
        .expect("steer_generate case");
    let prompt = case["prompts"][0].as_str().expect("prompt");
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    for which in ["a", "b"] {
        let sub = &case["call"]["subspaces"][which][0];
        let latent = sub["idx"].as_i64().expect("idx").to_string();
        let magnitude = sub["mag"].as_f64().expect("mag").to_string();
        let out = scope_json(&[
            "steer",
            "--model",
            &model,
            "--sae",
            &sae,
            "--latent",
            &latent,
            "--magnitude",
            &magnitude,
            "--prompt",
            prompt,
            "--max-new-tokens",
            "20",
        ]);
        let want = read_tensor(
            "expected/tiny-f32/pyvene.safetensors",
            &format!("steer_generate.{which}.output_ids"),
        );
        let want = Vec::<i64>::try_from(&want.flatten(0, -1)).expect("ids");
        assert_eq!(
            ints(&out["output_ids"]),
            want,
            "steered tokens, case {which}"
        );
    }
    println!("PARITY|cli steer greedy tokens vs pyvene (2 cases)|exact|0");
}

#[test]
fn patch_matches_pyvene_jumprelu_interchange() {
    let spec = read_json("expected/tiny-f32/pyvene.json");
    let case = spec["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == "jumprelu_interchange")
        .expect("jumprelu_interchange case");
    let call = &case["call"]["calls"][0];
    assert_eq!(call["case"], "a");
    let latent = ints(&call["subspaces"])[0].to_string();
    let pair = ints(&call["unit_locations"]["sources->base"]);
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let out = scope_json(&[
        "patch",
        "--model",
        &model,
        "--sae",
        &sae,
        "--base",
        case["prompts"]["base"].as_str().expect("base"),
        "--source",
        case["prompts"]["source"].as_str().expect("source"),
        "--source-pos",
        &pair[0].to_string(),
        "--base-pos",
        &pair[1].to_string(),
        "--latent",
        &latent,
        "--top-k",
        "10",
    ]);
    let diff = read_tensor(
        "expected/tiny-f32/pyvene.safetensors",
        "jumprelu_interchange.a.last_diff",
    );
    let diff = Vec::<f32>::try_from(&diff.flatten(0, -1)).expect("diff");
    let mut worst = 0.0f64;
    for row in out["top"].as_array().expect("top") {
        let id = row["token_id"].as_i64().expect("id") as usize;
        worst = worst.max((row["logit_diff"].as_f64().expect("diff") - f64::from(diff[id])).abs());
    }
    // The reported tokens are the largest differences of the reference too.
    let mut sorted: Vec<f32> = diff.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let reported = floats(
        &out["top"]
            .as_array()
            .expect("top")
            .iter()
            .map(|r| r["logit_diff"].clone())
            .collect(),
    );
    for (got, want) in reported.iter().zip(&sorted) {
        worst = worst.max((got - f64::from(*want)).abs());
    }
    parity("cli patch last-position logit diffs vs pyvene", 1e-4, worst);

    // The reported latent values: the base's before the swap and the source's, against the
    // fixture's SAE encodings of the same prompts (the base is p3, the source p0).
    let latent_at = |prompt: &str, pos: i64| -> f64 {
        let acts = read_tensor(
            "expected/tiny-f32/sae.safetensors",
            &format!("{prompt}.acts"),
        );
        acts.double_value(&[pos, latent.parse::<i64>().expect("latent")])
    };
    let got = |key: &str| out[key].as_f64().expect("value");
    let worst_value = (got("base_value") - latent_at("p3", pair[1]))
        .abs()
        .max((got("source_value") - latent_at("p0", pair[0])).abs());
    parity("cli patch latent values (base, source)", 1e-5, worst_value);
}

#[test]
fn explain_matches_the_logit_lens_fixture() {
    let expected = read_json("expected/tiny-f32/sae.json");
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let mut worst = 0.0f64;
    for entry in expected["logit_lens"]["latents"]
        .as_array()
        .expect("latents")
    {
        let latent = entry["latent"].as_i64().expect("latent").to_string();
        let out = scope_json(&[
            "explain", "--model", &model, "--sae", &sae, &latent, "--top-k", "10",
        ]);
        for (key, want_key) in [
            ("promoted", "top10_promoted"),
            ("suppressed", "top10_suppressed"),
        ] {
            let got = out[key].as_array().expect("list");
            let want = entry[want_key].as_array().expect("list");
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(
                    g["token_id"].as_i64(),
                    w[0].as_i64(),
                    "latent {latent} {key}"
                );
                worst = worst
                    .max((g["score"].as_f64().expect("score") - w[1].as_f64().expect("w")).abs());
            }
        }
    }
    parity("cli explain logit-lens scores", 1e-4, worst);
}

/// Run a bad invocation: the exit code, one line on stderr naming `needle`, no panic.
fn rejects(args: &[&str], code: i32, needle: &str) {
    let out = scope(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "scope {args:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "scope {args:?}: stderr does not mention {needle:?}: {stderr}"
    );
    if code == 1 {
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

fn copy_model_without(tmp: &Path, skip: &str) -> String {
    let dir = tmp.join(format!("model-without-{skip}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    for entry in std::fs::read_dir(fixtures().join(F32_MODEL)).expect("model dir") {
        let entry = entry.expect("entry");
        if entry.file_name() != skip {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
        }
    }
    dir.display().to_string()
}

#[test]
fn bad_input_gets_one_clear_line_and_a_nonzero_exit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = fixture(F32_MODEL);
    let sae = fixture(F32_SAE);
    let prompt = "Would you be able to travel?";

    rejects(&["generate", "--prompt", prompt], 2, "--model");
    rejects(
        &["generate", "--model", "/no/such/model", "--prompt", prompt],
        1,
        "/no/such/model",
    );
    // The fused CPU kernels are float32 and bfloat16 only: asked for on an f16 model, the
    // reason.
    rejects(
        &[
            "generate", "--model", &model, "--prompt", prompt, "--device", "cpu", "--dtype", "f16",
            "--decode", "fused",
        ],
        1,
        "float32 and bfloat16",
    );
    let no_weights = copy_model_without(tmp.path(), "model.safetensors");
    rejects(
        &["generate", "--model", &no_weights, "--prompt", prompt],
        1,
        "model.safetensors",
    );

    let truncated = copy_model_without(tmp.path(), "none");
    let weights = Path::new(&truncated).join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("weights");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    rejects(
        &[
            "generate", "--model", &truncated, "--prompt", prompt, "--device", "cpu",
        ],
        1,
        "model.safetensors",
    );

    let bad_npz = tmp.path().join("params.npz");
    let npz = std::fs::read(Path::new(&sae).join("params.npz")).expect("npz");
    std::fs::write(&bad_npz, &npz[..npz.len() / 3]).expect("truncate npz");
    let bad_npz = bad_npz.display().to_string();
    rejects(
        &[
            "latents", "--model", &model, "--sae", &bad_npz, "--layer", "2", "--prompt", prompt,
            "--device", "cpu",
        ],
        1,
        "params.npz",
    );
    let wide = fixture(BF16_SAE);
    rejects(
        &[
            "latents", "--model", &model, "--sae", &wide, "--prompt", prompt, "--device", "cpu",
        ],
        1,
        "120",
    );
    rejects(
        &[
            "latents", "--model", &model, "--sae", &sae, "--layer", "99", "--prompt", prompt,
            "--device", "cpu",
        ],
        1,
        "layer 99",
    );
    rejects(
        &[
            "steer",
            "--model",
            &model,
            "--sae",
            &sae,
            "--latent",
            "9999",
            "--magnitude",
            "2",
            "--prompt",
            prompt,
            "--device",
            "cpu",
        ],
        1,
        "latent 9999",
    );
    let top = ["top", "--model", &model, "--sae", &sae, "--device", "cpu"];
    let with = |extra: &[&str]| -> Vec<String> {
        top.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    for (extra, needle) in [
        (&["--latent", "3"][..], "no texts"),
        (&["--latent", "300", "--prompt", prompt][..], "latent 300"),
        (
            &["--latent", "3", "--prompt", prompt, "--batch", "0"][..],
            "--batch",
        ),
        (
            &["--latent", "3", "--file", "/no/such/texts.txt"][..],
            "/no/such/texts.txt",
        ),
    ] {
        let args = with(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        rejects(&refs, 1, needle);
    }
    rejects(
        &[
            "patch",
            "--model",
            &model,
            "--sae",
            &sae,
            "--base",
            prompt,
            "--source",
            prompt,
            "--source-pos",
            "1",
            "--base-pos",
            "99",
            "--latent",
            "3",
            "--device",
            "cpu",
        ],
        1,
        "--base-pos 99",
    );
    rejects(
        &[
            "generate", "--model", &model, "--prompt", "  ", "--device", "cpu",
        ],
        1,
        "empty",
    );
    let long = "time travel ".repeat(200);
    rejects(
        &[
            "generate", "--model", &model, "--prompt", &long, "--device", "cpu",
        ],
        1,
        "context",
    );
    rejects(
        &[
            "generate", "--model", &model, "--prompt", prompt, "--device", "cuda",
        ],
        1,
        "cuda",
    );
    rejects(
        &[
            "generate", "--model", &model, "--prompt", prompt, "--dtype", "f8",
        ],
        2,
        "f8",
    );
    rejects(
        &[
            "generate", "--model", &model, "--prompt", prompt, "--device", "gpu",
        ],
        2,
        "gpu",
    );
    let empty_cache = tmp.path().join("hf-cache").display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_scope"))
        .args([
            "generate",
            "--model",
            "google/gemma-2-2b",
            "--prompt",
            prompt,
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &empty_cache)
        .output()
        .expect("scope runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("google/gemma-2-2b") && stderr.contains("offline"),
        "{stderr}"
    );
}

/// A Hugging Face cache holding the fixture model as `google/gemma-2-tiny` and the fixture SAE
/// as `google/gemma-scope-tiny-res/layer_2/width_256/average_l0_20`, like `scope download`
/// leaves it.
/// A local stand-in for the Hub holding the fixture model as `google/gemma-2-tiny` and the
/// fixture SAE under `google/gemma-scope-tiny-res`.
fn mock_hub() -> scope_hub::mock::MockHub {
    let hub = scope_hub::mock::MockHub::start().expect("mock hub");
    for (repo, from, under) in [
        ("google/gemma-2-tiny", F32_MODEL, ""),
        (
            "google/gemma-scope-tiny-res",
            F32_SAE,
            "layer_2/width_256/average_l0_20/",
        ),
    ] {
        for entry in std::fs::read_dir(fixtures().join(from)).expect("fixture dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            hub.add(
                repo,
                &format!("{under}{name}"),
                std::fs::read(&path).expect("read"),
            );
        }
    }
    hub
}

#[test]
fn download_then_run_offline_from_the_cache() {
    let hub = mock_hub();
    let cache = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str], online: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_scope"));
        command.args(args).env("HF_HUB_CACHE", cache.path());
        if online {
            command
                .env("HF_ENDPOINT", hub.endpoint())
                .env("HF_TOKEN", "hf_gated")
                .env_remove("HF_HUB_OFFLINE");
        } else {
            command.env("HF_HUB_OFFLINE", "1");
        }
        let out = command.output().expect("scope runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).expect("json")
    };
    let sae = "google/gemma-scope-tiny-res/layer_2/width_256/average_l0_20";
    let got = run(
        &[
            "download",
            "--model",
            "google/gemma-2-tiny",
            "--sae",
            sae,
            "--json",
        ],
        true,
    );
    let paths: Vec<&str> = got["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|p| p.as_str().expect("path"))
        .collect();
    assert_eq!(paths.len(), 2);
    assert!(paths[0].contains("models--google--gemma-2-tiny/snapshots/"));
    assert!(
        paths[1].ends_with("average_l0_20/params.npz"),
        "{}",
        paths[1]
    );
    let tokens = hub.authorizations();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t == "Bearer hf_gated"),
        "HF_TOKEN goes with every request: {tokens:?}"
    );

    // Offline, the hub names work wherever a path does, and give the same numbers.
    let asked = hub.requests();
    let prompt = "Would you be able to travel through time using a wormhole?";
    let by_hub = run(
        &[
            "latents",
            "--model",
            "google/gemma-2-tiny",
            "--sae",
            sae,
            "--prompt",
            prompt,
            "--json",
            "--device",
            "cpu",
        ],
        false,
    );
    assert_eq!(hub.requests(), asked);
    let by_path = scope_json(&[
        "latents",
        "--model",
        &fixture(F32_MODEL),
        "--sae",
        &fixture(F32_SAE),
        "--prompt",
        prompt,
    ]);
    assert_eq!(by_hub["l0"], by_path["l0"]);
    assert_eq!(by_hub["max_latent"], by_path["max_latent"]);
}

#[test]
fn eval_matches_the_sae_metrics_fixture() {
    let expected = read_json("expected/tiny-f32/sae.json");
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let prompts: Vec<&str> = expected["per_prompt"]
        .as_array()
        .expect("per_prompt")
        .iter()
        .map(|p| p["prompt"].as_str().expect("prompt"))
        .collect();
    let rel = |got: &Value, want: &Value| {
        let (g, w) = (got.as_f64().expect("got"), want.as_f64().expect("want"));
        (g - w).abs() / w.abs().max(1e-3)
    };
    let mut worst = 0.0f64;

    // All prompts as one left-padded batch: the pooled reconstruction metrics and the KL.
    let mut args = vec!["eval", "--model", &model, "--sae", &sae];
    for p in &prompts {
        args.extend(["--prompt", p]);
    }
    let pooled = scope_json(&args);
    let m = &expected["metrics_excluding_bos"];
    assert_eq!(pooled["tokens"], m["tokens"]);
    for (key, want) in [
        ("mse", &m["mse"]),
        ("explained_variance", &m["explained_variance_tutorial"]),
        (
            "explained_variance_per_token",
            &m["explained_variance_saelens"],
        ),
        ("mean_l0", &expected["average_l0_gt0_excluding_bos"]),
        ("kl", &expected["splice"]["kl_mean_all_positions_pooled"]),
    ] {
        worst = worst.max(rel(&pooled[key], want));
    }

    // One prompt at a time: the cross-entropies.
    for case in expected["splice"]["per_prompt"].as_array().expect("splice") {
        let i = case["prompt"].as_u64().expect("index") as usize;
        let one = scope_json(&[
            "eval", "--model", &model, "--sae", &sae, "--prompt", prompts[i],
        ]);
        worst = worst.max(rel(&one["ce_clean"], &case["ce_clean"]));
        worst = worst.max(rel(&one["ce_spliced"], &case["ce_spliced"]));
        worst = worst.max(rel(&one["kl"], &case["kl_clean_spliced_mean"]));
        assert!(one["delta_ce_with_error"].as_f64().expect("d").abs() < 1e-4);
    }
    parity(
        "cli eval: MSE, explained variance, L0, CE, KL (rel.)",
        1e-4,
        worst,
    );
}

/// The JSON lines of a `--requests` run, by id, and its exit code and stderr.
fn run_requests(
    args: &[&str],
    lines: &[Value],
) -> (
    std::collections::HashMap<String, Value>,
    Option<i32>,
    String,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("requests.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n") + "\n\nnot json\n").expect("write requests");
    let mut all: Vec<&str> = args.to_vec();
    let path = file.display().to_string();
    all.extend(["--requests", &path, "--device", "cpu", "--max-batch", "2"]);
    let out = scope(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut by_id = std::collections::HashMap::new();
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line).expect("one JSON object a line");
        let id = value["id"].as_str().unwrap_or("<none>").to_string();
        by_id.insert(id, value);
    }
    (
        by_id,
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Greedy steered requests through `--requests`, several at once in 2 slots, give pyvene's
/// single-request steered tokens exactly, on both fixtures and in the decode modes that batch
/// them (`auto` is the fused kernels for both; bf16 also on libtorch's fixed-shape steps,
/// `--decode fixed`). A bad line gets its own error line, the others still
/// run, and the command then exits 1.
#[test]
fn requests_give_pyvenes_steered_tokens_on_every_fixture() {
    let bf16 = "models/tiny-bf16-sharded";
    let bf16_expected = "expected/tiny-bf16-sharded";
    for (model, sae, expected, dtype, decode, ran) in [
        (
            F32_MODEL,
            F32_SAE,
            "expected/tiny-f32",
            "f32",
            "auto",
            "fused",
        ),
        (bf16, BF16_SAE, bf16_expected, "bf16", "auto", "fused"),
        (bf16, BF16_SAE, bf16_expected, "bf16", "fixed", "fixed"),
    ] {
        let spec = read_json(&format!("{expected}/pyvene.json"));
        let case = spec["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|c| c["name"] == "steer_generate")
            .expect("steer_generate case");
        let prompt = case["prompts"][0].as_str().expect("prompt");
        let mut lines = vec![serde_json::json!({"id": "unsteered", "prompt": prompt})];
        for which in ["a", "b"] {
            let sub = &case["call"]["subspaces"][which][0];
            lines.push(serde_json::json!({
                "id": which,
                "prompt": prompt,
                "steer": [{"latent": sub["idx"], "magnitude": sub["mag"]}],
            }));
        }
        lines.push(serde_json::json!({"id": "far", "prompt": prompt, "steer": [{"latent": 100000, "magnitude": 1.0}]}));
        let (model, sae) = (fixture(model), fixture(sae));
        let (out, code, stderr) = run_requests(
            &[
                "steer",
                "--model",
                &model,
                "--sae",
                &sae,
                "--max-new-tokens",
                "20",
                "--dtype",
                dtype,
                "--decode",
                decode,
            ],
            &lines,
        );
        for which in ["unsteered", "a", "b"] {
            let want = read_tensor(
                &format!("{expected}/pyvene.safetensors"),
                &format!("steer_generate.{which}.output_ids"),
            );
            let want = Vec::<i64>::try_from(&want.flatten(0, -1)).expect("ids");
            let what = format!("{expected} --decode {decode}: {which}");
            assert_eq!(ints(&out[which]["output_ids"]), want, "{what}");
            assert_eq!(out[which]["decode"], ran, "{what}");
        }
        assert!(out["far"]["error"]
            .as_str()
            .expect("error")
            .contains("latent 100000"));
        assert_eq!(
            out["<none>"]["line"].as_i64(),
            Some(6),
            "the line that is not JSON"
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("2 of 5 requests"), "{stderr}");
    }
    println!("PARITY|cli steer --requests greedy tokens vs pyvene (3 cases x 2 fixtures, 2 slots; bf16 also on libtorch's fixed steps)|exact|0");
}

/// `top_latents` reads the SAE where each new token is predicted: the first token's reading
/// is the prompt's last position, which `scope latents` reports too (the engine's fused
/// kernels against libtorch's: the same latents, values within the f32 kernel tolerance).
#[test]
fn requests_read_the_top_latents_of_each_new_token() {
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let prompt = "Would you be able to travel through time using a wormhole?";
    let lines =
        [serde_json::json!({"id": "r", "prompt": prompt, "top_latents": 3, "max_new_tokens": 5})];
    let (out, code, stderr) = run_requests(&["steer", "--model", &model, "--sae", &sae], &lines);
    assert_eq!(code, Some(1), "the extra line that is not JSON: {stderr}");
    let readings = out["r"]["latents"].as_array().expect("latents per token");
    assert_eq!(readings.len(), 5);
    let latents = scope_json(&[
        "latents", "--model", &model, "--sae", &sae, "--prompt", prompt, "--top-k", "3",
    ]);
    let last = latents["top"]
        .as_array()
        .expect("top")
        .last()
        .expect("last token")
        .clone();
    let first = readings[0].as_array().expect("reading");
    assert_eq!(first.len(), 3);
    let mut worst = 0f64;
    for (got, want) in first.iter().zip(last.as_array().expect("list")) {
        assert_eq!(got["latent"], want["latent"]);
        worst = worst
            .max((got["value"].as_f64().expect("v") - want["value"].as_f64().expect("v")).abs());
    }
    parity(
        "cli --requests top_latents vs scope latents at the prompt's last position",
        1e-3,
        worst,
    );
}

/// `scope generate --requests`: each request's tokens are `scope generate`'s for its prompt
/// and settings (greedy, and sampled with its own seed), and a line that steers without an
/// SAE gets an error that says so.
#[test]
fn generate_requests_match_single_generations() {
    let model = fixture(F32_MODEL);
    let prompt = "Would you be able to travel through time using a wormhole?";
    let lines = [
        serde_json::json!({"id": "greedy", "prompt": prompt, "max_new_tokens": 8}),
        serde_json::json!({"id": "sampled", "prompt": "Space is big.", "sample": true, "temperature": 0.8, "seed": 7, "max_new_tokens": 8}),
        serde_json::json!({"id": "steer", "prompt": prompt, "steer": [{"latent": 3, "magnitude": 1.0}]}),
    ];
    let (out, code, stderr) = run_requests(&["generate", "--model", &model], &lines);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        out["steer"]["error"]
            .as_str()
            .expect("error")
            .contains("needs an SAE"),
        "{:?}",
        out["steer"]
    );
    let single = |args: &[&str]| {
        let mut all = vec!["generate", "--model", &model, "--max-new-tokens", "8"];
        all.extend(args);
        scope_json(&all)
    };
    let greedy = single(&["--prompt", prompt]);
    assert_eq!(
        ints(&out["greedy"]["output_ids"]),
        ints(&greedy["output_ids"])
    );
    let sampled = single(&[
        "--prompt",
        "Space is big.",
        "--sample",
        "--temperature",
        "0.8",
        "--seed",
        "7",
    ]);
    assert_eq!(
        ints(&out["sampled"]["output_ids"]),
        ints(&sampled["output_ids"])
    );
}
