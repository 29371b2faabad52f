//! The integration tests of `intervene`, one binary (see `autotests = false` in Cargo.toml).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph;
mod mock;
mod parity;
