//! The scope workflows on random weights, shared by the `race` binary (the head-to-head with
//! the Python peer, `../shared/bench/pyvene_baseline.py`) and the criterion benches.
//!
//! Shapes and semantics follow the peer exactly:
//!
//! | size | model | SAE |
//! |---|---|---|
//! | `tiny` | hidden 64, 4 layers, 4/2 heads, head_dim 16, MLP 128, vocab 512, window 8 | 256 latents at layer 2 |
//! | `small` | hidden 512, 8 layers, 8/4 heads, head_dim 64, MLP 2048, vocab 32000, window 64 | 4096 latents at layer 6 |
//! | `2b` | gemma-2-2b (hidden 2304, 26 layers, 8/4 heads, head_dim 256, MLP 9216, vocab 256000) | 16384 latents at layer 20 |
//!
//! SAE parameters are drawn like the peer's: `W_enc ~ N(0,1)/sqrt(d)`, `W_dec ~ N(0,1)/sqrt(d_sae)`,
//! threshold 0.5, zero biases (seeded), cast to the model's dtype like the peer's. Workflows:
//!
//! * [`Workbench::forward_plain`]: one forward over `batch x seq`, logits at every position;
//! * [`Workbench::collect_latents`]: the SAE's JumpReLU latents at `block_output` of the SAE
//!   layer, every position: [`scope::LatentCollector`] (an encode-collect through the
//!   intervention graph with the collect-only early stop: nothing after the SAE layer is
//!   computed), built once outside the timed region like the peer's `IntervenableModel`;
//! * [`Workbench::generate_plain`] / [`Workbench::generate_steered`]: greedy decoding of exactly
//!   `new` tokens (no eos stop, like the peer's `min_new_tokens`); steering is [`scope::steer`],
//!   adding `magnitude * W_dec[latent]` at every prompt position and every decode step
//!   (pyvene's `intervene_on_prompt=True`, `unit_locations=None`). `scope::steer` builds its
//!   graph in the call, so the timed region holds that build too (a few small allocations and
//!   one decoder-row scale; the peer builds its `IntervenableModel` once, untimed);
//! * [`Workbench::interchange`]: pyvene's JumpReLU interchange, source position 11 into base
//!   position 14 on one latent, with the clean run, giving the logit difference at the last
//!   position. This one stays on the intervention graph rather than [`scope::patch`], which
//!   also collects the base latents and encodes the source slice (for the values it reports),
//!   and so does more than the peer times.
//! * [`Workbench::steer_requests`] / [`run_steer_batch`]: the `steer_batch` workload (the
//!   peer is `benches/peer_steer_batch.py`): [`steer_batch_jobs`] gives 64 greedy requests,
//!   each steered by a latent and magnitude of its own, with prompts of 8–64 tokens and 8–96
//!   new tokens, run through `scope-engine` all at once (continuous batching) or one at a time.
//! * [`write_sweep_inputs`] / [`sweep_corpus`]: the `sweep` workload (the peer is
//!   `benches/peer_sweep.py`): the `--size` checkpoint on disk and a synthetic corpus of
//!   documents of 2 to `seq / 2 + 1` words, which both sides read from the same files.

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use gemma_model::config::{derived_layer_types, layer_types_of_pattern};
use gemma_model::{Batch, DecodeMode, GemmaConfig, GemmaModel, Generated, GenerationConfig};
use intervene::{
    CallOptions, Component, IntervenableModel, Locations, RepresentationConfig, Site, SiteKind,
    Sources, Subspaces,
};
use sae::{JumpReluInterchange, Sae, SaeFamily, SaeFormat, SiteHint};
use scope::{LatentCollector, SaeAt};
use scope_engine::{Edit, Engine, Finished, Request};
use tch::{Device, Kind, Tensor};

/// The benchmark shapes (the peer's `--size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Test-sized: hidden 64, 4 layers.
    Tiny,
    /// CPU-sized: hidden 512, 8 layers, vocab 32000.
    Small,
    /// gemma-2-2b.
    Gemma2b,
    /// [`Size::Small`]'s shapes with Gemma 3's attention (query/key norms, five sliding
    /// layers per global one, two RoPE bases, the global one scaled).
    Gemma3Small,
    /// gemma-3-1b.
    Gemma3_1b,
}

impl Size {
    /// Parses `tiny | small | 2b`.
    pub fn parse(s: &str) -> Result<Size> {
        match s {
            "tiny" => Ok(Size::Tiny),
            "small" => Ok(Size::Small),
            "2b" | "gemma-2-2b" => Ok(Size::Gemma2b),
            "3-small" => Ok(Size::Gemma3Small),
            "3-1b" | "gemma-3-1b" => Ok(Size::Gemma3_1b),
            other => bail!("unknown size `{other}` (expected tiny, small, 2b, 3-small or 3-1b)"),
        }
    }

    /// The peer's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::Small => "small",
            Size::Gemma2b => "2b",
            Size::Gemma3Small => "3-small",
            Size::Gemma3_1b => "3-1b",
        }
    }

    /// The model config.
    pub fn config(self) -> GemmaConfig {
        match self {
            // `GemmaConfig::small()` is the peer's `tiny`.
            Size::Tiny => GemmaConfig::small(),
            Size::Small => GemmaConfig {
                vocab_size: 32000,
                hidden_size: 512,
                intermediate_size: 2048,
                num_hidden_layers: 8,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                head_dim: 64,
                query_pre_attn_scalar: 64.0,
                sliding_window: Some(64),
                layer_types: derived_layer_types(8),
                ..GemmaConfig::small()
            },
            Size::Gemma2b => GemmaConfig::gemma2_2b(),
            Size::Gemma3Small => {
                let gemma3 = GemmaConfig::small_gemma3();
                GemmaConfig {
                    architecture: gemma3.architecture,
                    layer_types: layer_types_of_pattern(8, 6),
                    attn_logit_softcapping: gemma3.attn_logit_softcapping,
                    final_logit_softcapping: gemma3.final_logit_softcapping,
                    rope_full: gemma3.rope_full,
                    rope_sliding: gemma3.rope_sliding,
                    ..Size::Small.config()
                }
            }
            Size::Gemma3_1b => GemmaConfig::gemma3_1b(),
        }
    }

    /// The SAE's layer (its site is `block_output` there).
    pub fn sae_layer(self) -> usize {
        match self {
            Size::Tiny => 2,
            Size::Small => 6,
            Size::Gemma2b => 20,
            Size::Gemma3Small => 6,
            Size::Gemma3_1b => 13,
        }
    }

    /// The SAE's width.
    pub fn d_sae(self) -> i64 {
        match self {
            Size::Tiny => 256,
            Size::Small => 4096,
            Size::Gemma2b => 16384,
            Size::Gemma3Small => 4096,
            Size::Gemma3_1b => 16384,
        }
    }
}

/// Parses `float32 | bfloat16 | float16` (and the short forms).
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match gemma_model::parse_dtype(s)? {
        gemma_model::DTypeSpec::Fixed(kind) => Ok(kind),
        gemma_model::DTypeSpec::Auto => bail!("dtype `auto` needs a checkpoint; name one"),
    }
}

/// Parses `cpu | cuda | cuda:N` (loading libtorch's CUDA backend when asked for).
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(gemma_model::parse_device(s)?)
}

/// Whether a usable GPU is present (registers libtorch's CUDA backend first).
pub fn cuda_available() -> bool {
    matches!(gemma_model::parse_device("auto"), Ok(Device::Cuda(_)))
}

/// Waits for the device's queued work (a no-op on CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `f` once to warm up, then `reps` times (at least once), synchronising the device
/// before each clock read; returns the median seconds and the last result (the peer's
/// `timed`).
pub fn timed<T>(device: Device, reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<(f64, T)> {
    let mut last = f()?;
    sync(device);
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        last = f()?;
        sync(device);
        times.push(start.elapsed().as_secs_f64());
    }
    Ok((median(&mut times), last))
}

/// The median (mean of the two middle values for an even count, like `statistics.median`).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The bytes of weights a decode step of `model` reads: every matrix and norm, the
/// unembedding once (the embedding's one row per token is left out).
pub fn decode_weight_bytes(model: &GemmaModel) -> Result<u64> {
    use scope_engine::DecoderModel;
    let w = model
        .fused_weights()
        .map_err(|why| anyhow!("the decode step's weights: {why}"))?;
    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let layers: u64 = w
        .layers
        .iter()
        .map(|l| {
            let norms = [
                l.input_norm,
                l.post_attention_norm,
                l.pre_feedforward_norm,
                l.post_feedforward_norm,
            ];
            [l.qkv, l.o, l.gate_up, l.down]
                .into_iter()
                .chain(norms)
                .map(bytes)
                .sum::<u64>()
        })
        .sum();
    Ok(layers + bytes(w.unembed) + bytes(w.final_norm))
}

/// The memory read bandwidth of `threads` threads in GB/s: the best of three passes of
/// summing a 1 GiB buffer (far larger than CPU caches), split between the threads. This is
/// STREAM's "read" kernel, which no decode step can beat by much: the roofline of a step
/// bound by reading its weights.
pub fn read_bandwidth_gb_per_s(threads: usize) -> f64 {
    const BYTES: usize = 1 << 30;
    let words = vec![1u64; BYTES / 8];
    let threads = threads.max(1);
    let per = words.len().div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = words
                .chunks(per)
                .map(|part| s.spawn(move || sum_words(part)))
                .collect();
            parts.into_iter().map(|p| p.join().unwrap_or(0)).sum()
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    BYTES as f64 / best / 1e9
}

/// `part`'s sum in eight independent lanes, so that the loads, not the adds, set the pace.
fn sum_words(part: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    for chunk in part.chunks_exact(8) {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(x);
        }
    }
    lanes.iter().fold(0, |a, &b| a.wrapping_add(b))
}

/// The process' peak resident set size in GiB (`VmHWM`), Linux only.
pub fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// A random JumpReLU SAE drawn like the peer's (on the CPU generator, `seed`), moved to
/// `device`, in f32 (the workbench casts it to the model's dtype, as the peer does).
pub fn random_sae(d_in: i64, d_sae: i64, layer: usize, seed: i64, device: Device) -> Result<Sae> {
    let hint = SiteHint {
        family: Some(SaeFamily::Residual),
        layer: Some(layer),
    };
    Ok(Sae::from_weights(
        random_sae_weights(d_in, d_sae, seed)?,
        "random",
        SaeFormat::GemmaScopeNpz,
        hint,
        device,
    )?)
}

/// The parameters of [`random_sae`], on the CPU.
fn random_sae_weights(d_in: i64, d_sae: i64, seed: i64) -> Result<sae::load::SaeWeights> {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    Ok(sae::load::SaeWeights {
        w_enc: Tensor::f_randn([d_in, d_sae], opts)?.f_div_scalar((d_in as f64).sqrt())?,
        w_dec: Tensor::f_randn([d_sae, d_in], opts)?.f_div_scalar((d_sae as f64).sqrt())?,
        b_enc: Tensor::f_zeros([d_sae], opts)?,
        b_dec: Tensor::f_zeros([d_in], opts)?,
        threshold: Tensor::f_full([d_sae], 0.5, opts)?,
        path: "random".into(),
        hook_name: None,
    })
}

/// Writes the workbench's random model (seed 0) and SAE (seed 1) of `size` as checkpoints
/// that `scope` loads: `dir/model` (config.json, model.safetensors, and `tokenizer` — a
/// tokenizer.json — with its vocabulary padded by `<unused_N>` pieces to the model's) and
/// `dir/sae/params.npz` (Gemma Scope's names; it reads the block output of
/// [`Size::sae_layer`]). A server's load test runs on them at the benchmarks' shapes.
pub fn write_checkpoint(
    size: Size,
    dir: &std::path::Path,
    tokenizer: &std::path::Path,
) -> Result<()> {
    let config = size.config();
    let model_dir = dir.join("model");
    let sae_dir = dir.join("sae");
    std::fs::create_dir_all(&model_dir)?;
    std::fs::create_dir_all(&sae_dir)?;
    let config_json = config.to_hf_json();
    std::fs::write(
        model_dir.join("config.json"),
        serde_json::to_string_pretty(&config_json)?,
    )?;
    let weights = GemmaModel::random_checkpoint(&config, 0)?;
    Tensor::write_safetensors(&weights, model_dir.join("model.safetensors"))?;
    write_padded_tokenizer(
        tokenizer,
        config.vocab_size,
        &model_dir.join("tokenizer.json"),
    )?;
    let w = random_sae_weights(config.hidden_size, size.d_sae(), 1)?;
    Tensor::write_npz(
        &[
            ("W_enc", &w.w_enc),
            ("W_dec", &w.w_dec),
            ("b_enc", &w.b_enc),
            ("b_dec", &w.b_dec),
            ("threshold", &w.threshold),
        ],
        sae_dir.join("params.npz"),
    )?;
    Ok(())
}

/// `from` with `<unused_N>` pieces added to its BPE vocabulary up to `vocab` ids, so that
/// every id a model of that vocabulary picks decodes.
fn write_padded_tokenizer(from: &std::path::Path, vocab: i64, to: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("{}", from.display()))?;
    let mut json: serde_json::Value = serde_json::from_str(&text)?;
    let pieces = json
        .pointer_mut("/model/vocab")
        .and_then(|v| v.as_object_mut())
        .ok_or_else(|| anyhow!("{} has no BPE vocabulary at model.vocab", from.display()))?;
    let taken: std::collections::HashSet<i64> =
        pieces.values().filter_map(|v| v.as_i64()).collect();
    for id in 0..vocab {
        if !taken.contains(&id) {
            pieces.insert(format!("<unused_{id}>"), serde_json::json!(id));
        }
    }
    std::fs::write(to, serde_json::to_string(&json)?)?;
    Ok(())
}

/// The words of [`sweep_corpus`].
const SWEEP_WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "has", "would",
    "when", "if", "so", "no", "will", "more", "can", "who", "said", "what", "about", "some",
    "into", "them", "time", "only", "new", "other", "could", "may", "its", "also", "two", "than",
    "first",
];

/// The `sweep` workload's corpus: `docs` documents (one a line, no empty one); document `i`
/// (from 0) has `2 + (37 i) mod (seq / 2)` words, word `j` being
/// `SWEEP_WORDS[(31 i + 17 j + j² / 3) mod 64]`. With the checkpoint's tokenizer (about 2.6
/// tokens a word) lengths spread up to and past `seq` tokens, so some documents are cut.
pub fn sweep_corpus(docs: usize, seq: usize) -> Vec<String> {
    let n = SWEEP_WORDS.len();
    (0..docs)
        .map(|i| {
            let words = 2 + (37 * i) % (seq / 2).max(1);
            (0..words)
                .map(|j| SWEEP_WORDS[(31 * i + 17 * j + j * j / 3) % n])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The files of the `sweep` workload in `dir`: `model/` and `sae/` (the `--size` checkpoint
/// of [`write_checkpoint`], written only when `sae/params.npz` is missing), `corpus.txt`
/// ([`sweep_corpus`] of `docs` documents), `warmup.txt` (its first `warmup` documents) and
/// `sweep.json` (the SAE's layer and the corpus' shape, for the peer).
pub fn write_sweep_inputs(
    size: Size,
    dir: &std::path::Path,
    docs: usize,
    seq: usize,
    warmup: usize,
) -> Result<()> {
    if !dir.join("sae/params.npz").exists() {
        let tokenizer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/models/tiny-f32/tokenizer.json");
        write_checkpoint(size, dir, &tokenizer).context("the sweep's checkpoint")?;
    }
    let corpus = sweep_corpus(docs, seq);
    let lines = |n: usize| {
        corpus
            .iter()
            .take(n)
            .map(|d| format!("{d}\n"))
            .collect::<String>()
    };
    std::fs::write(dir.join("corpus.txt"), lines(docs))?;
    std::fs::write(dir.join("warmup.txt"), lines(warmup))?;
    let meta = serde_json::json!({
        "size": size.name(), "layer": size.sae_layer(), "docs": docs, "seq": seq, "warmup": warmup,
    });
    std::fs::write(dir.join("sweep.json"), meta.to_string())?;
    Ok(())
}

/// Token ids `[batch, seq]` drawn uniformly from `3..vocab` (seeded), on the CPU.
pub fn random_ids(vocab: i64, batch: i64, seq: i64, seed: i64) -> Result<Tensor> {
    tch::manual_seed(seed);
    Ok(Tensor::f_randint_low(
        3,
        vocab,
        [batch, seq],
        (Kind::Int64, Device::Cpu),
    )?)
}

/// The latent and magnitude the peer steers with.
pub const STEER_LATENT: i64 = 7;
/// See [`STEER_LATENT`].
pub const STEER_MAGNITUDE: f64 = 100.0;
/// The prompt length of the generation workflows.
pub const PROMPT_LEN: i64 = 14;
/// Base and source lengths of the interchange, and its (source, base) positions and latent.
pub const INTERCHANGE: (i64, i64, i64, i64, i64) = (15, 12, 11, 14, 7);

/// Requests in the `steer_batch` workload.
pub const STEER_BATCH_REQUESTS: usize = 64;

/// One request of the `steer_batch` workload (see [`steer_batch_jobs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SteerJob {
    /// The SAE latent it steers with.
    pub latent: i64,
    /// How far: the vector added is `magnitude * W_dec[latent]`.
    pub magnitude: f64,
    /// Its prompt, `<bos>` (id 2) first.
    pub prompt: Vec<i64>,
    /// Exactly this many new tokens (eos never ends it).
    pub new_tokens: usize,
}

/// The `steer_batch` workload: `n` requests (64 in the race) over an SAE of `d_sae` latents
/// and a vocabulary of `vocab` ids. Request `i` (from 0) has
///
/// * latent `(61 i) mod d_sae` and magnitude `2 + (i mod 7)` (2..=8),
/// * a prompt of `8 + (37 i) mod 57` tokens (8..=64): id 2 (`<bos>`), then for `j = 1..`
///   the id `3 + (1009 i + 7919 j) mod (vocab - 3)` (never 0, 1 or 2),
/// * `8 + (53 i) mod 89` new tokens (8..=96).
///
/// `benches/peer_steer_batch.py` computes the same formula; change both together.
pub fn steer_batch_jobs(n: usize, d_sae: i64, vocab: i64) -> Vec<SteerJob> {
    (0..n as i64)
        .map(|i| {
            let prompt_len = 8 + (37 * i) % 57;
            let prompt = std::iter::once(2)
                .chain((1..prompt_len).map(|j| 3 + (1009 * i + 7919 * j) % (vocab - 3)))
                .collect();
            SteerJob {
                latent: (61 * i) % d_sae,
                magnitude: (2 + i % 7) as f64,
                prompt,
                new_tokens: (8 + (53 * i) % 89) as usize,
            }
        })
        .collect()
}

/// `requests` run to the end on an engine (see [`run_steer_batch`]).
#[derive(Debug)]
pub struct SteerBatchRun {
    /// The requests finished, in the order given.
    pub finished: Vec<Finished>,
    /// Seconds of the engine's first step: admitting every request a slot holds (each prompt
    /// in a call of its own) and decoding one token of each. Only where all were submitted at
    /// once.
    pub first_step_s: Option<f64>,
}

/// Runs `requests` on `engine` to the end: all submitted at once (`one_at_a_time == false`:
/// the engine batches as many as it has rows for), or each submitted only when the one
/// before has finished. Any refused request is an error.
pub fn run_steer_batch(
    engine: &mut Engine<'_>,
    requests: Vec<Request>,
    one_at_a_time: bool,
) -> Result<SteerBatchRun> {
    let order: Vec<String> = requests.iter().map(|r| r.id.clone()).collect();
    let mut done = Vec::with_capacity(requests.len());
    let mut first_step_s = None;
    if one_at_a_time {
        for request in requests {
            engine.submit(request)?;
            while !engine.is_idle() {
                done.extend(engine.step()?);
            }
        }
    } else {
        for request in requests {
            engine.submit(request)?;
        }
        while !engine.is_idle() {
            let start = Instant::now();
            done.extend(engine.step()?);
            first_step_s.get_or_insert(start.elapsed().as_secs_f64());
        }
    }
    let mut by_id: std::collections::HashMap<String, Finished> =
        done.into_iter().map(|f| (f.id.clone(), f)).collect();
    let finished = order
        .iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or_else(|| anyhow!("request {id} did not finish"))
        })
        .collect::<Result<_>>()?;
    Ok(SteerBatchRun {
        finished,
        first_step_s,
    })
}

/// A random model and SAE of one size on one device.
pub struct Workbench {
    /// The shapes.
    pub size: Size,
    /// The model (random weights).
    pub model: GemmaModel,
    /// The SAE (random weights, in the model's dtype) at `block_output` of its layer.
    pub sae: SaeAt,
    /// The SAE's layer.
    pub layer: usize,
}

impl std::fmt::Debug for Workbench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workbench")
            .field("size", &self.size)
            .field("layer", &self.layer)
            .finish()
    }
}

impl Workbench {
    /// A random model (seed 0) and SAE (seed 1) of `size`, both in `dtype` (the peer casts its
    /// SAE parameters to the model's dtype too).
    pub fn new(size: Size, device: Device, dtype: Kind) -> Result<Self> {
        let config = size.config();
        let model = GemmaModel::random(&config, 0, dtype, device).context("random model")?;
        let layer = size.sae_layer();
        let sae = random_sae(config.hidden_size, size.d_sae(), layer, 1, device)?
            .to_dtype(dtype)
            .context("SAE dtype")?;
        let sae = SaeAt::new(sae, Some(layer), &model).context("SAE site")?;
        Ok(Workbench {
            size,
            model,
            sae,
            layer,
        })
    }

    /// The model's device.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Random ids `[batch, seq]` on the model's device.
    pub fn ids(&self, batch: i64, seq: i64, seed: i64) -> Result<Tensor> {
        Ok(
            random_ids(self.model.config().vocab_size, batch, seq, seed)?
                .f_to_device(self.device())?,
        )
    }

    /// The SAE's component: `block_output` at its layer.
    pub fn component(&self) -> Component {
        self.sae.component()
    }

    /// A plain forward; the logits `[B, T, vocab]`.
    pub fn forward_plain(&self, batch: &Batch) -> Result<Tensor> {
        self.model
            .forward(batch, gemma_model::Call::default(), &mut intervene::NoHooks)?
            .logits
            .ok_or_else(|| anyhow!("the plain forward returned no logits"))
    }

    /// The collector for [`collect_latents`](Self::collect_latents) (built once, untimed).
    pub fn collector(&self) -> Result<LatentCollector<'_>> {
        Ok(LatentCollector::new(&self.model, &self.sae)?)
    }

    /// The SAE latents `[B, T, d_sae]` (in the SAE's dtype) at every position, stopping after the
    /// SAE layer.
    pub fn collect_latents(collector: &LatentCollector<'_>, batch: &Batch) -> Result<Tensor> {
        Ok(collector.latents(batch)?)
    }

    /// Greedy decoding of exactly `new` tokens (eos never stops it), decode steps run as
    /// `decode` says.
    pub fn generation_config(new: usize, decode: DecodeMode) -> GenerationConfig {
        GenerationConfig {
            eos_token_ids: Some(Vec::new()),
            decode,
            ..GenerationConfig::greedy(new)
        }
    }

    /// Plain greedy generation of `new` tokens after `prompt`.
    pub fn generate_plain(
        &self,
        prompt: &Batch,
        new: usize,
        decode: DecodeMode,
    ) -> Result<Generated> {
        Ok(self
            .model
            .generate(prompt, &Self::generation_config(new, decode))?)
    }

    /// Steered greedy generation from one prompt (token ids): [`scope::steer`] with `pairs`,
    /// the vector added at every prompt position and at every decode step (pyvene's
    /// `intervene_on_prompt=True`, `unit_locations=None`). The graph is built in the call.
    pub fn generate_steered(
        &self,
        prompt: &[i64],
        pairs: &[(i64, f64)],
        new: usize,
        decode: DecodeMode,
    ) -> Result<Generated> {
        Ok(scope::steer(
            &self.model,
            &self.sae,
            prompt,
            pairs,
            &Self::generation_config(new, decode),
        )?)
    }

    /// The engine requests of `jobs`: greedy, exactly `new_tokens` each (no stop tokens),
    /// each adding its own `magnitude * W_dec[latent]` at the SAE's site (`block_output`)
    /// at every prompt position and every generated token. Ids are `r{index}`.
    pub fn steer_requests(&self, jobs: &[SteerJob]) -> Result<Vec<Request>> {
        let site = Site::new(self.layer, SiteKind::BlockOutput);
        jobs.iter()
            .enumerate()
            .map(|(i, job)| {
                let vector = self.sae.sae.steering_sum(&[(job.latent, job.magnitude)])?;
                let mut request =
                    Request::greedy(format!("r{i}"), job.prompt.clone(), job.new_tokens)
                        .with_edit(Edit { site, vector });
                request.stop_tokens = Some(Vec::new());
                Ok(request)
            })
            .collect()
    }

    /// The graph for [`interchange`](Self::interchange): pyvene's JumpReLU interchange.
    ///
    /// Not [`scope::patch`]: that one also collects the base latents at the base position and
    /// encodes the source slice (the values it reports) and builds its graph per call, work the
    /// peer's interchange does not do.
    pub fn interchanger(&self) -> Result<IntervenableModel<'_, GemmaModel>> {
        Ok(IntervenableModel::new(
            &self.model,
            vec![RepresentationConfig::new(
                self.component(),
                JumpReluInterchange::new(&self.sae.sae),
            )],
        )?)
    }

    /// One interchange: latent `INTERCHANGE.4` of source position 11 into base position 14,
    /// with the clean run; the logit difference (intervened − clean) at the last position,
    /// `[1, vocab]` (f32).
    pub fn interchange(
        graph: &IntervenableModel<'_, GemmaModel>,
        base: &Batch,
        source: &Batch,
    ) -> Result<Tensor> {
        let (_, _, src_pos, base_pos, latent) = INTERCHANGE;
        let options = CallOptions::new()
            .locations(Locations::pair(src_pos, base_pos))
            .subspaces(Subspaces::Shared(vec![latent]))
            .output_original_output(true)
            // Only the last position's logits are reported, so the final layer runs for that
            // position alone (within float rounding of the full run; tested against pyvene at 1e-4).
            .last_position_logits(true);
        let out = graph.forward(base, Sources::Shared(source), &options)?;
        let clean = out
            .original
            .and_then(|o| o.logits)
            .ok_or_else(|| anyhow!("the clean run returned no logits"))?;
        let patched = out
            .intervened
            .logits
            .ok_or_else(|| anyhow!("the intervened run returned no logits"))?;
        Ok(patched
            .f_select(1, -1)?
            .f_to_kind(Kind::Float)?
            .f_sub(&clean.f_select(1, -1)?.f_to_kind(Kind::Float)?)?)
    }

    /// The base (`[1, 15]`) and source (`[1, 12]`) of the interchange, from two random rows.
    pub fn interchange_inputs(&self, seed: i64) -> Result<(Batch, Batch)> {
        let (base_len, source_len, ..) = INTERCHANGE;
        let ids = self.ids(2, base_len.max(source_len), seed)?;
        Ok((
            Batch::new(ids.f_narrow(0, 0, 1)?.f_narrow(1, 0, base_len)?),
            Batch::new(ids.f_narrow(0, 1, 1)?.f_narrow(1, 0, source_len)?),
        ))
    }
}

/// The mean number of active latents per token of `acts` (`[..., d_sae]`).
pub fn mean_l0(acts: &Tensor) -> Result<f64> {
    Ok(acts
        .f_gt(0.0)?
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])?)
}

/// The ids of `ids` (any shape, e.g. one prompt `[1, T]`) flattened into a vector, for the
/// workflows that take token ids.
pub fn id_vec(ids: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(
        &ids.f_reshape([-1])?.f_to_device(Device::Cpu)?,
    )?)
}

/// The `k` largest entries' indices of the last row of `t` (`[1, vocab]`).
pub fn top_k_indices(t: &Tensor, k: i64) -> Result<Vec<i64>> {
    let (_, idx) = t.f_topk(k, -1, true, true)?;
    Ok(Vec::<i64>::try_from(
        &idx.f_reshape([-1])?.f_to_device(Device::Cpu)?,
    )?)
}
