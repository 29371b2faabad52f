//! Workflow 2: read a JumpReLU SAE's latents per token on the residual stream after its layer
//! (the Gemma Scope tutorial's collect-with-encoder through pyvene; here `scope::latents`, which
//! runs the collect through `intervene` and stops after the SAE's layer).
//!
//! `cargo run -p scope-examples --example collect_latents`

use anyhow::Result;
use tch::Kind;

fn main() -> Result<()> {
    let scope_examples::Setup {
        model,
        tokenizer,
        sae,
    } = scope_examples::setup()?;
    // The SAE at the site its name says (the residual stream after layer 2 on the fixture),
    // checked against the model's width.
    let sae = scope::SaeAt::new(sae, None, &model)?;

    let ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let acts = scope::latents(&model, &sae, &ids)?; // [T, d_sae], f32

    let l0 = Vec::<i64>::try_from(acts.f_gt(1.0)?.f_sum_dim_intlist(-1, false, Kind::Int64)?)?;
    let argmax = Vec::<i64>::try_from(acts.f_argmax(-1, false)?)?;
    for ((t, id), (l0, argmax)) in ids.iter().enumerate().zip(l0.iter().zip(&argmax)) {
        let token = tokenizer.decode(&[*id], false)?;
        println!("{t:>3} {token:<12} L0(>1) {l0:>4}  max latent {argmax:>6}");
    }
    Ok(())
}
