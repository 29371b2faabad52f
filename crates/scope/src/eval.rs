//! How well an SAE reconstructs its site over some prompts, and what splicing it in costs.

use gemma_model::{Batch, GemmaModel};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use sae::{ReconstructionMetrics, SpliceMetrics};

use crate::error::{Error, Result};
use crate::sae_at::SaeAt;

/// The SAE's reconstruction metrics over every real token of `prompts` but `<bos>` (L0 counts
/// latents above `threshold`), and the next-token cross-entropy and KL with the SAE spliced
/// in, as SAELens defines them.
pub fn eval(
    model: &GemmaModel,
    sae: &SaeAt,
    prompts: &[Vec<i64>],
    threshold: f64,
) -> Result<(ReconstructionMetrics, SpliceMetrics)> {
    let batch = Batch::left_padded(prompts, model.config().pad_token_id)?;
    let (b, t) = batch.shape()?;
    // The SAE's input: the raw activation at its site, read without changing the model.
    let graph = IntervenableModel::new(
        model,
        vec![RepresentationConfig::new(
            sae.component(),
            intervene::Collect,
        )],
    )?;
    let options = CallOptions::new().collect_only_stop_early(true);
    let out = graph.forward(&batch, Sources::None, &options)?;
    let x = out
        .collected
        .first()
        .ok_or_else(|| Error::Input("the collect returned nothing".into()))?;
    let mask = sae::metrics::position_mask(batch.attention_mask.as_ref(), b, t)?;
    let reconstruction = sae.sae.reconstruction_metrics(x, Some(&mask), threshold)?;
    let splice = sae::splice_metrics(
        &sae.sae,
        model,
        &batch,
        &batch.input_ids,
        batch.attention_mask.as_ref(),
        sae.site,
        |o| o.logits,
    )?;
    Ok((reconstruction, splice))
}
