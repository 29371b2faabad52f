//! Rotary position embedding, half-split (GPT-NeoX) layout as in transformers' Gemma 2.
//!
//! Frequencies and angles are computed in f32 whatever the model dtype (positions above 256 are
//! not representable in bf16); cos/sin are cast to the model dtype before they touch q and k.

use tch::{Device, Kind, Tensor};

use crate::config::RopeConfig;
use crate::error::Result;

/// The RoPE inverse frequencies of one head width.
#[derive(Debug)]
pub struct Rope {
    /// `1 / theta^(2i / head_dim)` for `i < head_dim / 2`, f32.
    inv_freq: Tensor,
}

impl Rope {
    /// Inverse frequencies for `head_dim` and base `theta`, built exactly like transformers'
    /// `compute_default_rope_parameters`: `1.0 / (theta ** (arange(0, dim, 2).float() / dim))`.
    pub fn new(head_dim: i64, theta: f64, device: Device) -> Result<Self> {
        let exponents = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(head_dim as f64)?;
        let inv_freq = Tensor::f_pow_scalar(theta, &exponents)?.f_reciprocal()?;
        Ok(Rope { inv_freq })
    }

    /// [`Self::new`]'s frequencies divided by `config.linear_factor` in f32, as transformers'
    /// `linear` RoPE scaling does (`inv_freq /= factor`); unscaled when it is 1.
    pub fn of_config(head_dim: i64, config: RopeConfig, device: Device) -> Result<Self> {
        let rope = Self::new(head_dim, config.theta, device)?;
        if config.linear_factor == 1.0 {
            return Ok(rope);
        }
        Ok(Rope {
            inv_freq: rope.inv_freq.f_div_scalar(config.linear_factor)?,
        })
    }

    /// The inverse frequencies (f32, `[head_dim / 2]`).
    pub fn inv_freq(&self) -> &Tensor {
        &self.inv_freq
    }

    /// `(cos, sin)` of shape `[B, T, head_dim]` in `dtype` for integer positions `[B, T]`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: Kind) -> Result<(Tensor, Tensor)> {
        // [B, T, 1] * [half] in f32: one rounding per product, like HF's K=1 matmul.
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((
            emb.f_cos()?.f_to_kind(dtype)?,
            emb.f_sin()?.f_to_kind(dtype)?,
        ))
    }

    /// The angles of one forward call over positions `[B, T]`, shaped `[B, 1, T, head_dim]` to
    /// broadcast over heads, in the form [`apply_rotary`] takes.
    pub fn angles(&self, positions: &Tensor, dtype: Kind) -> Result<RotaryAngles> {
        let (cos, sin) = self.cos_sin(positions, dtype)?;
        Ok(RotaryAngles {
            cos: cos.f_unsqueeze(1)?,
            signed_sin: signed_sin(&sin)?.f_unsqueeze(1)?,
        })
    }
}

/// cos and sign-adjusted sin of one forward call, built once and shared by every layer.
#[derive(Debug)]
pub struct RotaryAngles {
    /// `[B, 1, T, head_dim]`.
    pub cos: Tensor,
    /// [`signed_sin`] of the sin, `[B, 1, T, head_dim]`.
    pub signed_sin: Tensor,
}

impl RotaryAngles {
    /// The angles of position `index` of the call alone, `[B, 1, 1, head_dim]`.
    pub fn position(&self, index: i64) -> Result<RotaryAngles> {
        Ok(RotaryAngles {
            cos: self.cos.f_narrow(2, index, 1)?,
            signed_sin: self.signed_sin.f_narrow(2, index, 1)?,
        })
    }
}

/// `cat(-x2, x1)` on the last axis, where `x1`, `x2` are its halves (transformers'
/// `rotate_half`; [`apply_rotary`] gets the same products from [`swap_halves`] and
/// [`signed_sin`] in fewer operations).
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

/// `cat(x2, x1)` on the last axis: one flip of a `[.., 2, half]` view.
pub fn swap_halves(x: &Tensor) -> Result<Tensor> {
    let shape = x.size();
    let mut split = shape.clone();
    let last = split.pop().unwrap_or(0);
    split.extend([2, last / 2]);
    Ok(x.f_reshape(split.as_slice())?
        .f_flip([-2])?
        .f_reshape(shape.as_slice())?)
}

/// `sin` with its first half negated, so that `swap_halves(x) * signed_sin(sin)` equals
/// `rotate_half(x) * sin` bit for bit: negation is exact and rounding is symmetric in sign.
pub fn signed_sin(sin: &Tensor) -> Result<Tensor> {
    let half = sin.size().last().copied().unwrap_or(0) / 2;
    let out = sin.f_detach_copy()?;
    let mut first = out.f_narrow(-1, 0, half)?;
    let _ = first.f_neg_()?;
    Ok(out)
}

/// `x * cos + rotate_half(x) * sin` for `x` of shape `[B, heads, T, head_dim]`, in the model
/// dtype, with the products and the sum of transformers' `apply_rotary_pos_emb`.
pub fn apply_rotary(x: &Tensor, angles: &RotaryAngles) -> Result<Tensor> {
    let mut out = x.f_mul(&angles.cos)?;
    let mut rotated = swap_halves(x)?;
    // In place on the two fresh products: the same sums, fewer allocations.
    let _ = rotated.f_mul_(&angles.signed_sin)?;
    let _ = out.f_add_(&rotated)?;
    Ok(out)
}
