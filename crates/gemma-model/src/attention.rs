//! Gemma 2 self-attention, eager, exactly as transformers computes it: scores scaled after the
//! matmul by `query_pre_attn_scalar^-0.5`, soft-capped in the model dtype, masked additively,
//! softmax in f32 and cast back.

use intervene::{Hooks, Site, SiteKind};
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::norm::RmsNorm;
use crate::rope::{apply_rotary, RotaryAngles};
use scope_engine::KvCache;

/// One layer's attention weights and shape facts.
#[derive(Debug)]
pub struct Attention {
    /// `q_proj`, `k_proj` and `v_proj` stacked, `[(heads + 2 * kv_heads) * head_dim, hidden]`:
    /// one matmul instead of three, and each output column is computed exactly as its own
    /// projection computes it (the reduction runs over `hidden` alone).
    qkv_proj: Tensor,
    /// `[hidden, heads * head_dim]`.
    pub o_proj: Tensor,
    /// Heads, widths, scale and soft-cap.
    pub shape: AttentionShape,
    /// Gemma 3's RMSNorms of each query and key head (`q_norm`, `k_norm`), before the
    /// rotation.
    query_key_norms: Option<QueryKeyNorms>,
}

/// Gemma 3's per-head RMSNorms of queries and keys, over `head_dim`.
#[derive(Debug)]
pub struct QueryKeyNorms {
    /// `q_norm`.
    pub query: RmsNorm,
    /// `k_norm`.
    pub key: RmsNorm,
}

/// The shape facts of one layer's attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: i64,
    /// Key/value heads.
    pub kv_heads: i64,
    /// Width of a head.
    pub head_dim: i64,
    /// `query_pre_attn_scalar^-0.5`.
    pub scale: f64,
    /// Attention soft-cap, if any.
    pub softcap: Option<f64>,
}

/// The projections of one layer, `[out, hidden]` each (the checkpoint's layout).
#[derive(Debug)]
pub struct AttentionWeights {
    /// `[heads * head_dim, hidden]`.
    pub q_proj: Tensor,
    /// `[kv_heads * head_dim, hidden]`.
    pub k_proj: Tensor,
    /// `[kv_heads * head_dim, hidden]`.
    pub v_proj: Tensor,
    /// `[hidden, heads * head_dim]`.
    pub o_proj: Tensor,
}

/// Per-call inputs shared by every layer.
pub(crate) struct AttentionContext<'a> {
    /// RoPE angles, `[B, 1, T, head_dim]`, model dtype.
    pub angles: &'a RotaryAngles,
    /// Additive mask for this layer's type, `[B, 1, T, S]`, model dtype.
    pub mask: &'a Tensor,
    /// For a fixed-shape decode step: the cache index to write (a device tensor, `[1]`), and
    /// attention over the whole cache buffer (`S = max_len`).
    pub cursor: Option<&'a Tensor>,
}

impl Attention {
    /// One layer's attention from its checkpoint weights (q/k/v are stacked here, once).
    pub fn new(weights: AttentionWeights, shape: AttentionShape) -> Result<Self> {
        let AttentionWeights {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
        } = weights;
        Ok(Attention {
            qkv_proj: Tensor::f_cat(&[&q_proj, &k_proj, &v_proj], 0)?,
            o_proj,
            shape,
            query_key_norms: None,
        })
    }

    /// The attention with Gemma 3's query and key norms.
    pub fn with_query_key_norms(self, norms: QueryKeyNorms) -> Self {
        Attention {
            query_key_norms: Some(norms),
            ..self
        }
    }

    /// Gemma 3's query and key norms, if the layer has them.
    pub fn query_key_norms(&self) -> Option<&QueryKeyNorms> {
        self.query_key_norms.as_ref()
    }

    /// `q_proj`'s weight, `[heads * head_dim, hidden]` (a view of the stacked projections).
    pub fn q_proj(&self) -> Result<Tensor> {
        Ok(self.qkv_proj.f_narrow(0, 0, self.q_width())?)
    }

    /// `k_proj`'s weight, `[kv_heads * head_dim, hidden]`.
    pub fn k_proj(&self) -> Result<Tensor> {
        Ok(self.qkv_proj.f_narrow(0, self.q_width(), self.kv_width())?)
    }

    /// `v_proj`'s weight, `[kv_heads * head_dim, hidden]`.
    pub fn v_proj(&self) -> Result<Tensor> {
        Ok(self
            .qkv_proj
            .f_narrow(0, self.q_width() + self.kv_width(), self.kv_width())?)
    }

    /// `q_proj`, `k_proj` and `v_proj` stacked, `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    pub(crate) fn stacked_qkv(&self) -> &Tensor {
        &self.qkv_proj
    }

    fn q_width(&self) -> i64 {
        self.shape.heads * self.shape.head_dim
    }

    fn kv_width(&self) -> i64 {
        self.shape.kv_heads * self.shape.head_dim
    }

    /// Attention over normed hidden states `h` (`[B, T, hidden]`); returns `o_proj`'s output.
    pub(crate) fn forward(
        &self,
        h: &Tensor,
        ctx: &AttentionContext<'_>,
        cache: Option<&mut KvCache>,
        layer: usize,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let (b, t) = (h.size()[0], h.size()[1]);
        let (qw, kvw) = (self.q_width(), self.kv_width());
        let AttentionShape {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.shape;
        let qkv = h.f_linear::<&Tensor>(&self.qkv_proj, None)?;
        let (q_site, k_site) = (
            Site::new(layer, SiteKind::QueryOutput),
            Site::new(layer, SiteKind::KeyOutput),
        );
        let v_site = Site::new(layer, SiteKind::ValueOutput);
        // Queries and keys rotate together for one position (a decode step), where the step is
        // many small kernels and each launch counts (a tiny model decodes 5% faster); prompts
        // keep one rotation each, as there is nothing measurable to gain. Normed heads (Gemma
        // 3) are normed one projection at a time.
        let (q, k, v) = if t > 1
            || hooks.wants(q_site)
            || hooks.wants(k_site)
            || self.query_key_norms.is_some()
        {
            let q = projection(&qkv, 0, qw, q_site, hooks)?;
            let k = projection(&qkv, qw, kvw, k_site, hooks)?;
            let v = projection(&qkv, qw + kvw, kvw, v_site, hooks)?;
            let norms = self.query_key_norms.as_ref();
            let (q_norm, k_norm) = (norms.map(|n| &n.query), norms.map(|n| &n.key));
            let q_site = Site::new(layer, SiteKind::QueryNormOutput);
            let k_site = Site::new(layer, SiteKind::KeyNormOutput);
            let q = hooked_heads(&q, heads, head_dim, q_norm, q_site, hooks)?;
            let k = hooked_heads(&k, kv_heads, head_dim, k_norm, k_site, hooks)?;
            (
                apply_rotary(&q, ctx.angles)?,
                apply_rotary(&k, ctx.angles)?,
                v,
            )
        } else {
            // Queries and keys are adjacent columns of `qkv` and turn by the same angles: one
            // rotation of both (the same products, half the kernels).
            let qk = split_heads(
                &qkv.f_narrow(-1, 0, qw + kvw)?,
                b,
                t,
                heads + kv_heads,
                head_dim,
            )?;
            let rotated = apply_rotary(&qk, ctx.angles)?;
            let v = projection(&qkv, qw + kvw, kvw, v_site, hooks)?;
            (
                rotated.f_narrow(1, 0, heads)?,
                rotated.f_narrow(1, heads, kv_heads)?,
                v,
            )
        };
        let v = split_heads(&v, b, t, kv_heads, head_dim)?;
        let mut z = self.attend(&q, k, v, ctx, cache, layer)?;
        let site = Site::new(layer, SiteKind::AttentionValueOutput);
        if hooks.wants(site) {
            hooks.visit(site, &mut z)?;
        }
        Ok(z.f_linear::<&Tensor>(&self.o_proj, None)?)
    }

    /// The attention output of the last position only (`[B, 1, hidden]`), with keys and values
    /// of every position (and those written to `cache`). Visits no hook: for the final layer
    /// of a call that wants only the last position's logits.
    pub(crate) fn forward_last_query(
        &self,
        h: &Tensor,
        ctx: &AttentionContext<'_>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let t = h.size()[1];
        let (qw, kvw) = (self.q_width(), self.kv_width());
        let kv = h.f_linear::<&Tensor>(&self.qkv_proj.f_narrow(0, qw, 2 * kvw)?, None)?;
        let last = h.f_narrow(1, t - 1, 1)?;
        let q = last.f_linear::<&Tensor>(&self.q_proj()?, None)?;
        let last_angles = ctx.angles.position(t - 1)?;
        let norms = self.query_key_norms.as_ref();
        let q = heads(
            &q,
            self.shape.heads,
            self.shape.head_dim,
            norms.map(|n| &n.query),
        )?;
        let q = apply_rotary(&q, &last_angles)?;
        let k = kv.f_narrow(-1, 0, kvw)?;
        let v = kv.f_narrow(-1, kvw, kvw)?;
        let mask = ctx.mask.f_narrow(2, t - 1, 1)?;
        let last_query = AttentionContext {
            mask: &mask,
            ..*ctx
        };
        let (k, v) = self.key_value_heads(&k, &v, ctx.angles)?;
        let z = self.attend(&q, k, v, &last_query, cache, layer)?;
        Ok(z.f_linear::<&Tensor>(&self.o_proj, None)?)
    }

    /// Projected keys and values `[B, T, kv_width]` split into heads `[B, kv_heads, T, hd]`,
    /// the keys rotated.
    fn key_value_heads(
        &self,
        k: &Tensor,
        v: &Tensor,
        angles: &RotaryAngles,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t) = (k.size()[0], k.size()[1]);
        let norm = self.query_key_norms.as_ref().map(|n| &n.key);
        let k = heads(k, self.shape.kv_heads, self.shape.head_dim, norm)?;
        Ok((
            apply_rotary(&k, angles)?,
            split_heads(v, b, t, self.shape.kv_heads, self.shape.head_dim)?,
        ))
    }

    /// Eager attention of rotated queries `q` (`[B, heads, Tq, hd]`) over the new keys and
    /// values `k`, `v` (`[B, kv_heads, T, hd]`, keys rotated) after the cache's, masked by
    /// `ctx.mask` (`[B, 1, Tq, S]`); returns the heads merged, `[B, Tq, heads * hd]`. With a
    /// `ctx.cursor` the new keys and values go to that cache index and the whole buffer is
    /// attended.
    fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        ctx: &AttentionContext<'_>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, tq) = (q.size()[0], q.size()[2]);
        let (k, v) = match (cache, ctx.cursor) {
            (Some(cache), Some(cursor)) => cache.write_at(layer, &k, &v, cursor)?,
            (Some(cache), None) => cache.write(layer, &k, &v)?,
            (None, _) => (k, v),
        };
        let k = repeat_kv(&k, self.shape.heads / self.shape.kv_heads)?;
        let v = repeat_kv(&v, self.shape.heads / self.shape.kv_heads)?;

        // Out of place, as transformers writes it: in bf16 the in-place scalar kernels round
        // differently (measured: logits off by 2.3 against HF's bf16).
        let mut scores = q
            .f_matmul(&k.f_transpose(2, 3)?)?
            .f_mul_scalar(self.shape.scale)?;
        if let Some(cap) = self.shape.softcap {
            scores = scores.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?;
        }
        let probs = scores
            .f_add(ctx.mask)?
            .f_softmax(-1, Kind::Float)?
            .f_to_kind(q.kind())?;
        Ok(probs
            .f_matmul(&v)?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_reshape([b, tq, self.shape.heads * self.shape.head_dim])?)
    }
}

/// Columns `start..start + width` of the stacked projection output (a view), visiting `site`.
fn projection(
    qkv: &Tensor,
    start: i64,
    width: i64,
    site: Site,
    hooks: &mut dyn Hooks,
) -> Result<Tensor> {
    let mut out = qkv.f_narrow(-1, start, width)?;
    if hooks.wants(site) {
        hooks.visit(site, &mut out)?;
    }
    Ok(out)
}

/// A projection `[B, T, n * hd]` as heads `[B, n, T, hd]`, each head normed by `norm` when
/// the layer has one (Gemma 3's `q_norm`, `k_norm`).
fn heads(x: &Tensor, n: i64, hd: i64, norm: Option<&RmsNorm>) -> Result<Tensor> {
    let (b, t) = (x.size()[0], x.size()[1]);
    match norm {
        None => split_heads(x, b, t, n, hd),
        // Over the last axis, so the same values as HF's norm of the transposed heads.
        Some(norm) => Ok(norm
            .forward(&x.f_reshape([b, t, n, hd])?)?
            .f_transpose(1, 2)?),
    }
}

/// [`heads`], visiting the norm's `site` with the normed heads concatenated
/// (`[B, T, n * hd]`) when there is a norm and a hook wants it.
fn hooked_heads(
    x: &Tensor,
    n: i64,
    hd: i64,
    norm: Option<&RmsNorm>,
    site: Site,
    hooks: &mut dyn Hooks,
) -> Result<Tensor> {
    let normed = heads(x, n, hd, norm)?;
    if norm.is_none() || !hooks.wants(site) {
        return Ok(normed);
    }
    let (b, t) = (x.size()[0], x.size()[1]);
    let mut flat = normed.f_transpose(1, 2)?.f_reshape([b, t, n * hd])?;
    hooks.visit(site, &mut flat)?;
    split_heads(&flat, b, t, n, hd)
}

/// `[B, T, n * hd]` → `[B, n, T, hd]`.
fn split_heads(x: &Tensor, b: i64, t: i64, n: i64, hd: i64) -> Result<Tensor> {
    Ok(x.f_reshape([b, t, n, hd])?.f_transpose(1, 2)?)
}

/// Repeats each kv head `groups` times consecutively, so query head `j` reads kv head
/// `j / groups` (transformers' `repeat_kv`: unsqueeze, expand, reshape).
pub fn repeat_kv(x: &Tensor, groups: i64) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.shallow_clone());
    }
    let s = x.size();
    let (b, kv, len, hd) = (s[0], s[1], s[2], s[3]);
    Ok(x.f_unsqueeze(2)?
        .f_expand([b, kv, groups, len, hd], false)?
        .f_reshape([b, kv * groups, len, hd])?)
}
