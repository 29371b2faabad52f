//! Gemma's RMSNorm: normalise in f32, multiply by `(1 + w)` in f32, cast to the model dtype
//! last (transformers#29402). Casting before the multiply, or precomputing `1 + w` in bf16,
//! changes about a third of bf16 outputs by one ulp.

use tch::{Kind, Tensor};

use crate::error::Result;

/// An RMSNorm whose stored weight is the offset from one.
#[derive(Debug)]
pub struct RmsNorm {
    /// The stored weight `w` (`[hidden]`), in the model dtype; the scale is `1 + w`.
    pub weight: Tensor,
    /// Added to the mean square inside the rsqrt.
    pub eps: f64,
}

impl RmsNorm {
    /// A norm with weight `weight` (as stored in the checkpoint).
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    /// `x * rsqrt(mean(x², -1) + eps) * (1 + w)`, computed in f32, returned in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.f_to_kind(Kind::Float)?;
        let mean_sq = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, None::<Kind>)?;
        let normed = xf.f_mul(&mean_sq.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        let scale = self.weight.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?;
        Ok(normed.f_mul(&scale)?.f_to_kind(x.kind())?)
    }
}
