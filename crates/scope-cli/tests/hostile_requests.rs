//! Request bodies and `--requests` lines that break the rules in every structural way the
//! fuzz crate knows ([`scope_fuzz_targets::structural::json_variants`]: each value of the
//! wrong type, huge or negative, each key removed, an unknown key added, nests 100,000 deep,
//! Python's `NaN`). The server answers each with 200 or a 4xx carrying a message, never a
//! 5xx, and is still healthy afterwards; `scope steer --requests` answers every line and exits
//! 0 or 1. Neither prints a panic.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fixture, scope, Server, F32_MODEL, F32_SAE};
use scope_fuzz_targets::structural::json_variants;
use serde_json::{json, Value};

/// A valid body for each endpoint that takes one.
fn seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/steer",
            json!({"prompt": "Time travel", "steer": [{"latent": 5, "magnitude": 60.0}],
                   "max_new_tokens": 4, "sample": true, "top_k": 3, "top_p": 0.9,
                   "temperature": 0.7, "seed": 1, "latents_top_k": 2}),
        ),
        (
            "/v1/latents",
            json!({"prompt": "A dog ran", "top_k": 4, "latent": 7}),
        ),
        (
            "/v1/patch",
            json!({"base": "A cat sat", "source": "A dog ran", "latent": 7, "base_pos": -1,
                   "source_pos": 2, "top_k": 3}),
        ),
        ("/v1/explain", json!({"latent": 7, "top_k": 5})),
        (
            "/v1/completions",
            json!({"prompt": ["Once"], "max_tokens": 3, "temperature": 0.5, "n": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                   "stream": true}),
        ),
    ]
}

#[test]
fn the_server_answers_every_hostile_body_with_200_or_a_4xx() {
    let server = Server::start(&["--context", "48"]);
    let mut sent = 0;
    for (path, seed) in seeds() {
        let (status, _) = server.post(path, &seed);
        assert_eq!(status, 200, "{path}: the seed itself is valid");
        for body in json_variants(seed.to_string().as_bytes()) {
            let body = String::from_utf8(body).unwrap();
            let started = Instant::now();
            let (status, answer) = server.post_raw(path, &body);
            let shown: String = body.chars().take(200).collect();
            assert!(
                status == 200 || (400..500).contains(&status),
                "{path} answered {status} to {shown}: {answer}; server stderr: {:?}",
                server.stderr_lines()
            );
            if status != 200 {
                assert!(
                    answer["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{path} answered {status} without a message to {shown}: {answer}"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{path} took {:?} on {shown}",
                started.elapsed()
            );
            sent += 1;
        }
    }
    let (status, _) = server.get("/health");
    assert_eq!(status, 200, "healthy after {sent} hostile bodies");
    let panics: Vec<String> = server
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{panics:?}");
    println!("{sent} hostile bodies, each answered 200 or 4xx with a message");
}

#[test]
fn requests_answers_every_hostile_line_and_exits_0_or_1() {
    let seed = json!({"id": "a", "prompt": "Time travel", "steer": [{"latent": 5,
        "magnitude": 40.0}], "max_new_tokens": 3, "sample": false, "temperature": 1.0,
        "top_k": 0, "top_p": 1.0, "seed": 2, "chat": false, "top_latents": 2});
    let lines: Vec<String> = json_variants(seed.to_string().as_bytes())
        .into_iter()
        .map(|line| String::from_utf8(line).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hostile.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let started = Instant::now();
    let out = steer_requests(&file, &["--device", "cpu", "--max-batch", "4"]);
    let elapsed = started.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "exit {:?}; stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let answers: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(answers.len(), lines.len(), "one answer a line");
    let failed = answers.iter().filter(|a| a.get("error").is_some()).count();
    assert!(
        failed > 0 && failed < lines.len(),
        "{failed} of {} failed",
        lines.len()
    );
    assert!(elapsed < Duration::from_secs(120), "took {elapsed:?}");
    println!(
        "{} hostile lines in {elapsed:?}: {} ran, {failed} refused by line",
        lines.len(),
        lines.len() - failed
    );
}

/// The fuzz corpus of `requests_lines` (`cargo xtask fuzz requests_lines`: AFL++ on this very
/// command): every seed and every input that once crashed it, replayed.
#[test]
fn every_requests_lines_corpus_input_exits_0_or_1() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/requests_lines");
    let mut inputs: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: no seeds", corpus.display());
    for input in &inputs {
        let started = Instant::now();
        let out = steer_requests(input, &[]);
        let file = input.display();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{file}: exit {:?}; stderr: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(60), "{file}");
    }
}

/// `scope steer --requests FILE` on the tiny model and its layer-2 SAE, with `extra` flags.
fn steer_requests(file: &Path, extra: &[&str]) -> std::process::Output {
    let (model, sae, file) = (
        fixture(F32_MODEL),
        fixture(F32_SAE),
        file.display().to_string(),
    );
    let mut args = vec![
        "steer",
        "--model",
        &model,
        "--sae",
        &sae,
        "--requests",
        &file,
    ];
    args.extend_from_slice(extra);
    scope(&args)
}
