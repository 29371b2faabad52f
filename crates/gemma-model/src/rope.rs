//! Rotary position embedding, half-split (GPT-NeoX) layout as in transformers' Gemma 2.
//!
//! Frequencies and angles are computed in f32 whatever the model dtype (positions above 256 are
//! not representable in bf16); cos/sin are cast to the model dtype before they touch q and k.

use tch::{Device, Kind, Tensor};

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
}

/// `cat(-x2, x1)` on the last axis, where `x1`, `x2` are its halves.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

/// `x * cos + rotate_half(x) * sin` for `x` of shape `[B, heads, T, head_dim]` and cos/sin of
/// shape `[B, 1, T, head_dim]`, all in the model dtype.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let mut out = x.f_mul(cos)?;
    let mut rotated = rotate_half(x)?;
    // In place on the two fresh products: the same sums, fewer allocations.
    let _ = rotated.f_mul_(sin)?;
    let _ = out.f_add_(&rotated)?;
    Ok(out)
}
