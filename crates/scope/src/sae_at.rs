//! An SAE placed at the model site it reads.

use gemma_model::GemmaModel;
use intervene::{Component, Site, SiteKind};
use sae::Sae;
use scope_engine::Edit;

use crate::error::{Error, Result};

/// An SAE and the site of the model it reads and writes, checked against each other.
#[derive(Clone, Debug)]
pub struct SaeAt {
    /// The SAE.
    pub sae: Sae,
    /// Where it sits in the model.
    pub site: Site,
}

impl SaeAt {
    /// `sae` at `layer` (else the layer its name says, on the residual stream after it), or
    /// an error naming what does not fit: no layer known, a layer past the model's, an SAE
    /// whose input width is not the site's.
    pub fn new(sae: Sae, layer: Option<usize>, model: &GemmaModel) -> Result<Self> {
        let site = match (layer, sae.site()) {
            (Some(layer), Some(site)) => Site::new(layer, site.kind),
            (Some(layer), None) => Site::new(layer, SiteKind::BlockOutput),
            (None, Some(site)) => site,
            (None, None) => {
                return Err(Error::Input(
                    "the SAE does not say which layer it reads: give the layer".into(),
                ))
            }
        };
        let layers = model.config().num_hidden_layers;
        if site.layer >= layers {
            return Err(Error::Input(format!(
                "layer {} is out of range: the model has {layers} layers (0..={})",
                site.layer,
                layers.saturating_sub(1)
            )));
        }
        let width = model
            .site_catalog()
            .get(site)
            .map(|info| info.width)
            .ok_or_else(|| Error::Input(format!("the model has no site {site}")))?;
        sae.check_d_in(width)?;
        Ok(SaeAt { sae, site })
    }

    /// The SAE called `name` (a local path, a hub path such as
    /// `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`, or a canonical name
    /// such as `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`), in float32 on
    /// the model's device, at the layer its name says: the one call to load an SAE.
    pub fn from_pretrained(name: &str, model: &GemmaModel) -> Result<Self> {
        let sae = Sae::from_pretrained(name, model.device())?;
        SaeAt::new(sae, None, model)
    }

    /// The intervention-graph component of the site.
    pub fn component(&self) -> Component {
        Component::typed(self.site.kind.type_name(), self.site.layer)
    }

    /// `latent`, or an error when the SAE has no such latent.
    pub fn check_latent(&self, latent: i64) -> Result<i64> {
        let width = self.sae.d_sae();
        if !(0..width).contains(&latent) {
            return Err(Error::Input(format!(
                "latent {latent} is out of range: the SAE has {width} latents (0..={})",
                width - 1
            )));
        }
        Ok(latent)
    }

    /// The tutorial's steering by `(latent, magnitude)` pairs as an engine edit:
    /// `sum of magnitude * W_dec[latent]` added at the site. An error names a latent out of
    /// range or a magnitude that is not finite.
    pub fn steering_edit(&self, pairs: &[(i64, f64)]) -> Result<Edit> {
        check_steering(self, pairs)?;
        Ok(Edit {
            site: self.site,
            vector: self.sae.steering_sum(pairs)?,
        })
    }
}

/// Checks steering pairs: latents in range, finite magnitudes, at least one pair.
pub(crate) fn check_steering(sae: &SaeAt, pairs: &[(i64, f64)]) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::Input(
            "nothing to steer: no (latent, magnitude) pair".into(),
        ));
    }
    for &(latent, magnitude) in pairs {
        sae.check_latent(latent)?;
        if !magnitude.is_finite() {
            return Err(Error::Input(format!(
                "magnitude {magnitude} for latent {latent} is not finite"
            )));
        }
    }
    Ok(())
}

/// An engine [`Readout`](scope_engine::Readout): the `k` most active latents of an SAE at
/// each generated token (at the position that predicts it, after the request's steering),
/// strongest first; latents at 0 are left out.
#[derive(Clone, Debug)]
pub struct TopLatents {
    sae: SaeAt,
    k: usize,
}

impl TopLatents {
    /// The `k` strongest latents of `sae` (at least 1, at most its width).
    pub fn new(sae: &SaeAt, k: usize) -> Result<Self> {
        if k < 1 {
            return Err(Error::Input("top latents: k must be at least 1".into()));
        }
        Ok(TopLatents {
            sae: sae.clone(),
            k: k.min(usize::try_from(sae.sae.d_sae()).unwrap_or(k)),
        })
    }
}

impl scope_engine::Readout for TopLatents {
    fn site(&self) -> Site {
        self.sae.site
    }

    fn read(&self, activation: &tch::Tensor) -> std::result::Result<scope_engine::Reading, String> {
        let top = activation
            .f_unsqueeze(0)
            .map_err(|e| e.to_string())
            .and_then(|x| self.sae.sae.top_k(&x, self.k).map_err(|e| e.to_string()))?;
        Ok(top.active(0).collect())
    }
}
