//! `scope serve` end to end on the fixture model: every endpoint's answer against the same
//! request through the CLI, streams against their non-streamed answers, many clients at once
//! against each alone, every kind of bad request to its status, a client that goes away, and
//! SIGTERM.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fixture, Server, F32_MODEL, F32_SAE};
use serde_json::{json, Value};

/// `scope ARGS --json --device cpu` on the f32 fixtures, parsed.
fn cli_json(args: &[&str]) -> Value {
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let mut all = args.to_vec();
    all.extend(["--model", &model, "--json", "--device", "cpu"]);
    if args[0] != "generate" {
        all.extend(["--sae", &sae]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_scope"))
        .args(&all)
        .output()
        .expect("scope runs");
    assert!(
        out.status.success(),
        "{all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn without(mut value: Value, keys: &[&str]) -> Value {
    for key in keys {
        value.as_object_mut().expect("object").remove(*key);
    }
    value
}

/// `/v1/steer`, `/v1/latents`, `/v1/patch` and `/v1/explain` answer what the CLI prints for
/// the same request; a stream's tokens add up to its final object, which is the answer
/// without streaming.
#[test]
fn endpoints_answer_what_the_cli_prints() {
    let server = Server::start(&[]);
    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], "tiny-f32");
    assert_eq!(
        health["saes"],
        json!(["tiny-f32-res/layer_2/width_256/average_l0_20"])
    );

    let prompt = "The cat sat on the mat";
    let body = json!({"prompt": prompt, "steer": [{"latent": 5, "magnitude": 60.0}, {"latent": 9, "magnitude": -20.0}], "max_new_tokens": 12});
    let (status, steered) = server.post("/v1/steer", &body);
    assert_eq!(status, 200, "{steered}");
    let cli = cli_json(&[
        "steer",
        "--prompt",
        prompt,
        "--steer",
        "5:60",
        "--steer",
        "9:-20",
        "--max-new-tokens",
        "12",
    ]);
    assert_eq!(
        steered["output_ids"], cli["output_ids"],
        "steer vs scope steer"
    );
    assert_eq!(steered["completion"], cli["completion"]);
    assert_eq!(steered["steering"], cli["steering"]);
    assert!(["stop", "length"].contains(&steered["finish_reason"].as_str().unwrap()));

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["latents_top_k"] = json!(3);
    let (status, content_type, events) = server.post_stream("/v1/steer", &stream_body);
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (last, tokens) = events.split_last().expect("events");
    assert_eq!(last["done"], true);
    assert_eq!(without(last.clone(), &["done", "latents"]), steered);
    let ids: Vec<Value> = tokens.iter().map(|e| e["token_id"].clone()).collect();
    let new = &steered["output_ids"].as_array().unwrap()
        [steered["prompt_ids"].as_array().unwrap().len()..];
    assert_eq!(ids, new, "one event per new token");
    let text: String = tokens.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(
        text,
        steered["completion"].as_str().unwrap(),
        "the text deltas add up"
    );
    for (event, per_token) in tokens.iter().zip(last["latents"].as_array().unwrap()) {
        assert_eq!(&event["latents"], per_token);
        assert_eq!(per_token.as_array().unwrap().len(), 3);
    }

    let (status, generated) = server.post(
        "/v1/generate",
        &json!({"prompt": prompt, "max_new_tokens": 9}),
    );
    assert_eq!(status, 200);
    let cli = cli_json(&["generate", "--prompt", prompt, "--max-new-tokens", "9"]);
    assert_eq!(
        generated["output_ids"], cli["output_ids"],
        "generate vs scope generate"
    );

    let (status, latents) = server.post(
        "/v1/latents",
        &json!({"prompt": prompt, "top_k": 4, "latent": 7}),
    );
    assert_eq!(status, 200);
    let cli = cli_json(&["latents", "--prompt", prompt, "--top-k", "4"]);
    assert_eq!(
        without(latents.clone(), &["latent_values"]),
        cli,
        "latents vs scope latents"
    );
    assert_eq!(
        latents["latent_values"].as_array().unwrap().len(),
        cli["tokens"].as_array().unwrap().len()
    );

    let (status, patched) = server.post(
        "/v1/patch",
        &json!({"base": prompt, "source": "A dog ran", "latent": 7, "source_pos": 2, "top_k": 3}),
    );
    assert_eq!(status, 200, "{patched}");
    let cli = cli_json(&[
        "patch",
        "--base",
        prompt,
        "--source",
        "A dog ran",
        "--latent",
        "7",
        "--source-pos",
        "2",
        "--base-pos",
        "-1",
        "--top-k",
        "3",
    ]);
    assert_eq!(patched, cli, "patch vs scope patch");

    let (status, explained) = server.post("/v1/explain", &json!({"latent": 7, "top_k": 5}));
    assert_eq!(status, 200);
    assert_eq!(explained, cli_json(&["explain", "7", "--top-k", "5"]));
}

/// 16 clients streaming steered requests at once get each request's answer alone.
#[test]
fn concurrent_streams_give_each_request_its_own_answer() {
    let server = Server::start(&[]);
    let body = |i: usize| {
        let prompt = ["The cat sat", "Time travel is", "A dog ran to the"][i % 3];
        let magnitude = [40.0, -25.0, 80.0][i % 3];
        json!({"prompt": prompt, "steer": [{"latent": (i * 13) % 256, "magnitude": magnitude}],
               "max_new_tokens": 6 + i % 7})
    };
    let alone: Vec<Value> = (0..16)
        .map(|i| server.post("/v1/steer", &body(i)).1)
        .collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let mut b = body(i);
                    b["stream"] = json!(true);
                    let (status, _, events) = server.post_stream("/v1/steer", &b);
                    assert_eq!(status, 200);
                    let (last, tokens) = events.split_last().expect("a final event");
                    let text: String = tokens.iter().map(|e| e["text"].as_str().unwrap()).collect();
                    assert_eq!(text, last["completion"].as_str().unwrap(), "request {i}");
                    without(last.clone(), &["done"])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i}: alone vs 16 at once");
    }
}

/// Every kind of bad request gets its status and a JSON error naming the problem.
#[test]
fn bad_requests_get_a_status_and_a_message() {
    let server = Server::start(&["--max-body-kib", "4", "--context", "64"]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/steer", "{not json".into(), 400, "not valid JSON"),
        (
            "/v1/steer",
            json!({"prompt": "x", "steer": [], "colour": 1}).to_string(),
            400,
            "unknown field `colour`",
        ),
        (
            "/v1/steer",
            json!({"prompt": "x", "steer": [{"latent": 99999, "magnitude": 1.0}]}).to_string(),
            400,
            "latent 99999 is out of range",
        ),
        (
            "/v1/steer",
            json!({"prompt": "x"}).to_string(),
            400,
            "missing field `steer`",
        ),
        (
            "/v1/steer",
            json!({"prompt": "x", "steer": [{"latent": "five", "magnitude": 1.0}]}).to_string(),
            400,
            "steer[0].latent",
        ),
        (
            "/v1/generate",
            json!({"prompt": "   "}).to_string(),
            400,
            "empty",
        ),
        (
            "/v1/generate",
            json!({"prompt": "time travel ".repeat(40)}).to_string(),
            400,
            "--context",
        ),
        (
            "/v1/generate",
            json!({"prompt": "x", "sample": true, "top_p": 0}).to_string(),
            400,
            "top_p",
        ),
        (
            "/v1/generate",
            json!({"prompt": "x", "sample": true, "temperature": 0}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/generate",
            json!({"prompt": "x", "steer": [{"latent": 1, "magnitude": 1.0}]}).to_string(),
            400,
            "/v1/steer",
        ),
        (
            "/v1/latents",
            json!({"prompt": "x", "sae": "nope"}).to_string(),
            400,
            "no SAE called `nope`",
        ),
        (
            "/v1/latents",
            json!({"prompt": "x", "top_k": 0}).to_string(),
            400,
            "top_k",
        ),
        (
            "/v1/patch",
            json!({"base": "a b", "source": "c d", "latent": 1, "base_pos": 99}).to_string(),
            400,
            "base_pos / --base-pos 99",
        ),
        (
            "/v1/explain",
            json!({"latent": -1}).to_string(),
            400,
            "out of range",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "n": 2}).to_string(),
            400,
            "`n`",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "x"}]}).to_string(),
            400,
            "System role",
        ),
        ("/v1/nothing", "{}".into(), 404, "no endpoint"),
        (
            "/v1/latents",
            json!({"prompt": "x".repeat(8000)}).to_string(),
            413,
            "limit of 4 KiB",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (got, answer) = server.post_raw(path, &body);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{path} {body:.60}: {answer}");
        assert!(
            message.contains(needle),
            "{path} {body:.60}: `{message}` lacks `{needle}`"
        );
        assert!(answer["error"]["type"].is_string());
    }
    let (status, answer) = server.get("/v1/steer");
    assert_eq!(status, 405, "{answer}");
    // The server is still well after all of that.
    assert_eq!(server.get("/health").0, 200);
}

/// With a key, `/v1` needs it and the page and health do not.
#[test]
fn a_key_guards_the_api() {
    let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
    let args = [
        "serve", "--model", &model, "--sae", &sae, "--device", "cpu", "--port", "0",
    ];
    let server = Server::start_with(&args, &[("SCOPE_API_KEY", "sekret")]);
    let body = json!({"latent": 3}).to_string();
    let url = format!("{}/v1/explain", server.url);
    let (status, answer) = server.send(ureq::post(&url), Some(&body));
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let (status, _) = server.send(
        ureq::post(&url).set("Authorization", "Bearer wrong!"),
        Some(&body),
    );
    assert_eq!(status, 401);
    let (status, answer) = server.send(
        ureq::post(&url).set("Authorization", "Bearer sekret"),
        Some(&body),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.get("/health").0, 200);
    let page = ureq::get(&server.url)
        .call()
        .expect("the page")
        .into_string()
        .unwrap();
    assert!(page.contains("<html"), "GET / serves the page");
}

/// A full queue answers 429 with Retry-After; a client that goes away mid-stream leaves no
/// row or queue place behind; SIGTERM lets a stream in flight finish and exits 0.
#[test]
fn queue_cancel_and_sigterm() {
    let server = Server::start(&["--max-queue", "1"]);
    // 24 clients at once against a queue of one: the ones that find it taken get 429.
    let barrier = std::sync::Barrier::new(24);
    let url = format!("{}/v1/generate", server.url);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|_| {
                let (barrier, url) = (&barrier, &url);
                s.spawn(move || {
                    barrier.wait();
                    let body = json!({"prompt": "The cat sat", "max_new_tokens": 40}).to_string();
                    match ureq::post(url).send_string(&body) {
                        Ok(r) => (r.status(), None),
                        Err(ureq::Error::Status(code, r)) => {
                            (code, r.header("retry-after").map(str::to_string))
                        }
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().any(|(s, _)| *s == 200), "{statuses:?}");
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        !refused.is_empty(),
        "some of 24 clients at once found the queue of 1 taken"
    );
    for (status, retry_after) in refused {
        assert_eq!((*status, retry_after.as_deref()), (429, Some("1")));
    }

    // A client that reads the start of a stream and goes away.
    let long = json!({"prompt": "The cat sat", "max_new_tokens": 110, "stream": true, "latents_top_k": 64}).to_string();
    let address = server.url.trim_start_matches("http://").to_string();
    let mut client = TcpStream::connect(&address).expect("connect");
    write!(
        client,
        "POST /v1/generate HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
        long.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = client.read(&mut first).expect("the stream starts");
    let head = String::from_utf8_lossy(&first[..n]);
    assert!(head.contains("200 OK"), "{head}");
    drop(client);
    let start = Instant::now();
    loop {
        let (_, health) = server.get("/health");
        if health["running"] == 0 && health["waiting"] == 0 && health["in_flight"] == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the row is still held: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancelled = server
        .stderr_lines()
        .iter()
        .any(|l| l.contains("went away"));
    println!(
        "the abandoned stream was {}",
        if cancelled { "cancelled" } else { "done first" }
    );
    let (status, _) = server.post("/v1/generate", &json!({"prompt": "x", "max_new_tokens": 2}));
    assert_eq!(status, 200, "the queue takes a request again");

    // SIGTERM while a client is reading a stream: the stream ends whole, then exit 0.
    let url = server.url.clone();
    let (started, has_started) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let body = json!({"prompt": "The cat sat", "max_new_tokens": 100, "stream": true});
        let response = ureq::post(&format!("{url}/v1/generate"))
            .send_string(&body.to_string())
            .expect("the stream");
        let mut reader = std::io::BufReader::new(response.into_reader());
        let mut text = String::new();
        std::io::BufRead::read_line(&mut reader, &mut text).unwrap();
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        reader.read_to_string(&mut text).unwrap();
        common::sse_events(&text)
    });
    has_started.recv().unwrap();
    let code = server.terminate(60);
    assert_eq!(code, Some(0), "SIGTERM exits 0");
    let events = reader.join().unwrap();
    assert_eq!(
        events.last().expect("events")["done"],
        true,
        "the stream in flight ended whole"
    );
    assert_eq!(events.len(), 101);
}
