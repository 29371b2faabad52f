//! Interchange in a rotated basis, the inference half of distributed alignment search (DAS):
//! pyvene's `RotatedSpaceIntervention` and `LowRankRotatedSpaceIntervention` (a hard swap of
//! chosen rotated dims), `BoundlessRotatedSpaceIntervention` and
//! `SigmoidMaskRotatedSpaceIntervention` (a soft blend by a learned mask), and
//! `SigmoidMaskIntervention` (the blend in the original basis). Train in pyvene, save
//! `intervention.rotate_layer.weight` and the mask parameters (with safetensors, say), load
//! them as tensors, and apply what was found.
//!
//! As in pyvene, both rotate in the rotation's dtype (`x.to(R.dtype) @ R`) and cast the result
//! back to the slice's dtype. Subspaces index rotated dimensions, and [`Subspaces::PerRow`]
//! gives each row its own (pyvene's low-rank form accepts differing rows only with a
//! `subspace_partition`).

use std::fmt;

use tch::{Kind, Tensor};

use crate::builtin::{dims, interchange, MaskCache, OnDevice};
use crate::error::{Error, Result};
use crate::intervention::{Intervention, InterventionRole, Subspaces};

/// A rotation matrix `R` (`[width, rank]`, square for the full forms), kept on the device it
/// was last used on, and the name of the intervention that holds it, for errors.
struct Rotation {
    matrix: OnDevice,
    width: i64,
    rank: i64,
    owner: &'static str,
}

impl Rotation {
    /// `matrix` as the rotation of `owner`, or why it cannot be one.
    fn new(owner: &'static str, matrix: Tensor) -> Result<Self> {
        let (width, rank) = match matrix.size()[..] {
            [width, rank] => (width, rank),
            ref other => {
                return Err(Error::Invalid(format!(
                    "{owner}'s rotation must be a matrix [width, rank], got shape {other:?}"
                )))
            }
        };
        Ok(Rotation {
            matrix: OnDevice::new(matrix),
            width,
            rank,
            owner,
        })
    }

    /// [`Rotation::new`] for the forms that rotate into a full basis.
    fn square(owner: &'static str, matrix: Tensor) -> Result<Self> {
        let rotation = Self::new(owner, matrix)?;
        if rotation.width != rotation.rank {
            return Err(Error::Invalid(format!(
                "{owner}'s rotation must be square, got [{}, {}] (a [width, rank] matrix is a \
                 LowRankRotatedSpace)",
                rotation.width, rotation.rank
            )));
        }
        Ok(rotation)
    }

    /// `R` on `base`'s device, with `base R` and `source R` computed in R's dtype (pyvene's
    /// `x.to(R.dtype) @ R`), after checking that the slices are `width` wide.
    fn rotate_pair(&self, base: &Tensor, source: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let r = self.matrix.on(base.device())?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            check_width(self.owner, "rotation", x, self.width)?;
            Ok(x.f_to_kind(r.kind())?.f_matmul(&r)?)
        };
        let (rotated_base, rotated_source) = (rotate(base)?, rotate(source)?);
        Ok((r, rotated_base, rotated_source))
    }
}

/// `Ok` when the slice `x` is `width` wide, the width `owner`'s `what` was made for.
fn check_width(owner: &str, what: &str, x: &Tensor, width: i64) -> Result<()> {
    let (_, got, _) = dims(x);
    if got == width {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{owner}: the {what} is for slices {width} wide, this one is {got} wide"
        )))
    }
}

/// `y Rᵀ` in the dtype `kind`: back from the rotated basis to the slice's.
fn rotate_back(y: &Tensor, r: &Tensor, kind: Kind) -> Result<Tensor> {
    Ok(y.f_matmul(&r.f_tr()?)?.f_to_kind(kind)?)
}

/// Interchange in a full rotated basis (pyvene's `RotatedSpaceIntervention`): with `R` the
/// `[width, width]` orthogonal rotation, `out = ((x R) with dims := (z R)[dims]) Rᵀ`, where
/// `x` is the base slice, `z` the source slice and `dims` the subspaces (all rotated dims
/// without subspaces, which gives back the source). Needs sources.
pub struct RotatedSpace {
    rotation: Rotation,
    mask: MaskCache,
}

impl fmt::Debug for RotatedSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RotatedSpace({0}x{0})", self.rotation.width)
    }
}

impl RotatedSpace {
    /// The interchange in the basis of `rotation` (`[width, width]`, e.g. pyvene's
    /// `rotate_layer.weight`). Orthogonality is the caller's to ensure, as in pyvene.
    pub fn new(rotation: Tensor) -> Result<Self> {
        Ok(RotatedSpace {
            rotation: Rotation::square("RotatedSpace", rotation)?,
            mask: MaskCache::default(),
        })
    }
}

impl Intervention for RotatedSpace {
    fn name(&self) -> String {
        "rotated_space".into()
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
        let (r, rotated_base, rotated_source) = self.rotation.rotate_pair(base, source)?;
        let swapped = interchange(&self.mask, &rotated_base, &rotated_source, subspaces)?;
        rotate_back(&swapped, &r, base.kind())
    }

    /// A fixed rotation and mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// Interchange in a low-rank rotated basis (pyvene's `LowRankRotatedSpaceIntervention`): with
/// `R` the `[width, rank]` matrix of orthonormal columns, `out = x + ((z R − x R)[sel])
/// R[:, sel]ᵀ`, where `sel` are the subspaces (all `rank` columns without subspaces). Only
/// the component of `x` in the selected directions changes, to that of `z`. Needs sources.
pub struct LowRankRotatedSpace {
    rotation: Rotation,
    mask: MaskCache,
}

impl fmt::Debug for LowRankRotatedSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Rotation { width, rank, .. } = self.rotation;
        write!(f, "LowRankRotatedSpace({width}x{rank})")
    }
}

impl LowRankRotatedSpace {
    /// The interchange in the span of `rotation`'s columns (`[width, rank]`, rank at most
    /// width, e.g. pyvene's `rotate_layer.weight`).
    pub fn new(rotation: Tensor) -> Result<Self> {
        let rotation = Rotation::new("LowRankRotatedSpace", rotation)?;
        let Rotation { width, rank, .. } = rotation;
        if rank > width || rank == 0 {
            return Err(Error::Invalid(format!(
                "LowRankRotatedSpace's rotation is [{width}, {rank}]: it needs 1 to {width} \
                 columns"
            )));
        }
        Ok(LowRankRotatedSpace {
            rotation,
            mask: MaskCache::default(),
        })
    }
}

impl Intervention for LowRankRotatedSpace {
    fn name(&self) -> String {
        "low_rank_rotated_space".into()
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
        let (r, rotated_base, rotated_source) = self.rotation.rotate_pair(base, source)?;
        let diff = rotated_source.f_sub(&rotated_base)?;
        // Unselected rotated dims contribute exact zeros, so masking the difference is
        // pyvene's column selection up to the order of the sums; the mask is cached, so a
        // recorded decode step can replay it.
        let diff = match subspaces {
            None => diff,
            Some(s) => {
                let (batch, _, ndim) = dims(&diff);
                let mask = self
                    .mask
                    .get(s, batch, self.rotation.rank, ndim, diff.device())?;
                diff.f_mul(&mask.f_to_kind(diff.kind())?)?
            }
        };
        Ok(base
            .f_add(&diff.f_matmul(&r.f_tr()?)?)?
            .f_to_kind(base.kind())?)
    }

    /// A fixed rotation and mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// `Err` naming `name` when subspaces are given to an intervention whose learned mask already
/// says how much of every dim to take (pyvene ignores them silently).
fn no_subspaces(name: &str, subspaces: Option<&Subspaces>) -> Result<()> {
    match subspaces {
        None => Ok(()),
        Some(_) => Err(Error::Invalid(format!(
            "`{name}` blends every dimension by its learned mask and takes no subspaces"
        ))),
    }
}

/// `Ok` when `mask` is a vector of `width` entries.
fn check_mask(what: &str, mask: &Tensor, width: i64) -> Result<()> {
    match mask.size()[..] {
        [n] if n == width => Ok(()),
        ref other => Err(Error::Invalid(format!(
            "{what} must be a vector of {width} entries, got shape {other:?}"
        ))),
    }
}

/// `sigmoid(logits / temperature)` in f32, as pyvene computes its sigmoid masks.
fn sigmoid_of(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    let t = Tensor::from(temperature as f32);
    Ok(logits.f_to_kind(Kind::Float)?.f_div(&t)?.f_sigmoid()?)
}

/// `(1 − m) ⊙ x + m ⊙ z`.
fn blend(x: &Tensor, z: &Tensor, m: &Tensor) -> Result<Tensor> {
    let keep = m.f_neg()?.f_add_scalar(1.0)?;
    Ok(x.f_mul(&keep)?.f_add(&z.f_mul(m)?)?)
}

/// A blend in a rotated basis with a learned mask per rotated dimension (pyvene's
/// `BoundlessRotatedSpaceIntervention` and `SigmoidMaskRotatedSpaceIntervention`):
/// `out = ((1 − m) ⊙ x R + m ⊙ z R) Rᵀ`, with `m` in `[0, 1]`. Takes no subspaces. Needs
/// sources.
pub struct SoftRotatedSpace {
    rotation: Rotation,
    mask: OnDevice,
}

impl fmt::Debug for SoftRotatedSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SoftRotatedSpace({0}x{0})", self.rotation.width)
    }
}

impl SoftRotatedSpace {
    /// The blend with the mask `m` given directly (`[width]`, values in `[0, 1]`).
    pub fn new(rotation: Tensor, mask: Tensor) -> Result<Self> {
        Self::blend_by(Rotation::square("SoftRotatedSpace", rotation)?, mask)
    }

    fn blend_by(rotation: Rotation, mask: Tensor) -> Result<Self> {
        check_mask("SoftRotatedSpace's mask", &mask, rotation.width)?;
        Ok(SoftRotatedSpace {
            rotation,
            mask: OnDevice::new(mask),
        })
    }

    /// pyvene's `BoundlessRotatedSpaceIntervention` with its trained `intervention_boundaries`
    /// `b` and `temperature` `T`: `m_i = sigmoid(i / T) · sigmoid((clamp(b, 1e-3, 1) · width
    /// − i) / T)`, about the first `b · width` rotated dims.
    pub fn boundless(rotation: Tensor, boundary: f64, temperature: f64) -> Result<Self> {
        let rotation = Rotation::square("SoftRotatedSpace", rotation)?;
        let width = rotation.width;
        let t = Tensor::from(temperature as f32);
        let population = Tensor::f_arange(width, (Kind::Float, tch::Device::Cpu))?;
        let upper = (boundary as f32).clamp(1e-3, 1.0) * width as f32;
        let rising = population.f_div(&t)?.f_sigmoid()?;
        let falling = population
            .f_neg()?
            .f_add_scalar(f64::from(upper))?
            .f_div(&t)?
            .f_sigmoid()?;
        Self::blend_by(rotation, rising.f_mul(&falling)?)
    }

    /// pyvene's `SigmoidMaskRotatedSpaceIntervention` with its trained `masks` (`[width]`) and
    /// `temperature`: `m = sigmoid(masks / T)`.
    pub fn sigmoid_mask(rotation: Tensor, masks: &Tensor, temperature: f64) -> Result<Self> {
        Self::new(rotation, sigmoid_of(masks, temperature)?)
    }
}

impl Intervention for SoftRotatedSpace {
    fn name(&self) -> String {
        "soft_rotated_space".into()
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
        no_subspaces(&self.name(), subspaces)?;
        let source = self.required_source(source)?;
        let (r, rotated_base, rotated_source) = self.rotation.rotate_pair(base, source)?;
        let m = self
            .mask
            .on(base.device())?
            .f_to_kind(rotated_base.kind())?;
        rotate_back(&blend(&rotated_base, &rotated_source, &m)?, &r, base.kind())
    }

    /// A fixed rotation and mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}

/// pyvene's `SigmoidMaskIntervention`, in the original basis: `out = (1 − m) ⊙ x + m ⊙ z`
/// with `m = sigmoid(mask / T)` from its trained `mask` (`[width]`) and `temperature`,
/// computed in f32 (on a bf16 model the graph rounds the result on write-back; pyvene raises
/// there). Takes no subspaces. Needs sources.
pub struct SigmoidMask {
    mask: OnDevice,
    width: i64,
}

impl fmt::Debug for SigmoidMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigmoidMask({})", self.width)
    }
}

impl SigmoidMask {
    /// The blend by `sigmoid(mask / temperature)`.
    pub fn new(mask: &Tensor, temperature: f64) -> Result<Self> {
        let width = match mask.size()[..] {
            [n] => n,
            ref other => {
                return Err(Error::Invalid(format!(
                    "SigmoidMask's mask must be a vector, got shape {other:?}"
                )))
            }
        };
        Ok(SigmoidMask {
            mask: OnDevice::new(sigmoid_of(mask, temperature)?),
            width,
        })
    }
}

impl Intervention for SigmoidMask {
    fn name(&self) -> String {
        "sigmoid_mask".into()
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
        no_subspaces(&self.name(), subspaces)?;
        let source = self.required_source(source)?;
        check_width("SigmoidMask", "mask", base, self.width)?;
        blend(base, source, &self.mask.on(base.device())?)
    }

    /// A fixed mask, moved to the device on the first call and kept there.
    fn replayable(&self) -> bool {
        true
    }
}
