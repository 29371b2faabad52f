//! The small per-token operations of a decode step on f32 slices, each doing what its tensor
//! counterpart in [`crate::norm`], [`crate::rope`], [`crate::attention`] and [`crate::mlp`]
//! does, in the same order of operations (so within a rounding or two of it).

use super::bf16::Precision;
use super::matvec::{Isa, Weight};

/// Gemma's RMSNorm of one row: `x * (1 / sqrt(mean(x²) + eps)) * scale`, `scale` being the
/// norm's `1 + w` in f32.
pub(crate) fn rms_norm(isa: Isa, x: &[f32], scale: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = isa.dot(x, x) / x.len().max(1) as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &s) in out.iter_mut().zip(x).zip(scale) {
        *o = (v * inv) * s;
    }
}

/// GELU's tanh approximation of every value of `gate` into `out`, as libtorch writes it:
/// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x³)))`.
pub(crate) fn gelu_tanh_all(isa: Isa, gate: &[f32], out: &mut [f32]) {
    const BETA: f32 = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
    const KAPPA: f32 = 0.044715;
    for (o, &x) in out.iter_mut().zip(gate) {
        *o = BETA * (x + KAPPA * (x * x * x));
    }
    tanh_all(isa, out);
    for (o, &x) in out.iter_mut().zip(gate) {
        *o = 0.5 * x * (1.0 + *o);
    }
}

/// `cap * tanh(x / cap)` for every value of `xs`, in place, each of the three steps stored
/// in precision `p` (three tensors of the model's dtype there).
pub(crate) fn soft_cap(isa: Isa, xs: &mut [f32], cap: f32, p: Precision) {
    for x in xs.iter_mut() {
        *x = p.store_one(*x / cap);
    }
    tanh_all(isa, xs);
    p.store(xs);
    for x in xs.iter_mut() {
        *x = p.store_one(*x * cap);
    }
}

/// `tanh` of every value, in place, vectorised on the widest instruction set.
pub(crate) fn tanh_all(isa: Isa, xs: &mut [f32]) {
    map_all(isa, xs, tanh);
}

/// `exp` of every value, in place, vectorised on the widest instruction set.
pub(crate) fn exp_all(isa: Isa, xs: &mut [f32]) {
    map_all(isa, xs, exp);
}

/// `f` of every value, in place, the loop compiled for `isa`: generic, so that `f` (a
/// function item, not a pointer) is inlined into it and a branch-free `f` runs 16 or 8 values
/// at a time.
fn map_all<F: Fn(f32) -> f32>(isa: Isa, xs: &mut [f32], f: F) {
    match isa {
        // SAFETY: `Isa::detect` found the instruction set on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { map_avx512(xs, f) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { map_avx2(xs, f) },
        Isa::Portable => map(xs, f),
    }
}

#[inline(always)]
fn map<F: Fn(f32) -> f32>(xs: &mut [f32], f: F) {
    xs.iter_mut().for_each(|x| *x = f(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn map_avx512<F: Fn(f32) -> f32>(xs: &mut [f32], f: F) {
    map(xs, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map_avx2<F: Fn(f32) -> f32>(xs: &mut [f32], f: F) {
    map(xs, f);
}

/// `e^x` in f32 without branches (so that loops of it vectorise), within 2 ulp of the true
/// value: Cody–Waite reduction by ln 2 and Cephes' degree-6 polynomial for `expf`. Below
/// the smallest normal result it is 0, as libtorch's `exp` is for the masked scores of
/// attention (`finfo.min` added), and it saturates at `e^88.3`.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in few bits, so `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.3, 88.3);
    let n = (clamped * LOG2E).round_ties_even();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5e-1;
    let e = p * (r * r) + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        e * scale
    }
}

/// `tanh(x)` in f32 without branches, within 2 ulp: Cephes' odd polynomial below
/// |x| = 0.625, `1 - 2 / (e^2|x| + 1)` above, with the sign of `x`.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = a * a;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * a
            + a;
    let large = 1.0 - 2.0 / (exp(a + a) + 1.0);
    let t = if a < 0.625 { small } else { large };
    t.copysign(x)
}

/// Rotates every head of `x` (`heads * head_dim` values) in place:
/// `x * cos + swap_halves(x) * signed_sin` (see the model's `apply_rotary`); the two
/// products are rounded (to precision `p`) before the sum, as there (no fused multiply-add).
pub(crate) fn rotate(x: &mut [f32], cos: &[f32], signed_sin: &[f32], p: Precision) {
    let head_dim = cos.len();
    let half = head_dim / 2;
    let turn = |a: f32, b: f32, cos: f32, signed_sin: f32| {
        // Rust never contracts these into fused multiply-adds: two roundings, then the sum.
        p.store_one(p.store_one(a * cos) + p.store_one(b * signed_sin))
    };
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = turn(a, b, cos[i], signed_sin[i]);
            head[i + half] = turn(b, a, cos[i + half], signed_sin[i + half]);
        }
    }
}

/// One row's attention shape facts, in f32 as libtorch applies its scalars to f32 tensors.
pub(crate) struct OneQuery {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// Eager attention of one query row `q` (`heads * head_dim`, rotated) over the first
/// `mask.len()` cached keys and values of one row (`[kv_heads, capacity, head_dim]` each),
/// with the additive `mask`; writes the heads merged into `z` (`heads * head_dim`). Scores:
/// the dot product, times the scale, soft-capped, plus the mask, softmax in f32; each step
/// stored in precision `p`, as the model's tensors of scores, probabilities and outputs are.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_one<W: Weight>(
    isa: Isa,
    shape: &OneQuery,
    p: Precision,
    q: &[f32],
    keys: &[W],
    values: &[W],
    capacity: usize,
    mask: &[f32],
    scores: &mut Vec<f32>,
    z: &mut [f32],
) {
    let hd = shape.head_dim;
    let groups = (shape.heads / shape.kv_heads.max(1)).max(1);
    let len = mask.len();
    scores.resize(len, 0.0);
    for head in 0..shape.heads {
        let kv = (head / groups) * capacity * hd;
        let qh = &q[head * hd..(head + 1) * hd];
        for (j, s) in scores.iter_mut().enumerate() {
            let dot = p.store_one(isa.dot(&keys[kv + j * hd..kv + (j + 1) * hd], qh));
            *s = p.store_one(dot * shape.scale);
        }
        if let Some(cap) = shape.softcap {
            soft_cap(isa, scores, cap, p);
        }
        let mut max = f32::NEG_INFINITY;
        for (s, &m) in scores.iter_mut().zip(mask) {
            *s = p.store_one(*s + m);
            max = max.max(*s);
        }
        for s in scores.iter_mut() {
            *s -= max;
        }
        exp_all(isa, scores);
        let sum: f32 = scores.iter().sum();
        let zh = &mut z[head * hd..(head + 1) * hd];
        zh.fill(0.0);
        for (j, &e) in scores.iter().enumerate() {
            let probability = p.store_one(e / sum);
            let value = &values[kv + j * hd..kv + (j + 1) * hd];
            for (o, &v) in zh.iter_mut().zip(value) {
                *o += probability * v.widen();
            }
        }
        p.store(zh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `step`-th f32 in `-range..range`, and the edges.
    fn grid(range: f32, n: usize) -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=n)
            .map(|i| -range + 2.0 * range * i as f32 / n as f32)
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            0.624_999_9,
            0.625,
            -0.625,
            f32::MAX,
            f32::MIN,
        ]);
        xs
    }

    fn isas() -> Vec<Isa> {
        vec![Isa::Portable, Isa::detect()]
    }

    #[test]
    fn tanh_is_within_two_ulp_of_f64() {
        for isa in isas() {
            let xs = grid(12.0, 200_001);
            let mut got = xs.clone();
            tanh_all(isa, &mut got);
            for (&x, &t) in xs.iter().zip(&got) {
                let want = f64::from(x).tanh();
                let ulp = f64::from(f32::EPSILON) * want.abs().max(f64::from(f32::MIN_POSITIVE));
                assert!(
                    (f64::from(t) - want).abs() <= 2.0 * ulp,
                    "{isa:?}: tanh({x}) = {t}, want {want}"
                );
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_and_zero_below_the_normals() {
        for isa in isas() {
            let xs = grid(88.0, 400_001);
            let mut got = xs.clone();
            exp_all(isa, &mut got);
            for (&x, &e) in xs.iter().zip(&got) {
                if x > 88.3 {
                    continue;
                }
                let want = f64::from(x).exp();
                if want < f64::from(f32::MIN_POSITIVE) * 2.0 {
                    assert!(e == 0.0 || f64::from(e) <= 4.0 * f64::from(f32::MIN_POSITIVE));
                    continue;
                }
                let ulp = f64::from(f32::EPSILON) * want;
                assert!(
                    (f64::from(e) - want).abs() <= 2.0 * ulp,
                    "{isa:?}: exp({x}) = {e}, want {want}"
                );
            }
            let mut masked = [f32::MIN, -1e30, -100.0];
            exp_all(isa, &mut masked);
            assert_eq!(masked, [0.0; 3]);
        }
    }

    #[test]
    fn gelu_tanh_matches_its_formula_in_f64() {
        let xs = grid(8.0, 10_001);
        for isa in isas() {
            let mut got = vec![0.0; xs.len()];
            gelu_tanh_all(isa, &xs, &mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                if !x.is_finite() || x.abs() > 8.0 {
                    continue;
                }
                let x64 = f64::from(x);
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
                let want = 0.5 * x64 * (1.0 + inner.tanh());
                assert!(
                    (f64::from(g) - want).abs() < 1e-6,
                    "{isa:?}: gelu_tanh({x}) = {g}"
                );
            }
        }
    }

    #[test]
    fn rotation_turns_each_pair_by_its_angle() {
        // One head of width 4: pairs (0, 2) and (1, 3), turned by 0.5 and 1.0 radians.
        let angles = [0.5f32, 1.0, 0.5, 1.0];
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let signed_sin: Vec<f32> = angles
            .iter()
            .enumerate()
            .map(|(i, a)| if i < 2 { -a.sin() } else { a.sin() })
            .collect();
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rotate(
            &mut x,
            &cos,
            &signed_sin,
            super::super::bf16::Precision::F32,
        );
        for (i, pair) in [(0, 2), (1, 3)].into_iter().enumerate() {
            let (a, b) = ([1.0f32, 2.0][i], [3.0f32, 4.0][i]);
            let (c, s) = (angles[i].cos(), angles[i].sin());
            assert!((x[pair.0] - (a * c - b * s)).abs() < 1e-6);
            assert!((x[pair.1] - (b * c + a * s)).abs() < 1e-6);
        }
    }
}
