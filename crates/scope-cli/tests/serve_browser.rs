//! The page `scope serve` serves at `/`, driven in a real headless Chromium over the W3C
//! WebDriver protocol (`chromedriver`): inspect a prompt, hover a token, select one of its
//! latents (logit lens), steer it and generate, and check that what the page shows is what the
//! API answers for the same requests.
//!
//! Needs `chromium` and `chromedriver` (Debian packages `chromium`, `chromium-driver`):
//! `cargo xtask setup` installs them. Without them the test fails, it does not skip.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{program, Server};

const PROMPT: &str = "The cat sat on the mat";
/// The key W3C WebDriver gives an element reference under.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

// ---- A tiny WebDriver client ---------------------------------------------------------------

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Polls `check` every 100 ms until it gives a value, failing after `timeout` with `what`.
fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `chromedriver` process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    agent: ureq::Agent,
}

impl Driver {
    fn start() -> Driver {
        let binary = program(&["chromedriver"]);
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(90))
            .build();
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            agent,
        };
        wait_for(Duration::from_secs(30), "chromedriver's /status", || {
            let response = driver.agent.get(&format!("{}/status", driver.url)).call();
            let body: Value = response.ok()?.into_json().ok()?;
            body["value"]["ready"].as_bool().filter(|ready| *ready)
        });
        driver
    }

    /// One WebDriver command: its `value`, or a failure with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.url))
            .set("Content-Type", "application/json");
        let response = match body {
            Some(body) => request.send_string(&body.to_string()),
            None => request.call(),
        };
        match response {
            Ok(response) => {
                let body: Value = response.into_json().expect("WebDriver answers JSON");
                body["value"].clone()
            }
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                panic!("WebDriver {method} {path} -> {status}: {text}")
            }
            Err(e) => panic!("WebDriver {method} {path} failed: {e}"),
        }
    }

    /// A new headless Chromium session.
    fn session(&self) -> Session<'_> {
        let browser = program(&["chromium", "chromium-browser"]);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let value = self.call("POST", "/session", Some(capabilities));
        let id = value["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Session { driver: self, id }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session, deleted (the browser closed) when dropped.
struct Session<'d> {
    driver: &'d Driver,
    id: String,
}

/// An element reference of a session.
#[derive(Clone, Debug)]
struct Element(String);

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn navigate(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn find_all(&self, css: &str) -> Vec<Element> {
        let value = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        value
            .as_array()
            .expect("a list of elements")
            .iter()
            .map(|e| Element(e[ELEMENT_KEY].as_str().expect("an element id").to_string()))
            .collect()
    }

    fn find(&self, css: &str) -> Element {
        let mut found = self.find_all(css);
        assert!(!found.is_empty(), "no element matches {css}");
        found.swap_remove(0)
    }

    fn send_keys(&self, element: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(json!({"text": text})),
        );
    }

    fn clear(&self, element: &Element) {
        self.call(
            "POST",
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        );
    }

    fn click(&self, element: &Element) {
        self.call(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        );
    }

    /// Moves the mouse onto the element's centre (a real hover).
    fn hover(&self, element: &Element) {
        let origin = json!({ ELEMENT_KEY: element.0 });
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{
                "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                "actions": [{"type": "pointerMove", "duration": 0, "origin": origin, "x": 0, "y": 0}],
            }]})),
        );
    }

    /// The rendered text, as a user reads it.
    fn text(&self, element: &Element) -> String {
        let value = self.call("GET", &format!("/element/{}/text", element.0), None);
        value.as_str().unwrap_or_default().to_string()
    }

    fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        let value = self.call(
            "GET",
            &format!("/element/{}/attribute/{name}", element.0),
            None,
        );
        value.as_str().map(str::to_string)
    }

    /// Runs `script` (a function body; `arguments` are `args`) and gives its return value.
    fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The element's `textContent`, exactly (no whitespace folding, unlike `text`).
    fn text_content(&self, css: &str) -> String {
        let value = self.execute(
            "return document.querySelector(arguments[0]).textContent;",
            json!([css]),
        );
        value.as_str().expect("a text content").to_string()
    }

    /// A screenshot of the window, as PNG bytes.
    fn screenshot(&self) -> Vec<u8> {
        let value = self.call("GET", "/screenshot", None);
        base64_decode(value.as_str().expect("a base64 screenshot"))
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.driver.url, self.id);
        let _ = self.driver.agent.delete(&url).call();
    }
}

/// Standard base64 (the screenshot's encoding), without a crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let digit = ALPHABET
            .iter()
            .position(|c| *c == byte)
            .unwrap_or_else(|| panic!("not base64: {:?}", byte as char));
        bits = (bits << 6) | digit as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

// ---- The test ------------------------------------------------------------------------------

fn api(server: &Server, path: &str, body: &Value) -> Value {
    let (status, answer) = server.post(path, body);
    assert_eq!(status, 200, "POST {path} {body}: {answer}");
    answer
}

fn latents_of(entries: &Value) -> Vec<u64> {
    entries
        .as_array()
        .expect("a list of latents")
        .iter()
        .map(|e| e["latent"].as_u64().expect("a latent number"))
        .collect()
}

#[test]
fn the_page_inspects_explains_and_steers_like_the_api() {
    let started = Instant::now();
    // Fail (not skip) before starting anything when the browser is missing.
    program(&["chromium", "chromium-browser"]);
    let driver = Driver::start();
    let server = Server::start(&[]);
    let (status, health) = server.get("/health");
    assert_eq!(status, 200, "{health}");
    let browser = driver.session();
    browser.navigate(&format!("{}/", server.url));

    // The header fills from /health.
    let saes: Vec<String> = health["saes"]
        .as_array()
        .expect("saes")
        .iter()
        .map(|s| s.as_str().expect("an SAE name").to_string())
        .collect();
    wait_for(Duration::from_secs(10), "the SAE select to fill", || {
        (browser.find_all("#sae option").len() == saes.len()).then_some(())
    });
    let select = browser.find("#sae");
    let chosen = browser.execute(
        "return arguments[0].value;",
        json!([{ ELEMENT_KEY: select.0 }]),
    );
    assert_eq!(chosen.as_str(), Some(saes[0].as_str()));
    let model = health["model"].as_str().expect("a model name");
    assert!(browser.text(&browser.find("header")).contains(model));

    // Inspect: one span per token, as many as the API gives for the same prompt.
    let expected = api(
        &server,
        "/v1/latents",
        &json!({"prompt": PROMPT, "sae": saes[0], "top_k": 8}),
    );
    let tokens = expected["tokens"].as_array().expect("tokens");
    let prompt = browser.find("#prompt");
    browser.clear(&prompt);
    browser.send_keys(&prompt, PROMPT);
    browser.click(&browser.find("#inspect"));
    let spans = wait_for(Duration::from_secs(30), "the token spans", || {
        let spans = browser.find_all("#tokens .token");
        (spans.len() == tokens.len()).then_some(spans)
    });
    for (pos, span) in spans.iter().enumerate() {
        assert_eq!(browser.attribute(span, "data-pos"), Some(pos.to_string()));
    }

    // Hover the token with the most latents above the threshold: the side panel lists its
    // top latents, in the API's order.
    let top = expected["top"].as_array().expect("top");
    let pos = (0..top.len())
        .max_by_key(|&i| top[i].as_array().map_or(0, Vec::len))
        .expect("a token");
    let want = latents_of(&top[pos]);
    assert!(
        !want.is_empty(),
        "no token of {PROMPT:?} has a latent above the threshold"
    );
    browser.hover(&spans[pos]);
    let shown: Vec<u64> = wait_for(Duration::from_secs(10), "the token's top latents", || {
        let shown = browser.execute(
            "return [...document.querySelectorAll('#token-detail .latent-link')]
                 .map(l => Number(l.dataset.latent));",
            json!([]),
        );
        let shown: Vec<u64> = shown.as_array()?.iter().filter_map(Value::as_u64).collect();
        (shown.len() == want.len()).then_some(shown)
    });
    assert_eq!(shown, want, "the top latents of token {pos}");

    // Select its top latent: the logit lens shows it, the tokens are shaded by it.
    let latent = want[0];
    browser.click(&browser.find("#token-detail .latent-link"));
    // Read in one script: the panel is redrawn while it loads, which would leave an element
    // found by one WebDriver call stale for the next.
    wait_for(Duration::from_secs(30), "the logit lens", || {
        let number = browser.execute(
            "return document.getElementById('lens-latent')?.textContent ?? '';",
            json!([]),
        );
        (number.as_str()?.trim() == latent.to_string()).then_some(())
    });
    let lens = api(
        &server,
        "/v1/explain",
        &json!({"latent": latent, "top_k": 10, "sae": saes[0]}),
    );
    let bars = |kind: &str| browser.find_all(&format!("#lens .bar.{kind}")).len();
    assert_eq!(
        bars("promoted"),
        lens["promoted"].as_array().expect("promoted").len()
    );
    assert_eq!(
        bars("suppressed"),
        lens["suppressed"].as_array().expect("suppressed").len()
    );
    assert!(bars("promoted") > 0, "no promoted bars: {lens}");
    for kind in ["promoted", "suppressed"] {
        let shown = browser.execute(
            "return [...document.querySelectorAll('#lens .bar.' + arguments[0])]
                 .map(b => Number(b.parentElement.querySelector('.score').textContent));",
            json!([kind]),
        );
        let scores = lens[kind].as_array().expect("scores");
        for (shown, entry) in shown.as_array().expect("scores shown").iter().zip(scores) {
            let (shown, score) = (
                shown.as_f64().expect("a number"),
                entry["score"].as_f64().expect("a score"),
            );
            assert!(
                (shown - score).abs() <= 0.0051,
                "{kind}: the page shows {shown}, the API {score}"
            );
        }
    }
    assert_eq!(
        browser.execute("return document.getElementById('latent').value;", json!([])),
        json!(latent.to_string())
    );
    let values = api(
        &server,
        "/v1/latents",
        &json!({"prompt": PROMPT, "sae": saes[0], "top_k": 8, "latent": latent}),
    )["latent_values"]
        .clone();
    let values: Vec<f64> = values
        .as_array()
        .expect("latent_values")
        .iter()
        .map(|v| v.as_f64().expect("a value"))
        .collect();
    let shaded: Vec<f64> = wait_for(Duration::from_secs(30), "the tokens' shading", || {
        let got = browser.execute(
            "return [...document.querySelectorAll('#tokens .token')].map(s => s.dataset.value ?? null);",
            json!([]),
        );
        got.as_array()?
            .iter()
            .map(|v| v.as_str()?.parse().ok())
            .collect()
    });
    assert_eq!(shaded.len(), values.len());
    for (got, want) in shaded.iter().zip(&values) {
        assert!(
            (got - want).abs() < 1e-4,
            "shading {shaded:?} != latent_values {values:?}"
        );
    }

    // Steer it at +80 and generate: both boxes end with the API's greedy completions.
    browser.click(&browser.find("#add-latent"));
    let rows = browser.find_all("#steer-panel .magnitude");
    assert_eq!(rows.len(), 1, "one steered latent");
    browser.execute(
        "const s = document.querySelector('#steer-panel .magnitude');
         s.value = 80; s.dispatchEvent(new Event('input', {bubbles: true}));",
        json!([]),
    );
    assert!(browser.text(&browser.find("#steer-panel")).contains("80"));
    let max_new = browser.execute(
        "return document.getElementById('max-new-tokens').value;",
        json!([]),
    );
    assert_eq!(max_new, json!("20"));
    browser.click(&browser.find("#generate"));
    wait_for(
        Duration::from_secs(60),
        "both completions to finish",
        || {
            let done = |css: &str| browser.attribute(&browser.find(css), "data-done");
            (done("#default-out").as_deref() == Some("true")
                && done("#steered-out").as_deref() == Some("true"))
            .then_some(())
        },
    );
    let default = api(
        &server,
        "/v1/generate",
        &json!({"prompt": PROMPT, "max_new_tokens": 20}),
    );
    let steered = api(
        &server,
        "/v1/steer",
        &json!({"prompt": PROMPT, "max_new_tokens": 20, "steer": [{"latent": latent, "magnitude": 80}]}),
    );
    assert_eq!(
        browser.text_content("#default-out"),
        default["completion"].as_str().expect("a completion")
    );
    assert_eq!(
        browser.text_content("#steered-out"),
        steered["completion"].as_str().expect("a completion")
    );
    let error = browser.execute(
        "const e = document.getElementById('error'); return [e.hidden, e.textContent];",
        json!([]),
    );
    assert_eq!(error, json!([true, ""]), "the page shows an error");

    let png = browser.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/serve-page.png");
    std::fs::write(&target, &png).expect("the screenshot is written");
    eprintln!("screenshot: {}", target.display());

    // An API error reaches #error: a latent past the SAE's width. Selecting it asks for its
    // logit lens and its shading at once: the message is whichever of the two fails first.
    let past = 1_000_000u64;
    browser.execute(
        "const l = document.getElementById('latent');
         l.value = arguments[0]; l.dispatchEvent(new Event('change', {bubbles: true}));",
        json!([past]),
    );
    let message = wait_for(Duration::from_secs(10), "the error message", || {
        let text = browser.text(&browser.find("#error"));
        (!text.is_empty()).then_some(text)
    });
    let refusals: Vec<String> = [
        (
            "/v1/explain",
            json!({"latent": past, "top_k": 10, "sae": saes[0]}),
        ),
        (
            "/v1/latents",
            json!({"prompt": PROMPT, "sae": saes[0], "top_k": 8, "latent": past}),
        ),
    ]
    .iter()
    .map(|(path, body)| {
        let (status, answer) = server.post(path, body);
        assert_eq!(status, 400, "POST {path} {body}: {answer}");
        answer["error"]["message"]
            .as_str()
            .expect("a message")
            .to_string()
    })
    .collect();
    assert!(
        refusals.contains(&message),
        "#error shows {message:?}, the API says {refusals:?}"
    );

    drop(browser);
    eprintln!(
        "the browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_page_sends_the_api_key_it_keeps() {
    program(&["chromium", "chromium-browser"]);
    let driver = Driver::start();
    let server = Server::start(&["--api-key", "page-secret"]);
    let browser = driver.session();
    // The page and /health need no key.
    browser.navigate(&format!("{}/", server.url));
    wait_for(Duration::from_secs(10), "the SAE select to fill", || {
        (!browser.find_all("#sae option").is_empty()).then_some(())
    });

    // Without the key, the server's 401 message is shown.
    let prompt = browser.find("#prompt");
    browser.clear(&prompt);
    browser.send_keys(&prompt, PROMPT);
    browser.click(&browser.find("#inspect"));
    let message = wait_for(Duration::from_secs(10), "the 401 message", || {
        let text = browser.text(&browser.find("#error"));
        (!text.is_empty()).then_some(text)
    });
    let (status, refusal) = server.post("/v1/latents", &json!({"prompt": PROMPT}));
    assert_eq!(status, 401, "{refusal}");
    assert_eq!(
        message,
        refusal["error"]["message"].as_str().expect("a message")
    );
    assert!(browser.find_all("#tokens .token").is_empty());

    // With it, the same click inspects, and the error goes away.
    browser.send_keys(&browser.find("#api-key"), "page-secret");
    browser.click(&browser.find("#inspect"));
    wait_for(Duration::from_secs(30), "the token spans", || {
        (!browser.find_all("#tokens .token").is_empty()).then_some(())
    });
    let error = browser.execute(
        "const e = document.getElementById('error'); return [e.hidden, e.textContent];",
        json!([]),
    );
    assert_eq!(error, json!([true, ""]));

    // The key outlives a reload (localStorage).
    browser.navigate(&format!("{}/", server.url));
    let kept = browser.execute(
        "return document.getElementById('api-key').value;",
        json!([]),
    );
    assert_eq!(kept, json!("page-secret"));
}
