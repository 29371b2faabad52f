//! Workflow 3: steering. Add `magnitude * W_dec[latent]` to the residual after the SAE's layer at
//! every position, prompt and generated tokens alike (pyvene's `intervene_on_prompt=True`,
//! `unit_locations=None`), and compare with the unsteered text.
//!
//! `cargo run -p scope-examples --example steer`

use anyhow::Result;
use gemma_model::{Batch, GenerationConfig};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};

fn main() -> Result<()> {
    let scope_examples::Setup {
        model,
        tokenizer,
        sae,
        component,
    } = scope_examples::setup()?;

    let ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let batch = Batch::from_ids(&ids);
    let config = GenerationConfig::greedy(20);

    let plain = model.generate(&batch, &config)?;
    let graph = IntervenableModel::new(
        &model,
        vec![RepresentationConfig::new(
            component,
            sae::Steer::new(&sae, &[(51, 8.0)])?,
        )],
    )?;
    let steered = graph.generate(
        &batch,
        Sources::None,
        &CallOptions::new().intervene_on_prompt(true),
        &config,
    )?;

    println!("plain:   {}", tokenizer.decode(&plain.new_tokens[0], true)?);
    println!(
        "steered: {}",
        tokenizer.decode(&steered.intervened.new_tokens[0], true)?
    );
    Ok(())
}
