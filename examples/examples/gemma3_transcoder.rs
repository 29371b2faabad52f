//! Gemma 3 with a Gemma Scope 2 transcoder: its latents where it reads (the MLP input), steering
//! by one of its decoder rows where it writes (the MLP output, after the post-feedforward
//! norm), and how well it stands in for the MLP (`scope::eval` splices its output there).
//!
//! `cargo run -p scope-examples --example gemma3_transcoder`; on real weights,
//! `SCOPE_MODEL=google/gemma-3-1b-pt
//! SCOPE_SAE=gemma-scope-2-1b-pt-transcoders/transcoder/layer_13_width_16k_l0_small_affine`.

use anyhow::{Context, Result};
use gemma_model::{Batch, GemmaModel, GenerationConfig, LoadOptions};
use scope::SaeAt;

fn main() -> Result<()> {
    let root = scope_examples::root();
    let model_source = std::env::var("SCOPE_MODEL").unwrap_or_else(|_| {
        root.join("fixtures/models/tiny-gemma3")
            .display()
            .to_string()
    });
    let transcoder_source = std::env::var("SCOPE_SAE").unwrap_or_else(|_| {
        let folder =
            "fixtures/saes/gemma-scope-2-tiny/transcoder/layer_2_width_128_l0_small_affine";
        root.join(folder).display().to_string()
    });
    let (model, tokenizer) = GemmaModel::from_pretrained(&model_source, &LoadOptions::default())?;
    // The folder name says `transcoder` and `layer_2`: it reads the MLP input of layer 2 and
    // writes that layer's MLP output.
    let transcoder = SaeAt::from_pretrained(&transcoder_source, &model)?;
    println!(
        "{:?}: reads {}, writes {}",
        model.config().architecture,
        transcoder.site,
        transcoder.write_site()
    );

    let ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let latents = scope::latents(&model, &transcoder, &ids)?;
    let strongest = latents.top(1)?;
    let (latent, value) = strongest.token(9).next().context("token 9 has latents")?;
    println!(
        "at \" time\": latent {latent} = {value:.3}; L0 per token {:?}",
        latents.l0(0.0)?
    );

    let config = GenerationConfig::greedy(12);
    let plain = model.generate(&Batch::from_ids(&ids), &config)?;
    let steered = scope::steer(&model, &transcoder, &ids, &[(latent, 4.0)], &config)?;
    let first = |tokens: &[Vec<i64>]| tokens.first().cloned().context("no generated row");
    println!(
        "plain:   {}",
        tokenizer.decode(&first(&plain.new_tokens)?, true)?
    );
    println!(
        "steered: {}",
        tokenizer.decode(&first(&steered.new_tokens)?, true)?
    );

    let (reconstruction, splice) = scope::eval(&model, &transcoder, &[ids], 0.0)?;
    println!(
        "as the MLP: explained variance {:.3} (conventional), delta CE {:.4}, KL {:.4}",
        reconstruction.explained_variance_conventional, splice.delta_ce, splice.kl
    );
    Ok(())
}
