//! The rotated interventions (DAS at inference) on hand-made slices: the identity rotation
//! is a vanilla interchange, only the chosen rotated direction moves, the low-rank form agrees
//! with the full one, soft blends take each dimension by their mask, and bad input says why.
//! Their parity with pyvene is in `parity.rs`.

use intervene::{
    Error, Intervention, LowRankRotatedSpace, RotatedSpace, SigmoidMask, SoftRotatedSpace,
    Subspaces, Vanilla,
};
use tch::{Device, Kind, Tensor};

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
    let message =
        |r: intervene::Result<RotatedSpace>| r.err().map(|e| e.to_string()).unwrap_or_default();
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
    let low = LowRankRotatedSpace::new(Tensor::eye(4, (Kind::Float, Device::Cpu)).narrow(1, 0, 2))
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
    let soft = SoftRotatedSpace::new(Tensor::eye(4, (Kind::Float, Device::Cpu)), m.copy()).unwrap();
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
    let plain = SigmoidMask::new(&Tensor::from_slice(&[-50.0f32, 50.0, 0.0, 50.0]), 1.0).unwrap();
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

/// The mask a soft blend with the identity rotation applies: blending zeros into ones gives
/// `m` itself, exactly (`0 · (1 − m) + 1 · m`, then `· I`).
fn mask_of(soft: &SoftRotatedSpace, width: i64) -> Vec<f32> {
    let zeros = Tensor::zeros([1, 1, width], (Kind::Float, Device::Cpu));
    let ones = Tensor::ones([1, 1, width], (Kind::Float, Device::Cpu));
    let out = soft.apply(&zeros, Some(&ones), None).unwrap();
    Vec::<f32>::try_from(out.flatten(0, -1)).unwrap()
}

/// The boundless mask is pyvene's `sigmoid(i/T) · sigmoid((b·width − i)/T)`: about 1 for the
/// first `b·width` dims (0.5 at dim 0), about 0 after, 0.5 at the boundary itself.
#[test]
fn the_boundless_mask_covers_the_first_boundary_share_of_dims() {
    let eye = || Tensor::eye(8, (Kind::Float, Device::Cpu));
    let soft = SoftRotatedSpace::boundless(eye(), 0.5, 0.01).unwrap();
    assert_eq!(mask_of(&soft, 8), [0.5, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0]);
    // The boundary is clamped to [1e-3, 1].
    let wide = SoftRotatedSpace::boundless(eye(), 7.0, 0.01).unwrap();
    assert_eq!(mask_of(&wide, 8), [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
}

#[test]
fn soft_blends_refuse_subspaces_and_wrong_shapes() {
    let (base, source) = slices();
    let eye = || Tensor::eye(4, (Kind::Float, Device::Cpu));
    let soft = SoftRotatedSpace::new(eye(), Tensor::ones([4], (Kind::Float, Device::Cpu))).unwrap();
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
