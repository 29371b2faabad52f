//! Generation with a preallocated KV cache, following transformers' `generate()`:
//! positions `cumsum(mask) - 1` (pads → 0) for the prompt and `last + 1` afterwards, greedy
//! argmax or sampling with HF's warper order (temperature, top-k, top-p), finished rows emit the
//! pad id, and the loop stops when every row has produced an eos id.

use intervene::Hooks;
use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::cuda::{self, CudaGraph};
use crate::error::{Error, Result};
use crate::fused::{self, FusedDecoder};
use crate::mask::{DecodeMasks, Masks};
use crate::model::{last_position, Call, DecoderModel, ModelOutput};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// Argmax (HF `do_sample=False`).
    Greedy,
    /// Multinomial sampling after temperature, top-k and top-p, in that order.
    Sample {
        /// Divides the logits (must be > 0).
        temperature: f64,
        /// Keep the k most likely tokens (`None` or 0 = off).
        top_k: Option<i64>,
        /// Keep the smallest set with cumulative probability ≥ p (`None` or 1.0 = off).
        top_p: Option<f64>,
        /// Seeds the sampler (same seed → same tokens, independent of libtorch's global RNG).
        seed: i64,
    },
}

/// How the decode steps (every forward call after the prompt's) run. All give the same
/// tokens as transformers' `generate()` within float rounding; [`DecodeMode::Eager`] is the
/// bit-for-bit reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeMode {
    /// [`DecodeMode::CudaGraph`] when the model is on a GPU, graphs are available here and
    /// the hooks allow it ([`Hooks::decode_steps_replayable`]), with a fall-back to
    /// [`DecodeMode::FixedShape`] if recording fails; [`DecodeMode::Fused`] for a float32 or
    /// bf16 model on a CPU with AVX2 or AVX-512; [`DecodeMode::Eager`] otherwise.
    #[default]
    Auto,
    /// One forward call per step over the positions cached so far (transformers' dynamic
    /// cache).
    Eager,
    /// Steps of one fixed shape (transformers' static cache): keys and values written at a
    /// device-side index, attention over the whole preallocated buffer with the unwritten
    /// positions masked. Run one by one; this is exactly what a replayed graph computes.
    FixedShape,
    /// Fixed-shape steps, the second one recorded as a CUDA graph and replayed for every later
    /// step: one launch per token instead of one per kernel. An error when graphs cannot be
    /// used (no GPU, hooks that are not replayable).
    CudaGraph,
    /// Scope's own CPU kernels (float32 and bf16 models on the CPU) for every decode step and
    /// for a float32 model's prompts of up to 64 tokens: the weights streamed by
    /// matrix-vector products on libtorch's OpenMP threads, everything else in plain loops, no
    /// libtorch call per operation. Hooks see every site they want, as in
    /// [`DecodeMode::Eager`], which it matches to float rounding (the summation order of dot
    /// products).
    Fused,
}

impl DecodeMode {
    /// The modes' names, in the order of [`DecodeMode::name`]: `auto`, `eager`, `fixed`,
    /// `graph`, `fused`.
    pub const NAMES: [&'static str; 5] = ["auto", "eager", "fixed", "graph", "fused"];

    /// The mode's name (`fixed` for [`DecodeMode::FixedShape`], `graph` for
    /// [`DecodeMode::CudaGraph`]).
    pub fn name(self) -> &'static str {
        match self {
            DecodeMode::Auto => "auto",
            DecodeMode::Eager => "eager",
            DecodeMode::FixedShape => "fixed",
            DecodeMode::CudaGraph => "graph",
            DecodeMode::Fused => "fused",
        }
    }

    /// The mode named `name` (one of [`DecodeMode::NAMES`]).
    pub fn parse(name: &str) -> Result<Self> {
        [
            DecodeMode::Auto,
            DecodeMode::Eager,
            DecodeMode::FixedShape,
            DecodeMode::CudaGraph,
            DecodeMode::Fused,
        ]
        .into_iter()
        .find(|mode| mode.name() == name)
        .ok_or_else(|| {
            Error::Input(format!(
                "unknown decode mode `{name}` (expected {})",
                DecodeMode::NAMES.join(", ")
            ))
        })
    }
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// At most this many new tokens per row.
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub sampling: Sampling,
    /// Stop ids; `None` = the model's `eos_token_ids`.
    pub eos_token_ids: Option<Vec<i64>>,
    /// Emitted by finished rows; `None` = the model's `pad_token_id`.
    pub pad_token_id: Option<i64>,
    /// How decode steps run.
    pub decode: DecodeMode,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationConfig {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: None,
            pad_token_id: None,
            decode: DecodeMode::Auto,
        }
    }
}

/// What generation returns.
#[derive(Debug)]
pub struct Generated {
    /// `[B, T + steps]`: the (padded) prompt followed by the new tokens, pads after a row's eos
    /// (HF's `output_ids`).
    pub sequences: Tensor,
    /// Each row's new tokens, up to and including its eos.
    pub new_tokens: Vec<Vec<i64>>,
    /// How the decode steps ran (never [`DecodeMode::Auto`]).
    pub decode: DecodeMode,
    /// Why [`DecodeMode::Auto`] fell back from a CUDA graph to unrecorded fixed-shape steps,
    /// when it did.
    pub graph_fallback: Option<String>,
}

/// The tokens chosen at one decode step, for streaming.
#[derive(Debug)]
pub struct Step<'a> {
    /// 0-based step.
    pub index: usize,
    /// The token of every row (the pad id for rows already finished).
    pub tokens: &'a [i64],
    /// Whether each row was still running when it produced this token.
    pub active: &'a [bool],
}

/// Generates from `batch` (left-padded rows with an attention mask, or unpadded rows) with
/// `model`, visiting `hooks` at every forward call and calling `on_step` after each token;
/// `on_step` returning false stops early.
pub fn generate(
    model: &dyn DecoderModel,
    batch: &Batch,
    config: &GenerationConfig,
    hooks: &mut dyn Hooks,
    on_step: &mut dyn FnMut(&Step<'_>) -> bool,
) -> Result<Generated> {
    let _guard = tch::no_grad_guard();
    let spec = model.spec();
    let (b, t) = batch.shape()?;
    let eos = config
        .eos_token_ids
        .clone()
        .unwrap_or_else(|| spec.eos_token_ids.clone());
    let pad = config.pad_token_id.unwrap_or(spec.pad_token_id);
    let mut sampler = Sampler::new(config.sampling)?;
    let device = spec.device;
    let input_ids = batch.input_ids.f_to_device(device)?;
    let mask = match &batch.attention_mask {
        Some(m) => m.f_to_device(device)?.f_to_kind(Kind::Int64)?,
        None => Tensor::f_ones([b, t], (Kind::Int64, device))?,
    };
    let positions = match &batch.position_ids {
        Some(p) => p.f_to_device(device)?,
        None => generation_positions(&mask)?,
    };
    let max_len = t + config.max_new_tokens as i64;
    let mut cache = KvCache::new(&spec, b, max_len)?;
    let decode_masks = DecodeMasks::new(&mask, max_len, spec.window, spec.dtype)?;
    let mut pieces = vec![input_ids.shallow_clone()];
    let mut new_tokens = vec![Vec::new(); b as usize];
    let mut active = vec![true; b as usize];
    let mut decoder = Decoder::new(
        model,
        decode_mode(model, config, &*hooks)?,
        &decode_masks,
        positions.f_narrow(1, t - 1, 1)?,
        t,
    )?;
    let prompt = Batch {
        input_ids,
        attention_mask: Some(mask),
        position_ids: Some(positions),
    };
    let mut logits = decoder.prompt(model, &prompt, &mut cache, hooks)?;
    let context = StepContext {
        model,
        masks: &decode_masks,
        fall_back: config.decode == DecodeMode::Auto,
    };

    for index in 0..config.max_new_tokens {
        // HF copies the last position's logits to f32 before any processing.
        let scores = logits.f_select(1, -1)?.f_to_kind(Kind::Float)?;
        let next = sampler.next(&scores)?;
        let next = pad_finished(next, &active, pad)?;
        // The one host sync per step: stopping needs the tokens.
        let tokens: Vec<i64> = Vec::<i64>::try_from(&next.f_to_device(tch::Device::Cpu)?)?;
        let was_active = active.clone();
        for (row, &tok) in tokens.iter().enumerate() {
            if was_active[row] {
                new_tokens[row].push(tok);
                if eos.contains(&tok) {
                    active[row] = false;
                }
            }
        }
        pieces.push(next.f_unsqueeze(1)?);
        let keep_going = on_step(&Step {
            index,
            tokens: &tokens,
            active: &was_active,
        });
        if !keep_going || active.iter().all(|a| !a) || index + 1 == config.max_new_tokens {
            break;
        }
        logits = decoder.step(&context, &next.f_unsqueeze(1)?, &mut cache, hooks)?;
    }
    Ok(Generated {
        sequences: Tensor::f_cat(&pieces, 1)?,
        new_tokens,
        decode: decoder.mode(),
        graph_fallback: decoder.fallback(),
    })
}

/// The mode `config` asks for, with [`DecodeMode::Auto`] resolved. (An explicit
/// [`DecodeMode::Fused`] the model cannot run fails when its decoder is built.)
fn decode_mode(
    model: &dyn DecoderModel,
    config: &GenerationConfig,
    hooks: &dyn Hooks,
) -> Result<DecodeMode> {
    let device = model.spec().device;
    let on_gpu = matches!(device, Device::Cuda(_));
    match config.decode {
        DecodeMode::Auto => Ok(
            // Recording costs about two steps: not worth it for a handful of tokens.
            if on_gpu
                && config.max_new_tokens > 4
                && hooks.decode_steps_replayable()
                && cuda::graphs_available()
            {
                DecodeMode::CudaGraph
            } else if !on_gpu && fused::preferred(model) {
                DecodeMode::Fused
            } else {
                DecodeMode::Eager
            },
        ),
        DecodeMode::CudaGraph if !on_gpu => Err(graphs_need_a_gpu(device)),
        DecodeMode::CudaGraph if !hooks.decode_steps_replayable() => Err(Error::Cuda(
            "the hooks of this generation cannot be replayed (a collect, or an \
                     intervention that does not declare itself replayable): use eager decoding"
                .into(),
        )),
        other => Ok(other),
    }
}

/// Why [`DecodeMode::CudaGraph`] cannot run a model on `device`.
pub(crate) fn graphs_need_a_gpu(device: Device) -> Error {
    Error::Cuda(format!(
        "CUDA graphs need the model on a GPU; it is on the {}",
        match device {
            Device::Cpu => "CPU".to_string(),
            other => format!("{other:?} device"),
        }
    ))
}

/// The logits of a forward call that must have them.
fn logits_of(out: ModelOutput) -> Result<Tensor> {
    out.logits
        .ok_or_else(|| Error::Input("forward returned no logits".into()))
}

/// What every decode step reads.
struct StepContext<'a> {
    model: &'a dyn DecoderModel,
    masks: &'a DecodeMasks,
    /// Whether a failed recording may fall back to unrecorded fixed-shape steps.
    fall_back: bool,
}

/// Runs the decode steps in one [`DecodeMode`].
enum Decoder<'m> {
    Eager {
        /// The previous step's position ids, `[B, 1]`.
        last_pos: Tensor,
    },
    Fixed {
        step: FixedStep,
        graph: Recording,
        /// Why recording failed, when it failed and the steps went on unrecorded.
        fallback: Option<String>,
    },
    Fused(Box<FusedDecoder<'m>>),
}

/// Where a fixed-shape generation stands with its CUDA graph.
enum Recording {
    /// Steps run one by one.
    Off,
    /// The next step runs for real and is then recorded.
    Wanted,
    /// Replay `graph`; it writes its logits into `logits` (declared first, so dropped before
    /// the graph whose memory pool holds it).
    Recorded { logits: Tensor, graph: CudaGraph },
}

impl<'m> Decoder<'m> {
    /// The decoder of `model` for `mode` after a prompt whose last position ids are
    /// `last_pos` (`[B, 1]`) and whose `prompt_len` positions fill the cache.
    fn new(
        model: &'m dyn DecoderModel,
        mode: DecodeMode,
        masks: &DecodeMasks,
        last_pos: Tensor,
        prompt_len: i64,
    ) -> Result<Self> {
        let graph = match mode {
            DecodeMode::Auto | DecodeMode::Eager => return Ok(Decoder::Eager { last_pos }),
            DecodeMode::Fused => {
                let next = fused::host::<i64>(&last_pos.f_add_scalar(1)?)?;
                return Ok(Decoder::Fused(Box::new(FusedDecoder::new(model, next)?)));
            }
            DecodeMode::FixedShape => Recording::Off,
            DecodeMode::CudaGraph => Recording::Wanted,
        };
        Ok(Decoder::Fixed {
            step: FixedStep::new(masks, &last_pos.f_add_scalar(1)?, prompt_len)?,
            graph,
            fallback: None,
        })
    }

    /// Runs the prompt into the empty `cache`: the last position's logits (`[B, 1, vocab]`).
    /// A fused generation's short float32 prompts run on its kernels (the same numbers to
    /// float rounding, in three quarters of the time for the benchmark's 14 tokens), all
    /// others through libtorch (`FusedDecoder::takes_prompt`).
    fn prompt(
        &mut self,
        model: &dyn DecoderModel,
        prompt: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        if let Decoder::Fused(fused) = self {
            if fused.takes_prompt(prompt.input_ids.numel()) {
                return fused.prompt(prompt, cache, hooks);
            }
        }
        let call = Call {
            options: last_position(),
            ..Call::cached(cache)
        };
        logits_of(model.run(prompt, call, hooks)?)
    }

    /// Why recording failed, if it did.
    fn fallback(&self) -> Option<String> {
        match self {
            Decoder::Fixed { fallback, .. } => fallback.clone(),
            Decoder::Eager { .. } | Decoder::Fused(_) => None,
        }
    }

    fn mode(&self) -> DecodeMode {
        match self {
            Decoder::Eager { .. } => DecodeMode::Eager,
            Decoder::Fused(_) => DecodeMode::Fused,
            Decoder::Fixed {
                graph: Recording::Off,
                ..
            } => DecodeMode::FixedShape,
            Decoder::Fixed { .. } => DecodeMode::CudaGraph,
        }
    }

    /// Feeds `next` (`[B, 1]`) and returns the logits of the step (`[B, 1, vocab]`).
    fn step(
        &mut self,
        ctx: &StepContext<'_>,
        next: &Tensor,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        match self {
            Decoder::Eager { last_pos } => {
                *last_pos = last_pos.f_add_scalar(1)?;
                // One-position steps take their masks from `decode_masks`.
                let input = Batch {
                    input_ids: next.shallow_clone(),
                    attention_mask: None,
                    position_ids: Some(last_pos.shallow_clone()),
                };
                let call = Call {
                    options: last_position(),
                    masks: Some(ctx.masks.step(cache.len())?),
                    ..Call::cached(cache)
                };
                logits_of(ctx.model.run(&input, call, hooks)?)
            }
            Decoder::Fused(fused) => {
                fused.step(&fused::host::<i64>(next)?, cache, ctx.masks, hooks)
            }
            Decoder::Fixed {
                step,
                graph,
                fallback,
            } => {
                step.feed(next)?;
                let logits = match graph {
                    Recording::Off => logits_of(step.run(ctx.model, cache, hooks)?)?,
                    Recording::Recorded { graph, logits } => {
                        graph.replay()?;
                        logits.shallow_clone()
                    }
                    Recording::Wanted => {
                        let (logits, recorded) = run_and_record(ctx.model, step, cache, hooks)?;
                        *graph = match recorded {
                            Ok(r) => r,
                            Err(e) if ctx.fall_back => {
                                *fallback = Some(e.to_string());
                                Recording::Off
                            }
                            Err(e) => return Err(e),
                        };
                        logits
                    }
                };
                step.advance()?;
                cache.advance(1);
                Ok(logits)
            }
        }
    }
}

/// Runs one fixed-shape step for real on a side stream (so that libraries set themselves up
/// outside the capture), then records the same step as a CUDA graph without running it. The
/// step's logits, and the recording or why it failed; an error only when the step itself fails.
fn run_and_record(
    model: &dyn DecoderModel,
    step: &FixedStep,
    cache: &mut KvCache,
    hooks: &mut dyn Hooks,
) -> Result<(Tensor, Result<Recording>)> {
    let mut graph = match CudaGraph::new().and_then(|mut g| g.enter().map(|()| g)) {
        Ok(graph) => graph,
        Err(why) => {
            let logits = logits_of(step.run(model, cache, hooks)?)?;
            return Ok((logits, Err(why)));
        }
    };
    let ran = logits_of(step.run(model, cache, hooks)?);
    let recorded = match &ran {
        Ok(_) => graph.capture(|| logits_of(step.run(model, cache, hooks)?)),
        Err(_) => Err(Error::Cuda("the step to record failed".into())),
    };
    graph.exit()?;
    let logits = ran?;
    Ok((
        logits,
        recorded.map(|logits| Recording::Recorded { logits, graph }),
    ))
}

/// The device-side state of fixed-shape decode steps. Every tensor keeps its storage for
/// the whole generation: a recorded step reads them in place, and [`FixedStep::advance`]
/// updates them in place.
pub(crate) struct FixedStep {
    /// `[B, 1]` int64: the tokens to feed.
    input_ids: Tensor,
    /// `[B, 1]` int64: their position ids.
    positions: Tensor,
    /// `[1]` int64: the cache index they are written at.
    cursor: Tensor,
    /// `[B, max_len]` bool: real tokens.
    key_real: Tensor,
    window: Option<i64>,
    dtype: Kind,
}

impl FixedStep {
    /// The state for the first step after `masks`' prompt: its tokens (fed later, see
    /// [`FixedStep::feed`]) at `positions` (`[B, 1]`), written at index `cursor`.
    pub(crate) fn new(masks: &DecodeMasks, positions: &Tensor, cursor: i64) -> Result<Self> {
        let device = masks.key_real.device();
        let rows = masks.key_real.size().first().copied().unwrap_or(0);
        Ok(FixedStep {
            input_ids: Tensor::f_zeros([rows, 1], (Kind::Int64, device))?,
            positions: positions.f_to_device(device)?.f_detach_copy()?,
            cursor: Tensor::f_full([1], cursor, (Kind::Int64, device))?,
            key_real: masks.key_real.shallow_clone(),
            window: masks.window,
            dtype: masks.dtype,
        })
    }

    /// The masks of the query at index `cursor` over every key index of the buffer (later
    /// ones hidden): computed on the device from the cursor, so a replay sees the new index.
    pub(crate) fn masks(&self) -> Result<Masks> {
        let keys = self.key_real.size().last().copied().unwrap_or(0);
        let queries = self.cursor.f_view([1, 1])?;
        Masks::new(
            &queries,
            keys,
            Some(&self.key_real),
            self.window,
            self.dtype,
        )
    }

    /// One step of fixed shape: the tokens in `input_ids` at `positions`, keys and values
    /// written at `cursor`, attention over the whole cache buffer; the last position's
    /// logits (`[B, 1, vocab]`). Nothing on the host depends on the step, so it can be
    /// recorded once and replayed; the caller advances the step and the cache after each
    /// step that ran.
    fn run(
        &self,
        model: &dyn DecoderModel,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let batch = Batch::new(self.input_ids.shallow_clone())
            .with_position_ids(self.positions.shallow_clone());
        let call = Call {
            options: last_position(),
            masks: Some(self.masks()?),
            cursor: Some(&self.cursor),
            ..Call::cached(cache)
        };
        model.run(&batch, call, hooks)
    }

    /// Sets the step's tokens, `next` (`[B, 1]`).
    pub(crate) fn feed(&mut self, next: &Tensor) -> Result<()> {
        self.input_ids.f_copy_(next)?;
        Ok(())
    }

    /// Moves one position on, after a step ran.
    pub(crate) fn advance(&mut self) -> Result<()> {
        let _ = self.positions.f_add_scalar_(1)?;
        let _ = self.cursor.f_add_scalar_(1)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::finfo_min;

    /// The fixed-shape step's masks, over the whole buffer, are the per-step masks followed by
    /// hidden keys, value for value: padded rows, inside and past the sliding window.
    #[test]
    fn fixed_step_masks_extend_the_per_step_masks() -> Result<()> {
        let window = 6;
        // Row 0 has two pads, row 1 none; 5 prompt positions, room for 3 * window more.
        let prompt_mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 5]);
        let max_len = 5 + 3 * window;
        let masks = DecodeMasks::new(&prompt_mask, max_len, Some(window), Kind::Float)?;
        let positions = Tensor::zeros([2, 1], (Kind::Int64, Device::Cpu));
        let mut step = FixedStep::new(&masks, &positions, 5)?;
        for past in 5..max_len {
            let eager = masks.step(past)?;
            let fixed = step.masks()?;
            for (name, e, f) in [
                ("full", &eager.full, &fixed.full),
                ("sliding", &eager.sliding, &fixed.sliding),
            ] {
                let seen = f.narrow(3, 0, past + 1);
                assert!(seen.equal(e), "{name} mask at index {past}");
                let later = f.narrow(3, past + 1, max_len - past - 1);
                let min = finfo_min(Kind::Float);
                assert!(
                    later.eq(min).all().int64_value(&[]) == 1,
                    "{name} at {past}"
                );
            }
            step.advance()?;
        }
        Ok(())
    }
}

/// `next` with the pad id in the rows no longer `active` (HF's
/// `next * unfinished + pad * (1 - unfinished)`); `next` itself while every row runs.
fn pad_finished(next: Tensor, active: &[bool], pad: i64) -> Result<Tensor> {
    if active.iter().all(|&a| a) {
        return Ok(next);
    }
    let active_t = Tensor::f_from_slice(&active.iter().map(|&a| i64::from(a)).collect::<Vec<_>>())?
        .f_to_device(next.device())?;
    Ok(next
        .f_mul(&active_t)?
        .f_add(&active_t.f_neg()?.f_add_scalar(1)?.f_mul_scalar(pad)?)?)
}

/// HF `generate()` positions: `cumsum(mask) - 1`, pads set to 0.
pub fn generation_positions(mask: &Tensor) -> Result<Tensor> {
    let mask = mask.f_to_kind(Kind::Int64)?;
    Ok(mask
        .f_cumsum(-1, Kind::Int64)?
        .f_sub_scalar(1)?
        .f_masked_fill(&mask.f_eq(0)?, 0)?)
}

/// Chooses next tokens from scores by one [`Sampling`] rule, with a seeded generator of its
/// own (not libtorch's global one): the same seed gives the same tokens whatever else the
/// process samples (other threads, other models, other requests).
#[derive(Clone, Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: Option<SplitMix64>,
}

impl Sampler {
    /// A sampler for `sampling`, or an error naming a temperature that is not > 0.
    pub fn new(sampling: Sampling) -> Result<Self> {
        let rng = match sampling {
            Sampling::Greedy => None,
            Sampling::Sample {
                temperature, seed, ..
            } => {
                if temperature <= 0.0 || !temperature.is_finite() {
                    return Err(Error::Input(format!(
                        "temperature must be > 0, got {temperature}"
                    )));
                }
                Some(SplitMix64::new(seed))
            }
        };
        Ok(Sampler { sampling, rng })
    }

    /// The next token of every row of the f32 scores `[B, vocab]` (`[B]`, int64); a sampling
    /// rule draws one number per row, in row order.
    pub fn next(&mut self, scores: &Tensor) -> Result<Tensor> {
        choose(scores, &self.sampling, self.rng.as_mut())
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny, well-mixed seeded generator for the
/// sampling draws.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: i64) -> Self {
        SplitMix64(seed as u64)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so the inverse-CDF draw never lands on a token of
    /// probability 0.
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// One multinomial draw per row by inverse CDF: the first token whose cumulative probability
/// reaches `u · total`.
fn draw(probs: &Tensor, rng: &mut SplitMix64) -> Result<Tensor> {
    let rows = probs.size().first().copied().unwrap_or(0);
    let u: Vec<f64> = (0..rows).map(|_| rng.next_unit()).collect();
    let cdf = probs.f_cumsum(-1, Kind::Double)?;
    let vocab = cdf.size().last().copied().unwrap_or(1);
    let total = cdf.f_narrow(-1, vocab - 1, 1)?;
    let target = Tensor::f_from_slice(&u)?
        .f_to_device(probs.device())?
        .f_unsqueeze(1)?
        .f_mul(&total)?;
    Ok(cdf
        .f_lt_tensor(&target)?
        .f_sum_dim_intlist(-1, false, Kind::Int64)?
        .f_clamp_max(vocab - 1)?)
}

/// The next token of every row from f32 scores `[B, vocab]`.
fn choose(scores: &Tensor, sampling: &Sampling, rng: Option<&mut SplitMix64>) -> Result<Tensor> {
    match *sampling {
        Sampling::Greedy => Ok(scores.f_argmax(-1, false)?),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            let mut s = scores.f_div_scalar(temperature)?;
            if let Some(k) = top_k.filter(|&k| k > 0) {
                s = top_k_filter(&s, k)?;
            }
            if let Some(p) = top_p.filter(|&p| p < 1.0) {
                s = top_p_filter(&s, p)?;
            }
            let probs = s.f_softmax(-1, Kind::Float)?;
            let rng =
                rng.ok_or_else(|| Error::Input("sampling without a seeded generator".into()))?;
            draw(&probs, rng)
        }
    }
}

/// HF `TopKLogitsWarper`: drop scores below the k-th largest.
pub fn top_k_filter(scores: &Tensor, k: i64) -> Result<Tensor> {
    let vocab = scores.size().last().copied().unwrap_or(0);
    let k = k.min(vocab);
    let (values, _) = scores.f_topk(k, -1, true, true)?;
    let kth = values.f_narrow(-1, k - 1, 1)?;
    Ok(scores.f_masked_fill(&scores.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?)
}

/// HF `TopPLogitsWarper`: sort ascending, drop tokens whose cumulative probability is
/// `<= 1 - p`, always keep the most likely token.
pub fn top_p_filter(scores: &Tensor, p: f64) -> Result<Tensor> {
    let (sorted, indices) = scores.f_sort(-1, false)?;
    let cumulative = sorted
        .f_softmax(-1, Kind::Float)?
        .f_cumsum(-1, Kind::Float)?;
    let remove_sorted = cumulative.f_le(1.0 - p)?;
    let vocab = scores.size().last().copied().unwrap_or(0);
    let mut keep_top = remove_sorted.f_narrow(-1, vocab - 1, 1)?;
    let _ = keep_top.f_fill_(0)?;
    let remove = remove_sorted.f_scatter(-1, &indices, &remove_sorted)?;
    Ok(scores.f_masked_fill(&remove, f64::NEG_INFINITY)?)
}
