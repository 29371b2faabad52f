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
    /// `1 + w` in f32, computed once (the same f32 ops as per call, so the same values);
    /// `None` if that failed, and then it is computed per call.
    scale: Option<Tensor>,
}

impl RmsNorm {
    /// `1 + w` in f32, when it was computed at construction.
    pub(crate) fn scale_f32(&self) -> Option<&Tensor> {
        self.scale.as_ref()
    }

    /// A norm with weight `weight` (as stored in the checkpoint).
    pub fn new(weight: Tensor, eps: f64) -> Self {
        let scale = one_plus(&weight).ok();
        RmsNorm { weight, eps, scale }
    }

    /// `x * rsqrt(mean(x², -1) + eps) * (1 + w)`, computed in f32, returned in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.f_to_kind(Kind::Float)?;
        let mut mean_sq = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, None::<Kind>)?;
        // In place on fresh temporaries only (`xf` may be `x` itself).
        let _ = mean_sq.f_add_scalar_(self.eps)?.f_rsqrt_()?;
        let normed = xf.f_mul(&mean_sq)?;
        let computed;
        let scale = match &self.scale {
            Some(scale) => scale,
            None => {
                computed = one_plus(&self.weight)?;
                &computed
            }
        };
        if x.kind() == Kind::Float {
            let mut normed = normed;
            let _ = normed.f_mul_(scale)?;
            return Ok(normed);
        }
        // The f32 product rounded to `x`'s dtype as it is stored: one kernel instead of a
        // multiply and a cast, and the same values (the multiply runs in f32 either way).
        let out = x.f_empty_like()?;
        Ok(normed.f_mul_out(&out, scale)?)
    }
}

/// `1 + w` in f32.
fn one_plus(weight: &Tensor) -> Result<Tensor> {
    Ok(weight.f_to_kind(Kind::Float)?.f_add_scalar(1.0)?)
}
