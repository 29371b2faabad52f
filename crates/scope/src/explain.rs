//! The logit lens of one latent: the tokens its decoder direction promotes and suppresses.

use gemma_model::GemmaModel;
use sae::LogitLens;

use crate::error::{Error, Result};
use crate::sae_at::SaeAt;

/// The `top_k` tokens `latent`'s decoder row promotes most and suppresses most through the
/// model's unembedding.
pub fn explain(model: &GemmaModel, sae: &SaeAt, latent: i64, top_k: i64) -> Result<LogitLens> {
    let latent = sae.check_latent(latent)?;
    if top_k < 1 {
        return Err(Error::Input(format!(
            "top_k must be at least 1, got {top_k}"
        )));
    }
    sae.sae
        .logit_lens(&[latent], model.unembedding(), top_k as usize)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Input("the logit lens returned nothing".into()))
}
