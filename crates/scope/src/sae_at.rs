//! An SAE placed at the model site it reads (and a transcoder at the site it writes too).

use gemma_model::GemmaModel;
use intervene::{Component, Site};
use sae::{Sae, SaeFamily, SaeSites};
use scope_engine::Edit;

use crate::error::{Error, Result};

/// An SAE and the site of the model it reads and writes, checked against each other.
///
/// For a transcoder, [`site`](Self::site) is where it reads (the MLP input: latents, top
/// examples and patching read there) and [`write_site`](Self::write_site) where its decoder
/// writes (the post-feedforward norm's output: steering adds there, and evaluation splices its
/// output there).
#[derive(Clone, Debug)]
pub struct SaeAt {
    /// The SAE, placed: [`Sae::sites`] is `Some`.
    pub sae: Sae,
    /// Where it reads the model.
    pub site: Site,
}

/// Where to put an SAE besides (or instead of) what its name says: `--layer` and `--site`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The layer (both sites of a transcoder are in it).
    pub layer: Option<usize>,
    /// The kind of SAE: which activation it reads and writes (see [`Placement::parse_site`]).
    pub family: Option<SaeFamily>,
}

impl Placement {
    /// The names `--site` takes: Gemma Scope 2's folder names.
    pub const SITE_NAMES: [&'static str; 4] = ["resid_post", "attn_out", "mlp_out", "transcoder"];

    /// The family a `--site` name gives: `resid_post` (the block output), `attn_out` (the input
    /// of `o_proj`), `mlp_out` (the post-feedforward norm's output) or `transcoder` (reads the
    /// MLP input, writes the post-feedforward norm's output); `_all` spellings too.
    pub fn parse_site(name: &str) -> Result<SaeFamily> {
        SaeFamily::from_gemma_scope_2_folder(name).ok_or_else(|| {
            Error::Input(format!(
                "`{name}` is not a site: expected one of {}",
                Placement::SITE_NAMES.join(", ")
            ))
        })
    }
}

impl SaeAt {
    /// `sae` at `layer` (else the layer its name says, on the residual stream after it), or
    /// an error naming what does not fit: no layer known, a layer past the model's, an SAE
    /// whose input width is not the site's.
    pub fn new(sae: Sae, layer: Option<usize>, model: &GemmaModel) -> Result<Self> {
        SaeAt::place(
            sae,
            Placement {
                layer,
                family: None,
            },
            model,
        )
    }

    /// `sae` where `placement` says, filling in from what its name says (a transcoder's name
    /// places it at the MLP; an SAE whose name says nothing reads the residual stream after its
    /// layer), checked against the model: a layer in range, `d_in` the read site's width,
    /// `d_out` the write site's.
    pub fn place(sae: Sae, placement: Placement, model: &GemmaModel) -> Result<Self> {
        let sites = sites_of(&sae, placement)?;
        let layers = model.config().num_hidden_layers;
        if sites.read.layer >= layers {
            return Err(Error::Input(format!(
                "layer {} is out of range: the model has {layers} layers (0..={})",
                sites.read.layer,
                layers.saturating_sub(1)
            )));
        }
        let catalog = model.site_catalog();
        let width = |site: Site| {
            catalog
                .get(site)
                .map(|info| info.width)
                .ok_or_else(|| Error::Input(format!("the model has no site {site}")))
        };
        sae.check_d_in(width(sites.read)?)?;
        sae.check_d_out(width(sites.write)?)?;
        let sae = sae.placed(sites)?;
        Ok(SaeAt {
            sae,
            site: sites.read,
        })
    }

    /// The SAE called `name` (a local path, a hub path such as
    /// `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`, a canonical name such
    /// as `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`, or a Gemma Scope 2
    /// release and SAE id such as `gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small`), in
    /// float32 on the model's device, at the site its name says: the one call to load an SAE.
    pub fn from_pretrained(name: &str, model: &GemmaModel) -> Result<Self> {
        let sae = Sae::from_pretrained(name, model.device())?;
        SaeAt::new(sae, None, model)
    }

    /// Where the decoder writes: [`site`](Self::site) for an SAE, the post-feedforward norm's
    /// output for a transcoder.
    pub fn write_site(&self) -> Site {
        self.sae.write_site().unwrap_or(self.site)
    }

    /// Both sites.
    pub fn sites(&self) -> SaeSites {
        SaeSites {
            read: self.site,
            write: self.write_site(),
        }
    }

    /// Whether it is a transcoder (writes another site than it reads).
    pub fn is_transcoder(&self) -> bool {
        self.sites().is_transcoder()
    }

    /// The intervention-graph component of the write site.
    pub fn write_component(&self) -> Component {
        let site = self.write_site();
        Component::typed(site.kind.type_name(), site.layer)
    }

    /// The intervention-graph component of the read site.
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
    /// `sum of magnitude * W_dec[latent]` added at the write site (a transcoder's decoder
    /// directions live in the MLP's output). An error names a latent out of range or a
    /// magnitude that is not finite.
    pub fn steering_edit(&self, pairs: &[(i64, f64)]) -> Result<Edit> {
        check_steering(self, pairs)?;
        Ok(Edit {
            site: self.write_site(),
            vector: self.sae.steering_sum(pairs)?,
        })
    }
}

/// The sites `placement` and what the SAE's name says give together.
fn sites_of(sae: &Sae, placement: Placement) -> Result<SaeSites> {
    let named = sae.sites();
    let layer = placement
        .layer
        .or_else(|| named.map(|s| s.read.layer))
        .or(sae.info().layer);
    let family = placement.family.or_else(|| {
        // A name that says no site: the residual stream, unless the weights are a transcoder's.
        named.is_none().then_some(if sae.is_transcoder() {
            SaeFamily::Transcoder
        } else {
            SaeFamily::Residual
        })
    });
    match (family, named, layer) {
        (Some(family), _, Some(layer)) => Ok(family.sites(layer)),
        (None, Some(sites), Some(layer)) => Ok(sites.with_layer(layer)),
        _ => Err(Error::Input(
            "the SAE does not say which layer it reads: give the layer".into(),
        )),
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
/// strongest first; latents at 0 are left out. Read at the SAE's read site (a transcoder's
/// MLP input, which comes before its own steering in the same layer).
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
