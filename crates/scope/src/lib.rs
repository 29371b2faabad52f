//! The Gemma Scope workflows as typed calls, over a [`Gemma2Model`](gemma_model::Gemma2Model)
//! and an SAE placed at its site ([`SaeAt`]). The `scope` binary, the benchmarks and the
//! examples call these instead of writing the workflows out again.
//!
//! | call | what it does | pyvene / SAELens counterpart |
//! |---|---|---|
//! | [`latents`], [`LatentCollector`] | the SAE's latents at every position | `CollectIntervention` with the JumpReLU encoder |
//! | [`steer`] | one steered generation through the intervention graph | `pv_model.generate(..., intervene_on_prompt=True)` |
//! | [`steer_many`] | many steered requests at once through the [`scope_engine`] | a server with continuous batching |
//! | [`patch`] | one latent swapped from a source prompt into a base prompt | `JumpReLUAutoencoderIntervention` |
//! | [`explain`] | the tokens a latent's decoder row promotes and suppresses | the logit lens |
//! | [`eval`] | reconstruction metrics and the spliced-in cross-entropy and KL | SAELens' evals |
//! | [`top_examples`] | where latents fire most over texts | Neuronpedia's top activations |
//!
//! Token ids go in and come out: tokenizing and printing are the caller's.
//!
//! ```no_run
//! use gemma_model::{Gemma2Model, GenerationConfig};
//! use scope::SaeAt;
//! use tch::{Device, Kind};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Gemma2Model::from_dir("fixtures/models/tiny-f32", Kind::Float, Device::Cpu)?;
//! let sae = sae::Sae::from_path(
//!     "fixtures/saes/tiny-f32-res/layer_2/width_256/average_l0_20",
//!     Device::Cpu,
//! )?;
//! let sae = SaeAt::new(sae, None, &model)?;
//! let prompt = [2, 651, 6037, 603];
//! let latents = scope::latents(&model, &sae, &prompt)?; // [4, 256]
//! let steered = scope::steer(&model, &sae, &prompt, &[(51, 8.0)], &GenerationConfig::greedy(8))?;
//! println!("{:?} {:?}", latents.size(), steered.new_tokens[0]);
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
pub use eval::eval;
pub use explain::explain;
pub use latents::{latents, LatentCollector};
pub use patch::{patch, resolve_position, Patch, Patched};
pub use sae_at::{SaeAt, TopLatents};
pub use steer::{steer, steer_many, SteerRequest};
pub use top::{top_examples, TopQuery};
