//! An SAE's latents at every position: the tutorial's collect with the encoder.

use gemma_model::{Batch, Gemma2Model};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::sae_at::SaeAt;

/// Reads an SAE's latents through the intervention graph (pyvene's collect with the
/// JumpReLU encoder), each call stopping after the SAE's layer.
pub struct LatentCollector<'m> {
    graph: IntervenableModel<'m, Gemma2Model>,
    options: CallOptions,
}

impl<'m> LatentCollector<'m> {
    /// A collector of `sae`'s latents on `model`.
    pub fn new(model: &'m Gemma2Model, sae: &SaeAt) -> Result<Self> {
        let graph = IntervenableModel::new(
            model,
            vec![RepresentationConfig::new(
                sae.component(),
                sae::EncodeCollect::new(&sae.sae),
            )],
        )?;
        let options = CallOptions::new().collect_only_stop_early(true);
        Ok(LatentCollector { graph, options })
    }

    /// The latents of `batch`, `[B, T, d_sae]` in the SAE's dtype.
    pub fn latents(&self, batch: &Batch) -> Result<Tensor> {
        let out = self.graph.forward(batch, Sources::None, &self.options)?;
        out.collected
            .into_iter()
            .next()
            .ok_or_else(|| Error::Input("the collect intervention returned nothing".into()))
    }
}

/// `sae`'s latents at every position of `ids` (one prompt, `<bos>` included): `[T, d_sae]`.
pub fn latents(model: &Gemma2Model, sae: &SaeAt, ids: &[i64]) -> Result<Tensor> {
    let acts = LatentCollector::new(model, sae)?.latents(&Batch::from_ids(ids))?;
    Ok(acts.f_squeeze_dim(0)?)
}
