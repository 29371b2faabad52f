//! The contract between a model and the intervention graph.
//!
//! A model calls [`Hooks::begin_forward`] once at the start of every forward call (the prompt
//! and each decode step of generation), then, at each site in execution order,
//! [`Hooks::wants`] and, only if that says yes, [`Hooks::visit`] with the activation, which the
//! hook may replace. With [`NoHooks`] a forward pays one branch per site and nothing else.

use tch::Tensor;

use crate::error::Error;
use crate::site::{Site, SiteCatalog};

/// Facts about the forward call that is starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardInfo {
    /// Batch size.
    pub batch: i64,
    /// Number of positions in this call (the whole prompt, or 1 for a cached decode step).
    pub chunk_len: i64,
    /// Positions already in the KV cache before this call (0 for a fresh forward or a prompt).
    pub past_len: i64,
}

/// Hooks a model calls while it runs.
pub trait Hooks {
    /// Called at the start of every forward call, before any site is visited.
    fn begin_forward(&mut self, info: &ForwardInfo) -> Result<(), Error> {
        let _ = info;
        Ok(())
    }

    /// Whether anything is attached at `site` for the current forward call. Models skip all work
    /// for a site (clones, views) when this is false.
    fn wants(&self, site: Site) -> bool;

    /// The activation at `site`, `[batch, chunk_len, width]` in the model's dtype and device.
    /// The hook may read it or assign a new tensor of the same shape, dtype and device.
    fn visit(&mut self, site: Site, activation: &mut Tensor) -> Result<(), Error>;

    /// Whether every decode step of the current generation (the one-position forward calls
    /// after the prompt) is hooked alike: the same sites, and at each the same device work on
    /// the same tensors, whatever the step, once a first step has run. A model may then record
    /// one step and replay it (a CUDA graph) instead of calling the hooks again: replayed
    /// steps call neither [`begin_forward`](Self::begin_forward) nor [`visit`](Self::visit).
    /// False by default; hooks that collect, count or branch on the step must keep it so.
    fn decode_steps_replayable(&self) -> bool {
        false
    }
}

/// No hooks at all: the plain model.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn wants(&self, _site: Site) -> bool {
        false
    }

    fn visit(&mut self, _site: Site, _activation: &mut Tensor) -> Result<(), Error> {
        Ok(())
    }

    fn decode_steps_replayable(&self) -> bool {
        true
    }
}

/// Options that cut a forward call short or trim its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Stop after this decoder layer: later layers, the final norm and the unembedding are not
    /// computed and the output carries no logits. Used when only activations are wanted.
    pub stop_after_layer: Option<usize>,
    /// Compute logits for the last position only (`[B, 1, vocab]`), as transformers'
    /// `generate()` does with `logits_to_keep=1`. A model may then run its final layer for the
    /// last position alone when no hook acts in that layer (the other positions feed it only
    /// keys and values). The logits are within float rounding of the last row of a full call,
    /// not bit-equal to it: a one-row matmul may round differently from one row of a larger one.
    pub last_position_logits: bool,
}

/// The two results of [`HookedModel::forward_hooked_from_paired`].
#[derive(Debug)]
pub struct Paired<O> {
    /// The run that visited the hooks.
    pub hooked: O,
    /// The run without hooks.
    pub plain: O,
}

/// Where one input sits in a [`Stacked`] batch: its rows, and its own number of positions
/// (the stack's later positions in those rows are padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackedPart {
    /// The first of the input's rows in the stack.
    pub first_row: i64,
    /// How many rows the input has.
    pub rows: i64,
    /// How many positions the input has.
    pub len: i64,
}

/// Several inputs as one batch ([`HookedModel::stack_inputs`]).
#[derive(Debug)]
pub struct Stacked<I> {
    /// The batch.
    pub input: I,
    /// Where each input sits in it, in the order given.
    pub parts: Vec<StackedPart>,
}

/// A model the intervention graph can drive.
///
/// The associated types keep this crate free of any model: `gemma-model` implements it with
/// its own batch, output and generation types.
pub trait HookedModel {
    /// A batch of inputs (token ids, attention mask).
    type Input;
    /// What a forward call returns (logits, unless stopped early).
    type Output;
    /// Generation settings (length, sampling, stop tokens).
    type GenerateConfig;
    /// What generation returns (token ids).
    type Generated;
    /// The model's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every site the model exposes.
    fn site_catalog(&self) -> SiteCatalog;

    /// One forward call over `input`, visiting `hooks` at each site.
    fn forward_hooked(
        &self,
        input: &Self::Input,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Self::Output, Self::Error>;

    /// Generation over `input`, with one forward call for the prompt and one per decode step,
    /// each visiting `hooks` (preceded by [`Hooks::begin_forward`]).
    fn generate_hooked(
        &self,
        input: &Self::Input,
        config: &Self::GenerateConfig,
        hooks: &mut dyn Hooks,
    ) -> Result<Self::Generated, Self::Error>;

    /// One forward call over `input` that starts at the input of decoder layer `layer` with the
    /// residual stream `hidden`, which a call over the same `input` without hooks before `layer`
    /// carried there (its [`SiteKind::BlockInput`](crate::SiteKind::BlockInput) activation).
    /// When `layer > 0` the model first visits the
    /// [`SiteKind::BlockOutput`](crate::SiteKind::BlockOutput) site of layer `layer - 1` with
    /// `hidden` (the same tensor in the full call), then runs on; no earlier site is visited.
    /// Everything from there on is computed exactly as in the full call, so the result is the
    /// same bit for bit. `None` (the default): not supported, the caller runs the full call.
    fn forward_hooked_from(
        &self,
        input: &Self::Input,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<Self::Output>, Self::Error> {
        let _ = (input, layer, hidden, options, hooks);
        Ok(None)
    }

    /// Two runs over `input` resumed together at decoder layer `layer` (at least 1) from the
    /// residual stream `hidden` entering it: one visiting `hooks` at the
    /// [`SiteKind::BlockOutput`](crate::SiteKind::BlockOutput) site of layer `layer - 1` and at
    /// no other site, one without hooks. Returns both, each within float rounding
    /// of its own [`forward_hooked_from`](Self::forward_hooked_from) call; the model may batch
    /// the two and read its later weights once. Called only when every hook acts at that one
    /// site. `None` (the default): not supported, the caller makes the two calls.
    fn forward_hooked_from_paired(
        &self,
        input: &Self::Input,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<Paired<Self::Output>>, Self::Error> {
        let _ = (input, layer, hidden, options, hooks);
        Ok(None)
    }

    /// `inputs` as one batch for a single forward call: each input's rows after the previous
    /// one's, each padded at the end to the longest. In a causal model no position attends to
    /// positions after it, so every real position of the batch is computed as in the input's
    /// own call (within float rounding: the products run over more rows). The graph uses it to
    /// run an interchange's source and the start of its clean run together, reading the
    /// weights before the hooked layer once. `None` (the default): not supported, the caller
    /// makes one call per input.
    fn stack_inputs(
        &self,
        inputs: &[&Self::Input],
    ) -> Result<Option<Stacked<Self::Input>>, Self::Error> {
        let _ = inputs;
        Ok(None)
    }
}
