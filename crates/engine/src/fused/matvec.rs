//! `out[b] = W · x[b]` for a row-major `W` (`[rows, k]`, the checkpoint's `[out, in]`) and a
//! few input vectors: the products that make up nearly all of a decode step's time.
//!
//! At one token per step the products read every weight once and do two flops per read, so
//! they are bound by memory bandwidth. Four rows are reduced together against one load of `x`
//! while the next four are prefetched, which keeps enough loads in flight to stream at the
//! machine's read bandwidth. Measured on the 2-core Sapphire Rapids VM with the `small`
//! model's 33 products per step (191 MB): 5.0 ms per step here, 6.0 ms through libtorch's
//! (MKL's) sgemv, 6.2 ms one row at a time; a plain sum over the same bytes takes 5.0 ms.
//!
//! Each output is one dot product over `k`, accumulated in f32 lanes and summed at the end,
//! so results differ from MKL's only by summation order (relative 1e-7).

use super::bf16::Widen;
use super::pool::Pool;
use crate::error::Result;

/// Rows reduced together.
const BLOCK: usize = 4;

/// The instruction set the products run on, picked once per generation from what the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 16 lanes (x86-64 with AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with its bf16 dot-product instruction (AVX512-BF16: Cooper Lake, Sapphire
    /// Rapids and later Xeons, Zen 4): bf16 matrices are multiplied by `vdpbf16ps`, 32 weights
    /// an instruction, instead of being widened to f32 first; everything else as `Avx512`.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// 8 lanes with fused multiply-add (x86-64 with AVX2 and FMA).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain Rust, for any other CPU.
    Portable,
}

impl Isa {
    /// The widest instruction set this CPU runs.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                if std::arch::is_x86_feature_detected!("avx512bf16") {
                    return Isa::Avx512Bf16;
                }
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// How many inputs one [`Isa::dot_tile`] takes against a block of rows where the CPU has
    /// the registers for it (one accumulator per row and input, plus the rows and an input):
    /// 6 with AVX-512's 32 registers (24 accumulators, 4 rows, an input), 2 with AVX2's 16, 1 (no
    /// tiles) otherwise. Tiles make several inputs, a prompt's tokens or a batch's rows, cost little
    /// more than one.
    pub(crate) fn tile_inputs(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => 6,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 2,
            Isa::Portable => 1,
        }
    }

    /// `[[w_r · x_j for r] for j]` for `BLOCK` consecutive rows of `w` and `N` inputs `xs`:
    /// each sum accumulated in the instruction set's lanes over `k` in order, then reduced,
    /// so the same whatever `N` (a tile of inputs gives what one input at a time gives).
    /// `prefetch` asks for the next block of rows while this one streams: wanted on the
    /// block's first tile, not on later ones, which find the next rows already on their way.
    fn dot_tile<W: Weight, const N: usize>(
        self,
        w: &[W],
        xs: &[f32],
        prefetch: bool,
    ) -> [[f32; BLOCK]; N] {
        debug_assert_eq!(w.len() * N, xs.len() * BLOCK);
        let k = xs.len() / N;
        match self {
            // SAFETY: `detect` found the instruction set on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { W::tile_avx512::<N>(w, xs, prefetch) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => unsafe { W::tile_avx512_bf16::<N>(w, xs, prefetch) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { W::tile_avx2::<N>(w, xs, prefetch) },
            Isa::Portable => std::array::from_fn(|j| {
                let _ = prefetch;
                let x = &xs[j * k..(j + 1) * k];
                std::array::from_fn(|r| portable_dot(&w[r * k..(r + 1) * k], x))
            }),
        }
    }

    /// `a · b` over equal lengths (`a` a row of weights or cached keys, or f32 values).
    pub(crate) fn dot<W: Weight>(self, a: &[W], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        match self {
            // SAFETY: `detect` found the instruction set on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => unsafe { W::dot_avx512(a, b) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { W::dot_avx2(a, b) },
            Isa::Portable => portable_dot(a, b),
        }
    }
}

/// What the products read a matrix of: f32, or bf16 (its bit patterns, widened to f32 as
/// they are loaded), each with the kernels of every instruction set.
pub(crate) trait Weight: Widen {
    /// [`Isa::dot_tile`] on AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx512<const N: usize>(
        w: &[Self],
        xs: &[f32],
        prefetch: bool,
    ) -> [[f32; BLOCK]; N];
    /// [`Isa::dot_tile`] on AVX-512 with AVX512-BF16: [`Weight::tile_avx512`] but for bf16.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx512_bf16<const N: usize>(
        w: &[Self],
        xs: &[f32],
        prefetch: bool,
    ) -> [[f32; BLOCK]; N] {
        // SAFETY: the caller's, and AVX-512F is all `tile_avx512` needs.
        unsafe { Self::tile_avx512::<N>(w, xs, prefetch) }
    }
    /// [`Isa::dot_tile`] on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2<const N: usize>(
        w: &[Self],
        xs: &[f32],
        prefetch: bool,
    ) -> [[f32; BLOCK]; N];
    /// [`Isa::dot`] on AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx512(a: &[Self], b: &[f32]) -> f32;
    /// [`Isa::dot`] on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(a: &[Self], b: &[f32]) -> f32;
}

/// Implements [`Weight`] for `$w` with its four kernels in `x86`.
macro_rules! weight {
    ($w:ty, $tile512:ident, $tile2:ident, $dot512:ident, $dot2:ident $(, $tile512bf16:ident)?) => {
        impl Weight for $w {
            $(
            #[cfg(target_arch = "x86_64")]
            unsafe fn tile_avx512_bf16<const N: usize>(
                w: &[Self],
                xs: &[f32],
                prefetch: bool,
            ) -> [[f32; BLOCK]; N] {
                // SAFETY: the caller's.
                unsafe { x86::$tile512bf16::<N>(w, xs, prefetch) }
            }
            )?
            #[cfg(target_arch = "x86_64")]
            unsafe fn tile_avx512<const N: usize>(
                w: &[Self],
                xs: &[f32],
                prefetch: bool,
            ) -> [[f32; BLOCK]; N] {
                // SAFETY: the caller's.
                unsafe { x86::$tile512::<N>(w, xs, prefetch) }
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn tile_avx2<const N: usize>(
                w: &[Self],
                xs: &[f32],
                prefetch: bool,
            ) -> [[f32; BLOCK]; N] {
                // SAFETY: the caller's.
                unsafe { x86::$tile2::<N>(w, xs, prefetch) }
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn dot_avx512(a: &[Self], b: &[f32]) -> f32 {
                // SAFETY: the caller's.
                unsafe { x86::$dot512(a, b) }
            }
            #[cfg(target_arch = "x86_64")]
            unsafe fn dot_avx2(a: &[Self], b: &[f32]) -> f32 {
                // SAFETY: the caller's.
                unsafe { x86::$dot2(a, b) }
            }
        }
    };
}

weight!(f32, dot_tile_avx512, dot_tile_avx2, dot_avx512, dot_avx2);
weight!(
    u16,
    dot_tile_avx512_bf16,
    dot_tile_avx2_bf16,
    dot_avx512_bf16,
    dot_avx2_bf16,
    dot_tile_avx512_dpbf16
);

/// A matrix of the model: `[rows, k]`, row-major, in f32 or bf16.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Matrix<'m> {
    F32(&'m [f32]),
    Bf16(&'m [u16]),
}

impl Matrix<'_> {
    /// Values.
    pub(crate) fn len(&self) -> usize {
        match self {
            Matrix::F32(w) => w.len(),
            Matrix::Bf16(w) => w.len(),
        }
    }

    /// Row `r` of `k` values, widened into `out`.
    pub(crate) fn row_into(&self, r: usize, k: usize, out: &mut [f32]) {
        match self {
            Matrix::F32(w) => out.copy_from_slice(&w[r * k..(r + 1) * k]),
            Matrix::Bf16(w) => {
                for (o, &v) in out.iter_mut().zip(&w[r * k..(r + 1) * k]) {
                    *o = v.widen();
                }
            }
        }
    }
}

/// A dot product in eight f32 lanes, summed pairwise at the end.
fn portable_dot<W: Widen>(a: &[W], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks_a = a.chunks_exact(8);
    let mut chunks_b = b.chunks_exact(8);
    for (ca, cb) in (&mut chunks_a).zip(&mut chunks_b) {
        for i in 0..8 {
            lanes[i] += ca[i].widen() * cb[i];
        }
    }
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x.widen() * y)
        .sum();
    let [a0, a1, a2, a3, a4, a5, a6, a7] = lanes;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) + tail
}

/// The output buffer shared by the parts of one product; each part writes its own rows.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the parts of a product write disjoint elements (their own rows), and the product
// does not return before every part is done.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// `out[b * rows + r] = w[r] · xs[b * k..]` for every row `r` of `w` (`[rows, k]`) and every
/// input `b` of `xs` (`[batch, k]`), the rows split over the pool's threads.
pub(crate) fn matvec(
    pool: &Pool,
    isa: Isa,
    w: Matrix<'_>,
    k: usize,
    xs: &[f32],
    out: &mut [f32],
) -> Result<()> {
    match w {
        Matrix::F32(w) => matvec_of(pool, isa, w, k, xs, out),
        Matrix::Bf16(w) => matvec_of(pool, isa, w, k, xs, out),
    }
}

fn matvec_of<W: Weight>(
    pool: &Pool,
    isa: Isa,
    w: &[W],
    k: usize,
    xs: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let rows = w.len().checked_div(k).unwrap_or(0);
    let batch = xs.len().checked_div(k).unwrap_or(0);
    debug_assert_eq!(rows * k, w.len());
    debug_assert_eq!(batch * rows, out.len());
    let parts = pool.parts();
    // Whole blocks per part, so that only the last part has a ragged end.
    let per_part = rows.div_ceil(parts).div_ceil(BLOCK) * BLOCK;
    let shared = Out {
        ptr: out.as_mut_ptr(),
        len: out.len(),
    };
    pool.run(&|part| {
        let start = (part * per_part).min(rows);
        let end = ((part + 1) * per_part).min(rows);
        rows_of(isa, w, k, xs, start..end, rows, shared);
    })
}

/// The rows `range` of [`matvec`], on one thread.
fn rows_of<W: Weight>(
    isa: Isa,
    w: &[W],
    k: usize,
    xs: &[f32],
    range: std::ops::Range<usize>,
    rows: usize,
    out: Out,
) {
    let write = |index: usize, value: f32| {
        if index < out.len {
            // SAFETY: in bounds (checked), and `index` belongs to this part's rows alone.
            unsafe { *out.ptr.add(index) = value };
        }
    };
    let mut r = range.start;
    while r + BLOCK <= range.end {
        let block = &w[r * k..(r + BLOCK) * k];
        // Inputs in tiles as wide as the CPU has the registers for (a prompt's tokens), the
        // last tile narrower: the same sums in the same order as one input at a time.
        let put = |b: usize, tile: &[[f32; BLOCK]]| {
            for (j, values) in tile.iter().enumerate() {
                for (i, &value) in values.iter().enumerate() {
                    write((b + j) * rows + r + i, value);
                }
            }
        };
        let (inputs, widest) = (xs.len() / k, isa.tile_inputs());
        let mut b = 0;
        while b < inputs {
            let n = (inputs - b).min(widest);
            let x = &xs[b * k..(b + n) * k];
            let first = b == 0;
            match n {
                6 => put(b, &isa.dot_tile::<W, 6>(block, x, first)),
                5 => put(b, &isa.dot_tile::<W, 5>(block, x, first)),
                4 => put(b, &isa.dot_tile::<W, 4>(block, x, first)),
                3 => put(b, &isa.dot_tile::<W, 3>(block, x, first)),
                2 => put(b, &isa.dot_tile::<W, 2>(block, x, first)),
                _ => put(b, &isa.dot_tile::<W, 1>(block, x, first)),
            }
            b += n;
        }
        r += BLOCK;
    }
    for r in r..range.end {
        let row = &w[r * k..(r + 1) * k];
        for (b, x) in xs.chunks_exact(k).enumerate() {
            write(b * rows + r, isa.dot(row, x));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Widen, BLOCK};

    /// The tile kernel of one instruction set, from its lane width and intrinsics: the same
    /// code for AVX-512, AVX2 and AVX512-BF16. `$wload` loads `$lanes` weights into a row
    /// register (`$rzero` its zero), `$xload` `$lanes` inputs, and `$madd(row, x, acc)` adds
    /// their products to an accumulator (`$zero` its zero, `$sum` its total).
    macro_rules! tile {
        ($feature:literal, $lanes:literal, $tile:ident, $w:ty, $wload:ident, $rzero:ident,
         $xload:ident, $madd:ident, $zero:ident, $sum:ident) => {
            #[doc = concat!("Four rows against `N` inputs in ", stringify!($lanes), " weights \
                an instruction (", $feature, "), one accumulator per pair, prefetching the \
                next four rows; `N > 1` shares each load of a row between inputs.")]
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $tile<const N: usize>(
                w: &[$w],
                xs: &[f32],
                prefetch: bool,
            ) -> [[f32; BLOCK]; N] {
                let k = xs.len() / N;
                let whole = k / $lanes * $lanes;
                let (pw, px) = (w.as_ptr(), xs.as_ptr());
                let mut acc = [[$zero(); BLOCK]; N];
                let mut rows = [$rzero(); BLOCK];
                let mut i = 0;
                while i < whole {
                    // SAFETY: `i + lanes <= k`; row `r` of `w` and input `j` have `k` values at
                    // `r * k` and `j * k`.
                    unsafe {
                        for (r, row) in rows.iter_mut().enumerate() {
                            let at = pw.add(r * k + i);
                            // The same place in the next block, at least once per 64-byte
                            // line: a hint, never dereferenced.
                            if prefetch && i % 16 == 0 {
                                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(BLOCK * k) as *const i8);
                            }
                            *row = $wload(at);
                        }
                        for (j, sums) in acc.iter_mut().enumerate() {
                            let xv = $xload(px.add(j * k + i));
                            for (a, row) in sums.iter_mut().zip(rows) {
                                *a = $madd(row, xv, *a);
                            }
                        }
                    }
                    i += $lanes;
                }
                let mut out = [[0f32; BLOCK]; N];
                for (j, (values, sums)) in out.iter_mut().zip(acc).enumerate() {
                    for (r, (value, sum)) in values.iter_mut().zip(sums).enumerate() {
                        let tail = tail_dot(
                            &w[r * k + whole..(r + 1) * k],
                            &xs[j * k + whole..(j + 1) * k],
                        );
                        *value = $sum(sum) + tail;
                    }
                }
                out
            }
        };
    }

    /// The dot-product kernel of one instruction set (the loads and sums of `tile!`).
    macro_rules! dot {
        ($feature:literal, $lanes:literal, $dot:ident, $w:ty, $wload:ident, $xload:ident,
         $madd:ident, $zero:ident, $sum:ident) => {
            #[doc = concat!("`a · b` in ", stringify!($lanes), " lanes (", $feature, ").")]
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $dot(a: &[$w], b: &[f32]) -> f32 {
                let n = a.len().min(b.len());
                let whole = n / $lanes * $lanes;
                let (pa, pb) = (a.as_ptr(), b.as_ptr());
                let mut acc = $zero();
                let mut i = 0;
                while i < whole {
                    // SAFETY: `i + lanes <= n`.
                    unsafe {
                        acc = $madd($wload(pa.add(i)), $xload(pb.add(i)), acc);
                    }
                    i += $lanes;
                }
                $sum(acc) + tail_dot(&a[whole..n], &b[whole..n])
            }
        };
    }

    tile!(
        "avx512f",
        16,
        dot_tile_avx512,
        f32,
        _mm512_loadu_ps,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        sum512
    );
    dot!(
        "avx512f",
        16,
        dot_avx512,
        f32,
        _mm512_loadu_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        sum512
    );
    tile!(
        "avx2,fma",
        8,
        dot_tile_avx2,
        f32,
        _mm256_loadu_ps,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        sum256
    );
    dot!(
        "avx2,fma",
        8,
        dot_avx2,
        f32,
        _mm256_loadu_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        sum256
    );
    tile!(
        "avx512f",
        16,
        dot_tile_avx512_bf16,
        u16,
        load_bf16_512,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        sum512
    );
    dot!(
        "avx512f",
        16,
        dot_avx512_bf16,
        u16,
        load_bf16_512,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_setzero_ps,
        sum512
    );
    tile!(
        "avx2,fma",
        8,
        dot_tile_avx2_bf16,
        u16,
        load_bf16_256,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        sum256
    );
    dot!(
        "avx2,fma",
        8,
        dot_avx2_bf16,
        u16,
        load_bf16_256,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_setzero_ps,
        sum256
    );
    // `vdpbf16ps`: each instruction multiplies 32 weights of a row by 32 inputs (cast to
    // bf16, exact for the bf16 values a bf16 model's products read) and adds each lane's
    // pair of products to that lane's f32 sum, so a row's sum runs over 16 lanes of pairs
    // instead of 16 lanes of single products.
    tile!(
        "avx512f,avx512bf16",
        32,
        dot_tile_avx512_dpbf16,
        u16,
        load_bf16_pairs,
        zero_bf16_pairs,
        load_f32_as_bf16_pairs,
        dpbf16_madd,
        _mm512_setzero_ps,
        sum512
    );

    /// Thirty-two bf16 values as they are, in pairs per f32 lane.
    ///
    /// # Safety
    /// `p` points at thirty-two readable `u16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load_bf16_pairs(p: *const u16) -> __m512bh {
        // SAFETY: the caller's; a bf16 vector is 32 bf16 bit patterns.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }

    /// A vector of 32 bf16 zeros.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn zero_bf16_pairs() -> __m512bh {
        // SAFETY: all-zero bits are 32 bf16 zeros.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()) }
    }

    /// Thirty-two f32 values rounded to bf16 (exact for values that are bf16 already).
    ///
    /// # Safety
    /// `p` points at thirty-two readable `f32`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn load_f32_as_bf16_pairs(p: *const f32) -> __m512bh {
        // SAFETY: the caller's.
        let (low, high) = unsafe { (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))) };
        _mm512_cvtne2ps_pbh(high, low)
    }

    /// `acc` plus each lane's pair of products of `row` and `x`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dpbf16_madd(row: __m512bh, x: __m512bh, acc: __m512) -> __m512 {
        _mm512_dpbf16_ps(acc, row, x)
    }

    /// Sixteen bf16 values widened to f32 (each bit pattern shifted into the high half).
    ///
    /// # Safety
    /// `p` points at sixteen readable `u16`.
    #[target_feature(enable = "avx512f")]
    unsafe fn load_bf16_512(p: *const u16) -> __m512 {
        // SAFETY: the caller's.
        let bits = unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }

    /// Eight bf16 values widened to f32.
    ///
    /// # Safety
    /// `p` points at eight readable `u16`.
    #[target_feature(enable = "avx2")]
    unsafe fn load_bf16_256(p: *const u16) -> __m256 {
        // SAFETY: the caller's.
        let bits = unsafe { _mm_loadu_si128(p.cast::<__m128i>()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    }

    /// The sum of sixteen lanes.
    #[target_feature(enable = "avx512f")]
    fn sum512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    /// The sum of eight lanes.
    #[target_feature(enable = "avx2")]
    fn sum256(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        let one = _mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs));
        _mm_cvtss_f32(one)
    }

    /// The few products past the last whole vector.
    fn tail_dot<W: Widen>(a: &[W], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x.widen() * y).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same products in f64, one row at a time.
    fn reference(w: &[f32], k: usize, xs: &[f32]) -> Vec<f64> {
        let rows = w.len() / k;
        let mut out = Vec::new();
        for x in xs.chunks_exact(k) {
            for r in 0..rows {
                out.push(
                    w[r * k..(r + 1) * k]
                        .iter()
                        .zip(x)
                        .map(|(a, b)| f64::from(*a) * f64::from(*b))
                        .sum(),
                );
            }
        }
        out
    }

    fn kind(w: Matrix<'_>) -> &'static str {
        match w {
            Matrix::F32(_) => "f32",
            Matrix::Bf16(_) => "bf16",
        }
    }

    /// `w` rounded to bf16, as bit patterns.
    fn bf16(w: &[f32]) -> Vec<u16> {
        w.iter().map(|&x| u16::narrow(x)).collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The instruction sets this CPU runs.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                isas.push(Isa::Avx512Bf16);
            }
        }
        isas
    }

    #[test]
    fn a_batch_computes_each_input_as_alone() -> Result<()> {
        let pool = Pool::new(2);
        for isa in isas() {
            // Whole tiles and every remainder of 6 and of 2.
            for batch in [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13] {
                let (rows, k) = (24, 200);
                let w = values(rows * k, 3);
                let w16 = bf16(&w);
                let xs = values(batch * k, 4);
                for w in [Matrix::F32(&w), Matrix::Bf16(&w16)] {
                    let mut together = vec![0.0; batch * rows];
                    matvec(&pool, isa, w, k, &xs, &mut together)?;
                    for (b, x) in xs.chunks_exact(k).enumerate() {
                        let mut alone = vec![0.0; rows];
                        matvec(&pool, isa, w, k, x, &mut alone)?;
                        let got = &together[b * rows..(b + 1) * rows];
                        assert_eq!(alone, got, "{isa:?}, {} batch {batch}, input {b}", kind(w));
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn every_isa_matches_f64_products_on_ragged_shapes() -> Result<()> {
        let isas = isas();
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            // Rows not a multiple of the block or the parts, k not a multiple of the lanes.
            for (rows, k, batch) in [
                (37, 29, 1),
                (64, 512, 2),
                (5, 16, 3),
                (130, 100, 1),
                (36, 48, 9),
                (8, 520, 14),
            ] {
                let w = values(rows * k, 1);
                let w16 = bf16(&w);
                let widened: Vec<f32> = w16.iter().map(|b| b.widen()).collect();
                let xs = values(batch * k, 2);
                // A bf16 model's products read bf16 values, which AVX512-BF16 casts exactly.
                let xs16: Vec<f32> = xs.iter().map(|&x| u16::narrow(x).widen()).collect();
                for (matrix, exact, xs) in [
                    (Matrix::F32(&w), &w, &xs),
                    (Matrix::Bf16(&w16), &widened, &xs16),
                ] {
                    let want = reference(exact, k, xs);
                    for &isa in &isas {
                        let mut out = vec![f32::NAN; batch * rows];
                        matvec(&pool, isa, matrix, k, xs, &mut out)?;
                        for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                            let err = (f64::from(*got) - want).abs();
                            assert!(
                                err <= 1e-5 * (1.0 + want.abs()),
                                "{isa:?}, {threads} threads, [{rows}, {k}] x {batch} \
                                 ({}): output {i} is {got}, want {want}",
                                kind(matrix)
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
