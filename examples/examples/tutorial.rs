//! The Gemma Scope tutorial's four steps on the documented API: load, the top latents at a
//! token, plain vs steered generation, and a latent interchange with the logits that moved.
//!
//! `cargo run -p scope-examples --example tutorial` (the fixtures; with `SCOPE_MODEL` and
//! `SCOPE_SAE` set as in `examples/lib.rs`, the tutorial's gemma-2-2b and layer-20 SAE, where
//! the time-travel latent is 10004; set `SCOPE_LATENT` to choose another).

use gemma_model::{GemmaModel, GenerationConfig, LoadOptions};
use scope::{Patch, SaeAt};

fn main() -> anyhow::Result<()> {
    let (model, tokenizer) =
        GemmaModel::from_pretrained(&scope_examples::model_source(), &LoadOptions::default())?;
    let sae = SaeAt::from_pretrained(&scope_examples::sae_source(), &model)?;
    let latent: i64 = std::env::var("SCOPE_LATENT").map_or(Ok(183), |l| l.parse())?;

    // 1. The latents at every token: L0 (> 1, as the tutorial counts) and the top 3 at "time".
    let ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let latents = scope::latents(&model, &sae, &ids)?;
    println!("L0 per token: {:?}", latents.l0(1.0)?);
    let top = latents.top(3)?;
    println!(
        "top latents at token 9: {:?}",
        top.token(9).collect::<Vec<_>>()
    );

    // 2. Plain and steered generation (latent x 100 added at every position).
    let prompt = tokenizer.encode(
        "Which dog breed do people think is cuter, poodle or doodle?",
        true,
    )?;
    let config = GenerationConfig::greedy(30);
    let plain = model.generate(&gemma_model::Batch::from_ids(&prompt), &config)?;
    let steered = scope::steer(&model, &sae, &prompt, &[(latent, 100.0)], &config)?;
    println!("plain:   {}", tokenizer.decode(&plain.new_tokens[0], true)?);
    println!(
        "steered: {}",
        tokenizer.decode(&steered.new_tokens[0], true)?
    );

    // 3. The latent's value at "time" (token 9, where it fires) into the base's last token.
    let patch = Patch {
        base: &prompt,
        source: &ids,
        base_pos: -1,
        source_pos: 9,
        latent,
        keep_error: false,
        top_k: 10,
    };
    let patched = scope::patch(&model, &sae, &patch)?;
    println!(
        "latent {latent}: {} at the source, {} at the base",
        patched.source_value, patched.base_value
    );
    if let Some(warning) = &patched.warning {
        println!("warning: {warning}");
    }
    for (token, diff) in &patched.top {
        println!("{diff:+8.3} {:?}", tokenizer.decode(&[*token], false)?);
    }
    Ok(())
}
