//! A batch of token ids: padding, positions, stacking.

use intervene::StackedPart;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Token ids with optional padding mask and position ids.
#[derive(Debug)]
pub struct Batch {
    /// `[B, T]`, int64.
    pub input_ids: Tensor,
    /// `[B, T]` (or `[B, past + T]` for a cached call), 1 = real token, 0 = padding.
    pub attention_mask: Option<Tensor>,
    /// `[B, T]` int64 positions; default `arange(T) + past_len` (pads counted, as HF forward).
    pub position_ids: Option<Tensor>,
}

impl Batch {
    /// A batch of `input_ids` (`[B, T]`) without padding.
    pub fn new(input_ids: Tensor) -> Self {
        Batch {
            input_ids,
            attention_mask: None,
            position_ids: None,
        }
    }

    /// One unpadded row `[1, len]`.
    ///
    /// Infallible for callers' convenience: building a 1-D int64 tensor from a slice and adding a
    /// leading axis can only fail on allocation failure, where libtorch aborts anyway.
    pub fn from_ids(ids: &[i64]) -> Self {
        Batch::new(Tensor::from_slice(ids).unsqueeze(0))
    }

    /// Rows of different lengths, left-padded with `pad_id` (the convention for generation),
    /// with the matching attention mask. Positions are left to the caller (forward uses
    /// arange, generate uses `cumsum(mask) - 1`).
    pub fn left_padded(rows: &[Vec<i64>], pad_id: i64) -> Result<Self> {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || width == 0 {
            return Err(Error::Input(
                "a batch needs at least one non-empty row".into(),
            ));
        }
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in rows {
            let pad = width - row.len();
            ids.extend(std::iter::repeat_n(pad_id, pad).chain(row.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, row.len())));
        }
        let shape = [rows.len() as i64, width as i64];
        Ok(Batch {
            input_ids: Tensor::f_from_slice(&ids)?.f_reshape(shape)?,
            attention_mask: Some(Tensor::f_from_slice(&mask)?.f_reshape(shape)?),
            position_ids: None,
        })
    }

    /// The same batch with `position_ids`.
    pub fn with_position_ids(mut self, position_ids: Tensor) -> Self {
        self.position_ids = Some(position_ids);
        self
    }

    /// The same batch with `attention_mask`.
    pub fn with_attention_mask(mut self, attention_mask: Tensor) -> Self {
        self.attention_mask = Some(attention_mask);
        self
    }

    /// The batch stacked on itself (`[2B, T]`): every row twice, the copies after the rows.
    pub fn twice(&self) -> Result<Self> {
        let stack = |t: &Tensor| Tensor::f_cat(&[t, t], 0);
        Ok(Batch {
            input_ids: stack(&self.input_ids)?,
            attention_mask: self.attention_mask.as_ref().map(stack).transpose()?,
            // `[1, T]` positions broadcast over any number of rows.
            position_ids: match &self.position_ids {
                Some(p) if p.size().first() == Some(&1) => Some(p.shallow_clone()),
                Some(p) => Some(stack(p)?),
                None => None,
            },
        })
    }

    /// `batches` as one batch: their rows one after another, each padded at the end to the
    /// longest with `pad_id` (attended, position 0: only later padding sees it, and nothing
    /// reads its outputs). Since no position attends to later ones, each real position is
    /// computed as in its own batch's call. Also returns where each batch sits.
    pub fn stacked_end_padded(batches: &[&Batch], pad_id: i64) -> Result<(Self, Vec<StackedPart>)> {
        let shapes = batches
            .iter()
            .map(|b| b.shape())
            .collect::<Result<Vec<_>>>()?;
        let width = shapes
            .iter()
            .map(|&(_, t)| t)
            .max()
            .ok_or_else(|| Error::Input("stacking needs at least one batch".into()))?;
        let pad_end = |t: &Tensor, value: i64| -> Result<Tensor> {
            let len = t.size().last().copied().unwrap_or(0);
            Ok(t.f_pad([0, width - len], "constant", Some(value as f64))?)
        };
        // A mask or positions for every part as soon as one part has them.
        let any_mask = batches.iter().any(|b| b.attention_mask.is_some());
        let any_positions = batches.iter().any(|b| b.position_ids.is_some());
        let (mut ids, mut masks, mut positions, mut parts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first_row = 0;
        for (batch, &(rows, len)) in batches.iter().zip(&shapes) {
            let device = batch.input_ids.device();
            ids.push(pad_end(&batch.input_ids, pad_id)?);
            if any_mask {
                let mask = match &batch.attention_mask {
                    Some(mask) => mask.shallow_clone(),
                    None => Tensor::f_ones([rows, len], (Kind::Int64, device))?,
                };
                masks.push(pad_end(&mask, 1)?);
            }
            if any_positions {
                let own = match &batch.position_ids {
                    Some(p) => p.f_expand([rows, len], false)?,
                    None => Tensor::f_arange(len, (Kind::Int64, device))?
                        .f_expand([rows, len], false)?,
                };
                positions.push(pad_end(&own, 0)?);
            }
            parts.push(StackedPart {
                first_row,
                rows,
                len,
            });
            first_row += rows;
        }
        let cat = |parts: &[Tensor]| -> Result<Option<Tensor>> {
            Ok(match parts {
                [] => None,
                _ => Some(Tensor::f_cat(parts, 0)?),
            })
        };
        let input_ids =
            cat(&ids)?.ok_or_else(|| Error::Input("stacking needs at least one batch".into()))?;
        Ok((
            Batch {
                input_ids,
                attention_mask: cat(&masks)?,
                position_ids: cat(&positions)?,
            },
            parts,
        ))
    }

    /// `[B, T]`.
    pub fn shape(&self) -> Result<(i64, i64)> {
        match self.input_ids.size().as_slice() {
            [b, t] => Ok((*b, *t)),
            other => Err(Error::Input(format!(
                "input_ids must be [batch, seq], got {other:?}"
            ))),
        }
    }
}
