//! Generation for decoder models on libtorch, and many requests at once.
//!
//! A model plugs in through [`DecoderModel`]: one forward call over a [`Batch`] and a
//! [`Call`] (a KV cache view, masks, a start layer), its shapes ([`ModelSpec`]) and a
//! weights view for the fused CPU kernels ([`FusedWeights`]). Everything else lives here, so
//! a second architecture gets it without copying:
//!
//! | module | what |
//! |---|---|
//! | [`batch`] | token ids, padding, positions, stacking |
//! | [`mask`] | the one attention-mask rule, for prompts, decode steps, fixed-shape steps and cache slots |
//! | [`cache`] | the preallocated KV cache |
//! | [`generate`] | transformers' `generate()` loop, sampling, and the [`DecodeMode`]s: eager, fixed-shape, CUDA graph, fused CPU kernels |
//! | [`fused`] | scope's own CPU kernels for float32 and bf16 models |
//! | [`cuda`] | CUDA graphs and GPU memory statistics through a small C++ shim |
//! | [`Engine`] | continuous batching with per-request interventions |
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
//! **Batch invariance.** In [`EngineMode::Fused`] (a float32 or bf16 model on a CPU with AVX2
//! or AVX-512, on the fused kernels) every row of a call is computed as it would be alone: the
//! matrix products sum each row in one fixed order whatever the other rows are, attention,
//! norms and edits run row by row, and each request samples from its own seeded generator. A
//! request's tokens and logits are therefore bit-identical whether it runs alone or among any
//! number of others, in any slot; `tests/engine.rs` checks it. [`EngineMode::Batched`] (other
//! devices and dtypes) runs each decode step as one libtorch call of fixed shape over every
//! slot; there a row's products may round differently with the rows beside it, and the test
//! checks tokens (the solo ones) and logits (within float rounding). [`EngineMode::Sequential`]
//! runs requests one after another through [`generate()`], which gives each request exactly
//! its solo result.
//!
//! ```
//! use gemma_model::GemmaModel;
//! use intervene::{Site, SiteKind};
//! use scope_engine::{Edit, Engine, Limits, Request};
//! use tch::{Device, Kind, Tensor};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/tiny-f32");
//! let model = GemmaModel::from_dir(dir, Kind::Float, Device::Cpu)?;
//! let mut engine = Engine::new(&model, Limits { max_rows: 8, context: 128 })?;
//! let hidden = model.config().hidden_size;
//! for magnitude in [0.0, 4.0, 8.0] {
//!     let vector = Tensor::ones([hidden], (Kind::Float, Device::Cpu)) * magnitude;
//!     let request = Request::greedy(format!("m{magnitude}"), vec![2, 409, 370], 16)
//!         .with_edit(Edit { site: Site::new(1, SiteKind::BlockOutput), vector });
//!     engine.submit(request)?;
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

pub mod batch;
pub mod cache;
pub mod cuda;
pub mod dl;
mod engine;
pub mod error;
pub mod fused;
pub mod generate;
mod hooks;
pub mod mask;
pub mod model;
mod request;
mod slots;
pub mod spec;

pub use batch::Batch;
pub use cache::KvCache;
pub use engine::{Engine, EngineMode, Limits};
pub use error::{Error, Result};
pub use generate::{generate, DecodeMode, Generated, GenerationConfig, Sampler, Sampling, Step};
pub use mask::Masks;
pub use model::{Call, DecoderModel, FusedLayer, FusedWeights, ModelOutput};
pub use request::{Edit, FinishReason, Finished, Progress, Reading, Readout, Request};
pub use spec::ModelSpec;
/// The libtorch types this crate's calls take and return.
pub use tch::{self, Device, Kind, Tensor};
