//! `cargo xtask demo`: the main workflows on the small model shipped in `fixtures/`, through the
//! `scope` binary, printing what a researcher would see.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, project_root, run_checked, setup, Failure, Result};

/// The tutorial's prompt; the fixture tokenizer was trained on text containing its words.
const PROMPT: &str = "Would you be able to travel through time using a wormhole?";
const BASE: &str = "Physics says time-travel through a wormhole needs enormous energy.";
const THIRD: &str = "Dogs are loyal friends, and my dog loves to travel.";

/// One demo step: a title and the `scope` arguments.
struct Step {
    title: &'static str,
    args: Vec<String>,
}

pub fn run() -> Result {
    setup::ensure()?;
    let root = project_root();
    // Relative paths: the steps run from the root and print as a user would type them.
    let model = PathBuf::from("fixtures/models/tiny-f32");
    let sae_dir = find_sae(&root.join("fixtures/saes/tiny-f32-res/layer_2"))?;
    let sae = sae_dir
        .strip_prefix(&root)
        .unwrap_or(&sae_dir)
        .to_path_buf();
    // The build `cargo xtask test` runs (the test profile, every test target): the demo's
    // binary comes from it, and the tests that follow find everything built.
    println!("demo: building (the same build as `cargo xtask test`, which then reuses it) ...");
    run_checked(
        cargo().args(["test", "--workspace", "--no-run", "--quiet"]),
        "cargo test --workspace --no-run",
    )?;
    let scope = root.join("target/debug/scope");
    write_requests(&root)?;
    let mut not_built = Vec::new();
    run_steps(&scope, &root, steps(&model, &sae), &mut not_built)?;
    serve_step(&scope, &root, &model, &sae)?;
    run_steps(&scope, &root, gemma3_steps(), &mut not_built)?;
    // A sweep refuses to overwrite an earlier one: start the demo's afresh.
    let _ = std::fs::remove_dir_all(root.join(SWEEP_OUT));
    run_steps(&scope, &root, sweep_steps(&model, &sae), &mut not_built)?;
    if not_built.is_empty() {
        println!("\ndemo: every workflow ran.");
    } else {
        println!("\ndemo: not built yet: {}", not_built.join(", "));
    }
    Ok(())
}

/// Step 9: `scope serve`, one streamed steered request over HTTP, and SIGTERM.
fn serve_step(scope: &Path, root: &Path, model: &Path, sae: &Path) -> Result {
    let (model, sae) = (model.display().to_string(), sae.display().to_string());
    println!("\n=== 9. the same over HTTP: scope serve, a streamed steered request, SIGTERM ===");
    println!("$ scope serve --model {model} --sae {sae} --port 0 &");
    let mut server =
        crate::load::ServerProcess::start(scope, root, &["--model", &model, "--sae", &sae])?;
    println!("listening on http://{}", server.addr);
    let body = format!(
        r#"{{"prompt":"{PROMPT}","steer":[{{"latent":51,"magnitude":8}}],"max_new_tokens":4,"stream":true,"latents_top_k":2}}"#
    );
    println!("$ curl -s {}/v1/steer -d '{body}'", server.addr);
    let reply = crate::load::http(&server.addr, "POST", "/v1/steer", Some(&body))
        .map_err(|e| Failure::new(format!("demo: POST /v1/steer: {e}")))?;
    print!("{}", reply.body);
    println!("(open http://{}/ in a browser for the page)", server.addr);
    let code = server.terminate(30)?;
    if reply.status != 200 || code != Some(0) {
        return Err(Failure::new(format!(
            "demo step `scope serve` failed: status {}, exit {code:?}",
            reply.status
        )));
    }
    println!("$ kill -TERM %1   # finishes what is in flight, then exits 0");
    Ok(())
}

/// Runs each step's `scope` command from the repository root, printing it as a user types
/// it; a command this build lacks goes to `not_built`, any other failure ends the demo.
fn run_steps(scope: &Path, root: &Path, steps: Vec<Step>, not_built: &mut Vec<String>) -> Result {
    for step in steps {
        println!("\n=== {} ===", step.title);
        println!("$ scope {}", shell_words(&step.args));
        let out = Command::new(scope)
            .args(&step.args)
            .current_dir(root)
            .output()
            .map_err(|e| Failure::new(format!("could not run {}: {e}", scope.display())))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            continue;
        }
        if stderr.contains("unrecognized subcommand") || stderr.contains("not built yet") {
            println!(
                "(not built yet: `scope {}` does not exist in this build)",
                step.args[0]
            );
            not_built.push(step.args[0].clone());
        } else {
            eprint!("{stderr}");
            return Err(Failure::new(format!("demo step `{}` failed", step.title)));
        }
    }
    Ok(())
}

/// Steps 10-11: Gemma 3 with a Gemma Scope 2 transcoder (the fixtures' tiny model).
fn gemma3_steps() -> Vec<Step> {
    let words = |line: &str| -> Vec<String> {
        let mut args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        args.extend(["--prompt".to_string(), PROMPT.to_string()]);
        args
    };
    let transcoder =
        "fixtures/saes/gemma-scope-2-tiny/transcoder/layer_2_width_128_l0_small_affine";
    vec![
        Step {
            title: "10. Gemma 3: a Gemma Scope 2 transcoder's latents, read at the MLP input",
            args: words(&format!(
                "latents --model fixtures/models/tiny-gemma3 --sae {transcoder} --top-k 3"
            )),
        },
        Step {
            title:
                "11. Gemma 3: steering by the transcoder's decoder row 25, added at the MLP output",
            args: words(&format!(
                "steer --model fixtures/models/tiny-gemma3 --sae {transcoder} --latent 25 \
                 --magnitude 4 --max-new-tokens 12"
            )),
        },
    ]
}

/// Where steps 12-13 write the sweep and its dashboard.
const SWEEP_OUT: &str = "target/demo-sweep";

/// Steps 12-13: statistics of two SAEs over the fixture corpus, then its dashboard.
fn sweep_steps(model: &Path, sae: &Path) -> Vec<Step> {
    let (model, sae) = (model.display().to_string(), sae.display().to_string());
    let layer_1 = "fixtures/saes/tiny-f32-res/layer_1/width_128/average_l0_13";
    let words = |line: String| line.split_whitespace().map(str::to_string).collect();
    vec![
        Step {
            title: "12. a sweep: two SAEs over a corpus (txt, jsonl, parquet) in one forward pass",
            args: words(format!(
                "sweep --model {model} --sae {sae} --sae {layer_1} --file fixtures/corpus \
                 --out {SWEEP_OUT} --max-len 24 --top-k 4 --downstream"
            )),
        },
        Step {
            title: "13. its dashboard: static pages to open in a browser",
            args: words(format!(
                "dashboard {SWEEP_OUT}/tiny-f32-res_layer_2_width_256_average_l0_20 \
                 --model {model} --sae {sae} --out {SWEEP_OUT}/html"
            )),
        },
    ]
}

fn steps(model: &Path, sae: &Path) -> Vec<Step> {
    let model = model.display().to_string();
    let sae = sae.display().to_string();
    // `words` are flags without spaces; `texts` are (flag, text) pairs such as prompts.
    let step = |title: &'static str, words: &str, texts: &[(&str, &str)]| {
        let mut args: Vec<String> = words
            .split_whitespace()
            .map(|w| match w {
                "MODEL" => model.clone(),
                "SAE" => sae.clone(),
                other => other.to_string(),
            })
            .collect();
        for (flag, text) in texts {
            args.push(flag.to_string());
            args.push(text.to_string());
        }
        Step { title, args }
    };
    vec![
        step(
            "1. greedy generation",
            "generate --model MODEL --max-new-tokens 20",
            &[("--prompt", PROMPT)],
        ),
        step(
            "1b. sampled generation (temperature 0.8, top-p 0.9, seed 7)",
            "generate --model MODEL --max-new-tokens 20 --sample --temperature 0.8 --top-p 0.9 --seed 7",
            &[("--prompt", PROMPT)],
        ),
        step(
            "2. SAE latents per token on the residual after the SAE's layer (L0 counts > 1)",
            "latents --model MODEL --sae SAE --threshold 1 --top-k 3",
            &[("--prompt", PROMPT)],
        ),
        step(
            "3. steered generation: 8 * W_dec[51] added at every position and every new token",
            "steer --model MODEL --sae SAE --latent 51 --magnitude 8 --max-new-tokens 20",
            &[("--prompt", PROMPT)],
        ),
        step(
            "4. latent interchange: latent 183 of ' time' (source position 9) into the base's last token",
            "patch --model MODEL --sae SAE --source-pos 9 --base-pos -1 --latent 183 --top-k 5",
            &[("--base", BASE), ("--source", PROMPT)],
        ),
        step(
            "5. what latent 183 writes to the logits (logit lens)",
            "explain --model MODEL --sae SAE 183 --top-k 5",
            &[],
        ),
        step(
            "6. how well the SAE reconstructs the model on two texts",
            "eval --model MODEL --sae SAE",
            &[("--prompt", PROMPT), ("--prompt", BASE)],
        ),
        step(
            "7. where latents 183 and 51 fire most over three texts (a dashboard's examples)",
            "top --model MODEL --sae SAE --latent 183 --latent 51 --top-k 3 --context 5",
            &[
                ("--prompt", PROMPT),
                ("--prompt", BASE),
                ("--prompt", THIRD),
            ],
        ),
        step(
            "8. many steered requests at once (a sweep of latent 51, one JSON line each as it finishes)",
            "steer --model MODEL --sae SAE --requests target/demo-requests.jsonl --max-new-tokens 12 --max-batch 4",
            &[],
        ),
    ]
}

/// The requests of step 8: latent 51 at five magnitudes on the tutorial's prompt, one of them
/// also reading the SAE's top latents at each new token, and a sampled unsteered request.
fn write_requests(root: &Path) -> Result {
    let mut lines: Vec<String> = [0, 4, 8, 16, 32]
        .iter()
        .map(|m| {
            format!(
                r#"{{"id": "m{m}", "prompt": "{PROMPT}", "steer": [{{"latent": 51, "magnitude": {m}}}]}}"#
            )
        })
        .collect();
    lines.push(format!(
        r#"{{"id": "m8-latents", "prompt": "{PROMPT}", "steer": [{{"latent": 51, "magnitude": 8}}], "top_latents": 2, "max_new_tokens": 3}}"#
    ));
    lines.push(format!(
        r#"{{"id": "sampled", "prompt": "{THIRD}", "sample": true, "temperature": 0.8, "seed": 7}}"#
    ));
    let path = root.join("target/demo-requests.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n")
        .map_err(|e| Failure::new(format!("could not write {}: {e}", path.display())))
}

/// The one SAE directory under `family` (`layer_*/width_*/average_l0_*`).
pub fn find_sae(family: &Path) -> Result<PathBuf> {
    let mut found = Vec::new();
    collect_param_dirs(family, &mut found);
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        Failure::new(format!(
            "no params.npz under {}: run `cargo xtask fixtures` or restore fixtures/ from git",
            family.display()
        ))
    })
}

fn collect_param_dirs(dir: &Path, found: &mut Vec<PathBuf>) {
    if dir.join("params.npz").exists() {
        found.push(dir.to_path_buf());
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.path().is_dir() {
                collect_param_dirs(&entry.path(), found);
            }
        }
    }
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') || a.contains('?') || a.contains('(') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
