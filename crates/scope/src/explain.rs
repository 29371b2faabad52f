//! The logit lens of one latent: the tokens its decoder direction promotes and suppresses.

use gemma_model::GemmaModel;
use intervene::SiteKind;
use sae::LogitLens;

use crate::error::{Error, Result};
use crate::sae_at::SaeAt;

/// The `top_k` tokens `latent`'s decoder row promotes most and suppresses most through the
/// model's unembedding. The row lives at the SAE's write site: the residual stream, the MLP
/// output (`mlp_out` SAEs and transcoders) or, for an attention SAE, the heads entering
/// `o_proj`, which `o_proj` maps into the residual stream first (the post-attention norm left
/// out, as the final norm is).
pub fn explain(model: &GemmaModel, sae: &SaeAt, latent: i64, top_k: i64) -> Result<LogitLens> {
    let latent = sae.check_latent(latent)?;
    if top_k < 1 {
        return Err(Error::Input(format!(
            "top_k must be at least 1, got {top_k}"
        )));
    }
    let write = sae.write_site();
    let projection = match write.kind {
        SiteKind::AttentionValueOutput => {
            let layer = model
                .layers()
                .get(write.layer)
                .ok_or_else(|| Error::Input(format!("the model has no layer {}", write.layer)))?;
            Some(&layer.self_attn.o_proj)
        }
        _ => None,
    };
    sae.sae
        .logit_lens_through(&[latent], projection, model.unembedding(), top_k as usize)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Input("the logit lens returned nothing".into()))
}
