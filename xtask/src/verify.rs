//! `cargo xtask verify`: the golden parity suite with a summary table, then the Gemma Scope
//! tutorial's reference values on the real gemma-2-2b when its weights are on this machine.
//!
//! Exit codes: 0 everything ran and passed; 1 a check failed; 3 the golden suite passed but the
//! real-weight checks were skipped because the weights are not here.

use std::path::{Path, PathBuf};

use crate::{cargo, setup, Failure, Result};

/// Exit code for "golden suite passed, real-weight checks skipped".
const SKIPPED: u8 = 3;

const TUTORIAL_PROMPT: &str = "Would you be able to travel through time using a wormhole?";
const TUTORIAL_IDS: [i64; 14] = [
    2, 18925, 692, 614, 3326, 577, 5056, 1593, 1069, 2177, 476, 47420, 18216, 235336,
];
const TUTORIAL_L0: [i64; 14] = [7017, 47, 65, 70, 55, 72, 65, 75, 80, 72, 68, 93, 86, 89];
const TUTORIAL_ARGMAX: [i64; 14] = [
    6631, 5482, 10376, 1670, 11023, 7562, 9407, 8399, 12935, 10004, 10004, 10004, 12935, 3442,
];
const TUTORIAL_CONTINUATION: &str =
    "\n\n[Answer 1]\n\nYes, you can travel through time using a wormhole.";
const SAE_PATH: &str = "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71";
const INTERCHANGE_TOKENS: [&str; 10] = [
    "PhysRevD",
    "transporting",
    "teleport",
    "space",
    "transit",
    "transported",
    "transporter",
    "transpor",
    "multiverse",
    "universes",
];

pub fn run() -> Result {
    setup::ensure()?;
    golden_suite()?;
    real_weights()
}

/// One row of the parity summary, printed by the tests as `PARITY|workflow|tolerance|worst`.
struct ParityRow {
    workflow: String,
    tolerance: String,
    worst: String,
}

fn golden_suite() -> Result {
    println!("verify: running the golden parity suite (cargo test --workspace) ...");
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--quiet",
            "--",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .map_err(|e| Failure::new(format!("could not run cargo test: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<ParityRow> = stdout.lines().filter_map(parse_parity_line).collect();
    print_table(&rows);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .collect();
    let failed = !out.status.success();
    if failed {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        for line in stdout
            .lines()
            .filter(|l| l.contains("FAILED") || l.contains("panicked"))
        {
            eprintln!("{line}");
        }
        return Err(Failure::new("the golden parity suite failed"));
    }
    println!(
        "verify: golden suite passed ({} test binaries).",
        summary.len()
    );
    Ok(())
}

fn parse_parity_line(line: &str) -> Option<ParityRow> {
    // With --nocapture the harness's "test name ... " may stand before the row on its line.
    let rest = &line[line.find("PARITY|")? + "PARITY|".len()..];
    let mut parts = rest.split('|');
    Some(ParityRow {
        workflow: parts.next()?.to_string(),
        tolerance: parts.next()?.to_string(),
        worst: parts.next()?.to_string(),
    })
}

fn print_table(rows: &[ParityRow]) {
    if rows.is_empty() {
        println!("(no parity rows were reported)");
        return;
    }
    let width = rows
        .iter()
        .map(|r| r.workflow.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "\n{:<width$}  {:>12}  {:>12}",
        "workflow", "tolerance", "worst seen"
    );
    println!("{}", "-".repeat(width + 28));
    for row in rows {
        println!(
            "{:<width$}  {:>12}  {:>12}",
            row.workflow, row.tolerance, row.worst
        );
    }
    println!();
}

/// Where the real weights would be: `SCOPE_GEMMA_2B` / `SCOPE_GEMMA_2B_IT` (local directories)
/// or the Hugging Face cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, where `HF_HOME` defaults to
/// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. These are the rules of
/// `scope_hub::HubOptions::from_vars`, repeated because xtask has no dependencies (pulling in
/// `scope-hub` would bring an HTTP and TLS stack into the first `cargo xtask` build).
fn hf_cache() -> PathBuf {
    let var = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    if let Some(cache) = var("HF_HUB_CACHE") {
        return PathBuf::from(cache);
    }
    let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache")
            })
            .join("huggingface")
    });
    hf_home.join("hub")
}

/// `file` of `repo` in the snapshot `refs/main` names: the one `scope` will read.
fn cached_snapshot_file(repo: &str, file: &str) -> Option<PathBuf> {
    let dir = hf_cache().join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
    let path = dir.join("snapshots").join(commit.trim()).join(file);
    path.is_file().then_some(path)
}

fn model_available(env: &str, repo: &str) -> Option<String> {
    if let Ok(dir) = std::env::var(env) {
        if Path::new(&dir).join("config.json").exists() {
            return Some(dir);
        }
    }
    cached_snapshot_file(repo, "config.json").map(|_| repo.to_string())
}

fn real_weights() -> Result {
    let base = model_available("SCOPE_GEMMA_2B", "google/gemma-2-2b");
    let sae = cached_snapshot_file(
        "google/gemma-scope-2b-pt-res",
        "layer_20/width_16k/average_l0_71/params.npz",
    );
    let (Some(model), Some(_)) = (base, sae) else {
        println!(
            "verify: SKIPPED the tutorial checks on real weights: google/gemma-2-2b and \
             {SAE_PATH} are not in the Hugging Face cache ({}).\n  To run them: accept the Gemma \
             licence on the Hub, export HF_TOKEN, then\n    cargo run --release -p scope-cli -- \
             download --model google/gemma-2-2b --sae {SAE_PATH}\n    cargo run --release -p \
             scope-cli -- download --model google/gemma-2-2b-it\n  (or point SCOPE_GEMMA_2B at a \
             local checkout) and run `cargo xtask verify` again.",
            hf_cache().display()
        );
        return Err(Failure::with_code(
            "golden suite passed; real-weight checks skipped (exit 3)",
            SKIPPED,
        ));
    };
    tutorial_checks(&model)
}

fn scope_json(args: &[&str]) -> Result<String> {
    let out = cargo()
        .args(["run", "--quiet", "--release", "-p", "scope-cli", "--"])
        .args(args)
        .arg("--json")
        .output()
        .map_err(|e| Failure::new(format!("could not run scope: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(format!(
            "scope {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The integers of the JSON array under `key` (a flat array), without a JSON dependency.
fn json_int_array(json: &str, key: &str) -> Vec<i64> {
    let needle = format!("\"{key}\":");
    let Some(start) = json.find(&needle) else {
        return Vec::new();
    };
    let rest = &json[start + needle.len()..];
    let Some(open) = rest.find('[') else {
        return Vec::new();
    };
    let Some(close) = rest[open..].find(']') else {
        return Vec::new();
    };
    rest[open + 1..open + close]
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// How many of the tutorial's top-10 interchange tokens `scope patch --json` lists. Tokens
/// decode as the tutorial prints them, most with a leading space (`" teleport"`).
fn tutorial_token_hits(patch_json: &str) -> usize {
    let tokens = json_string_values(patch_json, "token");
    INTERCHANGE_TOKENS
        .iter()
        .filter(|want| tokens.iter().any(|t| t.trim() == **want))
        .count()
}

/// Every string value of `key` in `json` (simple strings: no escaped quotes), without a JSON
/// dependency.
fn json_string_values(json: &str, key: &str) -> Vec<String> {
    let needle = format!("\"{key}\":");
    json.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = json[at + needle.len()..].trim_start().strip_prefix('"')?;
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

fn check(name: &str, ok: bool, detail: String, failures: &mut Vec<String>) {
    println!("[{}] {name}  {detail}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        failures.push(name.to_string());
    }
}

fn tutorial_checks(model: &str) -> Result {
    let mut failures = Vec::new();
    let latents = scope_json(&[
        "latents",
        "--model",
        model,
        "--sae",
        SAE_PATH,
        "--dtype",
        "f32",
        "--prompt",
        TUTORIAL_PROMPT,
        "--threshold",
        "1",
    ])?;
    let ids = json_int_array(&latents, "token_ids");
    check(
        "tokenizer: 14 tutorial ids",
        ids == TUTORIAL_IDS,
        format!("{ids:?}"),
        &mut failures,
    );
    let l0 = json_int_array(&latents, "l0");
    let l0_ok = l0.len() == TUTORIAL_L0.len()
        && l0.iter().zip(TUTORIAL_L0).all(|(a, b)| (a - b).abs() <= 1);
    check(
        "per-token L0 (>1) within ±1",
        l0_ok,
        format!("{l0:?}"),
        &mut failures,
    );
    let argmax = json_int_array(&latents, "max_latent");
    check(
        "argmax latents exact",
        argmax == TUTORIAL_ARGMAX,
        format!("{argmax:?}"),
        &mut failures,
    );

    let generated = scope_json(&[
        "generate",
        "--model",
        model,
        "--dtype",
        "f32",
        "--prompt",
        TUTORIAL_PROMPT,
        "--max-new-tokens",
        "50",
    ])?;
    let starts = generated.contains(&TUTORIAL_CONTINUATION.replace('\n', "\\n"));
    check(
        "greedy 50-token continuation",
        starts,
        String::new(),
        &mut failures,
    );

    if let Some(it) = model_available("SCOPE_GEMMA_2B_IT", "google/gemma-2-2b-it") {
        let patched = scope_json(&[
            "patch",
            "--model",
            &it,
            "--sae",
            SAE_PATH,
            "--dtype",
            "f32",
            "--base",
            "Which dog breed do people think is cuter, poodle or doodle?",
            "--source",
            "Origin (general) Space-travel, time-travel",
            "--source-pos",
            "11",
            "--base-pos",
            "14",
            "--latent",
            "10004",
            "--top-k",
            "10",
        ])?;
        let hits = tutorial_token_hits(&patched);
        check(
            "interchange of latent 10004 ranks time/space-travel tokens on top",
            hits >= 5,
            format!("{hits}/10 of the tutorial's tokens in the top 10"),
            &mut failures,
        );
    } else {
        println!("[SKIP] interchange on google/gemma-2-2b-it: not in the cache");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(format!("failed: {}", failures.join(", "))))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_parity_lines() {
        let row = parse_parity_line("PARITY|f32 logits|1e-4|3.2e-6").expect("a row");
        assert_eq!(row.workflow, "f32 logits");
        assert_eq!(row.tolerance, "1e-4");
        assert_eq!(row.worst, "3.2e-6");
        assert!(parse_parity_line("test foo ... ok").is_none());
        let inline = parse_parity_line("test a::b ... PARITY|x|1e-4|0").expect("a row");
        assert_eq!(inline.workflow, "x");
    }

    #[test]
    fn reads_int_arrays_from_json() {
        let json = r#"{"token_ids": [2, 18925, 692], "l0": [1,2]}"#;
        assert_eq!(json_int_array(json, "token_ids"), vec![2, 18925, 692]);
        assert_eq!(json_int_array(json, "l0"), vec![1, 2]);
        assert!(json_int_array(json, "missing").is_empty());
    }

    #[test]
    fn finds_the_tutorial_tokens_with_their_leading_spaces() {
        // The shape of `scope patch --json` (serde's compact form).
        let json = r#"{"position":14,"top":[{"token_id":1,"token":"PhysRevD","logit_diff":9.1},{"token_id":2,"token":" transporting","logit_diff":8.0},{"token_id":3,"token":" teleport","logit_diff":7.5},{"token_id":4,"token":" dog","logit_diff":7.0}],"latent":10004}"#;
        assert_eq!(
            json_string_values(json, "token"),
            vec!["PhysRevD", " transporting", " teleport", " dog"]
        );
        assert_eq!(tutorial_token_hits(json), 3);
    }
}
