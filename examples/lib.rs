//! Shared helpers for the examples: where the fixture model and SAE live, so every example runs
//! out of the box (`cargo run -p scope-examples --example steer`), and how to point them at real
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

/// The model, its tokenizer and the SAE every example starts from (each example places the SAE
/// at its site with `scope::SaeAt::new`).
pub struct Setup {
    /// The model (f32 on CPU unless the checkpoint says otherwise).
    pub model: gemma_model::Gemma2Model,
    /// Its tokenizer.
    pub tokenizer: gemma_model::GemmaTokenizer,
    /// The SAE, on the model's device.
    pub sae: sae::Sae,
}

/// Load [`model_source`] and [`sae_source`].
pub fn setup() -> anyhow::Result<Setup> {
    use anyhow::Context;
    let options = gemma_model::LoadOptions::default();
    let source = model_source();
    let files = gemma_model::ModelFiles::resolve(&source, &options.hub)?;
    let model = gemma_model::Gemma2Model::load_files(&files, options.dtype, options.device)?;
    let tokenizer =
        gemma_model::GemmaTokenizer::from_file(files.tokenizer.context("no tokenizer.json")?)?;
    let sae = sae::Sae::from_pretrained(&sae_source(), model.device())?;
    Ok(Setup {
        model,
        tokenizer,
        sae,
    })
}
