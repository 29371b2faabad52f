//! `cargo xtask demo`: the main workflows on the small model shipped in `fixtures/`, through the
//! `scope` binary, printing what a researcher would see.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, project_root, run_checked, setup, Failure, Result};

/// The tutorial's prompt; the fixture tokenizer was trained on text containing its words.
const PROMPT: &str = "Would you be able to travel through time using a wormhole?";
const SOURCE: &str = "Origin (general) Space-travel, time-travel";
const BASE: &str = "Which dog breed do people think is cuter, poodle or doodle?";

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
    let sae_dir = find_sae(&root.join("fixtures/saes/tiny-f32-res"))?;
    let sae = sae_dir
        .strip_prefix(&root)
        .unwrap_or(&sae_dir)
        .to_path_buf();
    println!("demo: building the scope binary ...");
    run_checked(
        cargo().args(["build", "--quiet", "--release", "-p", "scope-cli"]),
        "cargo build -p scope-cli",
    )?;
    let scope = root.join("target/release/scope");
    let mut not_built = Vec::new();
    for step in steps(&model, &sae) {
        println!("\n=== {} ===", step.title);
        println!("$ scope {}", shell_words(&step.args));
        let out = Command::new(&scope)
            .args(&step.args)
            .current_dir(&root)
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
    if not_built.is_empty() {
        println!("\ndemo: every workflow ran.");
    } else {
        println!("\ndemo: not built yet: {}", not_built.join(", "));
    }
    Ok(())
}

fn steps(model: &Path, sae: &Path) -> Vec<Step> {
    let model = model.display().to_string();
    let sae = sae.display().to_string();
    let with = |title: &'static str, args: &[&str]| Step {
        title,
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    vec![
        with(
            "1. greedy generation",
            &[
                "generate",
                "--model",
                &model,
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                "20",
            ],
        ),
        with(
            "1b. sampled generation (seeded)",
            &[
                "generate",
                "--model",
                &model,
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                "20",
                "--sample",
                "--temperature",
                "0.8",
                "--top-p",
                "0.9",
                "--seed",
                "7",
            ],
        ),
        with(
            "2. SAE latents per token (residual after the SAE's layer)",
            &[
                "latents",
                "--model",
                &model,
                "--sae",
                &sae,
                "--prompt",
                PROMPT,
                "--threshold",
                "0",
                "--top-k",
                "3",
            ],
        ),
        with(
            "3. steered generation (magnitude * W_dec[latent] at every position)",
            &[
                "steer",
                "--model",
                &model,
                "--sae",
                &sae,
                "--latent",
                "7",
                "--magnitude",
                "8",
                "--prompt",
                PROMPT,
                "--max-new-tokens",
                "20",
            ],
        ),
        with(
            "4. latent interchange (source position 5 -> base position 6)",
            &[
                "patch",
                "--model",
                &model,
                "--sae",
                &sae,
                "--base",
                BASE,
                "--source",
                SOURCE,
                "--source-pos",
                "5",
                "--base-pos",
                "6",
                "--latent",
                "7",
                "--top-k",
                "5",
            ],
        ),
        with(
            "5. what a latent writes to the logits (logit lens)",
            &[
                "explain", "--model", &model, "--sae", &sae, "7", "--top-k", "5",
            ],
        ),
    ]
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
