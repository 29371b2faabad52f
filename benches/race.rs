//! `race`: scope's side of `cargo xtask bench-compare`. Runs the workflows of the Python peer
//! (`../shared/bench/pyvene_baseline.py`) on the same shapes and prints one JSON line per
//! measurement with the same keys:
//!
//! ```text
//! race --size small --device cpu --dtype float32 --batch 4 --seq 128 --new 32 --reps 3
//! ```
//!
//! Timing as the peer: one warm-up, then the median of `reps` runs (generation: `reps / 2`,
//! at least one), synchronising CUDA before each clock read.
//!
//! The `steer_batch` group (peer: `benches/peer_steer_batch.py`) runs the 64 steered requests
//! of [`scope_benches::steer_batch_jobs`] through `scope-engine`, all submitted at once into
//! `--rows` slots (`steer_batch`), and again one after another on an engine of one row
//! (`steer_batch_serial`); `tok_per_s` is the requests' new tokens (all generated: no stop
//! tokens) over the wall time. `--batch`, `--seq` and `--new` do not change it. Without
//! `--only` it runs only where the engine batches (a float32 model on a CPU with AVX2 or
//! AVX-512); elsewhere the engine runs requests one by one anyway, so ask for it by name.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gemma_model::{Batch, DecodeMode};
use scope_benches::{
    id_vec, mean_l0, parse_device, parse_dtype, peak_rss_gib, run_steer_batch, steer_batch_jobs,
    sync, timed, top_k_indices, Size, Workbench, PROMPT_LEN, STEER_BATCH_REQUESTS, STEER_LATENT,
    STEER_MAGNITUDE,
};
use scope_engine::{Engine, EngineMode, Limits};
use serde_json::{json, Value};
use tch::Device;

struct Args {
    size: Size,
    device: String,
    dtype: String,
    batch: i64,
    seq: i64,
    new: usize,
    reps: usize,
    decode: DecodeMode,
    /// The engine's rows (slots) in `steer_batch`.
    rows: usize,
    /// Workflow groups to run (`forward`, `collect`, `generate`, `interchange`,
    /// `steer_batch`); all when empty (`steer_batch` only where the engine batches).
    only: Vec<String>,
    /// Write the `--size` checkpoint here instead of racing.
    write_checkpoint: Option<std::path::PathBuf>,
}

impl Args {
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

const USAGE: &str = "usage: race [--size tiny|small|2b] [--device cpu|cuda] \
    [--dtype float32|bfloat16|float16] [--batch B] [--seq T] [--new N] [--reps R] \
    [--decode auto|eager|fixed|graph|fused] [--rows N] \
    [--only forward,collect,generate,interchange,steer_batch] \
    [--write-checkpoint DIR (the --size model and SAE on disk, then exit)]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        size: Size::Tiny,
        device: if scope_benches::cuda_available() {
            "cuda"
        } else {
            "cpu"
        }
        .into(),
        dtype: "bfloat16".into(),
        batch: 16,
        seq: 128,
        new: 128,
        reps: 5,
        decode: DecodeMode::Auto,
        rows: STEER_BATCH_REQUESTS,
        only: Vec::new(),
        write_checkpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--write-checkpoint" {
            let dir = it.next().context("--write-checkpoint needs a directory")?;
            args.write_checkpoint = Some(dir.into());
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| -> Result<i64> {
            let n: i64 = value
                .parse()
                .with_context(|| format!("{what} must be a positive integer, got `{value}`"))?;
            if n <= 0 {
                bail!("{what} must be a positive integer, got {n}");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--size" => args.size = Size::parse(&value)?,
            "--device" => args.device = value,
            "--dtype" => args.dtype = value,
            "--batch" => args.batch = number("--batch")?,
            "--seq" => args.seq = number("--seq")?,
            "--new" => args.new = number("--new")? as usize,
            "--reps" => args.reps = number("--reps")? as usize,
            "--decode" => args.decode = DecodeMode::parse(&value)?,
            "--rows" => args.rows = number("--rows")? as usize,
            "--only" => {
                args.only = value.split(',').map(|g| g.trim().to_string()).collect();
                let known = [
                    "forward",
                    "collect",
                    "generate",
                    "interchange",
                    "steer_batch",
                ];
                if let Some(bad) = args.only.iter().find(|g| !known.contains(&g.as_str())) {
                    bail!(
                        "unknown workflow group `{bad}` in --only (expected {})",
                        known.join(", ")
                    );
                }
            }
            "--attn" => {} // the peer's flag; scope has one attention implementation (eager)
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// The first new tokens of row 0, to compare decode modes across runs.
fn first_tokens(out: &gemma_model::Generated) -> Vec<i64> {
    out.new_tokens
        .first()
        .map(|row| row.iter().take(8).copied().collect())
        .unwrap_or_default()
}

fn emit(v: Value) {
    println!("{v}");
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn run() -> Result<()> {
    let _guard = tch::no_grad_guard();
    let a = parse_args()?;
    if let Some(dir) = &a.write_checkpoint {
        let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/models/tiny-f32/tokenizer.json");
        scope_benches::write_checkpoint(a.size, dir, &tokenizer)?;
        emit(
            json!({"what": "checkpoint", "size": a.size.name(), "dir": dir.display().to_string(),
                    "sae_layer": a.size.sae_layer()}),
        );
        return Ok(());
    }
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let t0 = Instant::now();
    let bench = Workbench::new(a.size, device, dtype)?;
    sync(device);
    emit(json!({
        "what": "setup", "size": a.size.name(), "device": a.device, "dtype": a.dtype,
        "tch": "0.24.0", "threads": tch::get_num_threads(),
        "gpu": match device { Device::Cuda(_) => Some("cuda"), _ => None },
        "init_s": round(t0.elapsed().as_secs_f64(), 2),
    }));

    let ids = bench.ids(a.batch, a.seq, 2)?;
    let batch = Batch::new(ids.shallow_clone());
    let ntok = (a.batch * a.seq) as f64;
    if a.runs("forward") {
        let (t_plain, _) = timed(device, a.reps, || bench.forward_plain(&batch))?;
        emit(json!({
            "what": "forward_plain", "batch": a.batch, "seq": a.seq,
            "tok_per_s": round(ntok / t_plain, 1), "s": t_plain,
        }));
    }

    let mut mem = None;
    if a.runs("collect") {
        let collector = bench.collector()?;
        let (t_col, acts) = timed(device, a.reps, || {
            Workbench::collect_latents(&collector, &batch)
        })?;
        emit(json!({
            "what": "collect_latents", "batch": a.batch, "seq": a.seq,
            "tok_per_s": round(ntok / t_col, 1), "s": t_col,
            "shape": acts.size(), "mean_l0": round(mean_l0(&acts)?, 2),
        }));
        drop(acts);
        mem = match device {
            Device::Cpu => peak_rss_gib().map(|g| round(g, 3)),
            // The peer's `torch.cuda.max_memory_allocated()`: the most held by tensors since
            // the process started.
            Device::Cuda(index) => Some(round(
                gemma_model::cuda::memory_stats(index)?.peak_allocated as f64 / (1u64 << 30) as f64,
                3,
            )),
            _ => None,
        };
    }

    if a.runs("generate") {
        let prompt_ids = bench.ids(1, PROMPT_LEN, 3)?;
        let prompt = Batch::new(prompt_ids);
        let gen_reps = (a.reps / 2).max(1);
        let (t_gen, out) = timed(device, gen_reps, || {
            bench.generate_plain(&prompt, a.new, a.decode)
        })?;
        emit(json!({
            "what": "generate_plain", "new_tokens": a.new,
            "tok_per_s": round(a.new as f64 / t_gen, 1), "s": t_gen,
            "decode": out.decode.name(), "first_tokens": first_tokens(&out),
            "graph_fallback": out.graph_fallback,
        }));

        // `scope::steer` takes the prompt's ids and builds its graph in the call.
        let prompt_ids = id_vec(&prompt.input_ids)?;
        let pairs = [(STEER_LATENT, STEER_MAGNITUDE)];
        let (t_steer, out) = timed(device, gen_reps, || {
            bench.generate_steered(&prompt_ids, &pairs, a.new, a.decode)
        })?;
        emit(json!({
            "what": "generate_steered", "new_tokens": a.new,
            "tok_per_s": round(a.new as f64 / t_steer, 1), "s": t_steer,
            "out_len": out.sequences.size().last().copied().unwrap_or(0),
            "decode": out.decode.name(), "first_tokens": first_tokens(&out),
            "graph_fallback": out.graph_fallback,
        }));
    }

    if a.runs("interchange") {
        let interchanger = bench.interchanger()?;
        let (base, source) = bench.interchange_inputs(4)?;
        let (t_int, diff) = timed(device, a.reps, || {
            Workbench::interchange(&interchanger, &base, &source)
        })?;
        emit(json!({
            "what": "interchange", "ms": round(t_int * 1e3, 2), "topk": top_k_indices(&diff, 5)?,
        }));
    }
    if a.runs("collect") {
        emit(json!({"what": "peak_mem_gib_after_collect", "gib": mem}));
    }

    if a.runs("steer_batch") {
        steer_batch(&a, &bench)?;
    }
    Ok(())
}

/// The `steer_batch` rows: the engine with `--rows` slots, then one request at a time.
fn steer_batch(a: &Args, bench: &Workbench) -> Result<()> {
    let device = bench.device();
    let config = bench.model.config();
    let jobs = steer_batch_jobs(STEER_BATCH_REQUESTS, a.size.d_sae(), config.vocab_size);
    let context = jobs
        .iter()
        .map(|j| j.prompt.len() + j.new_tokens)
        .max()
        .unwrap_or(1);
    let new_tokens: usize = jobs.iter().map(|j| j.new_tokens).sum();
    let prompt_tokens: usize = jobs.iter().map(|j| j.prompt.len()).sum();
    let mut engine = Engine::new(
        &bench.model,
        Limits {
            max_rows: a.rows,
            context,
        },
    )?;
    if a.only.is_empty() && engine.mode() != EngineMode::Fused {
        emit(json!({
            "what": "steer_batch_skipped",
            "why": "the engine runs requests one by one here (not a float32 model on an AVX2 CPU); \
                    --only steer_batch runs it anyway",
        }));
        return Ok(());
    }
    let gen_reps = (a.reps / 2).max(1);
    let check = |out: &[scope_engine::Finished]| -> Result<()> {
        for (job, done) in jobs.iter().zip(out) {
            if done.tokens.len() != job.new_tokens {
                bail!(
                    "request {} gave {} tokens, asked for {}",
                    done.id,
                    done.tokens.len(),
                    job.new_tokens
                );
            }
        }
        Ok(())
    };
    let (t_batch, batched) = timed(device, gen_reps, || {
        run_steer_batch(&mut engine, bench.steer_requests(&jobs)?, false)
    })?;
    check(&batched.finished)?;
    let first = batched
        .finished
        .first()
        .map(|f| f.tokens.iter().take(8).copied().collect::<Vec<_>>());
    emit(json!({
        "what": "steer_batch", "requests": jobs.len(), "rows": a.rows, "context": context,
        "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
        "tok_per_s": round(new_tokens as f64 / t_batch, 1), "s": t_batch,
        "mode": engine.mode().name(), "first_tokens": first,
        "first_step_s": batched.first_step_s.map(|s| round(s, 3)),
    }));
    drop(engine);

    let mut serial = Engine::new(
        &bench.model,
        Limits {
            max_rows: 1,
            context,
        },
    )?;
    let (t_serial, alone) = timed(device, gen_reps, || {
        run_steer_batch(&mut serial, bench.steer_requests(&jobs)?, true)
    })?;
    check(&alone.finished)?;
    let same = batched
        .finished
        .iter()
        .zip(&alone.finished)
        .all(|(b, s)| b.tokens == s.tokens);
    emit(json!({
        "what": "steer_batch_serial", "requests": jobs.len(), "rows": 1,
        "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
        "tok_per_s": round(new_tokens as f64 / t_serial, 1), "s": t_serial,
        "mode": serial.mode().name(), "same_tokens_as_batched": same,
        "engine_speedup": round(t_serial / t_batch, 2),
    }));
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("race: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
