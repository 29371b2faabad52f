//! Workflow 2: read a JumpReLU SAE's latents per token on the residual stream after its layer
//! (the Gemma Scope tutorial's collect-with-encoder through pyvene; here `scope::latents`, which
//! runs the collect through `intervene` and stops after the SAE's layer).
//!
//! `cargo run -p scope-examples --example collect_latents`

use anyhow::Result;
use gemma_model::{GemmaModel, LoadOptions};
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
    let latents = scope::latents(&model, &sae, &ids)?; // activations() is [T, d_sae], f32

    let l0 = latents.l0(1.0)?; // the tutorial counts latents > 1
    let top = latents.top(3)?;
    for (t, id) in ids.iter().enumerate() {
        let token = tokenizer.decode(&[*id], false)?;
        let strongest: Vec<String> = top.active(t).map(|(i, v)| format!("{i}:{v:.1}")).collect();
        println!(
            "{t:>3} {token:<12} L0(>1) {:>4}  top {}",
            l0[t],
            strongest.join(" ")
        );
    }
    Ok(())
}
