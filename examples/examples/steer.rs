//! Workflow 3: steering. Add `magnitude * W_dec[latent]` to the residual after the SAE's layer at
//! every position, prompt and generated tokens alike (pyvene's `intervene_on_prompt=True`,
//! `unit_locations=None`; here `scope::steer`), and compare with the unsteered text.
//!
//! `cargo run -p scope-examples --example steer`

use anyhow::{Context, Result};
use gemma_model::{Batch, GemmaModel, GenerationConfig, LoadOptions};
use scope::SaeAt;

fn main() -> Result<()> {
    let (model, tokenizer) =
        GemmaModel::from_pretrained(&scope_examples::model_source(), &LoadOptions::default())?;
    // The SAE at the layer its name says, checked against the model's width.
    let sae = SaeAt::from_pretrained(&scope_examples::sae_source(), &model)?;

    let ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let config = GenerationConfig::greedy(20);

    // The model alone, then with latent 51 added at magnitude 8.
    let plain = model.generate(&Batch::from_ids(&ids), &config)?;
    let steered = scope::steer(&model, &sae, &ids, &[(51, 8.0)], &config)?;

    let first = |tokens: &[Vec<i64>]| tokens.first().cloned().context("no generated row");
    println!(
        "plain:   {}",
        tokenizer.decode(&first(&plain.new_tokens)?, true)?
    );
    println!(
        "steered: {}",
        tokenizer.decode(&first(&steered.new_tokens)?, true)?
    );
    Ok(())
}
