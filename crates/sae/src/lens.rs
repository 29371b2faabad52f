//! Logit lens of a latent: its decoder direction read through the unembedding.
//!
//! `scores = W_U · W_dec[i]` with `W_U` the unembedding (Gemma ties it to the token embedding
//! `[vocab, d]`): no final norm and no soft-cap, as Neuronpedia's and SAELens' "top logits" do.
//! Computed in float32; a bf16 embedding is converted chunk by chunk so a 256k vocabulary never
//! needs a full f32 copy.
//!
//! The decoder rows live at the SAE's write site. Where that is not the residual stream's width
//! (an attention SAE writes the concatenated heads that enter `o_proj`),
//! [`Sae::logit_lens_through`] first maps them with a projection into it (`o_proj`'s weight):
//! `scores = W_U · (W_O · W_dec[i])`, the post-attention norm left out like the final norm.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::sae::Sae;

/// Top promoted and suppressed tokens of one latent.
#[derive(Clone, Debug, PartialEq)]
pub struct LogitLens {
    /// The latent.
    pub latent: i64,
    /// `(token id, score)`, highest score first.
    pub promoted: Vec<(i64, f32)>,
    /// `(token id, score)`, lowest (most negative) score first.
    pub suppressed: Vec<(i64, f32)>,
}

const CHUNK_ROWS: i64 = 32768;

impl Sae {
    /// The logit lens of each of `latents` against `unembedding` (`[vocab, d_out]`, any float
    /// dtype and device), keeping the `k` top promoted and suppressed tokens.
    pub fn logit_lens(
        &self,
        latents: &[i64],
        unembedding: &Tensor,
        k: usize,
    ) -> Result<Vec<LogitLens>> {
        self.logit_lens_through(latents, None, unembedding, k)
    }

    /// [`logit_lens`](Self::logit_lens) with the decoder rows first mapped into the residual
    /// stream by `projection` (`[d, d_out]`, a linear layer's weight such as `o_proj`'s) when
    /// given; `unembedding` is `[vocab, d]`.
    pub fn logit_lens_through(
        &self,
        latents: &[i64],
        projection: Option<&Tensor>,
        unembedding: &Tensor,
        k: usize,
    ) -> Result<Vec<LogitLens>> {
        let size = unembedding.size();
        let [vocab, d] = size.as_slice() else {
            return Err(Error::input(
                "logit lens",
                format!("unembedding {size:?} is not [vocab, d]"),
            ));
        };
        match projection {
            None => self.check_d_out(*d)?,
            Some(p) if p.size() != [*d, self.d_out()] => {
                return Err(Error::input(
                    "logit lens",
                    format!(
                        "projection {:?} is not [{d}, {}] (the unembedding's width, the SAE's \
                         d_out)",
                        p.size(),
                        self.d_out()
                    ),
                ))
            }
            Some(_) => {}
        }
        if latents.is_empty() {
            return Ok(Vec::new());
        }
        for &l in latents {
            if !(0..self.d_sae()).contains(&l) {
                return Err(Error::LatentOutOfRange {
                    latent: l,
                    d_sae: self.d_sae(),
                });
            }
        }
        let device = unembedding.device();
        let idx = Tensor::f_from_slice(latents)?.f_to_device(self.device())?;
        // [n, d_out] decoder rows, then [d, n] directions in the residual stream, on the
        // embedding's device.
        let rows = self
            .w_dec()
            .f_index_select(0, &idx)?
            .f_to_device(device)?
            .f_to_kind(Kind::Float)?;
        let rows = match projection {
            // As the model applies it: rows · Pᵀ.
            Some(p) => {
                rows.f_linear::<&Tensor>(&p.f_to_device(device)?.f_to_kind(Kind::Float)?, None)?
            }
            None => rows,
        };
        let dirs = rows.f_transpose(0, 1)?.f_contiguous()?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < *vocab {
            let len = CHUNK_ROWS.min(vocab - start);
            let rows = unembedding
                .f_narrow(0, start, len)?
                .f_to_kind(Kind::Float)?;
            parts.push(rows.f_matmul(&dirs)?);
            start += len;
        }
        // [n, vocab]
        let scores = Tensor::f_cat(&parts, 0)?
            .f_transpose(0, 1)?
            .f_contiguous()?;
        let k = k.min(*vocab as usize) as i64;
        let (top_v, top_i) = scores.f_topk(k, -1, true, true)?;
        let (bot_v, bot_i) = scores.f_topk(k, -1, false, true)?;
        let to_host_f = |t: Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.f_to_device(Device::Cpu)?.f_flatten(0, -1)?,
            )?)
        };
        let to_host_i = |t: Tensor| -> Result<Vec<i64>> {
            Ok(Vec::<i64>::try_from(
                t.f_to_device(Device::Cpu)?.f_flatten(0, -1)?,
            )?)
        };
        let (top_v, top_i) = (to_host_f(top_v)?, to_host_i(top_i)?);
        let (bot_v, bot_i) = (to_host_f(bot_v)?, to_host_i(bot_i)?);
        let k = k as usize;
        Ok(latents
            .iter()
            .enumerate()
            .map(|(n, &latent)| {
                let r = n * k..(n + 1) * k;
                LogitLens {
                    latent,
                    promoted: top_i[r.clone()]
                        .iter()
                        .copied()
                        .zip(top_v[r.clone()].iter().copied())
                        .collect(),
                    suppressed: bot_i[r.clone()]
                        .iter()
                        .copied()
                        .zip(bot_v[r].iter().copied())
                        .collect(),
                }
            })
            .collect())
    }
}
