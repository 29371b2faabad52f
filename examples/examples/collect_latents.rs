//! Workflow 2: read a JumpReLU SAE's latents per token on the residual stream after its layer
//! (the Gemma Scope tutorial's collect-with-encoder through pyvene, here through `intervene`).
//!
//! `cargo run -p scope-examples --example collect_latents`

use anyhow::{Context, Result};
use gemma_model::{Batch, Gemma2Model, GemmaTokenizer, LoadOptions, ModelFiles};
use intervene::{CallOptions, Component, IntervenableModel, RepresentationConfig, Sources};
use tch::Kind;

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
    let graph = IntervenableModel::new(
        &model,
        vec![RepresentationConfig::new(
            Component::typed(site.kind.type_name(), site.layer),
            sae::EncodeCollect::new(&sae),
        )],
    )?;
    // Only the SAE's layer is needed: stop there.
    let options = CallOptions::new().collect_only_stop_early(true);
    let out = graph.forward(&Batch::from_ids(&ids), Sources::None, &options)?;
    let acts = out.collected[0].squeeze_dim(0); // [T, d_sae], f32

    let l0 = Vec::<i64>::try_from(acts.gt(1.0).sum_dim_intlist(-1, false, Kind::Int64))?;
    let argmax = Vec::<i64>::try_from(acts.argmax(-1, false))?;
    for (t, id) in ids.iter().enumerate() {
        let token = tokenizer.decode(&[*id], false)?;
        println!(
            "{t:>3} {token:<12} L0(>1) {:>4}  max latent {:>6}",
            l0[t], argmax[t]
        );
    }
    Ok(())
}
