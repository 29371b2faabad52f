//! Many generation requests over one Gemma model at once: continuous batching, interventions
//! per request, and outputs that do not depend on what else is running.
//!
//! An [`Engine`] holds a KV cache of [`Limits::max_rows`] slots of [`Limits::context`]
//! positions, allocated once. [`Engine::submit`] checks a [`Request`] and queues it (one that
//! can never fit is refused with its id and the reason); each [`Engine::step`] admits waiting
//! requests into free slots, running each admitted prompt in a call of its own, then decodes
//! one token of every running request in one call, and returns the requests that finished.
//! A request brings its own prompt, token budget, greedy or seeded sampling, stop tokens,
//! [`Edit`]s (vectors added at sites, such as SAE steering at several layers) and
//! [`Readout`]s (values read where each new token is predicted, such as an SAE's top latents).
//!
//! **Batch invariance.** In [`EngineMode::Batched`] (a float32 model on a CPU with AVX2 or
//! AVX-512, on the fused kernels) every row of a call is computed as it would be alone: the
//! matrix products sum each row in one fixed order whatever the other rows are, attention,
//! norms and edits run row by row, and each request samples from its own seeded generator. A
//! request's tokens and logits are therefore bit-identical whether it runs alone or among any
//! number of others, in any slot; `tests/engine.rs` checks it. [`EngineMode::Sequential`]
//! (other devices and dtypes) runs requests one after another through the model's own
//! generation, which gives each request exactly its solo result.
//!
//! ```no_run
//! use gemma_model::Gemma2Model;
//! use intervene::{Site, SiteKind};
//! use scope_engine::{Edit, Engine, Limits, Request};
//! use tch::{Device, Kind, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Gemma2Model::from_dir("fixtures/models/tiny-f32", Kind::Float, Device::Cpu)?;
//! let mut engine = Engine::new(&model, Limits { max_rows: 8, context: 128 })?;
//! let hidden = model.config().hidden_size;
//! for (i, magnitude) in [0.0, 4.0, 8.0].into_iter().enumerate() {
//!     let vector = Tensor::ones([hidden], (Kind::Float, Device::Cpu)) * magnitude;
//!     let request = Request::greedy(format!("m{magnitude}"), vec![2, 651, 6037], 16)
//!         .with_edit(Edit { site: Site::new(1, SiteKind::BlockOutput), vector });
//!     engine.submit(request)?;
//!     let _ = i;
//! }
//! while !engine.is_idle() {
//!     for done in engine.step()? {
//!         println!("{}: {:?} ({})", done.id, done.tokens, done.reason.name());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod engine;
pub mod error;
mod hooks;
mod request;

pub use engine::{Engine, EngineMode, Limits};
pub use error::{Error, Result};
pub use request::{Edit, FinishReason, Finished, Reading, Readout, Request};
