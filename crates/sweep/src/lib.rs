//! Feature statistics over a corpus, the way SAELens, SAEDashboard and Neuronpedia compute
//! them, for several SAEs from one forward pass: how often each latent fires, how strongly
//! (a histogram), its top examples in context, and how well each SAE reconstructs the model
//! on the corpus. Runs are sharded ([`Shard`]), resumed from a checkpoint
//! ([`Sweep::start`]) and merged ([`merge_dirs`]); [`dashboard`] writes static pages of
//! the results.
//!
//! | piece | what | SAELens / SAEDashboard counterpart |
//! |---|---|---|
//! | [`Corpus`] | `.txt`, `.jsonl`, `.parquet` files read a document at a time | `datasets` streaming |
//! | [`Sweep`] | blocks of documents, one forward pass each, every SAE's sites collected | `run_with_cache(stop_at_layer=...)` |
//! | [`SaeStats`] | densities, maxima, means, histograms, top examples, L0, MSE, explained variance, ΔCE and KL | `ActivationsStore` loops, `evals.py` |
//! | [`SweepState`] | the checkpoint and the unit of merging (`sweep-state.npz`) | — |
//! | [`tables`] | `latents.parquet`, `examples.parquet`, `summary.json` | SAEDashboard's JSON |
//!
//! The formulas are in [`stats`], the file layouts in [`tables`] and [`state`].
//!
//! ```
//! use gemma_model::{GemmaModel, LoadOptions};
//! use scope::SaeAt;
//! use scope_sweep::{folder_name, Corpus, Sweep, SweepOptions, SweepSae};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
//! let model_id = format!("{fixtures}/models/tiny-f32");
//! let sae_id = format!("{fixtures}/saes/tiny-f32-res/layer_2/width_256/average_l0_20");
//! let corpus = Corpus::open(&[format!("{fixtures}/corpus").into()], "text")?;
//!
//! let (model, tokenizer) = GemmaModel::from_pretrained(&model_id, &LoadOptions::default())?;
//! let saes = [SweepSae {
//!     name: folder_name(&sae_id),
//!     source: sae_id.clone(),
//!     sae: SaeAt::from_pretrained(&sae_id, &model)?,
//! }];
//! let options = SweepOptions { max_len: 24, top_k: 4, ..SweepOptions::default() };
//! let sweep = Sweep { model: &model, tokenizer: &tokenizer, model_name: &model_id, saes: &saes,
//!                     corpus: &corpus, options: &options };
//! let out = tempfile::tempdir()?;
//! let state = sweep.run(sweep.start(out.path(), false)?, out.path(), &mut |_| {})?;
//! let metrics = state.stats[0].metrics();
//! println!("{} docs, mean L0 {:.1}, explained variance {:.3}",
//!          state.coverage.docs, metrics.mean_l0, metrics.explained_variance);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod corpus;
pub mod dashboard;
pub mod error;
mod footer;
mod pages;
mod run;
pub mod state;
pub mod stats;
pub mod tables;
mod thrift;

pub use corpus::{Corpus, Document};
pub use error::{Error, Result};
pub use run::{
    folder_name, merge_dirs, write_all_outputs, Progress, Shard, Sweep, SweepOptions, SweepSae,
};
pub use state::{SweepSpec, SweepState};
pub use stats::{Context, SaeStats};
