//! A generic intervention graph for language models on libtorch, in the spirit of pyvene 0.1.8.
//!
//! This crate knows no model. A model implements [`HookedModel`] and calls [`Hooks`] at the
//! [`Site`]s it exposes; interventions (collect, add, zero, interchange, user closures, and the
//! SAE interventions of the `sae` crate) are attached to [`Component`]s resolved against the
//! model's [`SiteCatalog`], and run by an [`IntervenableModel`].
//!
//! | pyvene | here |
//! |---|---|
//! | `IntervenableModel(config, model)` | [`IntervenableModel::new`]`(&model, vec![`[`RepresentationConfig`]`, ..])` |
//! | `{"component": "model.layers[20].output", "intervention": x}` | `RepresentationConfig::new("model.layers[20].output", x)` |
//! | `{"layer": 20, "component": "block_output"}` | `RepresentationConfig::new(Component::typed("block_output", 20), x)` |
//! | `pv_model(base, sources, unit_locations, subspaces=, output_original_output=)` | [`IntervenableModel::forward`]`(&base, `[`Sources`]`, &`[`CallOptions`]`)` |
//! | `pv_model.generate(base, ..., intervene_on_prompt=)` | [`IntervenableModel::generate`] |
//! | `unit_locations` | [`Locations`] (typed constructors), per intervention via [`PerIntervention`] |
//! | `subspaces` | [`Subspaces`] (shared or per row) |
//! | `(original, intervened)`, `collected_activations` | [`IntervenableOutput`] |
//! | `mode="serial"` | [`Mode::Serial`] |
//! | `CollectIntervention`, `AdditionIntervention`, `SubtractionIntervention`, `ZeroIntervention`, `VanillaIntervention` | [`Collect`], [`Add`], [`Subtract`], [`Zero`], [`Vanilla`], [`ConstantSource`] |
//! | `RotatedSpaceIntervention`, `LowRankRotatedSpaceIntervention` with a trained `rotate_layer.weight` (DAS at inference) | [`RotatedSpace`], [`LowRankRotatedSpace`] |
//! | `BoundlessRotatedSpaceIntervention`, `SigmoidMaskRotatedSpaceIntervention`, `SigmoidMaskIntervention` with trained parameters | [`SoftRotatedSpace::boundless`], [`SoftRotatedSpace::sigmoid_mask`], [`SigmoidMask`] |
//! | a plain function as intervention | [`FnIntervention`], [`CollectWith`] |
//!
//! # A model in twenty lines
//!
//! Any model plugs in by describing its sites and calling the hooks while it runs. Here a
//! one-layer toy that doubles its input; an [`Add`] steers it and a [`Collect`] reads it:
//!
//! ```
//! use intervene::*;
//! use tch::{Kind, Tensor};
//!
//! struct Doubler;
//!
//! impl HookedModel for Doubler {
//!     type Input = Tensor; // [batch, seq, 3]
//!     type Output = Tensor;
//!     type GenerateConfig = ();
//!     type Generated = Tensor;
//!     type Error = Error;
//!
//!     fn site_catalog(&self) -> SiteCatalog {
//!         let site = Site::new(0, SiteKind::BlockOutput);
//!         let info = SiteInfo { site, module_path: "model.layers[0]".into(), hook: HookPoint::Output, width: 3, heads: None };
//!         SiteCatalog { num_layers: 1, sites: vec![info] }
//!     }
//!
//!     fn forward_hooked(&self, x: &Tensor, _: &ForwardOptions, hooks: &mut dyn Hooks) -> Result<Tensor> {
//!         let size = x.size();
//!         hooks.begin_forward(&ForwardInfo { batch: size[0], chunk_len: size[1], past_len: 0 })?;
//!         let mut h = x * 2.0;
//!         let site = Site::new(0, SiteKind::BlockOutput);
//!         if hooks.wants(site) {
//!             hooks.visit(site, &mut h)?;
//!         }
//!         Ok(h)
//!     }
//!
//!     fn generate_hooked(&self, _: &Tensor, _: &(), _: &mut dyn Hooks) -> Result<Tensor> {
//!         Err(Error::Invalid("this toy does not generate".into()))
//!     }
//! }
//!
//! # fn main() -> Result<()> {
//! let x = Tensor::ones([1, 2, 3], (Kind::Float, tch::Device::Cpu));
//! let graph = IntervenableModel::new(&Doubler, vec![
//!     RepresentationConfig::new("model.layers[0].output", Add::new(Tensor::from_slice(&[1.0f32, 0.0, -1.0]))),
//!     RepresentationConfig::new(Component::typed("block_output", 0), Collect),
//! ])?;
//! // Add at position 1 only; the collect (after it in config order) sees the steered value.
//! let options = CallOptions::new().locations_each(vec![Locations::base([1]), Locations::all()]);
//! let out = graph.forward(&x, Sources::None, &options)?;
//! assert_eq!(Vec::<f32>::try_from(out.intervened.flatten(0, -1))?, [2.0, 2.0, 2.0, 3.0, 2.0, 1.0]);
//! assert_eq!(out.collected[0].size(), [1, 2, 3]);
//! # Ok(())
//! # }
//! ```
//!
//! # The tutorial's three workflows
//!
//! `model` is any [`HookedModel`] (the `gemma-model` crate's `GemmaModel`) and `sae` a Gemma
//! Scope JumpReLU SAE from the `sae` crate, loaded as in the `scope` crate's docs. The blocks
//! run on the fixture model, where the SAE reads layer 2 (the tutorial's reads layer 20, and
//! its time-travel latent is 10004). The `sae` crate also ships these as ready interventions
//! (`EncodeCollect`, `Steer` / `steering_add`, `JumpReluInterchange`), and the `scope` crate as
//! one call each.
//!
//! Collect SAE latents at the output of the SAE's layer (`resid_post`), BOS included:
//!
//! ```
//! use intervene::{CallOptions, CollectWith, IntervenableModel, RepresentationConfig, Sources};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! # let options = gemma_model::LoadOptions::default();
//! # let (model, tokenizer) = gemma_model::GemmaModel::from_pretrained(&format!("{fixtures}/models/tiny-f32"), &options)?;
//! # let sae = sae::Sae::from_pretrained(&format!("{fixtures}/saes/tiny-f32-res/layer_2/width_256/average_l0_20"), tch::Device::Cpu)?;
//! let batch = tokenizer.batch("Would you be able to travel through time using a wormhole?")?;
//! let encoder = CollectWith::new("sae_encode", move |x| Ok(sae.encode(x)?)); // or sae::EncodeCollect
//! let pv = IntervenableModel::new(&model, vec![
//!     RepresentationConfig::new("model.layers[2].output", encoder),
//! ])?;
//! let out = pv.forward(&batch, Sources::None, &CallOptions::new())?;
//! let latents = &out.collected[0]; // [1, 15, d_sae]: batch, token, latent
//! let l0 = latents.gt(1.0).sum_dim_intlist(-1, false, None); // [1, 15]: latents > 1 per token
//! assert_eq!(l0.size(), [1, 15]);
//! # Ok(())
//! # }
//! ```
//!
//! Steer generation with a latent at magnitude 100 on every position of the prompt and every
//! generated token (pyvene's `unit_locations=None, intervene_on_prompt=True`):
//!
//! ```
//! use intervene::{Add, CallOptions, IntervenableModel, RepresentationConfig, Sources};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! # let options = gemma_model::LoadOptions::default();
//! # let (model, tokenizer) = gemma_model::GemmaModel::from_pretrained(&format!("{fixtures}/models/tiny-f32"), &options)?;
//! # let sae = sae::Sae::from_pretrained(&format!("{fixtures}/saes/tiny-f32-res/layer_2/width_256/average_l0_20"), tch::Device::Cpu)?;
//! let prompt = tokenizer.batch("Which dog breed do people think is cuter, poodle or doodle?")?;
//! // Built once, on the model's device, in f32: the add runs in f32 and rounds to the
//! // model's dtype on write-back, as pyvene does.
//! let steer = Add::new(sae.steering_sum(&[(183, 100.0)])?); // 100 · W_dec[183]
//! let pv = IntervenableModel::new(&model, vec![
//!     RepresentationConfig::new("model.layers[2].output", steer),
//! ])?;
//! let opts = CallOptions::new().intervene_on_prompt(true);
//! let out = pv.generate(&prompt, Sources::None, &opts, &gemma_model::GenerationConfig::greedy(20))?;
//! println!("{}", tokenizer.decode(&out.intervened.new_tokens[0], true)?);
//! # Ok(())
//! # }
//! ```
//!
//! Interchange a latent from a source position into a base position (the tutorial's
//! `{"sources->base": (11, 14)}, subspaces=[10004]`); the JumpReLU interchange comes from the
//! `sae` crate and receives the base slice, the source slice and the subspaces:
//!
//! ```
//! use intervene::{CallOptions, IntervenableModel, Locations, RepresentationConfig, Sources, Subspaces};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! # let options = gemma_model::LoadOptions::default();
//! # let (model, tokenizer) = gemma_model::GemmaModel::from_pretrained(&format!("{fixtures}/models/tiny-f32"), &options)?;
//! # let sae = sae::Sae::from_pretrained(&format!("{fixtures}/saes/tiny-f32-res/layer_2/width_256/average_l0_20"), tch::Device::Cpu)?;
//! let base = tokenizer.batch("Which dog breed do people think is cuter, poodle or doodle?")?;
//! let source = tokenizer.batch("Would you be able to travel through time using a wormhole?")?;
//! let pv = IntervenableModel::new(&model, vec![
//!     RepresentationConfig::new("model.layers[2].output", sae::JumpReluInterchange::new(&sae)),
//! ])?;
//! let opts = CallOptions::new()
//!     .locations(Locations::pair(9, 14)) // source position 9 (" time") into base position 14
//!     .subspaces(Subspaces::Shared(vec![183]))
//!     .output_original_output(true);
//! let out = pv.forward(&base, Sources::Shared(&source), &opts)?;
//! let original = out.original.and_then(|o| o.logits).ok_or("no original logits")?;
//! let intervened = out.intervened.logits.ok_or("no logits")?;
//! // [1, T, vocab] each: the next-token logits that moved most at the last position.
//! let diff = intervened.select(1, -1) - original.select(1, -1);
//! let (_, moved) = diff.topk(10, -1, true, true);
//! println!("{:?}", Vec::<i64>::try_from(moved.flatten(0, -1))?);
//! # Ok(())
//! # }
//! ```
//!
//! # What a call does
//!
//! See [`graph`]: validation of every setting first (no model run is wasted on a bad call),
//! the source runs (parallel: one forward per distinct source input, stopped after the deepest
//! layer it feeds, since its logits are thrown away; serial: the
//! `source_0 → source_1 → … → base` chain), the optional clean run, then the base run or
//! generation. Setters at one
//! site run in config order and compose; a collect listed after a setter at the same site sees
//! the setter's result. Results are cast back to the activation's dtype on write-back.
//!
//! A model may record one decode step of a generation and replay it for the next ones (a CUDA
//! graph) when [`Hooks::decode_steps_replayable`] says it may; for the graph's hooks that holds
//! when every intervention acting at decode steps declares [`Intervention::replayable`] (the
//! built-ins that add, subtract, zero or write a fixed or source vector do; collects and
//! closures do not, unless a closure says so with [`FnIntervention::with_replay`]).
//!
//! # pyvene's traps and what we decided
//!
//! - **Sticky `use_fast`.** In pyvene, any int / 2-int / flat-list location sets
//!   `use_fast = True` for good, and from then on every scatter writes *row 0's* positions into
//!   every row while gathers still use each row's own. Not reproduced: a call has no state
//!   carried from earlier calls, and every row is written at its own positions.
//! - **`{"base": [a, b]}` read as a pair.** pyvene reads any 2-element list as (source, base),
//!   even under the `"base"` key, so `{"base": [0, 3]}` selects only position 3. Our locations
//!   are typed constructors, so there is nothing to guess: [`Locations::base`]`([0, 3])` is two
//!   base positions, [`Locations::pair`]`(0, 3)` is a pair, [`Locations::same`]`([0, 3])` reads
//!   and writes positions 0 and 3.
//! - **`subspaces=None` and the `[0, embed_dim)` prefix.** pyvene acts on the last-dim prefix
//!   `[:embed_dim]` when it built the intervention itself (`intervention_type`), and its
//!   JumpReLU interchange with no subspaces swaps latents `[0, D)` — the first `D` of `L`
//!   latents. Decision: the graph passes `None` through and never implies a prefix; for this
//!   crate's built-ins `None` means *every* dimension (what pyvene does for an intervention
//!   instance passed in, as the tutorial does). An intervention that acts on latents decides
//!   for itself: the `sae` crate's JumpReLU interchange reproduces pyvene's `[0, D)` prefix for
//!   parity and says so in its docs; pass explicit [`Subspaces`] to avoid it.
//! - **An interchange called without sources.** pyvene attaches no setter and silently returns
//!   the clean output. Here it is [`Error::MissingSource`], raised before any model run.
//! - **Positions relative to the decode chunk.** With given positions and
//!   `intervene_on_prompt = false`, positions index the current decode chunk (length 1 with a KV
//!   cache), not the sequence (pyvene#193). Reproduced, documented on
//!   [`IntervenableModel::generate`], and an out-of-range position is
//!   [`Error::DecodePositionOutOfRange`], whose message says so.
//! - **Per-row subspaces unioned.** pyvene 0.1.8 applies the union of all rows' indices to
//!   every row of a 3-D slice. Not reproduced: [`Subspaces::PerRow`] applies each row's list to
//!   that row (see [`subspace_mask`]).
//! - **Removal of foreign hooks.** pyvene strips *every* forward hook from the wrapped model at
//!   each call. Not applicable: our hooks are an argument of one forward call, nothing is
//!   registered on the model, and nothing else is removed.
//! - **Other choices.** Negative positions count from the end (our addition). Every row must
//!   select the same number of positions (pyvene: `ValueError`). A source slice must have the
//!   base slice's shape or be a single `[width]` vector, else [`Error::Shape`] (pyvene:
//!   "cannot be broadcasted"). Sources given to a call with no interchange are not run (pyvene
//!   runs them and throws the result away). `head_*` components give
//!   `[batch, heads, positions, head_dim]` slices for [`Locations::all`] too (pyvene skips the
//!   head split there and passes the unsplit tensor). The original run is a plain forward of
//!   the base, as in pyvene.

#![deny(missing_docs)]

pub mod builtin;
pub mod component;
pub mod config;
pub mod error;
pub mod graph;
pub mod hooks;
pub mod intervention;
pub mod location;
pub mod rotated;
mod runner;
mod select;
pub mod site;

pub use builtin::{
    subspace_mask, Add, Collect, CollectWith, ConstantSource, FnIntervention, MaskCache, Subtract,
    Vanilla, Zero,
};
pub use component::{Component, ResolvedComponent};
pub use config::{CallOptions, IntervenableOutput, Mode, RepresentationConfig, Sources};
pub use error::{Error, Result};
pub use graph::IntervenableModel;
pub use hooks::{
    ForwardInfo, ForwardOptions, HookedModel, Hooks, NoHooks, Paired, Stacked, StackedPart,
};
pub use intervention::{Intervention, InterventionRole, Subspaces};
pub use location::{Locations, PerIntervention, RowPositions};
pub use rotated::{LowRankRotatedSpace, RotatedSpace, SigmoidMask, SoftRotatedSpace};
pub use site::{HookPoint, Site, SiteCatalog, SiteInfo, SiteKind};
/// The libtorch types this crate's calls take and return.
pub use tch::{self, Device, Kind, Tensor};
