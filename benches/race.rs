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
//! `--only` it runs only where the engine batches (a float32 or bf16 model on a CPU with AVX2
//! or AVX-512); elsewhere the engine runs requests one by one anyway, so ask for it by name.
//!
//! The `sweep` group (peer: `benches/peer_sweep.py`) runs `scope_sweep::Sweep` (what `scope
//! sweep` runs: one SAE, top 20 examples, outputs written) over a synthetic corpus of
//! `16 x --batch x --corpus-times` documents ([`scope_benches::sweep_corpus`], cut to `--seq`
//! tokens), in blocks of `--batch`, with the `--size` checkpoint loaded from disk; the
//! checkpoint, the corpus and a warm-up corpus (the first two blocks) are written to
//! `--sweep-dir` (default `<temp>/scope-bench-sweep-<size>`; the checkpoint only when missing),
//! where the peer reads them. One warm-up pass, then the median of `reps` passes;
//! `tok_per_s` counts the real tokens but `<bos>`. A pass is all of `Sweep::run`, the
//! outputs it writes at the end included (`outputs_s`: the state, the Parquet tables and the
//! summary, a cost per SAE that does not grow with the corpus); `sweep_blocks` is the same
//! pass up to the last block's statistics, the rate of a long sweep. It runs first, before
//! the random model of the other groups is built, so that its `peak_rss_gib` is the sweep's.
//! Without `--only` it runs on the CPU only (the issue's target); on a GPU ask for it by name.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gemma_model::{Batch, DTypeSpec, DecodeMode, GemmaModel, LoadOptions};
use scope::SaeAt;
use scope_benches::{
    decode_weight_bytes, id_vec, mean_l0, median, parse_device, parse_dtype, peak_rss_gib,
    read_bandwidth_gb_per_s, run_steer_batch, steer_batch_jobs, sync, timed, top_k_indices,
    write_sweep_inputs, Size, Workbench, PROMPT_LEN, STEER_BATCH_REQUESTS, STEER_LATENT,
    STEER_MAGNITUDE,
};
use scope_engine::{Engine, EngineMode, Limits};
use scope_sweep::{Corpus, Sweep, SweepOptions, SweepSae, SweepState};
use serde_json::{json, Value};
use tch::{Device, Kind};

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
    /// `steer_batch`, `sweep`); all when empty (`steer_batch` only where the engine batches,
    /// `sweep` only on the CPU).
    only: Vec<String>,
    /// `sweep`: where its checkpoint and corpus are written.
    sweep_dir: Option<std::path::PathBuf>,
    /// `sweep`: the corpus is this many times its usual 16 documents per `--batch` row.
    corpus_times: usize,
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
    [--only forward,collect,generate,interchange,steer_batch,sweep] \
    [--sweep-dir DIR] [--corpus-times N] \
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
        sweep_dir: None,
        corpus_times: 1,
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
            "--sweep-dir" => args.sweep_dir = Some(value.into()),
            "--corpus-times" => args.corpus_times = number("--corpus-times")? as usize,
            "--only" => {
                args.only = value.split(',').map(|g| g.trim().to_string()).collect();
                let known = [
                    "forward",
                    "collect",
                    "generate",
                    "interchange",
                    "steer_batch",
                    "sweep",
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

/// How close plain generation's decode steps come to reading the weights at the
/// machine's read bandwidth: a step's time is the generation's (`t_gen`, `a.new` tokens)
/// less the prompt's (a one-token generation), over the steps after the first token.
fn decode_roofline(
    bench: &Workbench,
    prompt: &Batch,
    a: &Args,
    reps: usize,
    t_gen: f64,
) -> Result<()> {
    let (t_prompt, _) = timed(Device::Cpu, reps, || {
        bench.generate_plain(prompt, 1, a.decode)
    })?;
    let step_s = (t_gen - t_prompt) / (a.new - 1) as f64;
    let weights_gb = decode_weight_bytes(&bench.model)? as f64 / 1e9;
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
    let read = read_bandwidth_gb_per_s(threads);
    let step_gb_per_s = weights_gb / step_s;
    emit(json!({
        "what": "decode_roofline", "prompt_s": round(t_prompt, 3), "step_s": round(step_s, 4),
        "weights_gb": round(weights_gb, 3), "step_gb_per_s": round(step_gb_per_s, 1),
        "read_gb_per_s": round(read, 1), "fraction": round(step_gb_per_s / read, 2),
        "roofline_tok_per_s": round(read / weights_gb, 1),
    }));
    Ok(())
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
    if a.runs("sweep") {
        if a.only.is_empty() && device != Device::Cpu {
            emit(
                json!({"what": "sweep_skipped", "why": "the sweep row is a CPU race; \
                        --only sweep runs it anyway"}),
            );
        } else {
            sweep(&a, device, dtype)?;
        }
        if a.only.iter().all(|g| g == "sweep") && !a.only.is_empty() {
            return Ok(());
        }
    }
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
        if device == Device::Cpu && a.new > 1 {
            decode_roofline(&bench, &prompt, &a, gen_reps, t_gen)?;
        }
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
    // `--decode` picks the engine's mode as `scope steer --requests --decode` does.
    let mode = EngineMode::for_decode(&bench.model, a.decode)?;
    let mut engine = Engine::with_mode(
        &bench.model,
        Limits {
            max_rows: a.rows,
            context,
        },
        mode,
    )?;
    if a.only.is_empty() && engine.mode() != EngineMode::Fused {
        emit(json!({
            "what": "steer_batch_skipped",
            "why": "the engine does not batch on the fused kernels here (auto picks them for a \
                    float32 or bf16 model on an AVX2 CPU, --decode fused asks for them); --only \
                    steer_batch runs it anyway",
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

    let mut serial = Engine::with_mode(
        &bench.model,
        Limits {
            max_rows: 1,
            context,
        },
        mode,
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

/// Documents of the `sweep` corpus per `--batch` row (times `--corpus-times`).
const SWEEP_DOCS_PER_ROW: usize = 16;

/// The `sweep` row: `scope_sweep::Sweep` over the corpus written to the sweep directory.
fn sweep(a: &Args, device: Device, dtype: Kind) -> Result<()> {
    let dir = a.sweep_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("scope-bench-sweep-{}", a.size.name()))
    });
    let batch = a.batch as usize;
    let docs = SWEEP_DOCS_PER_ROW * batch * a.corpus_times;
    write_sweep_inputs(a.size, &dir, docs, a.seq as usize, 2 * batch)?;
    let t0 = Instant::now();
    let load = LoadOptions {
        dtype: DTypeSpec::Fixed(dtype),
        device,
        ..LoadOptions::default()
    };
    let model_dir = dir.join("model").display().to_string();
    let (model, tokenizer) = GemmaModel::from_pretrained(&model_dir, &load)?;
    let sae_dir = dir.join("sae").display().to_string();
    let sae = sae::Sae::from_pretrained(&sae_dir, device)?.to_dtype(model.dtype())?;
    let saes = [SweepSae {
        name: "sae".into(),
        source: sae_dir,
        sae: SaeAt::new(sae, Some(a.size.sae_layer()), &model)?,
    }];
    let options = SweepOptions {
        max_len: a.seq as usize,
        batch,
        ..SweepOptions::default()
    };
    let init_s = t0.elapsed().as_secs_f64();
    let out = dir.join("out");
    // One pass over `file`: the state, and the seconds after the last block (the outputs).
    let pass = |file: &str| -> Result<(SweepState, f64)> {
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        let corpus = Corpus::open(&[dir.join(file)], "text")?;
        let sweep = Sweep {
            model: &model,
            tokenizer: &tokenizer,
            model_name: &model_dir,
            saes: &saes,
            corpus: &corpus,
            options: &options,
        };
        let mut last_block = Instant::now();
        let state = sweep.run(sweep.start(&out, false)?, &out, &mut |_| {
            sync(device);
            last_block = Instant::now();
        })?;
        Ok((state, last_block.elapsed().as_secs_f64()))
    };
    pass("warmup.txt")?;
    sync(device);
    let (mut times, mut blocks) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..a.reps.max(1) {
        let start = Instant::now();
        let (state, outputs_s) = pass("corpus.txt")?;
        sync(device);
        let seconds = start.elapsed().as_secs_f64();
        times.push(seconds);
        blocks.push(seconds - outputs_s);
        last = Some((state, outputs_s));
    }
    let (state, outputs_s) = last.context("no sweep pass ran")?;
    let (t, t_blocks) = (median(&mut times), median(&mut blocks));
    let stats = state.stats.first().context("the sweep has no statistics")?;
    let metrics = stats.metrics();
    let tokens = stats.reconstruction.tokens;
    emit(json!({
        "what": "sweep", "tok_per_s": round(tokens as f64 / t, 1), "s": t,
        "batch": batch, "max_len": a.seq, "top_k": options.top_k, "layer": a.size.sae_layer(),
        "peak_rss_gib": peak_rss_gib().map(|g| round(g, 3)), "init_s": round(init_s, 2),
        "outputs_s": round(outputs_s, 3), "threads": tch::get_num_threads(),
        "tokens": tokens, "docs": state.coverage.docs, "mean_l0": metrics.mean_l0,
        "mse": metrics.mse, "explained_variance": metrics.explained_variance,
        "fired": stats.count.iter().filter(|&&c| c > 0).count(),
        "examples": stats.top.iter().map(Vec::len).sum::<usize>(),
        "hist_total": stats.histogram.iter().sum::<i64>(),
        "mean_max": stats.max.iter().map(|&m| f64::from(m)).sum::<f64>()
            / stats.max.len().max(1) as f64,
        "sum_total": stats.sum.iter().sum::<f64>(),
    }));
    emit(json!({
        "what": "sweep_blocks", "tok_per_s": round(tokens as f64 / t_blocks, 1), "s": t_blocks,
        "tokens": tokens,
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
