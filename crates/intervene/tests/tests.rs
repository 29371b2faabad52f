//! The integration tests of `intervene`, one binary (see `autotests = false` in Cargo.toml).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph;
mod mock;
mod parity;
mod rotated;

use tch::{Kind, Tensor};

/// The largest absolute difference of two tensors of the same shape, in f64.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
