//! Gemma 2 and Gemma 3 (the text model: `Gemma3ForCausalLM`, and the language model of
//! `Gemma3ForConditionalGeneration` without its vision tower) on libtorch (tch), computing
//! exactly what Hugging Face transformers 5.17 computes with eager attention, with hook sites
//! for the [`intervene`] graph. One implementation serves both: Gemma 3 adds RMSNorms of each
//! query and key head ([`attention::QueryKeyNorms`], with the `query_norm_output` and
//! `key_norm_output` sites) and a second RoPE for its sliding layers ([`config::RopeConfig`]),
//! and reads its config and weight names in its own forms ([`config::Architecture`]).
//!
//! Modules mirror the checkpoint: [`config`], [`attention`], [`mlp`], [`norm`], [`rope`],
//! [`model`]; plus [`tokenizer`] (with the chat template), [`loading`] (safetensors, shard
//! index, Hub cache), [`device`] and [`error`]. The model has one forward call,
//! [`GemmaModel::forward`], over a [`Batch`] and a [`Call`] (a KV cache view, masks, a
//! start layer), and no speed branches.
//!
//! Everything that runs the model many times lives in [`scope_engine`], which reads it
//! through [`scope_engine::DecoderModel`] (implemented in `decoder.rs`): batches and masks,
//! the KV cache, sampling, the generation loop and its decode modes (eager, fixed-shape,
//! CUDA graph, fused CPU kernels), and the continuous-batching engine. They are re-exported
//! here ([`generate()`], [`cuda`], [`KvCache`], ...) so that a user of the model finds them.
//!
//! ```
//! use gemma_model::{Call, GemmaModel, GenerationConfig, LoadOptions};
//! use intervene::NoHooks;
//!
//! # fn main() -> gemma_model::Result<()> {
//! # let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/tiny-f32");
//! # /* the fixture stands in for the hub id in CI:
//! let source = "google/gemma-2-2b"; // or a local checkpoint directory
//! # */ let source = fixture;
//! // f32 on the CPU by default; a GPU in bf16:
//! // `LoadOptions { device: Device::Cuda(0), dtype: Kind::BFloat16.into(), ..Default::default() }`
//! let (model, tokenizer) = GemmaModel::from_pretrained(source, &LoadOptions::default())?;
//!
//! let batch = tokenizer.batch("The capital of France is")?; // [1, T], starting with <bos>
//! let logits = model.forward(&batch, Call::default(), &mut NoHooks)?.logits; // Some([1, T, vocab])
//! let out = model.generate(&batch, &GenerationConfig::greedy(20))?;
//! println!("{}", tokenizer.decode(&out.new_tokens[0], true)?); // new_tokens[row]: that row's new ids
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
pub mod guard;
mod hooked;
pub mod hub;
pub mod loading;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod rope;
pub mod tokenizer;

pub use config::{Activation, Architecture, GemmaConfig, LayerType, RopeConfig};
pub use device::{parse_device, parse_dtype, resolve_dtype, DTypeSpec};
pub use error::{Error, Result};
pub use files::ModelFiles;
pub use loading::{open_tokenizer, LoadOptions, WeightStore};
pub use model::{DecoderLayer, GemmaModel};
pub use scope_engine::{
    cuda, fused, generate, mask, Batch, Call, DecodeMode, Generated, GenerationConfig, KvCache,
    ModelOutput, Sampler, Sampling, Step,
};
pub use scope_hub::HubOptions;
/// The libtorch types this crate's calls take and return, so that no separate `tch`
/// dependency (with its exact pinned version) is needed.
pub use tch::{self, Device, Kind, Tensor};
pub use tokenizer::{render_chat, ChatMessage, ChatTemplate, GemmaTokenizer};
