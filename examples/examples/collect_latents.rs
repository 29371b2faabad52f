//! Workflow 2: read a JumpReLU SAE's latents per token on the residual stream after its layer
//! (the Gemma Scope tutorial's collect-with-encoder through pyvene, here through `intervene`).
//!
//! `cargo run -p scope-examples --example collect_latents`

use anyhow::Result;
use gemma_model::Batch;
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use tch::Kind;

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
    let graph = IntervenableModel::new(
        &model,
        vec![RepresentationConfig::new(
            component,
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
