//! `--requests FILE.jsonl`: many generation requests through the engine, one JSON line out
//! per request as it finishes.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::args::GenerationArgs;
use crate::output::{GenerateReport, LatentValue, SteeringReport};
use crate::session::{engine_limits, engine_mode, sampling, Session};

/// One line of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    prompt: String,
    #[serde(default)]
    steer: Vec<SteerPair>,
    max_new_tokens: Option<usize>,
    sample: Option<bool>,
    temperature: Option<f64>,
    top_k: Option<i64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    chat: Option<bool>,
    top_latents: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SteerPair {
    latent: i64,
    magnitude: f64,
}

/// What is printed for a request: `scope steer --json`'s object plus its id.
#[derive(Debug, Serialize)]
struct Done<'a> {
    id: &'a str,
    finish_reason: &'static str,
    #[serde(flatten)]
    report: GenerateReport,
    /// With `top_latents`: per new token, the SAE's most active latents where it was
    /// predicted.
    #[serde(skip_serializing_if = "Option::is_none")]
    latents: Option<Vec<Vec<LatentValue>>>,
}

/// What is printed for a request that could not run.
#[derive(Debug, Serialize)]
struct Failed<'a> {
    id: Option<&'a str>,
    /// 1-based line of the file.
    line: usize,
    error: String,
}

/// Reads `path`, runs every good line through the engine (at most `--max-batch` at once),
/// and prints one JSON line per line of the file as each finishes; a bad line gets
/// `{"id", "line", "error"}` and the others still run, and then the command fails (exit 1)
/// saying how many did.
pub fn run(
    session: &Session,
    sae: Option<&scope::SaeAt>,
    args: &GenerationArgs,
    path: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the requests file {}", path.display()))?;
    let (mut requests, mut lines, mut failed, mut done) = (Vec::new(), Vec::new(), 0, 0);
    for (index, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match prepare(session, args, raw) {
            Ok(request) => {
                requests.push(request);
                lines.push(index + 1);
            }
            Err(e) => {
                failed += 1;
                print_failure(loose_id(raw).as_deref(), index + 1, &e)?;
            }
        }
    }
    if requests.is_empty() && failed == 0 {
        bail!("no requests in {}", path.display());
    }
    let context = requests
        .iter()
        .map(|r| r.prompt.len() + r.max_new_tokens)
        .max()
        .unwrap_or(1);
    let rows = usize::try_from(args.max_batch)
        .unwrap_or(1)
        .min(requests.len().max(1));
    let limits = engine_limits(&session.model, rows, context, args.cache_gib)?;
    let mode = engine_mode(&session.model, &args.decode)?;
    let mut engine =
        scope_engine::Engine::with_mode(&session.model, limits, mode).context("--decode")?;
    let decode = mode.decode_name();
    let bar = indicatif::ProgressBar::new(requests.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} requests {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (start, mut tokens) = (Instant::now(), 0usize);
    let mut outcome = Ok(());
    scope::steer_many(&mut engine, sae, &requests, &mut |request, result| {
        let index = requests
            .iter()
            .position(|r| std::ptr::eq(r, request))
            .unwrap_or(0);
        let printed = match result {
            Ok(finished) => {
                done += 1;
                tokens += finished.tokens.len();
                report(session, request, finished, decode)
            }
            Err(e) => {
                failed += 1;
                print_failure(Some(&request.id), lines[index], &anyhow::Error::new(e))
            }
        };
        if let Err(e) = printed {
            outcome = Err(e);
        }
        bar.inc(1);
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.1} tok/s", tokens as f64 / seconds));
    })?;
    bar.finish_and_clear();
    outcome?;
    if failed > 0 {
        bail!(
            "{failed} of {} requests in {} failed (see their lines on stdout)",
            failed + done,
            path.display()
        );
    }
    Ok(())
}

/// A line parsed, encoded and checked into a request.
fn prepare(session: &Session, args: &GenerationArgs, raw: &str) -> Result<scope::SteerRequest> {
    let line: Line = serde_json::from_str(raw).context("not a request object")?;
    let prompt = session.encode_prompt(&line.prompt, line.chat.unwrap_or(args.chat))?;
    let max_new_tokens = line.max_new_tokens.unwrap_or(args.max_new_tokens);
    session.check_fits(prompt.len(), max_new_tokens)?;
    Ok(scope::SteerRequest {
        id: line.id,
        prompt,
        steer: line.steer.iter().map(|s| (s.latent, s.magnitude)).collect(),
        max_new_tokens,
        top_latents: line.top_latents,
        sampling: sampling(
            line.sample.unwrap_or(args.sample),
            line.temperature.unwrap_or(args.temperature),
            line.top_k.unwrap_or(args.top_k),
            line.top_p.unwrap_or(args.top_p),
            line.seed.unwrap_or(args.seed),
        )?,
    })
}

/// The `id` of a line that did not parse as a request, when it has a string one.
fn loose_id(raw: &str) -> Option<String> {
    let value: Value = serde_json::from_str(raw).ok()?;
    value.get("id")?.as_str().map(str::to_string)
}

fn report(
    session: &Session,
    request: &scope::SteerRequest,
    finished: scope_engine::Finished,
    decode: &'static str,
) -> Result<()> {
    let latents = request.top_latents.and_then(|_| {
        let readings = finished.readouts.into_iter().next()?;
        Some(
            readings
                .into_iter()
                .map(|reading| {
                    reading
                        .into_iter()
                        .map(|(latent, value)| LatentValue {
                            latent,
                            value: f64::from(value),
                        })
                        .collect()
                })
                .collect(),
        )
    });
    let mut report = GenerateReport::new(session, finished.prompt, finished.tokens, decode)?;
    report.steering = SteeringReport::of(&request.steer);
    print_line(&Done {
        id: &request.id,
        finish_reason: finished.reason.name(),
        report,
        latents,
    })
}

fn print_failure(id: Option<&str>, line: usize, error: &anyhow::Error) -> Result<()> {
    print_line(&Failed {
        id,
        line,
        error: crate::output::one_line(error),
    })
}

/// One JSON line on stdout, flushed, so that a reader sees each request as it finishes.
fn print_line<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
