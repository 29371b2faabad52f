//! `cargo xtask bench-compare`: scope's benchmarks and the Python peer in one invocation.

use crate::{Failure, Result};

pub fn run(_args: &[&str]) -> Result {
    Err(Failure::new("bench-compare is not built yet"))
}
