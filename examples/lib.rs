//! Where the examples' model and SAE live: the fixtures, so every example runs out of the box (`cargo run -p scope-examples --example steer`), and how to point them at real
//! weights instead (`SCOPE_MODEL=google/gemma-2-2b SCOPE_SAE=google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`).

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `SCOPE_MODEL`, or the small f32 model shipped in `fixtures/`.
pub fn model_source() -> String {
    std::env::var("SCOPE_MODEL").unwrap_or_else(|_| {
        root()
            .join("fixtures/models/tiny-f32")
            .display()
            .to_string()
    })
}

/// `SCOPE_SAE`, or the fixture SAE on layer 2 of the fixture model.
pub fn sae_source() -> String {
    std::env::var("SCOPE_SAE").unwrap_or_else(|_| {
        root()
            .join("fixtures/saes/tiny-f32-res/layer_2/width_256/average_l0_20")
            .display()
            .to_string()
    })
}
