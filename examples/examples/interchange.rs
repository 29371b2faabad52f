//! Workflow 4: interchange. Run a base and a source prompt, swap one SAE latent from a source
//! position into a base position (pyvene's `JumpReLUAutoencoderIntervention` with
//! `{"sources->base": (s, b)}` and `subspaces=[latent]`), and list the next-token logits that
//! moved most.
//!
//! `cargo run -p scope-examples --example interchange`

use anyhow::{Context, Result};
use gemma_model::Batch;
use intervene::{
    CallOptions, IntervenableModel, Locations, RepresentationConfig, Sources, Subspaces,
};
use tch::Kind;

fn main() -> Result<()> {
    let scope_examples::Setup {
        model,
        tokenizer,
        sae,
        component,
    } = scope_examples::setup()?;

    let base_ids = tokenizer.encode(
        "Physics says time-travel through a wormhole needs enormous energy.",
        true,
    )?;
    let source_ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let (latent, source_pos, base_pos) = (183, 9, base_ids.len() as i64 - 1);

    let graph = IntervenableModel::new(
        &model,
        vec![RepresentationConfig::new(
            component,
            sae::JumpReluInterchange::new(&sae),
        )],
    )?;
    let options = CallOptions::new()
        .locations(Locations::pair(source_pos, base_pos))
        .subspaces(Subspaces::Shared(vec![latent]))
        .output_original_output(true);
    let (base, source) = (Batch::from_ids(&base_ids), Batch::from_ids(&source_ids));
    let out = graph.forward(&base, Sources::Shared(&source), &options)?;

    let last = |logits: &tch::Tensor| logits.select(0, 0).select(0, -1).to_kind(Kind::Float);
    let original = out
        .original
        .context("no original run")?
        .logits
        .context("no logits")?;
    let intervened = out.intervened.logits.context("no logits")?;
    let diff = last(&intervened) - last(&original);
    let (values, indices) = diff.topk(10, 0, true, true);
    for (v, i) in Vec::<f32>::try_from(values)?
        .iter()
        .zip(Vec::<i64>::try_from(indices)?)
    {
        println!("{v:>+9.4}  {:?}", tokenizer.decode(&[i], false)?);
    }
    Ok(())
}
