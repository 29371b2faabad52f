//! A preallocated key/value cache: one `[B, kv_heads, max_len, head_dim]` buffer per layer,
//! written in place at the current offset (no concatenation per step).
//!
//! Sliding layers keep every position too and let the mask hide what is out of the window
//! (transformers keeps only `window - 1` entries there; the attended set, and so the numbers,
//! are identical).

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::spec::ModelSpec;

/// The cached rotated keys and raw values of every layer, plus the 2-D key mask seen so far.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    max_len: i64,
    batch: i64,
}

impl KvCache {
    /// An empty cache of a model with `spec` for `batch` rows and up to `max_len` positions,
    /// in the model's dtype on its device.
    pub fn new(spec: &ModelSpec, batch: i64, max_len: i64) -> Result<Self> {
        let shape = [batch, spec.kv_heads, max_len, spec.head_dim];
        let (dtype, device): (Kind, Device) = (spec.dtype, spec.device);
        let mut keys = Vec::with_capacity(spec.num_layers);
        let mut values = Vec::with_capacity(spec.num_layers);
        for _ in 0..spec.num_layers {
            keys.push(Tensor::f_zeros(shape, (dtype, device))?);
            values.push(Tensor::f_zeros(shape, (dtype, device))?);
        }
        Ok(KvCache {
            keys,
            values,
            len: 0,
            max_len,
            batch,
        })
    }

    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in positions.
    pub fn max_len(&self) -> i64 {
        self.max_len
    }

    /// Rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Checks that `chunk` more positions of `batch` rows fit.
    pub fn check_fits(&self, batch: i64, chunk: i64) -> Result<()> {
        if batch != self.batch {
            return Err(Error::Input(format!(
                "batch of {batch} rows for a cache built for {}",
                self.batch
            )));
        }
        if self.len + chunk > self.max_len {
            return Err(Error::Input(format!(
                "{} cached + {chunk} new positions exceed the cache capacity {}",
                self.len, self.max_len
            )));
        }
        Ok(())
    }

    /// Writes `k`, `v` (`[B, kv, T, hd]`) of `layer` at the current offset and returns views of
    /// everything cached for that layer including them (`[B, kv, len + T, hd]`).
    pub fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let chunk = k.size()[2];
        let (Some(kc), Some(vc)) = (self.keys.get(layer), self.values.get(layer)) else {
            return Err(Error::Input(format!("cache has no layer {layer}")));
        };
        kc.f_narrow(2, self.len, chunk)?.f_copy_(k)?;
        vc.f_narrow(2, self.len, chunk)?.f_copy_(v)?;
        let total = self.len + chunk;
        Ok((kc.f_narrow(2, 0, total)?, vc.f_narrow(2, 0, total)?))
    }

    /// Writes the one-position `k`, `v` (`[B, kv, 1, hd]`) of `layer` at the physical index held
    /// by the device tensor `cursor` (`[1]`: every row at one index; `[B]`: each row at its
    /// own, as the engine's slots are) and returns the whole buffers (`[B, kv, max_len, hd]`):
    /// a step whose shapes and host-side arguments never change, so that it can be recorded
    /// once and replayed. Positions not yet written hold zeros or stale values, and the step's
    /// mask hides them.
    pub fn write_at(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        cursor: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (Some(kc), Some(vc)) = (self.keys.get_mut(layer), self.values.get_mut(layer)) else {
            return Err(Error::Input(format!("cache has no layer {layer}")));
        };
        if cursor.size() == [1] {
            let _ = kc.f_index_copy_(2, cursor, k)?;
            let _ = vc.f_index_copy_(2, cursor, v)?;
        } else {
            // Row b's position goes to index cursor[b] along the sequence axis.
            let index = cursor.f_view([-1, 1, 1, 1])?.f_expand(k.size(), false)?;
            let _ = kc.f_scatter_(2, &index, k)?;
            let _ = vc.f_scatter_(2, &index, v)?;
        }
        Ok((kc.shallow_clone(), vc.shallow_clone()))
    }

    /// Copies the first `len` positions of row 0 of `from` (a one-row cache of the same model)
    /// into row `slot`: a prompt run alone, moved into the engine's cache.
    pub fn copy_slot_from(&mut self, slot: i64, from: &KvCache, len: i64) -> Result<()> {
        for (mine, theirs) in self
            .keys
            .iter_mut()
            .zip(&from.keys)
            .chain(self.values.iter_mut().zip(&from.values))
        {
            mine.f_narrow(0, slot, 1)?
                .f_narrow(2, 0, len)?
                .f_copy_(&theirs.f_narrow(0, 0, 1)?.f_narrow(2, 0, len)?)?;
        }
        Ok(())
    }

    /// The key and value buffers of `layer` (`[B, kv_heads, max_len, head_dim]` each), for
    /// the fused CPU kernels, which write them in place.
    pub(crate) fn layer_buffers_mut(&mut self, layer: usize) -> Result<(&mut Tensor, &mut Tensor)> {
        match (self.keys.get_mut(layer), self.values.get_mut(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::Input(format!("cache has no layer {layer}"))),
        }
    }

    /// Marks `chunk` more positions as cached (after every layer has written them).
    pub fn advance(&mut self, chunk: i64) {
        self.len += chunk;
    }
}
