//! The Gemma Scope workflows as typed calls, over a [`GemmaModel`](gemma_model::GemmaModel)
//! and an SAE placed at its site ([`SaeAt`]). The `scope` binary, the benchmarks and the
//! examples call these instead of writing the workflows out again.
//!
//! | call | what it does | pyvene / SAELens counterpart |
//! |---|---|---|
//! | [`latents`] → [`TokenLatents`] (L0, top-k, strongest, one latent's values), [`LatentCollector`] | the SAE's latents at every position | `CollectIntervention` with the JumpReLU encoder |
//! | [`steer`] | one steered generation through the intervention graph | `pv_model.generate(..., intervene_on_prompt=True)` |
//! | [`steer_many`] | many steered requests at once through the [`scope_engine`] | a server with continuous batching |
//! | [`patch`] → [`Patched`] (the logits that moved, the latent at source and base, a warning when it is 0 at the source) | one latent swapped from a source prompt into a base prompt | `JumpReLUAutoencoderIntervention` |
//! | [`explain`] | the tokens a latent's decoder row promotes and suppresses | the logit lens |
//! | [`eval`], [`splice_metrics`] | reconstruction metrics and the spliced-in cross-entropy and KL | SAELens' evals |
//! | [`top_examples`] | where latents fire most over texts | Neuronpedia's top activations |
//!
//! Every call works with any SAE at its site: residual, attention (`o_proj`'s input) and MLP
//! SAEs of Gemma Scope and Gemma Scope 2, and transcoders, which read the MLP input and write
//! the post-feedforward norm's output ([`SaeAt::write_site`]): their latents, top examples and
//! patches read the MLP input, steering adds their decoder rows to the MLP output, patching
//! and evaluation write their output there in place of the MLP's.
//!
//! Load with [`GemmaModel::from_pretrained`](gemma_model::GemmaModel::from_pretrained) (the
//! model and its tokenizer) and [`SaeAt::from_pretrained`] (or [`SaeAt::place`] with a
//! [`Placement`] for `--site` / `--layer`). Token ids go in and come out:
//! tokenizing and printing are the caller's. [`guide`] puts each step of the Gemma Scope
//! tutorial's Python next to its Rust.
//!
//! ```
//! use gemma_model::{GemmaModel, GenerationConfig, LoadOptions};
//! use scope::SaeAt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! # let model_id = &format!("{fixtures}/models/tiny-f32");
//! # let sae_id = &format!("{fixtures}/saes/tiny-f32-res/layer_2/width_256/average_l0_20");
//! # let (model_id, sae_id) = (model_id.as_str(), sae_id.as_str());
//! # /* the fixtures above stand in for these in CI:
//! let model_id = "google/gemma-2-2b";
//! let sae_id = "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71";
//! # */
//! let (model, tokenizer) = GemmaModel::from_pretrained(model_id, &LoadOptions::default())?;
//! let sae = SaeAt::from_pretrained(sae_id, &model)?; // at the layer its name says
//!
//! let ids = tokenizer.encode("Would you be able to travel through time?", true)?;
//! let latents = scope::latents(&model, &sae, &ids)?; // activations(): [T, d_sae]
//! println!("L0 per token {:?}", latents.l0(1.0)?);
//! let steered = scope::steer(&model, &sae, &ids, &[(51, 8.0)], &GenerationConfig::greedy(8))?;
//! println!("{}", tokenizer.decode(&steered.new_tokens[0], true)?);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod error;
mod eval;
mod explain;
mod latents;
mod patch;
mod sae_at;
mod steer;
mod top;

pub use error::{Error, Result};
pub use eval::{eval, splice_metrics};
pub use explain::explain;
pub use latents::{latents, LatentCollector, TokenLatents};
pub use patch::{patch, resolve_position, Patch, Patched};
pub use sae_at::{Placement, SaeAt, TopLatents};
pub use steer::{steer, steer_many, SteerRequest};
/// The libtorch types this crate's calls take and return.
pub use tch::{self, Device, Kind, Tensor};
pub use top::{top_examples, TopQuery};

/// The README's Rust, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

#[doc = include_str!("../../../docs/pyvene-to-scope.md")]
pub mod guide {}
