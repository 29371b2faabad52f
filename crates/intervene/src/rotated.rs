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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::builtin::Vanilla;

    /// `[2, 3, 4]` base and source slices with distinct values.
    fn slices() -> (Tensor, Tensor) {
        let base = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([2, 3, 4]);
        let source = base.neg() - 100.0;
        (base, source)
    }

    /// A 4x4 rotation by `angle` in the plane of dims 0 and 1 (exactly orthogonal up to cos/sin
    /// rounding), identity elsewhere.
    fn plane_rotation(angle: f64) -> Tensor {
        let (c, s) = (angle.cos() as f32, angle.sin() as f32);
        Tensor::from_slice(&[
            c, -s, 0., 0., //
            s, c, 0., 0., //
            0., 0., 1., 0., //
            0., 0., 0., 1.,
        ])
        .reshape([4, 4])
    }

    #[test]
    fn the_identity_rotation_is_a_vanilla_interchange() {
        let (base, source) = slices();
        let dims = Subspaces::Shared(vec![1, 3]);
        let rotated = RotatedSpace::new(Tensor::eye(4, (Kind::Float, Device::Cpu))).unwrap();
        let vanilla = Vanilla::new();
        for subspaces in [Some(&dims), None] {
            let got = rotated.apply(&base, Some(&source), subspaces).unwrap();
            let want = vanilla.apply(&base, Some(&source), subspaces).unwrap();
            assert!(got.equal(&want), "{subspaces:?}");
        }
    }

    /// Swapping rotated dim 0 moves the (dim 0, dim 1) plane's component along the rotated
    /// axis only; dims 2 and 3 keep the base's values; swapping every rotated dim gives the
    /// source back.
    #[test]
    fn a_rotated_swap_moves_only_the_chosen_direction() {
        let (base, source) = slices();
        let r = plane_rotation(0.3);
        let rotated = RotatedSpace::new(r.shallow_clone()).unwrap();
        let out = rotated
            .apply(&base, Some(&source), Some(&Subspaces::Shared(vec![0])))
            .unwrap();
        let untouched = |t: &Tensor| t.narrow(2, 2, 2);
        assert!(untouched(&out).equal(&untouched(&base)));
        let axis = r.narrow(1, 0, 1); // the rotated basis vector of dim 0
        let along = |t: &Tensor| t.matmul(&axis);
        assert!(along(&out).allclose(&along(&source), 1e-5, 1e-4, false));
        let across = |t: &Tensor| t.matmul(&r.narrow(1, 1, 1));
        assert!(across(&out).allclose(&across(&base), 1e-5, 1e-4, false));
        let all = rotated.apply(&base, Some(&source), None).unwrap();
        assert!(all.allclose(&source, 1e-5, 1e-4, false));
    }

    /// The low-rank form with the full rotation's first columns swaps the same directions as
    /// the full form, and per-row subspaces act per row.
    #[test]
    fn low_rank_agrees_with_full_and_acts_per_row() {
        let (base, source) = slices();
        let r = plane_rotation(0.7);
        let full = RotatedSpace::new(r.shallow_clone()).unwrap();
        let low = LowRankRotatedSpace::new(r.narrow(1, 0, 2)).unwrap();
        let dims = Subspaces::Shared(vec![1]);
        let a = full.apply(&base, Some(&source), Some(&dims)).unwrap();
        let b = low.apply(&base, Some(&source), Some(&dims)).unwrap();
        assert!(a.allclose(&b, 1e-5, 1e-4, false));

        let per_row = Subspaces::PerRow(vec![vec![0], vec![1]]);
        let out = low.apply(&base, Some(&source), Some(&per_row)).unwrap();
        for (row, dim) in [(0, 0), (1, 1)] {
            let one = LowRankRotatedSpace::new(r.narrow(1, 0, 2)).unwrap();
            let want = one
                .apply(&base, Some(&source), Some(&Subspaces::Shared(vec![dim])))
                .unwrap();
            assert!(out.get(row).equal(&want.get(row)), "row {row}");
        }
    }

    #[test]
    fn bad_shapes_and_indices_are_errors_that_say_why() {
        let (base, source) = slices();
        let message = |r: Result<RotatedSpace>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let not_square = message(RotatedSpace::new(Tensor::zeros(
            [4, 2],
            (Kind::Float, Device::Cpu),
        )));
        assert!(not_square.contains("square") && not_square.contains("LowRankRotatedSpace"));
        assert!(message(RotatedSpace::new(Tensor::zeros(
            [4],
            (Kind::Float, Device::Cpu)
        )))
        .contains("matrix"));
        let too_wide = LowRankRotatedSpace::new(Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)));
        assert!(too_wide
            .err()
            .unwrap()
            .to_string()
            .contains("1 to 2 columns"));

        let narrow = RotatedSpace::new(Tensor::eye(3, (Kind::Float, Device::Cpu))).unwrap();
        let err = narrow
            .apply(&base, Some(&source), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 wide") && err.contains("4 wide"), "{err}");
        let low =
            LowRankRotatedSpace::new(Tensor::eye(4, (Kind::Float, Device::Cpu)).narrow(1, 0, 2))
                .unwrap();
        let err = low
            .apply(&base, Some(&source), Some(&Subspaces::Shared(vec![2])))
            .unwrap_err();
        assert!(
            matches!(err, Error::SubspaceOutOfRange { index: 2, width: 2 }),
            "{err}"
        );
        let err = low.apply(&base, None, None).unwrap_err();
        assert!(matches!(err, Error::MissingSource { .. }), "{err}");
    }

    /// With the identity rotation a soft blend is `(1 − m) x + m z` exactly, dim by dim.
    #[test]
    fn a_soft_blend_takes_each_dim_by_its_mask() {
        let (base, source) = slices();
        let m = Tensor::from_slice(&[0.0f32, 1.0, 0.25, 0.5]);
        let soft =
            SoftRotatedSpace::new(Tensor::eye(4, (Kind::Float, Device::Cpu)), m.copy()).unwrap();
        let out = soft.apply(&base, Some(&source), None).unwrap();
        let want = &base * (1.0 - &m) + &source * &m;
        assert!(out.equal(&want));
        // A rotated blend with a mask of ones gives the source back, of zeros the base.
        let r = plane_rotation(1.1);
        for (fill, expected) in [(1.0, &source), (0.0, &base)] {
            let soft = SoftRotatedSpace::new(
                r.copy(),
                Tensor::full([4], fill, (Kind::Float, Device::Cpu)),
            )
            .unwrap();
            let out = soft.apply(&base, Some(&source), None).unwrap();
            assert!(out.allclose(expected, 1e-5, 1e-4, false), "mask {fill}");
        }
        let plain =
            SigmoidMask::new(&Tensor::from_slice(&[-50.0f32, 50.0, 0.0, 50.0]), 1.0).unwrap();
        let out = plain.apply(&base, Some(&source), None).unwrap();
        let half = (&base + &source) / 2.0;
        for (dim, expected) in [(0, &base), (1, &source), (2, &half), (3, &source)] {
            assert!(
                out.select(2, dim)
                    .allclose(&expected.select(2, dim), 1e-6, 1e-5, false),
                "dim {dim}"
            );
        }
    }

    /// The boundless mask is pyvene's `sigmoid(i/T) · sigmoid((b·width − i)/T)`: about 1 for the
    /// first `b·width` dims (0.5 at dim 0), about 0 after, 0.5 at the boundary itself.
    #[test]
    fn the_boundless_mask_covers_the_first_boundary_share_of_dims() {
        let r = Tensor::eye(8, (Kind::Float, Device::Cpu));
        let soft = SoftRotatedSpace::boundless(r, 0.5, 0.01).unwrap();
        let m = Vec::<f32>::try_from(soft.mask.on(Device::Cpu).unwrap()).unwrap();
        assert_eq!(m, [0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0]);
        // The boundary is clamped to [1e-3, 1].
        let wide =
            SoftRotatedSpace::boundless(Tensor::eye(8, (Kind::Float, Device::Cpu)), 7.0, 0.01)
                .unwrap();
        let m = Vec::<f32>::try_from(wide.mask.on(Device::Cpu).unwrap()).unwrap();
        assert_eq!(m, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn soft_blends_refuse_subspaces_and_wrong_shapes() {
        let (base, source) = slices();
        let eye = || Tensor::eye(4, (Kind::Float, Device::Cpu));
        let soft =
            SoftRotatedSpace::new(eye(), Tensor::ones([4], (Kind::Float, Device::Cpu))).unwrap();
        let err = soft
            .apply(&base, Some(&source), Some(&Subspaces::Shared(vec![0])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("soft_rotated_space") && err.contains("no subspaces"),
            "{err}"
        );
        let short = SoftRotatedSpace::new(eye(), Tensor::ones([3], (Kind::Float, Device::Cpu)));
        assert!(short
            .err()
            .unwrap()
            .to_string()
            .contains("vector of 4 entries"));
        let plain = SigmoidMask::new(&Tensor::zeros([3], (Kind::Float, Device::Cpu)), 1.0).unwrap();
        let err = plain
            .apply(&base, Some(&source), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 wide") && err.contains("4 wide"), "{err}");
        assert!(SigmoidMask::new(&eye(), 1.0).is_err());
    }
}
