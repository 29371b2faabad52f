//! Interchange in a rotated basis: pyvene's `RotatedSpaceIntervention` and
//! `LowRankRotatedSpaceIntervention` with a given rotation, the inference half of distributed
//! alignment search (DAS). Train the rotation in pyvene, save `intervention.rotate_layer.weight`
//! (with safetensors, say), load it as a tensor, and swap the subspace it found.
//!
//! As in pyvene, both rotate in the rotation's dtype (`x.to(R.dtype) @ R`) and cast the result
//! back to the slice's dtype. Subspaces index rotated dimensions, and [`Subspaces::PerRow`]
//! gives each row its own (pyvene's low-rank form accepts differing rows only with a
//! `subspace_partition`).

use std::fmt;

use tch::Tensor;

use crate::builtin::{dims, interchange, MaskCache, OnDevice};
use crate::error::{Error, Result};
use crate::intervention::{Intervention, InterventionRole, Subspaces};

/// A rotation's `[rows, columns]`, or why it is not a matrix.
fn matrix_shape(what: &str, rotation: &Tensor) -> Result<(i64, i64)> {
    match rotation.size()[..] {
        [rows, columns] => Ok((rows, columns)),
        ref other => Err(Error::Invalid(format!(
            "{what} must be a matrix [width, rank], got shape {other:?}"
        ))),
    }
}

/// `x @ r` in `r`'s dtype, after checking that `x` is as wide as `r` is tall.
fn rotate(x: &Tensor, r: &Tensor, width: i64, what: &str) -> Result<Tensor> {
    let (_, got, _) = dims(x);
    if got != width {
        return Err(Error::Invalid(format!(
            "{what}: the rotation is for slices {width} wide, this one is {got} wide"
        )));
    }
    Ok(x.f_to_kind(r.kind())?.f_matmul(r)?)
}

/// The source slice, which a rotated interchange cannot do without.
fn required<'a>(source: Option<&'a Tensor>, name: &str) -> Result<&'a Tensor> {
    source.ok_or_else(|| Error::MissingSource {
        intervention: name.to_string(),
    })
}

/// Interchange in a full rotated basis (pyvene's `RotatedSpaceIntervention`): with `R` the
/// `[width, width]` orthogonal rotation, `out = ((x R) with dims := (z R)[dims]) Rᵀ`, where
/// `x` is the base slice, `z` the source slice and `dims` the subspaces (all rotated dims
/// without subspaces, which gives back the source). Needs sources.
pub struct RotatedSpace {
    rotation: OnDevice,
    width: i64,
    mask: MaskCache,
}

impl fmt::Debug for RotatedSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RotatedSpace({0}x{0})", self.width)
    }
}

impl RotatedSpace {
    /// The interchange in the basis of `rotation` (`[width, width]`, e.g. pyvene's
    /// `rotate_layer.weight`). Orthogonality is the caller's to ensure, as in pyvene.
    pub fn new(rotation: Tensor) -> Result<Self> {
        let (rows, columns) = matrix_shape("RotatedSpace's rotation", &rotation)?;
        if rows != columns {
            return Err(Error::Invalid(format!(
                "RotatedSpace's rotation must be square, got [{rows}, {columns}] (a [width, \
                 rank] matrix is a LowRankRotatedSpace)"
            )));
        }
        Ok(RotatedSpace {
            rotation: OnDevice::new(rotation),
            width: rows,
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
        let source = required(source, &self.name())?;
        let r = self.rotation.on(base.device())?;
        let rotated_base = rotate(base, &r, self.width, "RotatedSpace")?;
        let rotated_source = rotate(source, &r, self.width, "RotatedSpace")?;
        let swapped = interchange(&self.mask, &rotated_base, &rotated_source, subspaces)?;
        Ok(swapped.f_matmul(&r.f_tr()?)?.f_to_kind(base.kind())?)
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
    rotation: OnDevice,
    width: i64,
    rank: i64,
    mask: MaskCache,
}

impl fmt::Debug for LowRankRotatedSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LowRankRotatedSpace({}x{})", self.width, self.rank)
    }
}

impl LowRankRotatedSpace {
    /// The interchange in the span of `rotation`'s columns (`[width, rank]`, rank at most
    /// width, e.g. pyvene's `rotate_layer.weight`).
    pub fn new(rotation: Tensor) -> Result<Self> {
        let (width, rank) = matrix_shape("LowRankRotatedSpace's rotation", &rotation)?;
        if rank > width || rank == 0 {
            return Err(Error::Invalid(format!(
                "LowRankRotatedSpace's rotation is [{width}, {rank}]: it needs 1 to {width} \
                 columns"
            )));
        }
        Ok(LowRankRotatedSpace {
            rotation: OnDevice::new(rotation),
            width,
            rank,
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
        let source = required(source, &self.name())?;
        let r = self.rotation.on(base.device())?;
        let what = "LowRankRotatedSpace";
        let diff =
            rotate(source, &r, self.width, what)?.f_sub(&rotate(base, &r, self.width, what)?)?;
        // Unselected rotated dims contribute exact zeros, so masking the difference is
        // pyvene's column selection up to the order of the sums; the mask is cached, so a
        // recorded decode step can replay it.
        let diff = match subspaces {
            None => diff,
            Some(s) => {
                let (batch, _, ndim) = dims(&diff);
                let mask = self.mask.get(s, batch, self.rank, ndim, diff.device())?;
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
}
