//! Gemma 2 self-attention, eager, exactly as transformers computes it: scores scaled after the
//! matmul by `query_pre_attn_scalar^-0.5`, soft-capped in the model dtype, masked additively,
//! softmax in f32 and cast back.

use intervene::{Hooks, Site, SiteKind};
use tch::{Kind, Tensor};

use crate::cache::KvCache;
use crate::error::Result;
use crate::rope::apply_rotary;

/// One layer's attention weights and shape facts.
#[derive(Debug)]
pub struct Attention {
    /// `[heads * head_dim, hidden]`.
    pub q_proj: Tensor,
    /// `[kv_heads * head_dim, hidden]`.
    pub k_proj: Tensor,
    /// `[kv_heads * head_dim, hidden]`.
    pub v_proj: Tensor,
    /// `[hidden, heads * head_dim]`.
    pub o_proj: Tensor,
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

/// Per-call inputs shared by every layer.
pub(crate) struct AttentionContext<'a> {
    /// RoPE cos, `[B, 1, T, head_dim]`, model dtype.
    pub cos: &'a Tensor,
    /// RoPE sin, `[B, 1, T, head_dim]`, model dtype.
    pub sin: &'a Tensor,
    /// Additive mask for this layer's type, `[B, 1, T, S]`, model dtype.
    pub mask: &'a Tensor,
}

impl Attention {
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
        let q = project(
            h,
            &self.q_proj,
            Site::new(layer, SiteKind::QueryOutput),
            hooks,
        )?;
        let k = project(
            h,
            &self.k_proj,
            Site::new(layer, SiteKind::KeyOutput),
            hooks,
        )?;
        let v = project(
            h,
            &self.v_proj,
            Site::new(layer, SiteKind::ValueOutput),
            hooks,
        )?;
        let q = split_heads(&q, b, t, self.heads, self.head_dim)?;
        let k = split_heads(&k, b, t, self.kv_heads, self.head_dim)?;
        let v = split_heads(&v, b, t, self.kv_heads, self.head_dim)?;
        let q = apply_rotary(&q, ctx.cos, ctx.sin)?;
        let k = apply_rotary(&k, ctx.cos, ctx.sin)?;
        let (k, v) = match cache {
            Some(cache) => cache.write(layer, &k, &v)?,
            None => (k, v),
        };
        let k = repeat_kv(&k, self.heads / self.kv_heads)?;
        let v = repeat_kv(&v, self.heads / self.kv_heads)?;

        let mut scores = q
            .f_matmul(&k.f_transpose(2, 3)?)?
            .f_mul_scalar(self.scale)?;
        if let Some(cap) = self.softcap {
            scores = scores.f_div_scalar(cap)?.f_tanh()?.f_mul_scalar(cap)?;
        }
        let probs = scores
            .f_add(ctx.mask)?
            .f_softmax(-1, Kind::Float)?
            .f_to_kind(q.kind())?;
        let mut z = probs
            .f_matmul(&v)?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_reshape([b, t, self.heads * self.head_dim])?;
        let site = Site::new(layer, SiteKind::AttentionValueOutput);
        if hooks.wants(site) {
            hooks.visit(site, &mut z)?;
        }
        Ok(z.f_linear::<&Tensor>(&self.o_proj, None)?)
    }
}

/// `h @ wᵀ`, visiting `site` with the projection's output.
fn project(h: &Tensor, w: &Tensor, site: Site, hooks: &mut dyn Hooks) -> Result<Tensor> {
    let mut out = h.f_linear::<&Tensor>(w, None)?;
    if hooks.wants(site) {
        hooks.visit(site, &mut out)?;
    }
    Ok(out)
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
