//! Parity and behaviour tests for gemma-model, in one test binary (one link against libtorch).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forward;
mod gemma3;
mod generate;
mod loading;
mod tokenizer;
mod unit;
