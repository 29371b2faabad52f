//! The SAE interventions on plain tensors (no model).

use intervene::{Intervention, InterventionRole, Subspaces};
use sae::{EncodeCollect, JumpReluInterchange, Steer};
use tch::{Kind, Tensor};

use crate::common::{max_abs_diff, F32};

fn slices() -> (Tensor, Tensor) {
    let t = F32.sae_tensors();
    // [batch 2, k 3, d] slices from real layer-2 activations.
    let a = t["p0.input"].narrow(0, 1, 6).reshape([2, 3, 64]);
    let b = t["p2.input"].narrow(0, 1, 6).reshape([2, 3, 64]);
    (a, b)
}

#[test]
fn interchange_is_pyvene_formula() {
    let sae = F32.sae();
    let (base, source) = slices();
    let iv = JumpReluInterchange::new(&sae);
    assert_eq!(iv.role(), InterventionRole::NeedsSource);
    let z_b = sae.encode(&base).unwrap();
    let z_s = sae.encode(&source).unwrap();

    let subs = Subspaces::Shared(vec![3, 51, 200]);
    let got = iv.apply(&base, Some(&source), Some(&subs)).unwrap();
    let z = z_b.copy();
    for j in [3i64, 51, 200] {
        z.narrow(-1, j, 1).copy_(&z_s.narrow(-1, j, 1));
    }
    let want = sae.decode(&z).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    assert_eq!(got.kind(), Kind::Float);

    // Per-row subspaces act per row.
    let per_row = Subspaces::PerRow(vec![vec![3], vec![51]]);
    let got = iv.apply(&base, Some(&source), Some(&per_row)).unwrap();
    let z = z_b.copy();
    z.get(0)
        .narrow(-1, 3, 1)
        .copy_(&z_s.get(0).narrow(-1, 3, 1));
    z.get(1)
        .narrow(-1, 51, 1)
        .copy_(&z_s.get(1).narrow(-1, 51, 1));
    assert_eq!(max_abs_diff(&got, &sae.decode(&z).unwrap()), 0.0);

    // No subspaces: pyvene swaps latents 0..embed_dim (= d_in = 64), not all 256.
    let got = iv.apply(&base, Some(&source), None).unwrap();
    let z = z_b.copy();
    z.narrow(-1, 0, 64).copy_(&z_s.narrow(-1, 0, 64));
    assert_eq!(max_abs_diff(&got, &sae.decode(&z).unwrap()), 0.0);

    // Source = base: without the error term the base becomes its reconstruction.
    let same = iv.apply(&base, Some(&base), Some(&subs)).unwrap();
    assert_eq!(max_abs_diff(&same, &sae.reconstruct(&base).unwrap()), 0.0);
    // With it, the base comes back (up to f32 rounding).
    let keep = JumpReluInterchange::new(&sae).keep_error(true);
    let same = keep.apply(&base, Some(&base), Some(&subs)).unwrap();
    assert!(max_abs_diff(&same, &base) < 1e-4);

    // Errors.
    assert!(matches!(
        iv.apply(&base, None, Some(&subs)),
        Err(intervene::Error::MissingSource { .. })
    ));
    assert!(matches!(
        iv.apply(&base, Some(&source), Some(&Subspaces::Shared(vec![256]))),
        Err(intervene::Error::SubspaceOutOfRange {
            index: 256,
            width: 256
        })
    ));
    assert!(matches!(
        iv.apply(&base, Some(&source.narrow(1, 0, 2)), None),
        Err(intervene::Error::Shape { .. })
    ));
}

#[test]
fn collect_returns_f32_latents() {
    let sae = F32.sae();
    let (base, _) = slices();
    let c = EncodeCollect::new(&sae);
    assert_eq!(c.role(), InterventionRole::Collect);
    let got = c.apply(&base.to_kind(Kind::BFloat16), None, None).unwrap();
    assert_eq!(got.kind(), Kind::Float);
    assert_eq!(got.size(), [2, 3, 256]);
    assert_eq!(
        max_abs_diff(
            &c.apply(&base, None, None).unwrap(),
            &sae.encode(&base).unwrap()
        ),
        0.0
    );
}

#[test]
fn steer_adds_scaled_decoder_rows_in_f32() {
    let sae = F32.sae();
    let (base, _) = slices();
    let s = Steer::new(&sae, &[(3, 0.5)]).unwrap();
    assert_eq!(s.role(), InterventionRole::Sourceless);
    let got = s.apply(&base, None, None).unwrap();
    // pyvene: base + tensor(mag) * W_dec[idx]
    let want = &base + Tensor::from_slice(&[0.5f32]) * sae.w_dec().get(3);
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    // bf16 base: the add happens in f32 (the graph rounds on write-back).
    let bf = base.to_kind(Kind::BFloat16);
    let got = s.apply(&bf, None, None).unwrap();
    assert_eq!(got.kind(), Kind::Float);
    let want = bf.to_kind(Kind::Float) + sae.w_dec().get(3) * 0.5;
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    assert!(Steer::new(&sae, &[(999, 1.0)]).is_err());
}

#[test]
fn steering_add_matches_steer() {
    let sae = F32.sae();
    let (base, _) = slices();
    let add = sae::steering_add(&sae, &[(3, 0.5), (51, -8.0)]).unwrap();
    let steer = Steer::new(&sae, &[(3, 0.5), (51, -8.0)]).unwrap();
    assert_eq!(
        max_abs_diff(
            &add.apply(&base, None, None).unwrap(),
            &steer.apply(&base, None, None).unwrap()
        ),
        0.0
    );
}
