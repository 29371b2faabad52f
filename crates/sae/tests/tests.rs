//! Integration tests of the `sae` crate (one binary; topics in modules).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod encode;
mod gemma_scope_2;
mod interventions;
mod load;
mod model;
mod resolve;
