//! pyvene's JumpReLU interchange: one latent of the SAE taken from a source prompt into a
//! base prompt, and the logits that moved.

use gemma_model::{Batch, GemmaModel};
use intervene::{
    CallOptions, IntervenableModel, Locations, RepresentationConfig, Sources, Subspaces,
};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
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
pub fn patch(model: &GemmaModel, sae: &SaeAt, patch: &Patch<'_>) -> Result<Patched> {
    let latent = sae.check_latent(patch.latent)?;
    let base_pos = resolve_position(patch.base_pos, patch.base.len(), "base position")?;
    let source_pos = resolve_position(patch.source_pos, patch.source.len(), "source position")?;
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
    let diff = last_logits(out.intervened.logits.as_ref())?
        .f_sub(&last_logits(original.logits.as_ref())?)?
        .f_to_device(tch::Device::Cpu)?;
    let k = patch.top_k.clamp(1, diff.size()[0]);
    let (values, indices) = diff.f_topk(k, 0, true, true)?;
    let values = Vec::<f64>::try_from(&values.f_to_kind(Kind::Double)?)?;
    let indices = Vec::<i64>::try_from(&indices)?;
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
    let warning = (source_value == 0.0).then(|| {
        format!(
            "latent {latent} is 0 at source position {source_pos} (it did not fire there): \
             the swap wrote a 0"
        )
    });
    Ok(Patched {
        top: indices.into_iter().zip(values).collect(),
        base_value: latent_value(base_latents)?,
        source_value,
        warning,
    })
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
