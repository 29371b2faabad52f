//! The scheduler: requests wait for a cache slot, run their prompt when admitted, then decode
//! together one token per step until each stops.

use std::collections::VecDeque;

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::fused::{self, FusedDecoder, SlotCall};
use crate::generate::{
    generate, graphs_need_a_gpu, DecodeMode, GenerationConfig, Sampler, Sampling,
};
use crate::model::DecoderModel;
use crate::model::{last_position, Call};
use intervene::Site;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::hooks::{RowHooks, RowInterventions};
use crate::request::{FinishReason, Finished, Progress, Reading, Readout, Request};
use crate::slots::SlotStep;

/// How much the engine holds at once. The KV cache is allocated once, up front, for
/// `max_rows` slots of `context` positions; a request waits for a free slot, and one that
/// could never fit a slot is refused when submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests decoded together (cache rows).
    pub max_rows: usize,
    /// Positions per slot: a request's prompt plus its `max_new_tokens`.
    pub context: usize,
}

impl Limits {
    /// The KV cache's size in bytes for `model`: keys and values of every layer, for every
    /// slot and position.
    pub fn cache_bytes(&self, model: &dyn DecoderModel) -> u64 {
        slot_bytes(model, self.context) * self.max_rows as u64
    }

    /// Up to `max_rows` slots of `context` positions, as many as fit in `budget` bytes of KV
    /// cache; an error saying what one slot needs when not even one fits.
    pub fn within_budget(
        model: &dyn DecoderModel,
        max_rows: usize,
        context: usize,
        budget: u64,
    ) -> Result<Limits> {
        let per_slot = slot_bytes(model, context).max(1);
        let rows = usize::try_from(budget / per_slot)
            .unwrap_or(usize::MAX)
            .min(max_rows);
        if rows == 0 {
            return Err(Error::Limits(format!(
                "one slot of {context} positions needs {} of KV cache, more than the budget \
                 of {}",
                human_bytes(per_slot),
                human_bytes(budget)
            )));
        }
        Ok(Limits {
            max_rows: rows,
            context,
        })
    }
}

/// `bytes` in the largest binary unit that keeps it at least 1.
fn human_bytes(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// The KV cache bytes of one slot of `context` positions.
fn slot_bytes(model: &dyn DecoderModel, context: usize) -> u64 {
    let c = model.spec();
    let per_position = 2 * c.num_layers as u64 * (c.kv_heads * c.head_dim) as u64;
    per_position * context as u64 * c.dtype.elt_size_in_bytes() as u64
}

/// How the engine runs its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineMode {
    /// One call per decode step over every running request, on the fused CPU kernels (a
    /// float32 or bfloat16 model on a CPU with AVX2 or AVX-512), each admitted prompt in a
    /// call of its own. A request's logits are bit-identical whatever runs beside it.
    Fused,
    /// One libtorch call per decode step over every slot (any device and dtype; a step of
    /// one fixed shape over static buffers, recorded as a CUDA graph on a GPU), each admitted
    /// prompt in a call of its own.
    /// A row's products may round differently with the rows around it (the library picks
    /// its kernels by shape), so logits can differ in the last bits from a solo run; tokens
    /// are the solo run's on the test fixtures.
    Batched,
    /// One request after another through the model's own generation (any device and dtype):
    /// exactly the results of running each alone, without the batching.
    Sequential,
}

impl EngineMode {
    /// What [`Engine::new`] picks for `model`: the fused kernels where they run it faster
    /// than libtorch, libtorch's batched steps otherwise.
    pub fn preferred(model: &dyn DecoderModel) -> Self {
        if fused::preferred(model) {
            EngineMode::Fused
        } else {
            EngineMode::Batched
        }
    }

    /// The mode whose decode steps run as `decode` asks, as [`generate`](crate::generate)
    /// takes it: `auto` is [`Self::preferred`], `eager` runs one request at a time through
    /// the model's own calls, `fixed` and `graph` libtorch's fixed-shape step over every slot
    /// (which a GPU records as a CUDA graph; `graph` is refused elsewhere), `fused` the fused
    /// kernels ([`Engine::with_mode`] says why where they cannot run the model).
    pub fn for_decode(model: &dyn DecoderModel, decode: DecodeMode) -> Result<Self> {
        Ok(match decode {
            DecodeMode::Auto => Self::preferred(model),
            DecodeMode::Eager => EngineMode::Sequential,
            DecodeMode::FixedShape => EngineMode::Batched,
            DecodeMode::CudaGraph if model.spec().device.is_cuda() => EngineMode::Batched,
            DecodeMode::CudaGraph => return Err(graphs_need_a_gpu(model.spec().device)),
            DecodeMode::Fused => EngineMode::Fused,
        })
    }

    /// The `decode` a report of this mode's requests names: `fused`, `fixed` (one
    /// fixed-shape libtorch step over every slot) or `eager`.
    pub fn decode_name(self) -> &'static str {
        match self {
            EngineMode::Fused => "fused",
            EngineMode::Batched => "fixed",
            EngineMode::Sequential => "eager",
        }
    }

    /// `fused`, `batched` or `sequential`.
    pub fn name(self) -> &'static str {
        match self {
            EngineMode::Fused => "fused",
            EngineMode::Batched => "batched",
            EngineMode::Sequential => "sequential",
        }
    }
}

/// Many requests over one model: see the [crate docs](crate).
pub struct Engine<'m> {
    model: &'m dyn DecoderModel,
    limits: Limits,
    runner: Runner<'m>,
    slots: Vec<Option<Running>>,
    waiting: VecDeque<Prepared>,
}

enum Runner<'m> {
    Fused {
        decoder: Box<FusedDecoder<'m>>,
        cache: KvCache,
    },
    Batched {
        cache: KvCache,
        step: Box<SlotStep>,
    },
    Sequential,
}

/// A checked request, its interventions on the model's device.
struct Prepared {
    id: String,
    prompt: Vec<i64>,
    max_new_tokens: usize,
    sampling: Sampling,
    sampler: Sampler,
    stop: Vec<i64>,
    edits: Vec<(Site, Tensor)>,
    readouts: Vec<Box<dyn Readout>>,
    keep_scores: bool,
}

/// A request in a slot.
struct Running {
    request: Prepared,
    /// Positions in its slot.
    past: usize,
    tokens: Vec<i64>,
    scores: Vec<Tensor>,
    reads: Vec<Vec<Reading>>,
}

impl Running {
    /// `request` before its prompt runs.
    fn new(request: Prepared) -> Self {
        Running {
            reads: request.readouts.iter().map(|_| Vec::new()).collect(),
            request,
            past: 0,
            tokens: Vec::new(),
            scores: Vec::new(),
        }
    }

    fn interventions(&self) -> RowInterventions<'_> {
        RowInterventions {
            edits: &self.request.edits,
            readouts: &self.request.readouts,
        }
    }

    /// Takes the token chosen from `scores` (`[1, vocab]`, f32) and says whether the request
    /// is done. `argmax` is the scores' argmax, read with the other rows' in one copy to the
    /// host (exactly what a greedy sampler picks from this row alone).
    fn take(&mut self, scores: Tensor, argmax: i64) -> Result<Option<FinishReason>> {
        let token = match self.request.sampling {
            Sampling::Greedy => argmax,
            Sampling::Sample { .. } => self.request.sampler.next(&scores)?.f_int64_value(&[0])?,
        };
        if self.request.keep_scores {
            self.scores.push(scores.f_squeeze_dim(0)?);
        }
        self.tokens.push(token);
        Ok(if self.request.stop.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.tokens.len() >= self.request.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        })
    }

    fn finish(self, reason: FinishReason) -> Finished {
        Finished {
            id: self.request.id,
            prompt: self.request.prompt,
            tokens: self.tokens,
            reason,
            scores: self.scores,
            readouts: self.reads,
        }
    }
}

impl<'m> Engine<'m> {
    /// An engine over `model` with `limits`, in [`EngineMode::preferred`].
    pub fn new(model: &'m dyn DecoderModel, limits: Limits) -> Result<Self> {
        Self::with_mode(model, limits, EngineMode::preferred(model))
    }

    /// An engine in `mode`; [`EngineMode::Fused`] fails with the reason when the fused
    /// kernels cannot run `model`.
    pub fn with_mode(
        model: &'m dyn DecoderModel,
        limits: Limits,
        mode: EngineMode,
    ) -> Result<Self> {
        if limits.max_rows == 0 || limits.context == 0 {
            return Err(Error::Limits(format!(
                "rows and context must be at least 1, got {} rows of {} positions",
                limits.max_rows, limits.context
            )));
        }
        let cache = || KvCache::new(&model.spec(), limits.max_rows as i64, limits.context as i64);
        let runner = match mode {
            EngineMode::Fused => Runner::Fused {
                decoder: Box::new(FusedDecoder::for_slots(model)?),
                cache: cache()?,
            },
            EngineMode::Batched => Runner::Batched {
                cache: cache()?,
                step: Box::new(SlotStep::new(model, limits.max_rows)?),
            },
            EngineMode::Sequential => Runner::Sequential,
        };
        Ok(Engine {
            model,
            limits,
            runner,
            slots: (0..limits.max_rows).map(|_| None).collect(),
            waiting: VecDeque::new(),
        })
    }

    /// How it runs.
    pub fn mode(&self) -> EngineMode {
        match self.runner {
            Runner::Fused { .. } => EngineMode::Fused,
            Runner::Batched { .. } => EngineMode::Batched,
            Runner::Sequential => EngineMode::Sequential,
        }
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Queues `request`, or says why it can never run (naming it): an empty prompt, a token
    /// outside the vocabulary, more positions than a slot holds, an edit at a site the model
    /// lacks or of the wrong width, a temperature that is not > 0.
    pub fn submit(&mut self, request: Request) -> Result<()> {
        let prepared = self.prepare(request)?;
        self.waiting.push_back(prepared);
        Ok(())
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in slots.
    pub fn running(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running() == 0
    }

    /// What each running request has produced so far, in slot order: a streaming server
    /// sends the tokens past those it already sent after every [`step`](Self::step). A
    /// request leaves this list when it finishes (its tokens are then in its [`Finished`]).
    pub fn progress(&self) -> impl Iterator<Item = Progress<'_>> {
        self.slots.iter().flatten().map(|running| Progress {
            id: &running.request.id,
            tokens: &running.tokens,
            readouts: &running.reads,
        })
    }

    /// Drops the request `id`, waiting or running, so that its slot is free at the next
    /// step (a client that went away); whether it was there.
    pub fn cancel(&mut self, id: &str) -> Result<bool> {
        if let Some(at) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(at);
            return Ok(true);
        }
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|r| r.request.id == id))
        else {
            return Ok(false);
        };
        if let Runner::Batched { step, .. } = &mut self.runner {
            step.clear_row(slot)?;
        }
        self.slots[slot] = None;
        Ok(true)
    }

    /// Admits waiting requests into free slots (running each one's prompt), then decodes
    /// one token of every running request; returns those that finished.
    pub fn step(&mut self) -> Result<Vec<Finished>> {
        let _guard = tch::no_grad_guard();
        match self.runner {
            Runner::Sequential => match self.waiting.pop_front() {
                Some(request) => Ok(vec![self.run_alone(request)?]),
                None => Ok(Vec::new()),
            },
            Runner::Fused { .. } | Runner::Batched { .. } => {
                let mut done = self.admit()?;
                done.extend(self.decode()?);
                Ok(done)
            }
        }
    }

    /// Submits every request, then steps until all are done, handing each finished request
    /// (or a request's refusal) to `on_done` as it comes.
    pub fn run(
        &mut self,
        requests: impl IntoIterator<Item = Request>,
        on_done: &mut dyn FnMut(Result<Finished>),
    ) -> Result<()> {
        for request in requests {
            if let Err(refused) = self.submit(request) {
                on_done(Err(refused));
            }
        }
        while !self.is_idle() {
            for finished in self.step()? {
                on_done(Ok(finished));
            }
        }
        Ok(())
    }

    fn prepare(&self, request: Request) -> Result<Prepared> {
        let Request {
            id,
            prompt,
            max_new_tokens,
            sampling,
            stop_tokens,
            edits,
            readouts,
            keep_scores,
        } = request;
        let refuse = |why: String| Error::Request {
            id: id.clone(),
            why,
        };
        let spec = self.model.spec();
        if prompt.is_empty() {
            return Err(refuse("the prompt has no tokens".into()));
        }
        if let Some((i, t)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &t)| t < 0 || t >= spec.vocab_size)
        {
            return Err(refuse(format!(
                "prompt token {i} is {t}, outside the vocabulary of {}",
                spec.vocab_size
            )));
        }
        let positions = prompt.len() + max_new_tokens;
        if positions > self.limits.context {
            return Err(refuse(format!(
                "its prompt ({} tokens) plus max_new_tokens ({max_new_tokens}) needs {positions} \
                 positions; a slot holds {}",
                prompt.len(),
                self.limits.context
            )));
        }
        if keep_scores && self.mode() == EngineMode::Sequential {
            return Err(refuse(
                "scores are not kept in sequential mode (each request runs through the \
                 model's own generation)"
                    .into(),
            ));
        }
        let catalog = self.model.site_catalog();
        let mut on_device = Vec::with_capacity(edits.len());
        for edit in edits {
            let width = catalog
                .get(edit.site)
                .map(|info| info.width)
                .ok_or_else(|| refuse(format!("the model has no site {}", edit.site)))?;
            if edit.vector.size() != [width] {
                return Err(refuse(format!(
                    "the vector added at {} must be [{width}], got {:?}",
                    edit.site,
                    edit.vector.size()
                )));
            }
            let vector = edit.vector.f_to_device(spec.device)?;
            on_device.push((edit.site, vector));
        }
        for readout in &readouts {
            if catalog.get(readout.site()).is_none() {
                return Err(refuse(format!("the model has no site {}", readout.site())));
            }
        }
        let stop = stop_tokens.unwrap_or_else(|| spec.eos_token_ids.clone());
        Ok(Prepared {
            sampler: Sampler::new(sampling).map_err(|e| refuse(e.to_string()))?,
            sampling,
            id,
            prompt,
            max_new_tokens,
            stop,
            edits: on_device,
            readouts,
            keep_scores,
        })
    }

    /// Moves waiting requests into free slots, running each one's prompt in a call of its
    /// own (on the fused kernels where they take it, `FusedDecoder::takes_prompt`, else
    /// through the model); returns those done after their first token.
    fn admit(&mut self) -> Result<Vec<Finished>> {
        let mut done = Vec::new();
        while let Some(slot) = self.slots.iter().position(Option::is_none) {
            let Some(request) = self.waiting.pop_front() else {
                break;
            };
            let mut running = Running::new(request);
            if running.request.max_new_tokens == 0 {
                done.push(running.finish(FinishReason::Length));
                continue;
            }
            let prompt = running.request.prompt.clone();
            let scores = match &mut self.runner {
                Runner::Fused { decoder, cache } if decoder.takes_prompt(prompt.len()) => {
                    call_slots(decoder, cache, &[slot], &mut [&mut running], &prompt)?
                }
                Runner::Fused { cache, .. } | Runner::Batched { cache, .. } => {
                    prefill(self.model, cache, slot, &mut running)?
                }
                Runner::Sequential => {
                    return Err(Error::Limits(
                        "a batched call on a sequential engine".into(),
                    ))
                }
            };
            running.past = prompt.len();
            let argmax = argmax_of_rows(&scores)?
                .first()
                .copied()
                .unwrap_or_default();
            match running.take(scores.f_narrow(0, 0, 1)?, argmax)? {
                Some(reason) => done.push(running.finish(reason)),
                None => {
                    if let Runner::Batched { step, .. } = &mut self.runner {
                        step.set_row(slot, &running.request.edits)?;
                    }
                    self.slots[slot] = Some(running);
                }
            }
        }
        Ok(done)
    }

    /// One token of every running request, in one call.
    fn decode(&mut self) -> Result<Vec<Finished>> {
        let mut slots = Vec::new();
        let mut rows = Vec::new();
        for (slot, running) in self.slots.iter_mut().enumerate() {
            if let Some(running) = running.as_mut() {
                slots.push(slot);
                rows.push(running);
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<i64> = rows
            .iter()
            .map(|r| r.tokens.last().copied().unwrap_or_default())
            .collect();
        let scores = match &mut self.runner {
            Runner::Fused { decoder, cache } => {
                call_slots(decoder, cache, &slots, &mut rows, &tokens)?
            }
            Runner::Batched { cache, step } => step_every_slot(
                self.model,
                cache,
                step,
                self.limits.max_rows,
                &slots,
                &mut rows,
                &tokens,
            )?,
            Runner::Sequential => return Ok(Vec::new()),
        };
        let argmax = argmax_of_rows(&scores)?;
        let mut finished = Vec::new();
        for ((row, running), &best) in rows.into_iter().enumerate().zip(&argmax) {
            running.past += 1;
            if let Some(reason) = running.take(scores.f_narrow(0, row as i64, 1)?, best)? {
                finished.push((row, reason));
            }
        }
        let mut done = Vec::new();
        for (row, reason) in finished {
            if let Runner::Batched { step, .. } = &mut self.runner {
                step.clear_row(slots[row])?;
            }
            if let Some(running) = self.slots[slots[row]].take() {
                done.push(running.finish(reason));
            }
        }
        Ok(done)
    }

    /// `request` alone through the model's generation, as [`EngineMode::Sequential`] runs it.
    fn run_alone(&self, request: Prepared) -> Result<Finished> {
        let mut running = Running::new(request);
        if running.request.max_new_tokens == 0 {
            return Ok(running.finish(FinishReason::Length));
        }
        let mut hooks = RowHooks::new(vec![running.interventions()]);
        let request = &running.request;
        let config = GenerationConfig {
            sampling: request.sampling,
            eos_token_ids: Some(request.stop.clone()),
            decode: DecodeMode::Eager,
            ..GenerationConfig::greedy(request.max_new_tokens)
        };
        let batch = Batch::from_ids(&request.prompt);
        let generated = generate(self.model, &batch, &config, &mut hooks, &mut |_| true)?;
        let reads = std::mem::take(&mut hooks.reads);
        drop(hooks);
        running.reads = reads.into_iter().next().unwrap_or_default();
        running.tokens = generated.new_tokens.into_iter().next().unwrap_or_default();
        let reason = match running.tokens.last() {
            Some(t) if running.request.stop.contains(t) => FinishReason::Stop,
            _ => FinishReason::Length,
        };
        Ok(running.finish(reason))
    }
}

/// One fused call over `slots`, `tokens` split evenly between the rows: visits each row's
/// interventions, keeps its readouts, and returns the last position's scores of each row
/// (`[rows, vocab]`, f32).
fn call_slots(
    decoder: &mut FusedDecoder<'_>,
    cache: &mut KvCache,
    slots: &[usize],
    rows: &mut [&mut Running],
    tokens: &[i64],
) -> Result<Tensor> {
    let len = tokens.len() / rows.len().max(1);
    let past: Vec<usize> = rows.iter().map(|r| r.past).collect();
    let mut hooks = RowHooks::new(rows.iter().map(|r| r.interventions()).collect());
    let call = SlotCall {
        slots,
        past: &past,
        tokens,
        len,
    };
    let logits = decoder.forward_slots(&call, cache, &mut hooks)?;
    let hooks_reads = std::mem::take(&mut hooks.reads);
    drop(hooks);
    keep_reads(rows, hooks_reads);
    // HF copies the last position's logits to f32 before choosing.
    Ok(logits.f_select(1, 0)?.f_to_kind(Kind::Float)?)
}

/// The argmax of every row of `scores` (`[rows, vocab]`), in one copy to the host.
fn argmax_of_rows(scores: &Tensor) -> Result<Vec<i64>> {
    let best = scores.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<i64>::try_from(&best)?)
}

/// Appends each row's readings of one call to its request's.
fn keep_reads(rows: &mut [&mut Running], reads: Vec<Vec<Vec<Reading>>>) {
    for (running, row_reads) in rows.iter_mut().zip(reads) {
        for (all, mut new) in running.reads.iter_mut().zip(row_reads) {
            all.append(&mut new);
        }
    }
}

/// `running`'s prompt through the model alone, into a one-row cache that is then copied into
/// `slot`: the last position's scores, `[1, vocab]` in f32.
fn prefill(
    model: &dyn DecoderModel,
    cache: &mut KvCache,
    slot: usize,
    running: &mut Running,
) -> Result<Tensor> {
    let prompt = &running.request.prompt;
    let len = prompt.len() as i64;
    let mut alone = KvCache::new(&model.spec(), 1, len)?;
    let mut hooks = RowHooks::new(vec![running.interventions()]);
    let call = Call {
        options: last_position(),
        ..Call::cached(&mut alone)
    };
    let logits = model
        .run(&Batch::from_ids(prompt), call, &mut hooks)?
        .logits
        .ok_or_else(|| Error::Input("the prompt's call returned no logits".into()))?;
    let reads = std::mem::take(&mut hooks.reads);
    drop(hooks);
    keep_reads(&mut [running], reads);
    cache.copy_slot_from(slot as i64, &alone, len)?;
    Ok(logits.f_select(1, 0)?.f_to_kind(Kind::Float)?)
}

/// One libtorch step over every slot of `cache` (`rows` of them; free ones feed a pad at
/// index 0 of their own row, which admission overwrites) through `step`'s static buffers:
/// each running row's token at its own position, keys and values written at its own index,
/// attention over its row's buffer with later indices hidden, its steering from its row of
/// the edit buffers. The scores of the running rows, in their order (`[rows, vocab]`, f32).
fn step_every_slot(
    model: &dyn DecoderModel,
    cache: &mut KvCache,
    step: &mut SlotStep,
    rows: usize,
    slots: &[usize],
    running: &mut [&mut Running],
    tokens: &[i64],
) -> Result<Tensor> {
    let spec = model.spec();
    let (mut feed, mut index) = (vec![spec.pad_token_id; rows], vec![0i64; rows]);
    for ((&slot, &token), row) in slots.iter().zip(tokens).zip(running.iter()) {
        feed[slot] = token;
        index[slot] = row.past as i64;
    }
    // Readouts are host code: only steps that have some visit them (and are not recorded).
    let mut readouts = vec![RowInterventions::default(); rows];
    for (&slot, row) in slots.iter().zip(running.iter()) {
        readouts[slot].readouts = &row.request.readouts;
    }
    let any = readouts.iter().any(|r| !r.readouts.is_empty());
    let mut hooks = RowHooks::new(readouts);
    let logits = step.run(
        model,
        cache,
        &feed,
        &index,
        any.then_some(&mut hooks as &mut dyn intervene::Hooks),
    )?;
    let mut reads = std::mem::take(&mut hooks.reads);
    drop(hooks);
    let ours: Vec<_> = slots
        .iter()
        .map(|&slot| std::mem::take(&mut reads[slot]))
        .collect();
    keep_reads(running, ours);
    let picked = Tensor::f_from_slice(&slots.iter().map(|&s| s as i64).collect::<Vec<_>>())?
        .f_to_device(spec.device)?;
    Ok(logits
        .f_select(1, 0)?
        .f_index_select(0, &picked)?
        .f_to_kind(Kind::Float)?)
}
