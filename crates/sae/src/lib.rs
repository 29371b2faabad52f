//! Gemma Scope JumpReLU sparse autoencoders on libtorch: loading, encode/decode, metrics, logit
//! lens, and interventions for the [`intervene`] graph, matching SAELens, Google's Gemma Scope
//! tutorial and pyvene 0.1.8.
//!
//! # Naming and loading
//!
//! [`resolve`] turns any of three names into a file on disk ([`name`] explains the forms):
//!
//! * a local path: `fixtures/saes/tiny-f32-res/layer_2/width_256/average_l0_20/params.npz`,
//!   its directory, or a SAELens directory (`sae_weights.safetensors` + `cfg.json`);
//! * a hub path: `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`, fetched into
//!   the standard Hugging Face cache (offline with `HF_HUB_OFFLINE=1`, see [`hub`]);
//! * a canonical shorthand: `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`,
//!   through the canonical L0 table in `data/canonical_l0.tsv`.
//!
//! [`Sae::load`] reads and validates the weights (every problem is a typed [`Error`] naming the
//! file and the key) and keeps them once on the device, in float32 ([`Sae::to_dtype`] converts,
//! e.g. to bf16 to halve a wide SAE's memory on a bf16 model). The site the SAE reads
//! ([`Sae::site`]) follows from the name (`layer_20`, `-res`/`-mlp`/`-att`) or from SAELens'
//! `hook_name`.
//!
//! # Math
//!
//! * `encode(x) = (pre > θ) ⊙ relu(pre)` with `pre = x·W_enc + b_enc` (strict `>`; one `addmm`
//!   and one mask); inputs are cast to the SAE's dtype, never the weights.
//! * `decode(a) = a·W_dec + b_dec`.
//! * [`Sae::top_k`]: the `k` largest latents per token, computed on the device, one transfer.
//! * [`Sae::steering_vector`]: `magnitude · W_dec[latent]` (the SAE's dtype, on the device).
//!
//! # Metrics
//!
//! All metrics exclude `<bos>` and padding ([`metrics::position_mask`]). With `N` counted tokens,
//! `x` the SAE input, `x̂` its reconstruction and `a` the activations:
//!
//! | metric | formula |
//! |---|---|
//! | L0 (threshold `τ`) | `#{i : a_i > τ}` per token; the tutorial uses `τ = 1`, SAELens `τ = 0` |
//! | MSE | `mean((x̂ − x)²)` over all `N·d` elements |
//! | explained variance (tutorial) | `1 − mean((x̂ − x)²) / var(x)`, `var` unbiased over all `N·d` elements |
//! | explained variance (SAELens per-token) | `mean_t [1 − ‖x_t − x̂_t‖² / ‖x_t − μ‖²]`, `μ` the mean token |
//! | ΔCE | `CE(spliced) − CE(clean)`, next-token cross-entropy |
//! | KL | `mean_t KL(p_clean,t ‖ p_spliced,t)` |
//!
//! The per-token explained variance is what SAELens reported before April 2025; SAELens itself
//! calls it wrong now (`explained_variance_legacy`). ΔCE and KL are reported with the bare
//! reconstruction spliced in and with the error term added back (SAELens' `use_error_term`).
//! See [`metrics`] for the details.
//!
//! # Logit lens
//!
//! [`Sae::logit_lens`]: `W_U · W_dec[i]` through the (tied) unembedding, no final norm, no
//! soft-cap; top promoted and suppressed tokens with scores.
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
//! [`intervene::Add`]). [`SpliceHooks`] splices the SAE into any
//! [`intervene::HookedModel`] directly.
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
pub use name::{canonical_lookup, CanonicalEntry, SaeFamily, SaeName, SiteHint};
pub use sae::{Sae, SaeInfo, TopK};
/// The libtorch types this crate's calls take and return.
pub use tch::{self, Device, Kind, Tensor};
pub use top_examples::{Example, TopExamples};
