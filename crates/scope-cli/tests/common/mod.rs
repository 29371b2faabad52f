//! What the binary's tests share: the fixtures, running `scope` once ([`scope`],
//! [`scope_json`]), and a `scope serve` on the fixture model for the server's tests (started
//! on a free port, killed when dropped, with small JSON and SSE clients).

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)] // each test file uses a part

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const F32_MODEL: &str = "models/tiny-f32";
pub const F32_SAE: &str = "saes/tiny-f32-res/layer_2/width_256/average_l0_20";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn fixture(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

/// A program on the PATH (or at one of the usual Debian paths), or a failure that says how to
/// install it.
pub fn program(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend([
        PathBuf::from("/usr/bin"),
        PathBuf::from("/usr/lib/chromium"),
    ]);
    for dir in &dirs {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{} not found (looked on the PATH, /usr/bin and /usr/lib/chromium): run `cargo xtask setup`, \
         which installs the Debian packages chromium and chromium-driver",
        names.join(" / ")
    );
}

/// `scope ARGS`, offline, to completion.
pub fn scope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scope"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("scope runs")
}

/// The one JSON object `scope ARGS --json --device cpu` prints; the command must succeed.
pub fn scope_json(args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--json", "--device", "cpu"]);
    let out = scope(&all);
    assert!(
        out.status.success(),
        "scope {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// A running server.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    /// Its stderr after the `listening on` line.
    stderr: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    /// `scope serve` on the f32 fixture model and SAE (CPU, a free port) with `extra` flags;
    /// waits until it prints `listening on`.
    pub fn start(extra: &[&str]) -> Server {
        let (model, sae) = (fixture(F32_MODEL), fixture(F32_SAE));
        let mut args = vec![
            "serve", "--model", &model, "--sae", &sae, "--device", "cpu", "--port", "0",
        ];
        args.extend_from_slice(extra);
        Server::start_with(&args, &[])
    }

    /// `scope ARGS…` with `envs`, waiting for `listening on`.
    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scope"))
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("scope serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_secs(180)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        return Server {
                            url: url.trim().to_string(),
                            child,
                            stderr: std::sync::Mutex::new(lines),
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "scope serve did not print `listening on`; stderr:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit code (at most `secs`).
    pub fn terminate(mut self, secs: u64) -> Option<i32> {
        unsafe_free_sigterm(self.child.id());
        for _ in 0..secs * 10 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Lines the server wrote on stderr since it started listening.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .map(|r| r.try_iter().collect())
            .unwrap_or_default()
    }

    /// `GET path`: the status and the JSON body (`Value::Null` when it is not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.send(ureq::get(&format!("{}{path}", self.url)), None)
    }

    /// `POST path` with `body`: the status and the JSON body.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    /// `POST path` with raw bytes as the body.
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let request =
            ureq::post(&format!("{}{path}", self.url)).set("Content-Type", "application/json");
        self.send(request, Some(body))
    }

    /// A request built by the caller (headers, a method), sent with `body`.
    pub fn send(&self, request: ureq::Request, body: Option<&str>) -> (u16, Value) {
        let response = match body {
            Some(body) => request.send_string(body),
            None => request.call(),
        };
        let response = match response {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("the request failed: {e}"),
        };
        let status = response.status();
        let text = response.into_string().expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST path` with `body` (which should ask for `"stream": true`): the status, the
    /// content type and every `data:` event, parsed (`[DONE]` as the string "[DONE]").
    pub fn post_stream(&self, path: &str, body: &Value) -> (u16, String, Vec<Value>) {
        let response = ureq::post(&format!("{}{path}", self.url))
            .set("Content-Type", "application/json")
            .send_string(&body.to_string());
        let response = match response {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("the request failed: {e}"),
        };
        let status = response.status();
        let content_type = response.header("content-type").unwrap_or("").to_string();
        let mut text = String::new();
        response
            .into_reader()
            .read_to_string(&mut text)
            .expect("the stream reads to its end");
        (status, content_type, sse_events(&text))
    }
}

/// The `data:` payloads of an event stream, parsed as JSON (`[DONE]` kept as a string).
pub fn sse_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| {
            let data = data.trim();
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string()))
        })
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM through the `kill` command (no libc in the tests).
fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
