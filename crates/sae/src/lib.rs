//! Gemma Scope JumpReLU sparse autoencoders and transcoders on libtorch: loading, encode/decode,
//! metrics, logit lens, and interventions for the [`intervene`] graph, matching SAELens, Google's
//! Gemma Scope tutorial and pyvene 0.1.8. Gemma Scope (Gemma 2) and Gemma Scope 2 (Gemma 3: SAEs
//! at four sites, and transcoders) load alike.
//!
//! # Naming and loading
//!
//! [`resolve`] turns any of four names into a file on disk ([`name`] explains the forms):
//!
//! * a local path: `fixtures/saes/tiny-f32-res/layer_2/width_256/average_l0_20/params.npz`,
//!   its directory, a Gemma Scope 2 folder (`params.safetensors`, optionally `config.json`), or
//!   a SAELens directory (`sae_weights.safetensors` + `cfg.json`);
//! * a hub path: `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`, or for Gemma
//!   Scope 2 `google/gemma-scope-2-1b-pt/resid_post/layer_13_width_16k_l0_small`, fetched into
//!   the standard Hugging Face cache (offline with `HF_HUB_OFFLINE=1`, see [`hub`]);
//! * a canonical shorthand: `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`,
//!   through the canonical L0 table in `data/canonical_l0.tsv`;
//! * a Gemma Scope 2 SAELens release and SAE id:
//!   `gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small`,
//!   `gemma-scope-2-1b-pt-transcoders/transcoder/layer_13_width_16k_l0_small_affine`, checked
//!   against the release table in `data/gemma_scope_2.tsv`.
//!
//! [`Sae::load`] reads and validates the weights (every problem is a typed [`Error`] naming the
//! file and the key) and keeps them once on the device, in float32 ([`Sae::to_dtype`] converts,
//! e.g. to bf16 to halve a wide SAE's memory on a bf16 model). Where the SAE reads
//! ([`Sae::site`]) and writes ([`Sae::write_site`]) follows from the name (`layer_20`,
//! `-res`/`-mlp`/`-att`/`-transcoders`, Gemma Scope 2's `resid_post`/`attn_out`/`mlp_out`/
//! `transcoder` folders), from SAELens' `hook_name`, or from a Gemma Scope 2 `config.json`;
//! [`Sae::placed`] puts it elsewhere. The facts about Gemma Scope 2 that this crate relies on,
//! read from SAELens 6.54.12, are listed in [`gemma_scope_2`].
//!
//! # SAEs and transcoders
//!
//! | kind | reads | writes |
//! |---|---|---|
//! | residual (`-res`, `resid_post`) | the decoder layer's output ([`BlockOutput`](intervene::SiteKind::BlockOutput)) | the same |
//! | attention (`-att`, `attn_out`) | the heads entering `o_proj` ([`AttentionValueOutput`](intervene::SiteKind::AttentionValueOutput)) | the same |
//! | MLP (`-mlp`, `mlp_out`) | the post-feedforward norm's output ([`PostFeedforwardNormOutput`](intervene::SiteKind::PostFeedforwardNormOutput)) | the same |
//! | transcoder (`-transcoders`, `transcoder`) | the MLP input, the pre-feedforward norm's output ([`MlpInput`](intervene::SiteKind::MlpInput)) | the post-feedforward norm's output |
//!
//! A transcoder is the same [`Sae`] whose decoder writes another site ([`SaeSites`],
//! [`Sae::is_transcoder`]): its latents are read at the read site, `magnitude · W_dec[i]`
//! steers at the write site, and its output, with the affine skip of Gemma Scope 2's `_affine`
//! transcoders, `decode(encode(x)) + x · W_skip`, stands in for the MLP's.
//!
//! # Math
//!
//! * `encode(x) = (pre > θ) ⊙ relu(pre)` with `pre = x·W_enc + b_enc` (strict `>`; one `addmm`
//!   and one mask); inputs are cast to the SAE's dtype, never the weights. `b_dec` is not
//!   subtracted from the input (Gemma Scope and Gemma Scope 2 have `apply_b_dec_to_input =
//!   false`).
//! * `decode(a) = a·W_dec + b_dec`, `[..., d_out]`.
//! * [`Sae::reconstruct`]: `decode(encode(x)) + x·W_skip`, the skip only for affine transcoders.
//! * [`Sae::top_k`]: the `k` largest latents per token, computed on the device, one transfer.
//! * [`Sae::steering_vector`]: `magnitude · W_dec[latent]` (the SAE's dtype, on the device).
//!
//! # Metrics
//!
//! All metrics exclude `<bos>` and padding ([`metrics::position_mask`]). With `N` counted tokens,
//! `x` the SAE input, `y` the activation it reconstructs (`x` itself for an SAE, the write site's
//! for a transcoder), `ŷ` its reconstruction and `a` the activations:
//!
//! | metric | formula |
//! |---|---|
//! | L0 (threshold `τ`) | `#{i : a_i > τ}` per token; the tutorial uses `τ = 1`, SAELens `τ = 0` |
//! | MSE | `mean((ŷ − y)²)` over all `N·d` elements |
//! | explained variance (tutorial) | `1 − mean((ŷ − y)²) / var(y)`, `var` unbiased over all `N·d` elements |
//! | explained variance (conventional, SAELens ≥ 6.45.1) | `1 − Σ_t ‖y_t − ŷ_t‖² / Σ_t ‖y_t − μ‖²`, `μ` the mean token, sums in float64 |
//! | explained variance (SAELens legacy, per token) | `mean_t [1 − ‖y_t − ŷ_t‖² / ‖y_t − μ‖²]` |
//! | ΔCE | `CE(spliced) − CE(clean)`, next-token cross-entropy |
//! | KL | `mean_t KL(p_clean,t ‖ p_spliced,t)` |
//!
//! SAELens uses the conventional definition since 6.45.1 (its `ExplainedVarianceCalculator`:
//! `1 − E‖y − ŷ‖² / (E‖y‖² − ‖E y‖²)`); the per-token form is what it reported before April 2025
//! and now calls `explained_variance_legacy`. ΔCE and KL are reported with the bare
//! reconstruction spliced in and with the error term added back (SAELens' `use_error_term`); a
//! transcoder is spliced in place of the MLP's output. See [`metrics`] for the details.
//!
//! # Logit lens
//!
//! [`Sae::logit_lens`]: `W_U · W_dec[i]` through the (tied) unembedding, no final norm, no
//! soft-cap; top promoted and suppressed tokens with scores. [`Sae::logit_lens_through`] maps
//! the rows into the residual stream first (an attention SAE's through `o_proj`).
//!
//! # Top examples
//!
//! [`TopExamples`]: the `k` (text, position) pairs where each of some latents fires most over
//! many texts, fed one batch of latents at a time (a feature dashboard's examples).
//!
//! # Interventions
//!
//! [`JumpReluInterchange`] (pyvene's `JumpReLUAutoencoderIntervention`: the base becomes
//! `dec(z')`, no error term unless asked), [`EncodeCollect`] (the tutorial's collect-with-encoder)
//! and [`Steer`] (add `Σ mag·W_dec[i]`; [`steering_add`] builds the same as intervene's
//! [`intervene::Add`]). These act at one site: the read site for the interchange and the collect,
//! the write site for steering ([`Sae::write_site`]). [`SpliceHooks`] splices the SAE, or a
//! transcoder in place of the MLP, into any [`intervene::HookedModel`] directly.
//!
//! # Example
//!
//! ```no_run
//! use sae::{Sae, Steer};
//! use tch::{Device, Kind, Tensor};
//!
//! # fn main() -> sae::Result<()> {
//! // A local path, a hub path (google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71)
//! // or a canonical name; `scope::SaeAt::from_pretrained` also places it at its model site.
//! let name = "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical";
//! let sae = Sae::from_pretrained(name, Device::cuda_if_available())?;
//! assert_eq!(sae.site(), Some(intervene::Site::new(20, intervene::SiteKind::BlockOutput)));
//! sae.check_d_in(2304)?;
//!
//! // Activations of decoder layer 20, [batch, seq, d] (here random).
//! let x = Tensor::randn([1, 14, 2304], (Kind::Float, sae.device()));
//! let acts = sae.encode(&x)?;
//! let top = sae.top_k_of(&acts, 5)?;
//! for (latent, value) in top.active(3) {
//!     println!("token 3: latent {latent} = {value}");
//! }
//! let mask = sae::metrics::position_mask(None, 1, 14)?;
//! let m = sae.reconstruction_metrics(&x, Some(&mask), 1.0)?;
//! println!("L0 {:.1}, explained variance {:.4}", m.mean_l0, m.explained_variance);
//!
//! let steer = Steer::new(&sae, &[(10004, 100.0)])?; // an intervene::Intervention
//! # let _ = steer;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod error;
pub mod family;
pub mod gemma_scope_2;
pub mod hub;
pub mod interventions;
pub mod lens;
pub mod load;
pub mod metrics;
pub mod name;
mod sae;
pub mod top_examples;

pub use error::{Error, Result};
pub use hub::{resolve, HubOptions, ResolvedSae, SaeFormat};
pub use interventions::{steering_add, EncodeCollect, JumpReluInterchange, Steer};
pub use lens::LogitLens;
pub use metrics::{splice_metrics, ReconstructionMetrics, SpliceHooks, SpliceMetrics};
pub use name::{canonical_lookup, CanonicalEntry, SaeFamily, SaeName, SaeSites, SiteHint};
pub use sae::{Sae, SaeInfo, TopK};
/// The libtorch types this crate's calls take and return.
pub use tch::{self, Device, Kind, Tensor};
pub use top_examples::{strongest_rows, Example, TopExamples};
