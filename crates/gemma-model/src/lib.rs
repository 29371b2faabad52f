//! Gemma 2 on libtorch (tch), computing exactly what Hugging Face transformers 5.17 computes
//! with eager attention, with hook sites for the [`intervene`] graph.
//!
//! Modules mirror the checkpoint: [`config`], [`attention`], [`mlp`], [`norm`], [`rope`],
//! [`model`]; plus [`tokenizer`] (with the chat template), [`loading`] (safetensors, shard
//! index, Hub cache), [`device`] and [`error`]. The model has one forward call,
//! [`Gemma2Model::forward`], over a [`Batch`] and a [`Call`] (a KV cache view, masks, a
//! start layer), and no speed branches.
//!
//! Everything that runs the model many times lives in [`scope_engine`], which reads it
//! through [`scope_engine::DecoderModel`] (implemented in `decoder.rs`): batches and masks,
//! the KV cache, sampling, the generation loop and its decode modes (eager, fixed-shape,
//! CUDA graph, fused CPU kernels), and the continuous-batching engine. They are re-exported
//! here ([`generate`], [`cuda`], [`KvCache`], ...) so that a user of the model finds them.
//!
//! ```no_run
//! use gemma_model::{Batch, Call, Gemma2Model, GemmaTokenizer, GenerationConfig, LoadOptions};
//! use intervene::NoHooks;
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
//! let logits = model.forward(&batch, Call::default(), &mut NoHooks)?.logits; // [1, T, 256000]
//! let out = model.generate(&batch, &GenerationConfig::greedy(20))?;
//! println!("{}", tokenizer.decode(&out.new_tokens[0], true)?);
//! # let _ = logits;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod attention;
pub mod config;
mod decoder;
pub mod device;
pub mod error;
pub mod files;
mod hooked;
pub mod hub;
pub mod loading;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod rope;
pub mod tokenizer;

pub use config::{Activation, Gemma2Config, LayerType};
pub use device::{parse_device, parse_dtype, resolve_dtype, DTypeSpec};
pub use error::{Error, Result};
pub use files::ModelFiles;
pub use loading::{LoadOptions, WeightStore};
pub use model::{DecoderLayer, Gemma2Model};
pub use scope_engine::{
    cuda, fused, generate, mask, Batch, Call, DecodeMode, Generated, GenerationConfig, KvCache,
    ModelOutput, Sampler, Sampling, Step,
};
pub use scope_hub::HubOptions;
pub use tokenizer::{render_chat, ChatMessage, GemmaTokenizer};
