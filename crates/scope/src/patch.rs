//! pyvene's JumpReLU interchange: one latent of the SAE taken from a source prompt into a
//! base prompt, and the logits that moved. For a transcoder the latents are read at its read
//! site (the MLP input) and the swapped reconstruction is written at its write site (the MLP
//! output after the post-feedforward norm).

use gemma_model::{Batch, GemmaModel};
use intervene::{
    CallOptions, ForwardInfo, ForwardOptions, HookedModel, Hooks, IntervenableModel, Locations,
    NoHooks, RepresentationConfig, Site, Sources, Subspaces,
};
use sae::{Sae, SaeSites};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::latents::LatentCollector;
use crate::sae_at::SaeAt;

/// What to patch.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch<'a> {
    /// The base prompt's token ids.
    pub base: &'a [i64],
    /// The source prompt's token ids.
    pub source: &'a [i64],
    /// The base position patched (0-based, counted with `<bos>`).
    pub base_pos: i64,
    /// The source position read.
    pub source_pos: i64,
    /// The latent swapped.
    pub latent: i64,
    /// Add the SAE's reconstruction error of the base back (pyvene does not).
    pub keep_error: bool,
    /// How many of the most-moved next-token logits to return.
    pub top_k: i64,
}

/// What moved.
#[derive(Clone, Debug, PartialEq)]
pub struct Patched {
    /// The most-moved next-token logits at the base's last position: `(token, intervened -
    /// original)`, largest first.
    pub top: Vec<(i64, f64)>,
    /// The latent at the base position before the swap.
    pub base_value: f64,
    /// The latent at the source position.
    pub source_value: f64,
    /// Set when the result says less than it seems: the latent is 0 at the source (it did
    /// not fire there), so the swap wrote a 0.
    pub warning: Option<String>,
}

/// Swaps `patch.latent` from the source position into the base position (the base vector is
/// replaced by the SAE reconstruction of its latents with that one from the source), and
/// reports the next-token logits that moved most at the base's last position.
///
/// For a transcoder the base's latents come from its MLP input at the base position, and its
/// MLP output there is replaced by the transcoder's output of the swapped latents (with the
/// affine skip of the base's MLP input, and with the base's error at the write site when
/// `keep_error`).
pub fn patch(model: &GemmaModel, sae: &SaeAt, patch: &Patch<'_>) -> Result<Patched> {
    let latent = sae.check_latent(patch.latent)?;
    let base_pos = resolve_position(patch.base_pos, patch.base.len(), "base position")?;
    let source_pos = resolve_position(patch.source_pos, patch.source.len(), "source position")?;
    if sae.is_transcoder() {
        return patch_transcoder(model, sae, patch, latent, base_pos, source_pos);
    }
    // The interchange, and ahead of it at the same site a collect of the base latents there
    // (it sees the activation before the swap): the values reported come from the one
    // intervened call, with no extra forward.
    let graph = IntervenableModel::new(
        model,
        vec![
            RepresentationConfig::new(sae.component(), sae::EncodeCollect::new(&sae.sae)),
            RepresentationConfig::new(
                sae.component(),
                sae::JumpReluInterchange::new(&sae.sae).keep_error(patch.keep_error),
            ),
        ],
    )?;
    let options = CallOptions::new()
        .locations_each(vec![
            Locations::base(vec![base_pos]),
            Locations::pair(source_pos, base_pos),
        ])
        .subspaces_each(vec![None, Some(Subspaces::Shared(vec![latent]))])
        .output_original_output(true)
        // Only the last position's logits are reported, so the final layer runs for that
        // position alone (within float rounding of the full run; tested against pyvene).
        .last_position_logits(true);
    let base = Batch::from_ids(patch.base);
    let source = Batch::from_ids(patch.source);
    let out = graph.forward(&base, Sources::Shared(&source), &options)?;
    let original = out
        .original
        .as_ref()
        .ok_or_else(|| Error::Input("the interchange returned no original run".into()))?;
    let top = moved(
        &last_logits(original.logits.as_ref())?,
        &last_logits(out.intervened.logits.as_ref())?,
        patch.top_k,
    )?;
    // [1, 1, d_sae] encodings at the one selected position: the base's before the swap, and
    // the source slice the interchange read.
    let latent_value = |acts: &Tensor| -> Result<f64> {
        Ok(acts
            .f_reshape([-1])?
            .f_select(0, latent)?
            .f_double_value(&[])?)
    };
    let base_latents = out
        .collected
        .first()
        .ok_or_else(|| Error::Input("the collect of the base latents returned nothing".into()))?;
    let source_slice = out
        .source_slices
        .get(1)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::Input("the interchange read no source slice".into()))?;
    let source_value = latent_value(&sae.sae.encode(source_slice)?)?;
    Ok(Patched {
        top,
        base_value: latent_value(base_latents)?,
        source_value,
        warning: zero_warning(latent, source_pos, source_value),
    })
}

/// The warning of a swap that wrote a 0.
fn zero_warning(latent: i64, source_pos: i64, source_value: f64) -> Option<String> {
    (source_value == 0.0).then(|| {
        format!(
            "latent {latent} is 0 at source position {source_pos} (it did not fire there): \
             the swap wrote a 0"
        )
    })
}

/// The most-moved next-token logits at the last position: `(token, patched − original)`.
fn moved(original: &Tensor, patched: &Tensor, top_k: i64) -> Result<Vec<(i64, f64)>> {
    let diff = patched.f_sub(original)?.f_to_device(tch::Device::Cpu)?;
    let k = top_k.clamp(1, diff.size()[0]);
    let (values, indices) = diff.f_topk(k, 0, true, true)?;
    let values = Vec::<f64>::try_from(&values.f_to_kind(Kind::Double)?)?;
    let indices = Vec::<i64>::try_from(&indices)?;
    Ok(indices.into_iter().zip(values).collect())
}

/// [`patch`] for a transcoder: two sites, so plain hooks instead of pyvene's one-site
/// interchange. The source's latent is read first (a collect that stops after the layer), then
/// the base runs once clean and once with [`TranscoderSwap`].
fn patch_transcoder(
    model: &GemmaModel,
    sae: &SaeAt,
    patch: &Patch<'_>,
    latent: i64,
    base_pos: i64,
    source_pos: i64,
) -> Result<Patched> {
    let source_latents =
        LatentCollector::new(model, sae)?.latents(&Batch::from_ids(patch.source))?;
    let source_value = source_latents
        .f_select(0, 0)?
        .f_select(0, source_pos)?
        .f_select(0, latent)?
        .f_double_value(&[])?;
    let base = Batch::from_ids(patch.base);
    let options = ForwardOptions {
        last_position_logits: true,
        ..ForwardOptions::default()
    };
    let original = model.forward_hooked(&base, &options, &mut NoHooks)?;
    let mut swap = TranscoderSwap {
        sae: &sae.sae,
        sites: sae.sites(),
        position: base_pos,
        latent,
        source_value,
        keep_error: patch.keep_error,
        read: None,
        base_value: None,
    };
    let patched = model.forward_hooked(&base, &options, &mut swap)?;
    let base_value = swap
        .base_value
        .ok_or_else(|| Error::Input("the transcoder swap never reached its write site".into()))?;
    Ok(Patched {
        top: moved(
            &last_logits(original.logits.as_ref())?,
            &last_logits(patched.logits.as_ref())?,
            patch.top_k,
        )?,
        base_value,
        source_value,
        warning: zero_warning(latent, source_pos, source_value),
    })
}

/// A transcoder's interchange at one position: the read site's activation there is encoded,
/// `latent` takes `source_value`, and the write site there becomes the transcoder's output of
/// those latents (`decode(z') + x·W_skip`), plus the base's error `y − reconstruct(x)` when
/// `keep_error` (pyvene's interchange, with the decoder writing where the transcoder writes).
struct TranscoderSwap<'a> {
    sae: &'a Sae,
    sites: SaeSites,
    position: i64,
    latent: i64,
    source_value: f64,
    keep_error: bool,
    /// The read site at `position`, `[B, 1, d_in]`, kept for the write site.
    read: Option<Tensor>,
    /// The latent at `position` before the swap.
    base_value: Option<f64>,
}

impl TranscoderSwap<'_> {
    fn swapped(&mut self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let z = self.sae.encode(x)?;
        self.base_value = Some(
            z.f_reshape([-1, self.sae.d_sae()])?
                .f_select(0, 0)?
                .f_select(0, self.latent)?
                .f_double_value(&[])?,
        );
        let swapped = z.f_detach_copy()?;
        let _ = swapped
            .f_narrow(-1, self.latent, 1)?
            .f_fill_(self.source_value)?;
        let mut out = self.sae.output(&swapped, x)?;
        if self.keep_error {
            let y = y.f_to_device(out.device())?.f_to_kind(out.kind())?;
            out = out.f_add(&y.f_sub(&self.sae.reconstruct(x)?)?)?;
        }
        Ok(out)
    }
}

impl Hooks for TranscoderSwap<'_> {
    fn begin_forward(&mut self, _info: &ForwardInfo) -> std::result::Result<(), intervene::Error> {
        self.read = None;
        Ok(())
    }

    fn wants(&self, site: Site) -> bool {
        site == self.sites.read || site == self.sites.write
    }

    fn visit(
        &mut self,
        site: Site,
        activation: &mut Tensor,
    ) -> std::result::Result<(), intervene::Error> {
        if site == self.sites.read {
            self.read = Some(activation.f_narrow(1, self.position, 1)?);
        } else if site == self.sites.write {
            let x = self.read.take().ok_or_else(|| {
                intervene::Error::Invalid(format!(
                    "transcoder patch: {} was not visited before {}",
                    self.sites.read, self.sites.write
                ))
            })?;
            let y = activation.f_narrow(1, self.position, 1)?;
            let out = self
                .swapped(&x, &y)
                .map_err(|e| intervene::Error::Invalid(e.to_string()))?
                .f_to_kind(activation.kind())?
                .f_to_device(activation.device())?;
            let new = activation.f_detach_copy()?;
            new.f_narrow(1, self.position, 1)?.f_copy_(&out)?;
            *activation = new;
        }
        Ok(())
    }
}

/// The last position's logits of the one row, in f32.
fn last_logits(logits: Option<&Tensor>) -> Result<Tensor> {
    let logits = logits.ok_or_else(|| Error::Input("the model returned no logits".into()))?;
    Ok(logits
        .f_select(0, 0)?
        .f_select(0, -1)?
        .f_to_kind(Kind::Float)?)
}

/// A 0-based position (negative counts from the end) checked against a prompt of `len`
/// tokens; `what` names it in the error.
pub fn resolve_position(position: i64, len: usize, what: &str) -> Result<i64> {
    let len = len as i64;
    let resolved = if position < 0 {
        len + position
    } else {
        position
    };
    if !(0..len).contains(&resolved) {
        return Err(Error::Input(format!(
            "{what} {position} is out of range for a prompt of {len} tokens (0..={})",
            len - 1
        )));
    }
    Ok(resolved)
}
