//! The official `openai` Python client (in `.venv`, installed by `cargo xtask setup`) against
//! `scope serve`: completions and chat completions, plain, streamed and steered, must give what
//! the server's own `/v1/generate` and `/v1/steer` give, and an API key must be enforced.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::{json, Value};

/// The prompt the script sends (its `PROMPT`).
const PROMPT: &str = "Would you be able to travel through time using a wormhole?";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `.venv/bin/python`, which must have the `openai` package.
fn python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the `openai` client these tests use)",
        python.display()
    );
    let check = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .expect("the venv's python runs");
    assert!(
        check.status.success(),
        "the `openai` package is missing from {}: run `cargo xtask setup`\n{}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// Runs `openai_client.py URL ARGS…` and parses the JSON object it prints.
fn client(url: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(url)
        .args(args)
        .output()
        .expect("the client script starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai_client.py {url} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().expect("an integer"))
        .collect()
}

/// Compares the client's text, finish reason and usage with a `/v1/generate` or `/v1/steer`
/// answer (`usage` is absent from the streamed results); what differs goes to `problems`.
fn check_against(what: &str, got: &Value, reference: &Value, problems: &mut Vec<String>) {
    let mut differs = |field: &str, client: &Value, server: &Value| {
        if client != server {
            problems.push(format!(
                "{what}: {field} {client} from the openai client, {server} from the server's own \
                 endpoint\n    client: {got}\n    server: {reference}"
            ));
        }
    };
    differs("text", &got["text"], &reference["completion"]);
    differs(
        "finish_reason",
        &got["finish_reason"],
        &reference["finish_reason"],
    );
    if got.get("usage").is_some() {
        let prompt = ints(&reference["prompt_ids"]).len() as i64;
        let completion = ints(&reference["output_ids"]).len() as i64 - prompt;
        let usage = &got["usage"];
        differs(
            "usage.prompt_tokens",
            &usage["prompt_tokens"],
            &json!(prompt),
        );
        differs(
            "usage.completion_tokens",
            &usage["completion_tokens"],
            &json!(completion),
        );
        differs(
            "usage.total_tokens",
            &usage["total_tokens"],
            &json!(prompt + completion),
        );
    }
}

/// Fails with every problem found.
fn assert_none(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} mismatch(es):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The model name `/health` gives, which `/v1/models` must list.
fn model_name(server: &Server) -> String {
    let (status, health) = server.get("/health");
    assert_eq!(status, 200, "GET /health: {health}");
    health["model"]
        .as_str()
        .unwrap_or_else(|| panic!("no model in /health: {health}"))
        .to_string()
}

#[test]
fn openai_client_gets_what_the_servers_own_endpoints_give() {
    let server = Server::start(&[]);
    let out = client(&server.url, &[]);

    let model = model_name(&server);
    assert!(
        out["models"]
            .as_array()
            .is_some_and(|m| m.contains(&json!(model))),
        "models.list() does not list {model}: {}",
        out["models"]
    );
    assert_eq!(out["completion"]["model"], json!(model));

    let (status, plain) = server.post(
        "/v1/generate",
        &json!({"prompt": PROMPT, "max_new_tokens": 12}),
    );
    assert_eq!(status, 200, "/v1/generate: {plain}");
    let mut problems = Vec::new();
    check_against(
        "completions.create",
        &out["completion"],
        &plain,
        &mut problems,
    );
    check_against(
        "completions.create(stream=True)",
        &out["completion_stream"],
        &plain,
        &mut problems,
    );
    assert!(
        out["completion_stream"]["chunks"].as_i64().unwrap() >= 2,
        "the streamed completion came in one chunk: {}",
        out["completion_stream"]
    );

    let (status, steered) = server.post(
        "/v1/steer",
        &json!({"prompt": PROMPT, "steer": [{"latent": 5, "magnitude": 60.0}], "max_new_tokens": 12}),
    );
    assert_eq!(status, 200, "/v1/steer: {steered}");
    check_against(
        "completions.create(steering)",
        &out["steered"],
        &steered,
        &mut problems,
    );
    check_against(
        "completions.create(steering, stream=True)",
        &out["steered_stream"],
        &steered,
        &mut problems,
    );
    assert_ne!(
        steered["output_ids"], plain["output_ids"],
        "latent 5 at magnitude 60 should change the fixture model's greedy output"
    );

    let (status, chat) = server.post(
        "/v1/generate",
        &json!({"prompt": "Say hi", "chat": true, "max_new_tokens": 8}),
    );
    assert_eq!(status, 200, "/v1/generate chat: {chat}");
    check_against(
        "chat.completions.create",
        &out["chat"],
        &chat,
        &mut problems,
    );
    check_against(
        "chat.completions.create(stream=True)",
        &out["chat_stream"],
        &chat,
        &mut problems,
    );
    assert_none(&problems);

    assert_eq!(
        server.terminate(60),
        Some(0),
        "SIGTERM should end the server with 0"
    );
}

#[test]
fn openai_client_needs_the_api_key() {
    let server = Server::start(&["--api-key", "sekret"]);

    // Without the key: /health is open, /v1/* refused with the contract's error object.
    let model = model_name(&server);
    let (status, body) = server.post(
        "/v1/generate",
        &json!({"prompt": PROMPT, "max_new_tokens": 2}),
    );
    assert_eq!(status, 401, "/v1/generate without the key: {body}");
    assert_eq!(
        body["error"]["type"],
        json!("authentication_error"),
        "{body}"
    );

    let out = client(&server.url, &["auth", "sekret"]);
    for call in ["wrong_models", "wrong_completion", "wrong_chat"] {
        assert_eq!(
            out[call]["error"],
            json!("AuthenticationError"),
            "{call} with a wrong key: {}",
            out[call]
        );
        assert_eq!(out[call]["status"], json!(401), "{call}: {}", out[call]);
    }
    assert!(
        out["models"]
            .as_array()
            .is_some_and(|m| m.contains(&json!(model))),
        "models.list() with the key: {}",
        out["models"]
    );

    let request = ureq::post(&format!("{}/v1/generate", server.url))
        .set("Content-Type", "application/json")
        .set("Authorization", "Bearer sekret");
    let (status, plain) = server.send(
        request,
        Some(&json!({"prompt": PROMPT, "max_new_tokens": 12}).to_string()),
    );
    assert_eq!(status, 200, "/v1/generate with the key: {plain}");
    let mut problems = Vec::new();
    check_against(
        "completions.create with the key",
        &out["completion"],
        &plain,
        &mut problems,
    );

    let request = ureq::post(&format!("{}/v1/generate", server.url))
        .set("Content-Type", "application/json")
        .set("Authorization", "Bearer sekret");
    let (status, chat) = server.send(
        request,
        Some(&json!({"prompt": "Say hi", "chat": true, "max_new_tokens": 8}).to_string()),
    );
    assert_eq!(status, 200, "/v1/generate chat with the key: {chat}");
    check_against(
        "chat.completions.create with the key",
        &out["chat"],
        &chat,
        &mut problems,
    );
    assert_none(&problems);
}
