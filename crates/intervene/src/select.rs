//! Gather and scatter of selected positions (and heads) of a hooked activation.
//!
//! Positions are per batch row: `X[b, k, :] = H[b, P[b][k], :]`, and the scatter writes each
//! row at its own positions (pyvene's sticky `use_fast` writes every row at row 0's positions;
//! not reproduced). Index tensors are built once per (length, batch, device) and cached, so a
//! decode loop that selects the same positions builds them once.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::location::RowPositions;
use crate::site::Site;

/// A cached `[batch, k]` int64 index tensor for a [`RowPositions`], keyed by the length it was
/// resolved against, the batch and the device.
#[derive(Default)]
pub(crate) struct IndexCache {
    key: Option<(i64, i64, Device)>,
    tensor: Option<Tensor>,
}

impl IndexCache {
    /// The index tensor for `positions` against a dim of `len`, batch `batch`. `heads` says
    /// whether these are head indices (for the error).
    pub(crate) fn get(
        &mut self,
        positions: &RowPositions,
        batch: i64,
        len: i64,
        device: Device,
        site: Site,
        heads: bool,
    ) -> Result<Tensor> {
        if let (Some(key), Some(t)) = (self.key, self.tensor.as_ref()) {
            if key == (len, batch, device) {
                return Ok(t.shallow_clone());
            }
        }
        let what = if heads { "heads" } else { "positions" };
        positions.check(Some(batch), &format!("{what} at {site}"))?;
        let flat = positions.resolve(batch, len).map_err(|position| {
            if heads {
                Error::HeadOutOfRange {
                    head: position,
                    heads: len,
                    site,
                }
            } else {
                Error::PositionOutOfRange {
                    position,
                    len,
                    site,
                }
            }
        })?;
        let k = positions.len() as i64;
        let t = Tensor::f_from_slice(&flat)?
            .f_reshape([batch, k])?
            .f_to_device(device)?;
        self.key = Some((len, batch, device));
        self.tensor = Some(t.shallow_clone());
        Ok(t)
    }
}

/// How a slice is taken from an activation `[B, S, W]`.
pub(crate) struct Selection<'a> {
    /// `[B, K]` positions, or the whole sequence.
    pub positions: Option<&'a Tensor>,
    /// For head components: the head count and optionally `[B, nh]` selected heads.
    pub heads: Option<(i64, Option<&'a Tensor>)>,
}

fn expand_index(idx: &Tensor, shape: &[i64], dims_after: usize) -> Result<Tensor> {
    let mut v = idx.shallow_clone();
    for _ in 0..dims_after {
        v = v.f_unsqueeze(-1)?;
    }
    Ok(v.f_expand(shape, false)?)
}

/// `[batch, len, width]` of a hooked activation, or a shape error.
fn activation_dims(act: &Tensor) -> Result<(i64, i64, i64)> {
    match act.size().as_slice() {
        [b, s, w] => Ok((*b, *s, *w)),
        other => Err(Error::Shape {
            context: "hooked activation (expected [batch, len, width])".into(),
            expected: vec![-1, -1, -1],
            got: other.to_vec(),
        }),
    }
}

/// The selected slice: `[B, K, W]`, or `[B, nh, K, hd]` for head components. A new tensor,
/// except for the whole-tensor form without heads, which is `act` itself (shallow): callers
/// that keep it copy it.
pub(crate) fn gather(act: &Tensor, sel: &Selection<'_>) -> Result<Tensor> {
    let (b, s, w) = activation_dims(act)?;
    match sel.heads {
        None => match sel.positions {
            None => Ok(act.shallow_clone()),
            Some(p) => {
                let k = p.size()[1];
                let idx = expand_index(p, &[b, k, w], 1)?;
                Ok(act.f_gather(1, &idx, false)?)
            }
        },
        Some((h, heads)) => {
            let hd = w / h;
            let a4 = act.f_reshape([b, s, h, hd])?;
            let p = match sel.positions {
                None => a4,
                Some(p) => {
                    let k = p.size()[1];
                    let idx = expand_index(p, &[b, k, h, hd], 2)?;
                    a4.f_gather(1, &idx, false)?
                }
            };
            let q = match heads {
                None => p,
                Some(hs) => {
                    let k = p.size()[1];
                    let nh = hs.size()[1];
                    let idx = expand_index(&hs.f_unsqueeze(1)?, &[b, k, nh, hd], 1)?;
                    p.f_gather(2, &idx, false)?
                }
            };
            Ok(q.f_permute([0, 2, 1, 3])?.f_contiguous()?)
        }
    }
}

/// `act` with the selected slice replaced by `y` (already in `act`'s dtype and of the gathered
/// shape). Positions not selected are untouched.
pub(crate) fn scatter(act: &Tensor, sel: &Selection<'_>, y: &Tensor) -> Result<Tensor> {
    let (b, s, w) = activation_dims(act)?;
    match sel.heads {
        None => match sel.positions {
            None => Ok(y.shallow_clone()),
            Some(p) => {
                let k = p.size()[1];
                let idx = expand_index(p, &[b, k, w], 1)?;
                Ok(act.f_scatter(1, &idx, y)?)
            }
        },
        Some((h, heads)) => {
            let hd = w / h;
            let a4 = act.f_reshape([b, s, h, hd])?;
            // y: [B, nh, K, hd] -> [B, K, nh, hd]
            let yq = y.f_permute([0, 2, 1, 3])?;
            let k = yq.size()[1];
            let pidx = match sel.positions {
                None => None,
                Some(p) => Some(expand_index(p, &[b, k, h, hd], 2)?),
            };
            let merged = match heads {
                None => yq,
                Some(hs) => {
                    let nh = hs.size()[1];
                    let current = match &pidx {
                        None => a4.shallow_clone(),
                        Some(idx) => a4.f_gather(1, idx, false)?,
                    };
                    let hidx = expand_index(&hs.f_unsqueeze(1)?, &[b, k, nh, hd], 1)?;
                    current.f_scatter(2, &hidx, &yq.f_contiguous()?)?
                }
            };
            let out = match &pidx {
                None => merged,
                Some(idx) => a4.f_scatter(1, idx, &merged.f_contiguous()?)?,
            };
            Ok(out.f_reshape([b, s, w])?)
        }
    }
}

/// Cast `y` to `kind` when it differs (pyvene's in-place write casts the same way).
pub(crate) fn cast_to(y: Tensor, kind: Kind) -> Result<Tensor> {
    if y.kind() == kind {
        Ok(y)
    } else {
        Ok(y.f_to_kind(kind)?)
    }
}
