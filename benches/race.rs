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

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gemma_model::{Batch, DecodeMode};
use scope_benches::{
    mean_l0, parse_device, parse_dtype, peak_rss_gib, sync, timed, top_k_indices, Size, Workbench,
    PROMPT_LEN, STEER_LATENT, STEER_MAGNITUDE,
};
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
    /// Workflow groups to run (`forward`, `collect`, `generate`, `interchange`); all when empty.
    only: Vec<String>,
}

impl Args {
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

const USAGE: &str = "usage: race [--size tiny|small|2b] [--device cpu|cuda] \
    [--dtype float32|bfloat16|float16] [--batch B] [--seq T] [--new N] [--reps R] \
    [--decode auto|eager|fixed|graph|fused] [--only forward,collect,generate,interchange]";

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
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
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
            "--only" => {
                args.only = value.split(',').map(|g| g.trim().to_string()).collect();
                let known = ["forward", "collect", "generate", "interchange"];
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

        let steerer = bench.steerer(STEER_LATENT, STEER_MAGNITUDE)?;
        let (t_steer, out) = timed(device, gen_reps, || {
            Workbench::generate_steered(&steerer, &prompt, a.new, a.decode)
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
