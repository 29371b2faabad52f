//! Workflow 3: steering. Add `magnitude * W_dec[latent]` to the residual after the SAE's layer at
//! every position, prompt and generated tokens alike (pyvene's `intervene_on_prompt=True`,
//! `unit_locations=None`), and compare with the unsteered text.
//!
//! `cargo run -p scope-examples --example steer`

use anyhow::{Context, Result};
use gemma_model::{Batch, Gemma2Model, GemmaTokenizer, GenerationConfig, LoadOptions, ModelFiles};
use intervene::{CallOptions, Component, IntervenableModel, RepresentationConfig, Sources};

fn main() -> Result<()> {
    let options = LoadOptions::default();
    let source = scope_examples::model_source();
    let model = Gemma2Model::load(&source, &options)?;
    let files = ModelFiles::resolve(&source, &options.hub)?;
    let tokenizer = GemmaTokenizer::from_file(files.tokenizer.context("no tokenizer.json")?)?;
    let sae = sae::Sae::from_pretrained(&scope_examples::sae_source(), model.device())?;
    let site = sae
        .site()
        .context("the SAE's name does not say its layer")?;

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
            Component::typed(site.kind.type_name(), site.layer),
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
