//! Gemma 2 on libtorch (tch), computing exactly what Hugging Face transformers 5.17 computes
//! with eager attention, with hook sites for the [`intervene`] graph.
//!
//! Modules mirror the checkpoint: [`config`], [`attention`], [`mlp`], [`norm`], [`rope`],
//! [`cache`], [`model`]; plus [`generate`], [`tokenizer`] (with the chat template),
//! [`loading`] (safetensors, shard index, Hub cache), [`device`], [`cuda`] (CUDA graphs, GPU memory statistics) and [`error`].
//!
//! On a GPU, generation records its decode step once as a CUDA graph and replays it for every
//! later token when the hooks allow it ([`DecodeMode::Auto`]; see [`DecodeMode`] for the
//! others). The replayed step is the fixed-shape step transformers' static cache computes,
//! and [`DecodeMode::FixedShape`] runs it without a graph on any device, which is how its
//! numbers are tested against transformers here. On the CPU in float32, generation runs short
//! prompts and every decode step on scope's own kernels instead ([`DecodeMode::Fused`]:
//! bandwidth-bound matrix-vector products on libtorch's OpenMP threads, no libtorch call per
//! operation); [`DecodeMode::Eager`] is the path bit-identical to transformers.
//!
//! ```no_run
//! use gemma_model::{Batch, Gemma2Model, GemmaTokenizer, GenerationConfig, LoadOptions};
//!
//! # fn main() -> gemma_model::Result<()> {
//! let options = LoadOptions {
//!     dtype: gemma_model::parse_dtype("auto")?,
//!     device: gemma_model::parse_device("auto")?,
//!     ..LoadOptions::default()
//! };
//! let files = gemma_model::ModelFiles::resolve("google/gemma-2-2b", &options.hub)?;
//! let model = Gemma2Model::load_files(&files, options.dtype, options.device)?;
//! let tokenizer = GemmaTokenizer::from_file(files.tokenizer.unwrap_or_default())?;
//!
//! let ids = tokenizer.encode("The capital of France is", true)?; // starts with <bos>
//! let batch = Batch::from_ids(&ids);
//! let logits = model.forward(&batch)?.logits; // Some([1, T, 256000]), soft-capped
//! let out = model.generate(&batch, &GenerationConfig::greedy(20))?;
//! println!("{}", tokenizer.decode(&out.new_tokens[0], true)?);
//! # let _ = logits;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod attention;
pub mod cache;
pub mod config;
pub mod cuda;
pub mod device;
mod dl;
pub mod error;
pub mod files;
pub mod fused;
pub mod generate;
mod hooked;
pub mod hub;
pub mod loading;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod rope;
pub mod tokenizer;

pub use cache::KvCache;
pub use config::{Activation, Gemma2Config, LayerType};
pub use device::{parse_device, parse_dtype, resolve_dtype, DTypeSpec};
pub use error::{Error, Result};
pub use files::ModelFiles;
pub use generate::{DecodeMode, Generated, GenerationConfig, Sampler, Sampling, Step};
pub use loading::{LoadOptions, WeightStore};
pub use model::{Batch, Gemma2Model, ModelOutput};
pub use scope_hub::HubOptions;
pub use tokenizer::{render_chat, ChatMessage, GemmaTokenizer};
