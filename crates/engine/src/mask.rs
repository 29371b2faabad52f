//! The one attention-mask rule, for every kind of call: a query at cache index `q` sees key
//! `k` iff `k <= q`, key `k` is a real token (not padding), and on sliding layers
//! `k > q - window`. Masks are additive, 0 where visible and `finfo(dtype).min` elsewhere
//! (transformers masks with it, not `-inf`).
//!
//! Prompts and plain forwards ([`Masks::of_chunk`]), eager decode steps
//! ([`DecodeMasks::step`]), fixed-shape steps whose query index lives on the device (a CUDA
//! graph replays them) and the fused kernels' calls over cache slots all build their masks
//! from this one rule ([`Masks::new`], [`additive_mask`]).

use tch::{Kind, Tensor};

use crate::error::Result;

/// The additive masks of one call, `[B or 1, 1, T, S]` each.
#[derive(Debug)]
pub struct Masks {
    /// For global layers.
    pub full: Tensor,
    /// For sliding-window layers (the same as `full` when nothing slides).
    pub sliding: Tensor,
}

impl Masks {
    /// The masks of queries at cache indices `queries` (`[B or 1, T]`, int64) over keys
    /// `0..keys`, with `key_real` (`[B, keys]`, nonzero = real token) when some are padding.
    pub fn new(
        queries: &Tensor,
        keys: i64,
        key_real: Option<&Tensor>,
        window: Option<i64>,
        dtype: Kind,
    ) -> Result<Self> {
        let rule = Rule::new(queries, keys, key_real)?;
        let full = additive(&rule.visible, dtype)?;
        let sliding = match window {
            Some(w) => additive(&rule.within(w)?, dtype)?,
            None => full.shallow_clone(),
        };
        Ok(Masks { full, sliding })
    }

    /// The masks of a chunk of `t` positions after `past` cached ones, every row at the
    /// same indices.
    pub fn of_chunk(
        past: i64,
        t: i64,
        key_real: Option<&Tensor>,
        window: Option<i64>,
        dtype: Kind,
        device: tch::Device,
    ) -> Result<Self> {
        let queries =
            Tensor::f_arange_start(past, past + t, (Kind::Int64, device))?.f_unsqueeze(0)?;
        Masks::new(&queries, past + t, key_real, window, dtype)
    }
}

/// The smallest finite value of `dtype` (transformers masks with it, not `-inf`).
pub fn finfo_min(dtype: Kind) -> f64 {
    match dtype {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// The additive mask `[B or 1, 1, T, keys]` in `dtype` of queries at cache indices `queries`
/// (`[B or 1, T]`, int64, on the device the mask is built on) over keys `0..keys`: 0 where
/// the query may see the key, `finfo(dtype).min` elsewhere (see the [module docs](self)).
/// Every operation runs on the device, so a query index held there (a CUDA graph's cursor)
/// works as well as one known on the host.
pub fn additive_mask(
    queries: &Tensor,
    keys: i64,
    key_real: Option<&Tensor>,
    window: Option<i64>,
    dtype: Kind,
) -> Result<Tensor> {
    let rule = Rule::new(queries, keys, key_real)?;
    match window {
        Some(w) => additive(&rule.within(w)?, dtype),
        None => additive(&rule.visible, dtype),
    }
}

/// The rule's parts for one set of queries: which keys they see without a window.
struct Rule {
    /// `[B, T, 1]` query indices.
    q: Tensor,
    /// `[keys]` key indices.
    k: Tensor,
    /// `[B or 1, T, keys]`: causal and real.
    visible: Tensor,
}

impl Rule {
    fn new(queries: &Tensor, keys: i64, key_real: Option<&Tensor>) -> Result<Self> {
        let device = queries.device();
        let q = queries.f_unsqueeze(-1)?;
        let k = Tensor::f_arange(keys, (Kind::Int64, device))?;
        let mut visible = k.f_le_tensor(&q)?;
        if let Some(real) = key_real {
            let real = real.f_to_device(device)?.f_ne(0)?.f_unsqueeze(1)?; // [B, 1, S]
            visible = visible.f_logical_and(&real)?;
        }
        Ok(Rule { q, k, visible })
    }

    /// The visible keys that are also within the last `window` indices of each query.
    fn within(&self, window: i64) -> Result<Tensor> {
        let recent = self.k.f_gt_tensor(&self.q.f_sub_scalar(window)?)?;
        Ok(self.visible.f_logical_and(&recent)?)
    }
}

/// 0 where `visible` (`[B, T, S]`), `finfo(dtype).min` elsewhere: `[B, 1, T, S]`.
fn additive(visible: &Tensor, dtype: Kind) -> Result<Tensor> {
    let visible = visible.f_unsqueeze(1)?;
    let zeros = Tensor::f_zeros([1], (dtype, visible.device()))?;
    Ok(zeros
        .f_expand(visible.size(), false)?
        .f_masked_fill(&visible.f_logical_not()?, finfo_min(dtype))?)
}

/// The masks of one generation's one-position decode steps: which keys are real is known
/// for every index up front (the prompt's mask, then the generated tokens).
#[derive(Debug)]
pub struct DecodeMasks {
    /// `[B, max_len]` bool: real tokens.
    pub(crate) key_real: Tensor,
    pub(crate) window: Option<i64>,
    pub(crate) dtype: Kind,
    /// The rule for a query at the last index, `[B, 1, 1, max_len]`: every key is causal
    /// there, so only padding is hidden. A step at `past` that no window cuts into sees its
    /// first `past + 1` keys the same way, which saves building them per step.
    last_query: Tensor,
}

impl DecodeMasks {
    /// The masks of rows with the 2-D key mask `prompt_mask` (`[B, T]`, nonzero = real token)
    /// and up to `max_len` positions in all.
    pub fn new(
        prompt_mask: &Tensor,
        max_len: i64,
        window: Option<i64>,
        dtype: Kind,
    ) -> Result<Self> {
        let size = prompt_mask.size();
        let (b, t) = (size[0], size[1]);
        let device = prompt_mask.device();
        // Every generated position is a real token (HF appends ones to the mask).
        let new = Tensor::f_ones([b, max_len - t], (Kind::Bool, device))?;
        let key_real = Tensor::f_cat(&[&prompt_mask.f_ne(0)?, &new], 1)?;
        let last = Tensor::f_full([1, 1], max_len - 1, (Kind::Int64, device))?;
        let last_query = additive_mask(&last, max_len, Some(&key_real), None, dtype)?;
        Ok(DecodeMasks {
            key_real,
            window,
            dtype,
            last_query,
        })
    }

    /// The masks of the query at cache index `past` over keys `0..=past`.
    pub fn step(&self, past: i64) -> Result<Masks> {
        if self.window.is_none_or(|w| past < w) {
            let full = self.last_query.f_narrow(3, 0, past + 1)?;
            return Ok(Masks {
                sliding: full.shallow_clone(),
                full,
            });
        }
        let device = self.key_real.device();
        let queries = Tensor::f_full([1, 1], past, (Kind::Int64, device))?;
        let real = self.key_real.f_narrow(1, 0, past + 1)?;
        Masks::new(&queries, past + 1, Some(&real), self.window, self.dtype)
    }
}
