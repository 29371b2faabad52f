//! bfloat16 on the fused kernels. A bf16 model's weights and KV cache stay in bf16 (read as
//! `u16` bit patterns, multiplied by AVX512-BF16's `vdpbf16ps` where the CPU has it and
//! widened to f32 as they are loaded otherwise, both exact); activations live in the f32
//! buffers and are rounded to bf16 wherever libtorch's bf16 path stores a bf16 tensor: after
//! every product, norm, sum, rotation, soft-cap step and softmax. So each operation computes
//! in f32 from the same bf16 inputs libtorch's kernels read, and rounds its result as they do
//! (to nearest, ties to even).
//!
//! A bf16 model's prompts do not run here but through libtorch (`FusedDecoder::takes_prompt`),
//! so their logits and cache are transformers' bf16 ones bit for bit. The decode steps are
//! not: libtorch's bf16 matrix products (oneDNN's, on AMX tiles where the CPU has them)
//! accumulate their f32 sums in an order no kernel of ours reproduces, and where a sum lands
//! within a rounding of a bf16 boundary the two round it one bf16 step apart (a relative
//! 2^-8). In a decoder such flips spread from layer to layer. On the test fixtures the steps'
//! logits are as far from transformers' f32 logits as transformers' bf16 ones are, and the
//! greedy and steered tokens are transformers' and pyvene's. `DecodeMode::Auto` runs bf16
//! models here, as it runs float32 ones; `DecodeMode::Eager` keeps libtorch's bits.

/// Whether the buffers hold f32 values or bf16 values carried in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precision {
    F32,
    Bf16,
}

impl Precision {
    /// `xs` as this precision stores them.
    pub(crate) fn store(self, xs: &mut [f32]) {
        if self == Precision::Bf16 {
            for x in xs {
                *x = round(*x);
            }
        }
    }

    /// The tensor kind of this precision.
    pub(crate) fn kind(self) -> tch::Kind {
        match self {
            Precision::F32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }

    /// `x` as this precision stores it.
    pub(crate) fn store_one(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => round(x),
        }
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as f32; NaN stays NaN.
pub(crate) fn round(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & 0xffff_0000);
    }
    let tie_to_even = 0x7fff + ((bits >> 16) & 1);
    f32::from_bits(bits.wrapping_add(tie_to_even) & 0xffff_0000)
}

/// A stored weight or cache value, widened to f32 (exact).
pub(crate) trait Widen: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
    /// `x`, which holds a value of this type, stored as one.
    fn narrow(x: f32) -> Self;
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }

    fn narrow(x: f32) -> f32 {
        x
    }
}

/// bf16 as its bit pattern.
impl Widen for u16 {
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }

    fn narrow(x: f32) -> u16 {
        (round(x).to_bits() >> 16) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_ties_to_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to the even mantissa, 1.
        assert_eq!(round(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        assert_eq!(round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round(-2.5), -2.5);
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::MAX), f32::INFINITY);
    }

    #[test]
    fn matches_libtorch_s_conversion() {
        let xs: Vec<f32> = (0..20_000)
            .map(|i| ((i as f32) * 0.377_17).sin() * 10f32.powi(i % 9 - 4))
            .collect();
        let t = tch::Tensor::from_slice(&xs).to_kind(tch::Kind::BFloat16);
        let want = Vec::<f32>::try_from(&t.to_kind(tch::Kind::Float)).unwrap_or_default();
        let got: Vec<f32> = xs.iter().map(|&x| round(x)).collect();
        assert_eq!(got, want);
        let bits: Vec<u16> = xs.iter().map(|&x| u16::narrow(x)).collect();
        let widened: Vec<f32> = bits.iter().map(|b| b.widen()).collect();
        assert_eq!(widened, want);
    }
}
