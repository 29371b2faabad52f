//! An SAE's latents at every position: the tutorial's collect with the encoder.

use gemma_model::{Batch, GemmaModel};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::sae_at::SaeAt;

/// Reads an SAE's latents through the intervention graph (pyvene's collect with the
/// JumpReLU encoder), each call stopping after the SAE's layer.
pub struct LatentCollector<'m> {
    graph: IntervenableModel<'m, GemmaModel>,
    options: CallOptions,
}

impl<'m> LatentCollector<'m> {
    /// A collector of `sae`'s latents on `model`.
    pub fn new(model: &'m GemmaModel, sae: &SaeAt) -> Result<Self> {
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

/// `sae`'s latents at every position of `ids` (one prompt, `<bos>` included).
pub fn latents(model: &GemmaModel, sae: &SaeAt, ids: &[i64]) -> Result<TokenLatents> {
    let acts = LatentCollector::new(model, sae)?.latents(&Batch::from_ids(ids))?;
    Ok(TokenLatents {
        activations: acts.f_squeeze_dim(0)?,
        sae: sae.clone(),
    })
}

/// An SAE's latents at every token of one prompt, and what is read from them.
#[derive(Debug)]
pub struct TokenLatents {
    activations: Tensor,
    sae: SaeAt,
}

impl TokenLatents {
    /// The activations, `[T, d_sae]` in the SAE's dtype: row `t` is token `t` (`<bos>` is
    /// row 0), column `i` is latent `i`.
    pub fn activations(&self) -> &Tensor {
        &self.activations
    }

    /// The number of tokens, `T`.
    pub fn len(&self) -> usize {
        self.activations.size().first().map_or(0, |&t| t as usize)
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per token, how many latents are above `threshold` (L0 at `threshold`; the Gemma Scope
    /// tutorial counts `> 1`, SAELens `> 0`).
    pub fn l0(&self, threshold: f64) -> Result<Vec<i64>> {
        let counts = self
            .activations
            .f_gt(threshold)?
            .f_sum_dim_intlist(-1, false, Kind::Int64)?;
        Ok(Vec::<i64>::try_from(&counts)?)
    }

    /// Per token, the `k` most active latents, strongest first: `top.token(t)` gives
    /// token `t`'s `(latent, value)` pairs (`top.active(t)` only those `> 0`).
    pub fn top(&self, k: usize) -> Result<sae::TopK> {
        Ok(self.sae.sae.top_k_of(&self.activations, k)?)
    }

    /// Per token, the most active latent and its value (the first of equals).
    pub fn strongest(&self) -> Result<Vec<(i64, f32)>> {
        let (values, latents) = self.activations.f_max_dim(-1, false)?;
        let values = Vec::<f32>::try_from(&values.f_to_kind(Kind::Float)?)?;
        Ok(Vec::<i64>::try_from(&latents)?
            .into_iter()
            .zip(values)
            .collect())
    }

    /// `latent`'s value at every token, `[T]`.
    pub fn values_of(&self, latent: i64) -> Result<Vec<f32>> {
        let latent = self.sae.check_latent(latent)?;
        let column = self
            .activations
            .f_select(1, latent)?
            .f_to_kind(Kind::Float)?;
        Ok(Vec::<f32>::try_from(&column)?)
    }
}
