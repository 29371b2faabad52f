//! How well an SAE reconstructs its site over some prompts, and what splicing it in costs.

use gemma_model::{Batch, GemmaModel};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use sae::{ReconstructionMetrics, SpliceMetrics};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::sae_at::SaeAt;

/// The SAE's reconstruction metrics over every real token of `prompts` but `<bos>` (L0 counts
/// latents above `threshold`), and the next-token cross-entropy and KL with the SAE spliced
/// in, as SAELens defines them.
///
/// A transcoder stands in for the MLP: it encodes the MLP input, its output (with the affine
/// skip) is compared with the post-feedforward norm's clean output (MSE, explained variance)
/// and spliced in there, computed from the MLP input of the same call.
pub fn eval(
    model: &GemmaModel,
    sae: &SaeAt,
    prompts: &[Vec<i64>],
    threshold: f64,
) -> Result<(ReconstructionMetrics, SpliceMetrics)> {
    let batch = Batch::left_padded(prompts, model.config().pad_token_id)?;
    let (b, t) = batch.shape()?;
    let (x, target) = read_and_write_activations(model, sae, &batch)?;
    let mask = sae::metrics::position_mask(batch.attention_mask.as_ref(), b, t)?;
    let reconstruction =
        sae.sae
            .reconstruction_metrics_against(&x, &target, Some(&mask), threshold)?;
    let splice = splice_on(model, sae, &batch)?;
    Ok((reconstruction, splice))
}

/// ΔCE and KL of splicing `sae` into `model` over `prompts` (token ids, `<bos>` first; one
/// left-padded batch), as [`eval`] measures them: at every real position but the `<bos>`.
pub fn splice_metrics(
    model: &GemmaModel,
    sae: &SaeAt,
    prompts: &[Vec<i64>],
) -> Result<SpliceMetrics> {
    let batch = Batch::left_padded(prompts, model.config().pad_token_id)?;
    splice_on(model, sae, &batch)
}

fn splice_on(model: &GemmaModel, sae: &SaeAt, batch: &Batch) -> Result<SpliceMetrics> {
    Ok(sae::splice_metrics(
        &sae.sae,
        model,
        batch,
        &batch.input_ids,
        batch.attention_mask.as_ref(),
        sae.sites(),
        |o| o.logits,
    )?)
}

/// The raw activations at the SAE's read site and at its write site (the same tensor for an
/// SAE), read in one call that changes nothing and stops after the SAE's layer.
fn read_and_write_activations(
    model: &GemmaModel,
    sae: &SaeAt,
    batch: &Batch,
) -> Result<(Tensor, Tensor)> {
    let mut configs = vec![RepresentationConfig::new(
        sae.component(),
        intervene::Collect,
    )];
    if sae.is_transcoder() {
        configs.push(RepresentationConfig::new(
            sae.write_component(),
            intervene::Collect,
        ));
    }
    let graph = IntervenableModel::new(model, configs)?;
    let options = CallOptions::new().collect_only_stop_early(true);
    let out = graph.forward(batch, Sources::None, &options)?;
    let collected = |index: usize| -> Result<Tensor> {
        out.collected
            .iter()
            .zip(&out.collected_from)
            .find(|(_, from)| **from == index)
            .map(|(t, _)| t.shallow_clone())
            .ok_or_else(|| Error::Input("the collect returned nothing".into()))
    };
    let x = collected(0)?;
    let target = if sae.is_transcoder() {
        collected(1)?
    } else {
        x.shallow_clone()
    };
    Ok((x, target))
}
