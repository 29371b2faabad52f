//! `cargo xtask load [--clients 64] [--requests 4] [--max-new-tokens 16]`: `scope serve` on the
//! fixture model under concurrent clients, with plain std HTTP/1.1 (`Connection: close`) and a
//! small JSON reader, so that it builds with the rest of xtask before libtorch exists.
//!
//! Every client thread sends its requests one after the other, all threads at once: greedy
//! steering (some streamed, some cancelled mid-stream), latents, patches and malformed bodies,
//! chosen by the request's index. It prints latencies, generated tokens/s and the statuses, and
//! fails when the server answers 5xx, drops a connection, accepts a malformed request, dies,
//! gives a steered output other than `scope steer --requests` gives, or keeps requests or memory
//! after the run. It sends SIGTERM while a stream is in flight: the stream must finish and the
//! server exit 0. Then, on a server of the benchmarks' `small` shape, it compares 16 concurrent
//! steered streams with one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use crate::{cargo, project_root, run_checked, setup, Failure, Result};

const MODEL: &str = "fixtures/models/tiny-f32";
const SAE: &str = "fixtures/saes/tiny-f32-res/layer_2/width_256/average_l0_20";
/// How much the server's RSS may grow over the run.
const RSS_SLACK_KIB: u64 = 64 * 1024;
/// The speed comparison: this many concurrent streams against one, this long each.
const SPEED_STREAMS: usize = 16;
const SPEED_TOKENS: usize = 64;
const SPEED_ROUNDS: usize = 5;
/// The stream in flight when the server gets SIGTERM (the fixture model holds 128 positions).
const LAST_STREAM_TOKENS: usize = 100;

const PROMPTS: [&str; 3] = [
    "Would you be able to travel through time using a wormhole?",
    "Physics says time-travel through a wormhole needs enormous energy.",
    "Dogs are loyal friends, and my dog loves to travel.",
];
/// Steering vectors as (latent, magnitude) pairs.
const STEERINGS: [&[(i64, f64)]; 4] = [
    &[(51, 8.0)],
    &[(183, 20.0)],
    &[(5, 60.0)],
    &[(51, 4.0), (183, -10.0)],
];
/// Patches as (base prompt, source prompt, latent).
const PATCHES: [(usize, usize, i64); 2] = [(1, 0, 183), (2, 0, 51)];

/// `cargo xtask load`'s flags.
#[derive(Debug, Clone, Copy)]
struct Options {
    clients: usize,
    requests: usize,
    max_new_tokens: usize,
}

impl Options {
    fn from_args(args: &[&str]) -> Result<Options> {
        let mut options = Options {
            clients: 64,
            requests: 4,
            max_new_tokens: 16,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (*arg, None),
            };
            let slot = match flag {
                "--clients" => &mut options.clients,
                "--requests" => &mut options.requests,
                "--max-new-tokens" => &mut options.max_new_tokens,
                _ => {
                    return Err(Failure::with_code(
                        format!("load: unknown flag {arg}\nusage: cargo xtask load [--clients 64] [--requests 4] [--max-new-tokens 16]"),
                        2,
                    ))
                }
            };
            let value = inline
                .or_else(|| args.next().copied())
                .ok_or_else(|| Failure::with_code(format!("load: {flag} needs a value"), 2))?;
            *slot = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Failure::with_code(
                    format!("load: {flag} wants a positive integer, not {value}"),
                    2,
                )
            })?;
        }
        Ok(options)
    }
}

pub fn run(args: &[&str]) -> Result {
    let options = Options::from_args(args)?;
    setup::ensure()?;
    let root = project_root();
    for path in [MODEL, SAE] {
        if !root.join(path).exists() {
            return Err(Failure::new(format!(
                "{path} is missing: restore fixtures/ from git or run `cargo xtask fixtures`"
            )));
        }
    }
    println!("load: building the release binary ...");
    run_checked(
        cargo().args(["build", "--quiet", "--release", "-p", "scope-cli"]),
        "cargo build --release -p scope-cli",
    )?;
    let scope = root.join("target/release/scope");
    let fixture = ["--model", MODEL, "--sae", SAE];
    let mut server = ServerProcess::start(&scope, &root, &fixture)?;
    println!(
        "load: scope serve (pid {}) listening on {}",
        server.pid(),
        server.addr
    );
    let outcome = drive(&mut server, &scope, &root, options).map_err(|failure| {
        Failure::new(format!(
            "{}\nthe server's last stderr lines:\n{}",
            failure.message,
            server.log_tail(30)
        ))
    });
    drop(server);
    let speed = speed_at_small_shape(&scope, &root);
    match (outcome, speed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(failure), _) | (Ok(()), Err(failure)) => Err(failure),
    }
}

/// Where the benchmarks' `small` model and SAE are written (random weights, f32).
const SMALL_CHECKPOINT: &str = "target/load-small";

/// 16 concurrent steered streams against one on a server of the benchmarks' `small` shape
/// (hidden 512, 8 layers, vocab 32000, 4096 latents at layer 6), which `race
/// --write-checkpoint` writes once under `target/`.
fn speed_at_small_shape(scope: &Path, root: &Path) -> Result {
    let dir = root.join(SMALL_CHECKPOINT);
    if !dir.join("model/config.json").exists() || !dir.join("sae/params.npz").exists() {
        println!("load: writing the small-shape checkpoint to {SMALL_CHECKPOINT} ...");
        let race = crate::bench::build_race()?;
        let dir_arg = dir.display().to_string();
        run_checked(
            Command::new(race).args(["--size", "small", "--write-checkpoint", &dir_arg]),
            "race --write-checkpoint",
        )?;
    }
    let (model, sae) = (dir.join("model"), dir.join("sae"));
    let (model, sae) = (model.display().to_string(), sae.display().to_string());
    let args = [
        "--model",
        model.as_str(),
        "--sae",
        sae.as_str(),
        "--layer",
        "6",
    ];
    let server = ServerProcess::start(scope, root, &args)?;
    println!(
        "load: scope serve on the small shape (pid {}) on {}",
        server.pid(),
        server.addr
    );
    speed(&server.addr).map_err(|failure| {
        Failure::new(format!(
            "{}\nthe server's last stderr lines:\n{}",
            failure.message,
            server.log_tail(30)
        ))
    })
}

/// Everything after the server is listening; failures are collected and reported together.
fn drive(server: &mut ServerProcess, scope: &Path, root: &Path, options: Options) -> Result {
    let addr = server.addr.clone();
    let mut failures = Vec::new();

    // Warm-up: every distinct request once, which also gives the latents and patch references.
    let references = warm_up(&addr, options.max_new_tokens)?;
    let rss_before = server.rss_kib()?;
    let health = health(&addr)?;
    println!(
        "load: warm-up done; RSS {:.1} MiB; /health {}",
        mib(rss_before),
        health.text
    );

    // The load.
    let total = options.clients * options.requests;
    println!(
        "load: {} clients x {} requests ({total}), max_new_tokens {} ...",
        options.clients, options.requests, options.max_new_tokens
    );
    let barrier = Arc::new(Barrier::new(options.clients + 1));
    let references = Arc::new(references);
    let handles: Vec<_> = (0..options.clients)
        .map(|client| {
            let (addr, barrier, references) = (addr.clone(), barrier.clone(), references.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..options.requests)
                    .map(|r| {
                        let index = client * options.requests + r;
                        one_request(&addr, index, options.max_new_tokens, &references)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(total);
    for handle in handles {
        match handle.join() {
            Ok(mut done) => outcomes.append(&mut done),
            Err(_) => failures.push("a client thread panicked".to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    outcomes.sort_by_key(|o| o.index);

    report(&outcomes, elapsed);
    check_outcomes(&outcomes, &mut failures);

    // Steered outputs against the CLI's batch mode.
    let cli = cli_steer_outputs(scope, root, options.max_new_tokens)?;
    let mut compared = 0;
    let steered = outcomes
        .iter()
        .filter_map(|o| match (&o.kind, &o.output_ids) {
            (Kind::Steer { variant, .. }, Some(ids)) => Some((o.index.to_string(), *variant, ids)),
            _ => None,
        });
    let warm = references
        .steer
        .iter()
        .enumerate()
        .map(|(variant, ids)| (format!("warm-up {variant}"), variant, ids));
    for (what, variant, ids) in steered.chain(warm) {
        compared += 1;
        match cli.get(&variant) {
            Some(want) if want == ids => {}
            Some(want) => failures.push(format!(
                "request {what} (steer variant {variant}): output_ids {ids:?}, but `scope steer --requests` gives {want:?}"
            )),
            None => failures.push(format!(
                "`scope steer --requests` printed no line for variant {variant}"
            )),
        }
    }
    println!("load: {compared} greedy steered outputs compared with `scope steer --requests`");

    // The server after the run.
    if !server.alive() {
        failures.push("the server process died during the run".to_string());
        return Err(Failure::new(failures.join("\n")));
    }
    let idle = wait_idle(&addr)?;
    println!("load: /health after the run: {}", idle.text);
    if !idle.is_idle() {
        failures.push(format!(
            "/health after the run still counts requests (want running 0, waiting 0, in_flight 0): {}",
            idle.text
        ));
    }
    let rss_after = server.rss_kib()?;
    println!(
        "load: RSS before {:.1} MiB, after {:.1} MiB (limit {:.1} MiB)",
        mib(rss_before),
        mib(rss_after),
        mib(rss_before + RSS_SLACK_KIB)
    );
    if rss_after > rss_before + RSS_SLACK_KIB {
        failures.push(format!(
            "the server's RSS grew from {:.1} MiB to {:.1} MiB (more than 64 MiB)",
            mib(rss_before),
            mib(rss_after)
        ));
    }

    // SIGTERM while a stream is in flight: the stream must finish, the server exit 0.
    let (started_tx, started) = mpsc::channel();
    let in_flight = {
        let (addr, body) = (addr.clone(), steer_body(0, LAST_STREAM_TOKENS, true));
        std::thread::spawn(move || http_after_first_event(&addr, "/v1/steer", &body, started_tx))
    };
    let _ = started.recv_timeout(Duration::from_secs(60));
    match server.terminate(60)? {
        Some(0) => println!("load: SIGTERM: the server exited 0"),
        Some(code) => failures.push(format!("after SIGTERM the server exited {code}, not 0")),
        None => failures.push(
            "the server did not exit within 60 s of SIGTERM (or was killed by a signal)"
                .to_string(),
        ),
    }
    match in_flight.join() {
        Ok(Ok(reply)) if reply.status == 200 && Stream::parse(&reply.body).done.is_some() => {
            println!(
                "load: the stream in flight at SIGTERM finished ({} tokens)",
                Stream::parse(&reply.body).tokens.len()
            );
        }
        Ok(Ok(reply)) => failures.push(format!(
            "the stream in flight at SIGTERM did not finish: status {}, {}",
            reply.status,
            truncate(&reply.body, 400)
        )),
        Ok(Err(e)) => failures.push(format!("the stream in flight at SIGTERM broke: {e}")),
        Err(_) => failures.push("the SIGTERM stream's thread panicked".to_string()),
    }

    if failures.is_empty() {
        println!("load: all checks passed");
        Ok(())
    } else {
        Err(Failure::new(format!(
            "load: {} check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// The requests.

/// What a request of the load is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Greedy `/v1/steer`; `variant` indexes `steer_variant`.
    Steer {
        variant: usize,
        stream: bool,
    },
    /// A streamed `/v1/steer` closed after `events` events.
    Cancel {
        variant: usize,
        events: usize,
    },
    Latents {
        prompt: usize,
    },
    Patch {
        variant: usize,
    },
    /// Must be refused with 400.
    Malformed {
        case: usize,
    },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Steer { stream: false, .. } => "steer",
            Kind::Steer { stream: true, .. } => "steer (streamed)",
            Kind::Cancel { .. } => "steer (cancelled)",
            Kind::Latents { .. } => "latents",
            Kind::Patch { .. } => "patch",
            Kind::Malformed { .. } => "malformed",
        }
    }
}

/// The steer variants: every prompt with every steering vector.
const VARIANTS: usize = PROMPTS.len() * STEERINGS.len();

/// The request with this index: of every 20, 2 malformed, 2 cancelled streams, 2 latents,
/// 2 patches, 12 steered generations of which 2 streamed (4 of 14 generations streamed).
fn plan(index: usize) -> Kind {
    let (round, slot) = (index / 20, index % 20);
    let variant = (round * 7 + slot) % VARIANTS;
    match slot {
        0 | 10 => Kind::Malformed {
            case: (round * 2 + slot / 10) % MALFORMED_CASES,
        },
        5 | 15 => Kind::Cancel {
            variant,
            events: 1 + slot / 10,
        },
        3 | 13 => Kind::Latents {
            prompt: (round + slot / 10) % PROMPTS.len(),
        },
        8 | 18 => Kind::Patch {
            variant: (round + slot / 10) % PATCHES.len(),
        },
        1 | 11 => Kind::Steer {
            variant,
            stream: true,
        },
        _ => Kind::Steer {
            variant,
            stream: false,
        },
    }
}

/// A steer variant's prompt and steering.
fn steer_variant(variant: usize) -> (&'static str, &'static [(i64, f64)]) {
    (
        PROMPTS[variant % PROMPTS.len()],
        STEERINGS[variant / PROMPTS.len() % STEERINGS.len()],
    )
}

fn steer_json(steering: &[(i64, f64)]) -> String {
    let pairs: Vec<String> = steering
        .iter()
        .map(|(latent, magnitude)| format!(r#"{{"latent": {latent}, "magnitude": {magnitude:?}}}"#))
        .collect();
    format!("[{}]", pairs.join(", "))
}

fn steer_body(variant: usize, max_new_tokens: usize, stream: bool) -> String {
    let (prompt, steering) = steer_variant(variant);
    format!(
        r#"{{"prompt": {}, "steer": {}, "max_new_tokens": {max_new_tokens}, "stream": {stream}}}"#,
        quote(prompt),
        steer_json(steering)
    )
}

fn latents_body(prompt: usize) -> String {
    format!(r#"{{"prompt": {}, "top_k": 3}}"#, quote(PROMPTS[prompt]))
}

fn patch_body(variant: usize) -> String {
    let (base, source, latent) = PATCHES[variant];
    format!(
        r#"{{"base": {}, "source": {}, "latent": {latent}, "top_k": 5}}"#,
        quote(PROMPTS[base]),
        quote(PROMPTS[source])
    )
}

const MALFORMED_CASES: usize = 4;

/// A malformed request: (path, body, what is wrong).
fn malformed(case: usize, max_new_tokens: usize) -> (&'static str, String, &'static str) {
    let prompt = quote(PROMPTS[0]);
    match case {
        0 => (
            "/v1/steer",
            format!(r#"{{"prompt": {prompt}, "steer": [{{"latent": 51, "magn"#),
            "bad JSON",
        ),
        1 => (
            "/v1/latents",
            format!(r#"{{"prompt": {prompt}, "top_k": 3, "colour": "blue"}}"#),
            "an unknown field",
        ),
        2 => (
            "/v1/steer",
            format!(
                r#"{{"prompt": {prompt}, "steer": [{{"latent": 999999, "magnitude": 8.0}}], "max_new_tokens": {max_new_tokens}}}"#
            ),
            "steering latent 999999",
        ),
        _ => (
            "/v1/patch",
            format!(
                r#"{{"base": {}, "source": {prompt}, "latent": 999999}}"#,
                quote(PROMPTS[1])
            ),
            "patch latent 999999",
        ),
    }
}

/// What the warm-up gave: per steer variant its output ids, per prompt the latents
/// (`token_ids`, `max_latent`), per patch its top token ids.
#[derive(Debug, Default)]
struct References {
    steer: Vec<Vec<i64>>,
    latents: Vec<(Vec<i64>, Vec<i64>)>,
    patch: Vec<Vec<i64>>,
}

fn latents_key(body: &Json) -> Option<(Vec<i64>, Vec<i64>)> {
    Some((
        body.get("token_ids")?.ints()?,
        body.get("max_latent")?.ints()?,
    ))
}

fn patch_key(body: &Json) -> Option<Vec<i64>> {
    body.get("top")?
        .as_array()?
        .iter()
        .map(|t| t.get("token_id")?.as_i64())
        .collect()
}

/// Each distinct request once, concurrently, plus one streamed steer; all must succeed.
fn warm_up(addr: &str, max_new_tokens: usize) -> Result<References> {
    let post_json = |path: &str, body: String| -> Result<Json> {
        let reply = http(addr, "POST", path, Some(&body))
            .map_err(|e| Failure::new(format!("warm-up: POST {path}: {e}")))?;
        if reply.status != 200 {
            return Err(Failure::new(format!(
                "warm-up: POST {path} {body}: status {}: {}",
                reply.status, reply.body
            )));
        }
        Json::parse(&reply.body)
            .ok_or_else(|| Failure::new(format!("warm-up: POST {path}: not JSON: {}", reply.body)))
    };
    let mut references = References::default();
    let steered: Vec<Result<Json>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..VARIANTS)
            .map(|v| s.spawn(move || post_json("/v1/steer", steer_body(v, max_new_tokens, false))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Failure::new("warm-up thread panicked")))
            })
            .collect()
    });
    for (variant, body) in steered.into_iter().enumerate() {
        let body = body?;
        let ids = body.get("output_ids").and_then(Json::ints).ok_or_else(|| {
            Failure::new(format!(
                "warm-up: /v1/steer variant {variant}: no output_ids"
            ))
        })?;
        references.steer.push(ids);
    }
    for prompt in 0..PROMPTS.len() {
        let body = post_json("/v1/latents", latents_body(prompt))?;
        references.latents.push(
            latents_key(&body).ok_or_else(|| {
                Failure::new("warm-up: /v1/latents gave no token_ids / max_latent")
            })?,
        );
    }
    for variant in 0..PATCHES.len() {
        let body = post_json("/v1/patch", patch_body(variant))?;
        references.patch.push(
            patch_key(&body)
                .ok_or_else(|| Failure::new("warm-up: /v1/patch gave no top[].token_id"))?,
        );
    }
    let reply = http(
        addr,
        "POST",
        "/v1/steer",
        Some(&steer_body(0, max_new_tokens, true)),
    )
    .map_err(|e| Failure::new(format!("warm-up: streamed /v1/steer: {e}")))?;
    let stream = Stream::parse(&reply.body);
    if reply.status != 200 || stream.done.is_none() {
        return Err(Failure::new(format!(
            "warm-up: streamed /v1/steer: status {}, no final event: {}",
            reply.status, reply.body
        )));
    }
    Ok(references)
}

/// What happened to one request.
#[derive(Debug)]
struct Outcome {
    index: usize,
    kind: Kind,
    /// None when the connection failed before a status arrived.
    status: Option<u16>,
    latency: Duration,
    /// New tokens received.
    tokens: usize,
    /// A steer's output ids (the final event's when streamed).
    output_ids: Option<Vec<i64>>,
    /// A connection error, or what is wrong with a 200 answer.
    problem: Option<String>,
    /// A cancelled stream closed before its final event.
    cut: bool,
}

fn one_request(addr: &str, index: usize, max_new_tokens: usize, refs: &References) -> Outcome {
    let kind = plan(index);
    let started = Instant::now();
    let mut outcome = Outcome {
        index,
        kind,
        status: None,
        latency: Duration::ZERO,
        tokens: 0,
        output_ids: None,
        problem: None,
        cut: false,
    };
    let result = match kind {
        Kind::Steer { variant, stream } => http(
            addr,
            "POST",
            "/v1/steer",
            Some(&steer_body(variant, max_new_tokens, stream)),
        )
        .map(|reply| {
            outcome.status = Some(reply.status);
            if reply.status != 200 {
                outcome.problem = Some(format!("status {}: {}", reply.status, reply.body));
            } else if stream {
                check_stream(&reply, &mut outcome);
            } else {
                match Json::parse(&reply.body).and_then(|b| steer_ids(&b)) {
                    Some((prompt, output)) => {
                        outcome.tokens = output.len().saturating_sub(prompt.len());
                        outcome.output_ids = Some(output);
                    }
                    None => {
                        outcome.problem = Some(format!("no prompt_ids/output_ids: {}", reply.body))
                    }
                }
            }
        }),
        Kind::Cancel { variant, events } => http_cancel(
            addr,
            "/v1/steer",
            &steer_body(variant, max_new_tokens, true),
            events,
        )
        .map(|(status, seen, cut)| {
            outcome.status = Some(status);
            outcome.tokens = seen;
            outcome.cut = cut;
            if status != 200 {
                outcome.problem = Some(format!("status {status}"));
            }
        }),
        Kind::Latents { prompt } => http(addr, "POST", "/v1/latents", Some(&latents_body(prompt)))
            .map(|reply| {
                outcome.status = Some(reply.status);
                let key = Json::parse(&reply.body).and_then(|b| latents_key(&b));
                if reply.status != 200 || key.as_ref() != refs.latents.get(prompt) {
                    outcome.problem = Some(format!(
                        "status {}, not the warm-up's token_ids/max_latent: {}",
                        reply.status, reply.body
                    ));
                }
            }),
        Kind::Patch { variant } => {
            http(addr, "POST", "/v1/patch", Some(&patch_body(variant))).map(|reply| {
                outcome.status = Some(reply.status);
                let key = Json::parse(&reply.body).and_then(|b| patch_key(&b));
                if reply.status != 200 || key.as_ref() != refs.patch.get(variant) {
                    outcome.problem = Some(format!(
                        "status {}, not the warm-up's top tokens: {}",
                        reply.status, reply.body
                    ));
                }
            })
        }
        Kind::Malformed { case } => {
            let (path, body, what) = malformed(case, max_new_tokens);
            http(addr, "POST", path, Some(&body)).map(|reply| {
                outcome.status = Some(reply.status);
                let typed = Json::parse(&reply.body)
                    .and_then(|b| Some(b.get("error")?.get("type")?.as_str()?.to_string()));
                if reply.status != 400 || typed.as_deref() != Some("invalid_request_error") {
                    outcome.problem = Some(format!(
                        "{what} on {path}: want 400 invalid_request_error, got {}: {}",
                        reply.status, reply.body
                    ));
                }
            })
        }
    };
    outcome.latency = started.elapsed();
    if let Err(e) = result {
        outcome.problem = Some(format!("connection error: {e}"));
    }
    outcome
}

fn steer_ids(body: &Json) -> Option<(Vec<i64>, Vec<i64>)> {
    Some((
        body.get("prompt_ids")?.ints()?,
        body.get("output_ids")?.ints()?,
    ))
}

/// A streamed steer's answer: an event per new token, then the final object.
fn check_stream(reply: &Reply, outcome: &mut Outcome) {
    if !reply.content_type.starts_with("text/event-stream") {
        outcome.problem = Some(format!("content type {:?}", reply.content_type));
        return;
    }
    let stream = Stream::parse(&reply.body);
    outcome.tokens = stream.tokens.len();
    match stream.done.as_ref().and_then(steer_ids) {
        Some((prompt, output)) => {
            if output.len() != prompt.len() + stream.tokens.len()
                || output[prompt.len()..] != stream.tokens[..]
            {
                outcome.problem = Some(format!(
                    "the streamed token ids {:?} are not the final output_ids' new tokens {:?}",
                    stream.tokens,
                    &output[prompt.len().min(output.len())..]
                ));
            }
            outcome.output_ids = Some(output);
        }
        None => {
            outcome.problem = Some(format!(
                "no final event with prompt_ids/output_ids: {}",
                reply.body
            ))
        }
    }
}

/// The `data:` events of a `/v1/steer` stream.
#[derive(Debug, Default)]
struct Stream {
    /// `token_id` of each token event.
    tokens: Vec<i64>,
    /// The final event (`"done": true`).
    done: Option<Json>,
}

impl Stream {
    fn parse(body: &str) -> Stream {
        let mut stream = Stream::default();
        for data in body.lines().filter_map(|l| l.strip_prefix("data:")) {
            let Some(event) = Json::parse(data.trim()) else {
                continue;
            };
            if event.get("done") == Some(&Json::Bool(true)) {
                stream.done = Some(event);
            } else if let Some(id) = event.get("token_id").and_then(Json::as_i64) {
                stream.tokens.push(id);
            }
        }
        stream
    }
}

/// Prints the statuses, latencies and throughput of the run.
fn report(outcomes: &[Outcome], elapsed: f64) {
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        let key = match o.status {
            Some(s) => s.to_string(),
            None => "connection error".to_string(),
        };
        *statuses.entry(key).or_default() += 1;
    }
    let counts: Vec<String> = statuses.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    println!(
        "load: {} requests in {elapsed:.2} s; by status: {}",
        outcomes.len(),
        counts.join(", ")
    );
    let mut kinds: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for o in outcomes {
        kinds
            .entry(o.kind.name())
            .or_default()
            .push(o.latency.as_secs_f64() * 1e3);
    }
    let mut answered: Vec<f64> = outcomes
        .iter()
        .filter(|o| !matches!(o.kind, Kind::Cancel { .. } | Kind::Malformed { .. }))
        .map(|o| o.latency.as_secs_f64() * 1e3)
        .collect();
    println!(
        "load: latency of the completed valid requests: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut answered, 50.0),
        percentile(&mut answered, 99.0)
    );
    for (name, mut ms) in kinds {
        println!(
            "load:   {name:<18} {:>4} requests  p50 {:>8.1} ms  p99 {:>8.1} ms",
            ms.len(),
            percentile(&mut ms, 50.0),
            percentile(&mut ms, 99.0)
        );
    }
    let cancels = outcomes
        .iter()
        .filter(|o| matches!(o.kind, Kind::Cancel { .. }));
    let (cancelled, cut) = cancels.fold((0, 0), |(n, c), o| (n + 1, c + usize::from(o.cut)));
    println!("load: {cut} of {cancelled} cancelled streams were closed before their final event");
    let tokens: usize = outcomes.iter().map(|o| o.tokens).sum();
    println!(
        "load: {tokens} generated tokens received in {elapsed:.2} s = {:.1} tok/s aggregate",
        tokens as f64 / elapsed.max(1e-9)
    );
}

/// No 5xx, no connection error, every malformed request refused, every other one answered.
fn check_outcomes(outcomes: &[Outcome], failures: &mut Vec<String>) {
    let mut shown = 0;
    for o in outcomes {
        let Some(problem) = &o.problem else {
            continue;
        };
        shown += 1;
        if shown <= 20 {
            failures.push(format!(
                "request {} ({}): {}",
                o.index,
                o.kind.name(),
                truncate(problem, 400)
            ));
        }
    }
    if shown > 20 {
        failures.push(format!("... and {} more failed requests", shown - 20));
    }
    let server_errors = outcomes
        .iter()
        .filter(|o| o.status.is_some_and(|s| s >= 500))
        .count();
    if server_errors > 0 {
        failures.push(format!("{server_errors} request(s) got a 5xx status"));
    }
    let dropped = outcomes.iter().filter(|o| o.status.is_none()).count();
    if dropped > 0 {
        failures.push(format!("{dropped} request(s) got a connection error"));
    }
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o.kind, Kind::Malformed { .. }))
        .filter(|o| !o.status.is_some_and(|s| (400..500).contains(&s)))
        .count();
    if accepted > 0 {
        failures.push(format!("{accepted} malformed request(s) did not get a 4xx"));
    }
}

/// The distinct steer variants through `scope steer --requests`: variant → output_ids.
fn cli_steer_outputs(
    scope: &Path,
    root: &Path,
    max_new_tokens: usize,
) -> Result<HashMap<usize, Vec<i64>>> {
    let lines: Vec<String> = (0..VARIANTS)
        .map(|v| {
            let (prompt, steering) = steer_variant(v);
            format!(
                r#"{{"id": "v{v}", "prompt": {}, "steer": {}, "max_new_tokens": {max_new_tokens}}}"#,
                quote(prompt),
                steer_json(steering)
            )
        })
        .collect();
    let path = std::env::temp_dir().join(format!("scope-load-{}.jsonl", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n")
        .map_err(|e| Failure::new(format!("could not write {}: {e}", path.display())))?;
    let out = Command::new(scope)
        .current_dir(root)
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "steer",
            "--model",
            MODEL,
            "--sae",
            SAE,
            "--device",
            "cpu",
            "--requests",
        ])
        .arg(&path)
        .output()
        .map_err(|e| Failure::new(format!("could not run {}: {e}", scope.display())));
    let _ = std::fs::remove_file(&path);
    let out = out?;
    if !out.status.success() {
        return Err(Failure::new(format!(
            "scope steer --requests failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut found = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(json) = Json::parse(line.trim()) else {
            continue;
        };
        let id = json.get("id").and_then(Json::as_str).unwrap_or("");
        let variant = id.strip_prefix('v').and_then(|v| v.parse().ok());
        if let (Some(variant), Some(ids)) = (variant, json.get("output_ids").and_then(Json::ints)) {
            found.insert(variant, ids);
        }
    }
    Ok(found)
}

/// Aggregate steered tokens/s of `SPEED_STREAMS` concurrent streams against one stream.
fn speed(addr: &str) -> Result {
    let body = |i: usize| {
        format!(
            r#"{{"prompt": {}, "steer": [{{"latent": 51, "magnitude": {:?}}}], "max_new_tokens": {SPEED_TOKENS}, "stream": true}}"#,
            quote(PROMPTS[0]),
            2.0 + i as f64
        )
    };
    let one = |i: usize| -> Result<usize> {
        let reply = http(addr, "POST", "/v1/steer", Some(&body(i)))
            .map_err(|e| Failure::new(format!("speed: streamed /v1/steer: {e}")))?;
        let stream = Stream::parse(&reply.body);
        if reply.status != 200 || stream.done.is_none() {
            return Err(Failure::new(format!(
                "speed: streamed /v1/steer: status {}: {}",
                reply.status,
                truncate(&reply.body, 400)
            )));
        }
        Ok(stream.tokens.len())
    };
    // `streams` concurrent requests: (tokens, seconds).
    let group = |streams: usize| -> Result<(usize, f64)> {
        let started = Instant::now();
        let tokens: Vec<Result<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..streams).map(|i| s.spawn(move || one(i))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Failure::new("speed thread panicked")))
                })
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let mut total = 0;
        for t in tokens {
            total += t?;
        }
        Ok((total, elapsed))
    };
    group(SPEED_STREAMS)?; // warm
    let (mut singles, mut groups) = (Vec::new(), Vec::new());
    let (mut single_tokens, mut group_tokens) = (0, 0);
    for _ in 0..SPEED_ROUNDS {
        let (tokens, secs) = group(1)?;
        singles.push(tokens as f64 / secs);
        single_tokens = tokens;
        let (tokens, secs) = group(SPEED_STREAMS)?;
        groups.push(tokens as f64 / secs);
        group_tokens = tokens;
    }
    let single = percentile(&mut singles, 50.0);
    let concurrent = percentile(&mut groups, 50.0);
    println!(
        "speed (median of {SPEED_ROUNDS}): 1 steered stream ({single_tokens} tokens) {single:.1} tok/s; \
         {SPEED_STREAMS} concurrent ({group_tokens} tokens) {concurrent:.1} tok/s aggregate; ratio {:.2}x",
        concurrent / single
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The server process.

pub(crate) struct ServerProcess {
    child: Child,
    /// `host:port`.
    pub(crate) addr: String,
    /// Its latest stderr lines.
    log: Arc<Mutex<VecDeque<String>>>,
    exited: bool,
}

impl ServerProcess {
    /// Starts `scope serve` with `model_args` (`--model`, `--sae`, …) and waits for
    /// `listening on`.
    pub(crate) fn start(scope: &Path, root: &Path, model_args: &[&str]) -> Result<ServerProcess> {
        let mut child = Command::new(scope)
            .current_dir(root)
            .env("HF_HUB_OFFLINE", "1")
            .arg("serve")
            .args(model_args)
            .args(["--device", "cpu", "--port", "0", "--max-batch", "16"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::new(format!("could not start {}: {e}", scope.display())))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            // Keeps draining stderr so that the server never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr)
                    .lines()
                    .map_while(std::result::Result::ok)
                {
                    let _ = tx.send(line.clone());
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() == 200 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let mut server = ServerProcess {
            child,
            addr: String::new(),
            log,
            exited: false,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("listening on ") {
                        let url = url.trim();
                        server.addr = url
                            .strip_prefix("http://")
                            .unwrap_or(url)
                            .trim_end_matches('/')
                            .to_string();
                        return Ok(server);
                    }
                }
                Err(_) => {
                    return Err(Failure::new(format!(
                        "scope serve did not print `listening on`; stderr:\n{}",
                        server.log_tail(50)
                    )))
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// VmRSS from /proc, in KiB.
    fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .map_err(|e| Failure::new(format!("could not read {path}: {e}")))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| Failure::new(format!("no VmRSS in {path}")))
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM (through `kill`: no libc here), then its exit code within `secs`.
    pub(crate) fn terminate(&mut self, secs: u64) -> Result<Option<i32>> {
        run_checked(
            Command::new("kill").args(["-TERM", &self.pid().to_string()]),
            "kill -TERM",
        )?;
        for _ in 0..secs * 10 {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = true;
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(None)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET /health`.
struct Health {
    text: String,
    json: Json,
}

impl Health {
    fn is_idle(&self) -> bool {
        ["running", "waiting", "in_flight"]
            .iter()
            .all(|k| self.json.get(k).and_then(Json::as_i64) == Some(0))
    }
}

fn health(addr: &str) -> Result<Health> {
    let reply = http(addr, "GET", "/health", None)
        .map_err(|e| Failure::new(format!("GET /health: {e}")))?;
    let json = Json::parse(&reply.body)
        .filter(|_| reply.status == 200)
        .ok_or_else(|| {
            Failure::new(format!(
                "GET /health: status {}: {}",
                reply.status, reply.body
            ))
        })?;
    Ok(Health {
        text: reply.body.trim().to_string(),
        json,
    })
}

/// `/health` once it counts no request, or after 15 s.
fn wait_idle(addr: &str) -> Result<Health> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(addr)?;
        if h.is_idle() || Instant::now() > deadline {
            return Ok(h);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Nearest-rank percentile (sorts `values`); 0 when empty.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over a TcpStream, one request a connection.

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let target = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    Ok(stream)
}

fn write_request(
    stream: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        let _ = write!(
            head,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// One request, its whole answer.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut stream = connect(addr)?;
    write_request(&mut stream, addr, method, path, body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw)
}

/// One request, its whole answer; `first` hears when the first `data:` event has arrived (or
/// the answer ended without one).
fn http_after_first_event(
    addr: &str,
    path: &str,
    body: &str,
    first: mpsc::Sender<()>,
) -> std::io::Result<Reply> {
    let mut stream = connect(addr)?;
    write_request(&mut stream, addr, "POST", path, Some(body))?;
    let (mut raw, mut buf, mut told) = (Vec::new(), [0u8; 4096], false);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = first.send(());
                return Err(e);
            }
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !told && find(&raw, b"data:").is_some() {
            let _ = first.send(());
            told = true;
        }
    }
    let _ = first.send(());
    parse_reply(&raw)
}

/// A streamed request closed after `events` `data:` events: its status, the token events seen,
/// and whether it was closed before its final event.
fn http_cancel(
    addr: &str,
    path: &str,
    body: &str,
    events: usize,
) -> std::io::Result<(u16, usize, bool)> {
    let mut stream = connect(addr)?;
    write_request(&mut stream, addr, "POST", path, Some(body))?;
    let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            // The whole answer came before we closed.
            let reply = parse_reply(&raw)?;
            return Ok((reply.status, Stream::parse(&reply.body).tokens.len(), false));
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = find(&raw, b"\r\n\r\n") else {
            continue;
        };
        let status = status_of(&raw[..end])?;
        if status != 200 {
            continue; // read the error to its end
        }
        let seen = count(&raw[end..], b"data:");
        if seen >= events {
            let _ = stream.shutdown(Shutdown::Both);
            let done = find(&raw[end..], b"\"done\"").is_some();
            return Ok((status, seen - usize::from(done), !done));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn status_of(head: &[u8]) -> std::io::Result<u16> {
    let head = String::from_utf8_lossy(head);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("not an HTTP status line: {head:.80}")))
}

fn parse_reply(raw: &[u8]) -> std::io::Result<Reply> {
    let end = find(raw, b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("no HTTP head in {} bytes", raw.len())))?;
    let status = status_of(&raw[..end])?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = raw[end + 4..].to_vec();
    if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    } else if let Some(length) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        if body.len() < length {
            return Err(invalid(format!(
                "the body ended after {} of {length} bytes",
                body.len()
            )));
        }
        body.truncate(length);
    }
    Ok(Reply {
        status,
        content_type: header("content-type").unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end =
            find(data, b"\r\n").ok_or_else(|| invalid("a chunk without its size line".into()))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err(invalid("the chunked body ended early".into()));
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

// ---------------------------------------------------------------------------------------------
// A small JSON reader and writer.

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// The value of the whole `text`, or None when it is not JSON.
    pub fn parse(text: &str) -> Option<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let value = p.value()?;
        p.ws();
        (p.i == p.s.len()).then_some(value)
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Num(x) if x.fract() == 0.0 => Some(*x as i64),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(items) => Some(items),
            _ => None,
        }
    }

    /// An array of integers.
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.as_array()?.iter().map(Json::as_i64).collect()
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.ws();
        let hit = self.s.get(self.i) == Some(&byte);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn word(&mut self, word: &str, value: Json) -> Option<Json> {
        let hit = self.s.get(self.i..)?.starts_with(word.as_bytes());
        hit.then(|| {
            self.i += word.len();
            value
        })
    }

    fn value(&mut self) -> Option<Json> {
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                if self.eat(b'}') {
                    return Some(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    fields.push((key, self.value()?));
                    if self.eat(b'}') {
                        return Some(Json::Obj(fields));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(b']') {
                        return Some(Json::Arr(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Json::Str),
            b't' => self.word("true", Json::Bool(true)),
            b'f' => self.word("false", Json::Bool(false)),
            b'n' => self.word("null", Json::Null),
            _ => {
                let start = self.i;
                while matches!(
                    self.s.get(self.i),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                text.parse().ok().map(Json::Num)
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let text = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        self.i += 4;
        u32::from_str_radix(text, 16).ok()
    }

    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let byte = *self.s.get(self.i)?;
            self.i += 1;
            match byte {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let escape = *self.s.get(self.i)?;
                    self.i += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code)
                                && self.s.get(self.i..self.i + 2) == Some(b"\\u")
                            {
                                self.i += 2;
                                let low = self.hex4()?.checked_sub(0xDC00)?;
                                code = 0x10000 + ((code - 0xD800) << 10) + low;
                            }
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(byte),
            }
        }
    }
}

/// `s` as a JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_json() {
        let v = Json::parse(
            r#" {"a": [1, 2, -3], "s": "x\"\u00e9\ud83d\ude00\n", "o": {"t": true, "n": null}, "f": 1.5e1} "#,
        )
        .expect("valid");
        assert_eq!(v.get("a").and_then(Json::ints), Some(vec![1, 2, -3]));
        assert_eq!(v.get("s").and_then(Json::as_str), Some("x\"é😀\n"));
        assert_eq!(v.get("o").and_then(|o| o.get("t")), Some(&Json::Bool(true)));
        assert_eq!(v.get("f"), Some(&Json::Num(15.0)));
        assert_eq!(Json::parse("{\"a\": 1"), None);
        assert_eq!(Json::parse("[1,]"), None);
        assert_eq!(Json::parse("{} x"), None);
        assert_eq!(Json::parse("[]"), Some(Json::Arr(vec![])));
    }

    #[test]
    fn quotes_round_trip() {
        let s = "a \"b\" \\ c\n\u{1} é";
        assert_eq!(Json::parse(&quote(s)), Some(Json::Str(s.to_string())));
        let body = steer_body(3, 16, true);
        let v = Json::parse(&body).expect("valid body");
        assert_eq!(v.get("stream"), Some(&Json::Bool(true)));
        for case in 1..MALFORMED_CASES {
            assert!(Json::parse(&malformed(case, 16).1).is_some(), "case {case}");
        }
        assert!(Json::parse(&malformed(0, 16).1).is_none());
    }

    #[test]
    fn reads_http_replies() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
            16\r\ndata: {\"token_id\": 5}\n\r\n1\r\n\n\r\n0\r\n\r\n";
        let reply = parse_reply(raw).expect("valid");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "text/event-stream");
        assert_eq!(reply.body, "data: {\"token_id\": 5}\n\n");
        assert_eq!(Stream::parse(&reply.body).tokens, vec![5]);
        let raw = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        let reply = parse_reply(raw).expect("valid");
        assert_eq!((reply.status, reply.body.as_str()), (400, "{}"));
    }

    #[test]
    fn plans_a_mix() {
        let kinds: Vec<Kind> = (0..200).map(plan).collect();
        let n = |f: &dyn Fn(&Kind) -> bool| kinds.iter().filter(|k| f(k)).count();
        assert_eq!(n(&|k| matches!(k, Kind::Malformed { .. })), 20);
        assert_eq!(n(&|k| matches!(k, Kind::Cancel { .. })), 20);
        assert_eq!(n(&|k| matches!(k, Kind::Steer { stream: true, .. })), 20);
        assert_eq!(n(&|k| matches!(k, Kind::Steer { stream: false, .. })), 100);
        for case in 0..MALFORMED_CASES {
            assert!(kinds.contains(&Kind::Malformed { case }));
        }
        for variant in 0..VARIANTS {
            assert!(kinds.contains(&Kind::Steer {
                variant,
                stream: false
            }));
        }
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn options() {
        let o = Options::from_args(&["--clients", "8", "--max-new-tokens=4"]).expect("valid");
        assert_eq!((o.clients, o.requests, o.max_new_tokens), (8, 4, 4));
        assert!(Options::from_args(&["--clients", "0"]).is_err());
        assert!(Options::from_args(&["--bogus"]).is_err());
    }
}
