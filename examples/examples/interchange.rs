//! Workflow 4: interchange. Run a base and a source prompt, swap one SAE latent from a source
//! position into a base position (pyvene's `JumpReLUAutoencoderIntervention` with
//! `{"sources->base": (s, b)}` and `subspaces=[latent]`; here `scope::patch`), and list the
//! next-token logits that moved most.
//!
//! `cargo run -p scope-examples --example interchange`

use anyhow::Result;
use gemma_model::{GemmaModel, LoadOptions};
use scope::SaeAt;

fn main() -> Result<()> {
    let (model, tokenizer) =
        GemmaModel::from_pretrained(&scope_examples::model_source(), &LoadOptions::default())?;
    // The SAE at the layer its name says, checked against the model's width.
    let sae = SaeAt::from_pretrained(&scope_examples::sae_source(), &model)?;

    let base_ids = tokenizer.encode(
        "Physics says time-travel through a wormhole needs enormous energy.",
        true,
    )?;
    let source_ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    // Latent 183 (" time" on the fixture) from source position 9 into the base's last
    // position; positions count `<bos>` as 0, and negative ones count from the end.
    let patched = scope::patch(
        &model,
        &sae,
        &scope::Patch {
            base: &base_ids,
            source: &source_ids,
            base_pos: -1,
            source_pos: 9,
            latent: 183,
            // pyvene's intervention drops the SAE's reconstruction error of the base.
            keep_error: false,
            top_k: 10,
        },
    )?;

    println!(
        "latent 183: {:.4} at the base position, {:.4} at the source position",
        patched.base_value, patched.source_value
    );
    for (token, moved) in patched.top {
        println!("{moved:>+9.4}  {:?}", tokenizer.decode(&[token], false)?);
    }
    Ok(())
}
