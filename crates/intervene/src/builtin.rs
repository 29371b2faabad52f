//! The built-in interventions: collect, add, subtract, zero, interchange (vanilla), constant
//! source, and user closures. Interchange in a rotated basis (DAS) is in [`crate::rotated`].
//!
//! Each one receives the selected slice `[batch, k, width]` (or `[batch, heads, k, head_dim]` for
//! `head_*` components) and, with [`Subspaces`], acts only on those indices of the last dimension,
//! per batch row. With no subspaces it acts on every dimension (pyvene's `interchange_dim`
//! prefix only applies to interventions pyvene builds itself; see the crate docs).

use std::fmt;
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::intervention::{Intervention, InterventionRole, Subspaces};

/// A boolean mask over the last dimension that is `true` at the subspace indices: `[width]` for
/// [`Subspaces::Shared`], `[batch, 1, .., width]` (`ndim` dims) for [`Subspaces::PerRow`].
///
/// Indices outside `0..width` are [`Error::SubspaceOutOfRange`]; a per-row list whose row count
/// is not `batch` is [`Error::Invalid`].
pub fn subspace_mask(
    subspaces: &Subspaces,
    batch: i64,
    width: i64,
    ndim: usize,
    device: Device,
) -> Result<Tensor> {
    let fill = |row: &[i64], out: &mut [u8]| -> Result<()> {
        for &j in row {
            if !(0..width).contains(&j) {
                return Err(Error::SubspaceOutOfRange { index: j, width });
            }
            out[j as usize] = 1;
        }
        Ok(())
    };
    let (host, shape) = match subspaces {
        Subspaces::Shared(row) => {
            let mut m = vec![0u8; width.max(0) as usize];
            fill(row, &mut m)?;
            (m, vec![width])
        }
        Subspaces::PerRow(rows) => {
            if rows.len() as i64 != batch {
                return Err(Error::Invalid(format!(
                    "{} rows of subspaces for a batch of {batch}",
                    rows.len()
                )));
            }
            let w = width.max(0) as usize;
            let mut m = vec![0u8; w * rows.len()];
            for (b, row) in rows.iter().enumerate() {
                fill(row, &mut m[b * w..(b + 1) * w])?;
            }
            let mut shape = vec![batch];
            shape.extend(std::iter::repeat_n(1, ndim.saturating_sub(2)));
            shape.push(width);
            (m, shape)
        }
    };
    Ok(Tensor::f_from_slice(&host)?
        .f_reshape(shape)?
        .f_to_kind(Kind::Bool)?
        .f_to_device(device)?)
}

/// A one-entry cache of a subspace mask, so a fixed setting costs one host→device copy per run
/// and not one per hook call.
#[derive(Default)]
pub struct MaskCache {
    cached: Mutex<Option<CachedMask>>,
}

/// (setting, batch, width, ndim, device, mask)
type CachedMask = (Subspaces, i64, i64, usize, Device, Tensor);

impl fmt::Debug for MaskCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskCache")
    }
}

impl MaskCache {
    /// The mask for this setting (see [`subspace_mask`]), built once and reused while the
    /// setting, shape and device stay the same.
    pub fn get(
        &self,
        subspaces: &Subspaces,
        batch: i64,
        width: i64,
        ndim: usize,
        device: Device,
    ) -> Result<Tensor> {
        let mut guard = self
            .cached
            .lock()
            .map_err(|_| Error::Invalid("subspace mask cache poisoned".into()))?;
        if let Some((s, b, w, n, d, t)) = guard.as_ref() {
            let batch_matters = matches!(subspaces, Subspaces::PerRow(_));
            if s == subspaces
                && (!batch_matters || *b == batch)
                && *w == width
                && *n == ndim
                && *d == device
            {
                return Ok(t.shallow_clone());
            }
        }
        let t = subspace_mask(subspaces, batch, width, ndim, device)?;
        *guard = Some((
            subspaces.clone(),
            batch,
            width,
            ndim,
            device,
            t.shallow_clone(),
        ));
        Ok(t)
    }
}

/// A tensor kept on the device it was last used on, moved once when the device changes.
pub(crate) struct OnDevice {
    cached: Mutex<Tensor>,
}

impl OnDevice {
    pub(crate) fn new(t: Tensor) -> Self {
        OnDevice {
            cached: Mutex::new(t),
        }
    }

    pub(crate) fn on(&self, device: Device) -> Result<Tensor> {
        let mut guard = self
            .cached
            .lock()
            .map_err(|_| Error::Invalid("device cache poisoned".into()))?;
        if guard.device() != device {
            *guard = guard.f_to_device(device)?;
        }
        Ok(guard.shallow_clone())
    }
}

/// (batch, width, ndim) of a slice.
pub(crate) fn dims(t: &Tensor) -> (i64, i64, usize) {
    let size = t.size();
    let batch = size.first().copied().unwrap_or(1);
    let width = size.last().copied().unwrap_or(1);
    (batch, width, size.len())
}

/// `where(mask, changed, base)` when subspaces are given, `changed` otherwise.
fn restrict(
    cache: &MaskCache,
    base: &Tensor,
    changed: Tensor,
    subspaces: Option<&Subspaces>,
) -> Result<Tensor> {
    match subspaces {
        None => Ok(changed),
        Some(s) => {
            let (b, w, n) = dims(base);
            let mask = cache.get(s, b, w, n, base.device())?;
            Ok(changed.f_where_self(&mask, base)?)
        }
    }
}

/// Returns the selected activations unchanged (a copy); the model is not touched. pyvene's
/// `CollectIntervention`. Subspaces, when given as [`Subspaces::Shared`], select those dims.
#[derive(Clone, Copy, Debug, Default)]
pub struct Collect;

impl Intervention for Collect {
    fn name(&self) -> String {
        "collect".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Collect
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        match subspaces {
            None => Ok(base.f_detach_copy()?),
            Some(Subspaces::Shared(sel)) => {
                let (_, w, _) = dims(base);
                if let Some(&j) = sel.iter().find(|&&j| !(0..w).contains(&j)) {
                    return Err(Error::SubspaceOutOfRange { index: j, width: w });
                }
                let idx = Tensor::f_from_slice(sel)?.f_to_device(base.device())?;
                Ok(base.f_index_select(base.dim() as i64 - 1, &idx)?)
            }
            Some(Subspaces::PerRow(_)) => Err(Error::Invalid(
                "collect with per-row subspaces would give ragged rows; collect all dims and \
                 index per row instead"
                    .into(),
            )),
        }
    }
}

type CollectFn = dyn Fn(&Tensor) -> Result<Tensor> + Send;

/// A collect that stores `f(slice)` instead of the slice (e.g. an SAE encoder: the tutorial's
/// `JumpReLUSAECollectIntervention`). The model is not touched. `f` may own tensors (an
/// SAE): it needs to be `Send`, not `Sync`.
pub struct CollectWith {
    name: String,
    f: Box<CollectFn>,
}

impl fmt::Debug for CollectWith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectWith")
            .field("name", &self.name)
            .finish()
    }
}

impl CollectWith {
    /// Collect `f(slice)` under `name`.
    pub fn new(
        name: impl Into<String>,
        f: impl Fn(&Tensor) -> Result<Tensor> + Send + 'static,
    ) -> Self {
        CollectWith {
            name: name.into(),
            f: Box::new(f),
        }
    }
}

impl Intervention for CollectWith {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Collect
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        _subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        (self.f)(base)
    }
}

/// A fixed vector added to or subtracted from the slice: the shared body of [`Add`] and
/// [`Subtract`]. The vector is moved to the activation's device once and kept there.
struct Offset {
    vector: OnDevice,
    mask: MaskCache,
    subtract: bool,
}

impl Offset {
    fn new(vector: Tensor, subtract: bool) -> Self {
        Offset {
            vector: OnDevice::new(vector),
            mask: MaskCache::default(),
            subtract,
        }
    }

    fn apply(&self, base: &Tensor, subspaces: Option<&Subspaces>) -> Result<Tensor> {
        let v = self.vector.on(base.device())?;
        let moved = if self.subtract {
            base.f_sub(&v)?
        } else {
            base.f_add(&v)?
        };
        match subspaces {
            None => Ok(moved),
            Some(_) => restrict(&self.mask, &base.f_to_kind(moved.kind())?, moved, subspaces),
        }
    }
}

/// Adds a fixed vector (steering). The sum is computed with torch's type promotion, so an f32
/// vector on a bf16 model adds in f32 and the graph rounds the result to bf16 on write-back,
/// as pyvene does. The vector is moved to the activation's device once and kept there; build it
/// on the model's device to skip even that.
pub struct Add(Offset);

impl fmt::Debug for Add {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Add")
    }
}

impl Add {
    /// Add `vector` (`[width]`, or anything that broadcasts against the slice).
    pub fn new(vector: Tensor) -> Self {
        Add(Offset::new(vector, false))
    }
}

impl Intervention for Add {
    fn name(&self) -> String {
        "add".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Sourceless
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        self.0.apply(base, subspaces)
    }

    /// A fixed vector or mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// Subtracts a fixed vector; see [`Add`].
pub struct Subtract(Offset);

impl fmt::Debug for Subtract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subtract")
    }
}

impl Subtract {
    /// Subtract `vector` (`[width]`, or anything that broadcasts against the slice).
    pub fn new(vector: Tensor) -> Self {
        Subtract(Offset::new(vector, true))
    }
}

impl Intervention for Subtract {
    fn name(&self) -> String {
        "subtract".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Sourceless
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        self.0.apply(base, subspaces)
    }

    /// A fixed vector or mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// Sets the selected activations (or their subspace dims) to zero. pyvene's `ZeroIntervention`.
#[derive(Debug, Default)]
pub struct Zero {
    mask: MaskCache,
}

impl Zero {
    /// A zeroing intervention.
    pub fn new() -> Self {
        Zero::default()
    }
}

impl Intervention for Zero {
    fn name(&self) -> String {
        "zero".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Sourceless
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        restrict(&self.mask, base, base.f_zeros_like()?, subspaces)
    }

    /// A fixed vector or mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// Interchange from a source run: `base[sel] := source[sel]`, with `sel` the subspace dims (all
/// dims without subspaces). pyvene's `VanillaIntervention`. Needs sources.
#[derive(Debug, Default)]
pub struct Vanilla {
    mask: MaskCache,
}

impl Vanilla {
    /// An interchange intervention.
    pub fn new() -> Self {
        Vanilla::default()
    }
}

/// `base` with `source` in its subspace dims (every dim without subspaces).
pub(crate) fn interchange(
    mask: &MaskCache,
    base: &Tensor,
    source: &Tensor,
    subspaces: Option<&Subspaces>,
) -> Result<Tensor> {
    match subspaces {
        None => Ok(source.f_expand(base.size(), false)?.f_detach_copy()?),
        Some(s) => {
            let (b, w, n) = dims(base);
            let m = mask.get(s, b, w, n, base.device())?;
            Ok(source.f_where_self(&m, base)?)
        }
    }
}

impl Intervention for Vanilla {
    fn name(&self) -> String {
        "vanilla".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::NeedsSource
    }

    fn apply(
        &self,
        base: &Tensor,
        source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        let source = self.required_source(source)?;
        interchange(&self.mask, base, source, subspaces)
    }

    /// A fixed vector or mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// An interchange with a fixed source vector instead of a source run (pyvene's
/// `VanillaIntervention(source_representation=v)`). Needs no sources.
pub struct ConstantSource {
    vector: OnDevice,
    mask: MaskCache,
}

impl fmt::Debug for ConstantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConstantSource")
    }
}

impl ConstantSource {
    /// Write `vector` (`[width]`, or anything that broadcasts against the slice).
    pub fn new(vector: Tensor) -> Self {
        ConstantSource {
            vector: OnDevice::new(vector),
            mask: MaskCache::default(),
        }
    }
}

impl Intervention for ConstantSource {
    fn name(&self) -> String {
        "constant_source".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Sourceless
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        let v = self.vector.on(base.device())?;
        interchange(&self.mask, base, &v, subspaces)
    }

    /// A fixed vector or mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

type ApplyFn = dyn Fn(&Tensor, Option<&Tensor>, Option<&Subspaces>) -> Result<Tensor> + Send;

/// A user closure `f(base, source, subspaces)` (pyvene accepts a plain function as an
/// intervention). Its role says whether it needs sources, writes back, or is collected. `f`
/// may own tensors: it needs to be `Send`, not `Sync`.
pub struct FnIntervention {
    name: String,
    role: InterventionRole,
    f: Box<ApplyFn>,
    replayable: bool,
}

impl fmt::Debug for FnIntervention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnIntervention")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish()
    }
}

impl FnIntervention {
    /// Wrap `f` under `name` with `role`.
    pub fn new(
        name: impl Into<String>,
        role: InterventionRole,
        f: impl Fn(&Tensor, Option<&Tensor>, Option<&Subspaces>) -> Result<Tensor> + Send + 'static,
    ) -> Self {
        FnIntervention {
            name: name.into(),
            role,
            f: Box::new(f),
            replayable: false,
        }
    }

    /// Declares that the closure meets [`Intervention::replayable`]'s terms (no state, no host
    /// reads of device values, no new host data after its first call), so generation may
    /// replay a recorded step with it. Off by default.
    pub fn with_replay(mut self, replayable: bool) -> Self {
        self.replayable = replayable;
        self
    }
}

impl Intervention for FnIntervention {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn role(&self) -> InterventionRole {
        self.role
    }

    fn apply(
        &self,
        base: &Tensor,
        source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor> {
        (self.f)(base, source, subspaces)
    }

    fn replayable(&self) -> bool {
        self.replayable && self.role != InterventionRole::Collect
    }
}
