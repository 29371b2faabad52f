//! Beyond the tutorial: where one SAE latent fires most over many texts (the examples a
//! feature dashboard shows; here `scope::top_examples`), batching the texts end-padded so that
//! each text's activations are those of its own call.
//!
//! `cargo run -p scope-examples --example top_examples`

use anyhow::{Context, Result};
use gemma_model::{GemmaModel, LoadOptions};
use scope::SaeAt;

const TEXTS: [&str; 4] = [
    "Would you be able to travel through time using a wormhole?",
    "My poodle and the doodle ran through space.",
    "Dogs are loyal friends, and my dog loves to travel.",
    "Physics says time-travel through a wormhole needs enormous energy.",
];

fn main() -> Result<()> {
    let (model, tokenizer) =
        GemmaModel::from_pretrained(&scope_examples::model_source(), &LoadOptions::default())?;
    // The SAE at the layer its name says, checked against the model's width.
    let sae = SaeAt::from_pretrained(&scope_examples::sae_source(), &model)?;
    let latent = 183;

    let ids = TEXTS
        .iter()
        .map(|text| tokenizer.encode(text, true))
        .collect::<Result<Vec<_>, _>>()?;
    // The 3 strongest activations, 2 texts per forward call, skipping position 0: `<bos>` is an
    // outlier many latents fire on.
    let query = scope::TopQuery {
        latents: &[latent],
        k: 3,
        batch: 2,
        include_bos: false,
    };
    let mut calls = 0;
    let top = scope::top_examples(&model, &sae, &ids, &query, &mut |_texts| calls += 1)?;

    println!(
        "latent {latent} over {} texts ({} tokens, {calls} forward calls):",
        top.texts(),
        top.tokens()
    );
    for e in top.examples(0) {
        let id = ids
            .get(e.text)
            .and_then(|text| text.get(e.position))
            .context("an example outside the texts")?;
        let token = tokenizer.decode(&[*id], false)?;
        println!(
            "  {:>8.3}  text {} position {:>2}  {token:?}",
            e.value, e.text, e.position
        );
    }
    Ok(())
}
