//! Beyond the tutorial: where one SAE latent fires most over many texts (the examples a
//! feature dashboard shows), batching the texts end-padded so that each text's activations are
//! those of its own call.
//!
//! `cargo run -p scope-examples --example top_examples`

use anyhow::Result;
use gemma_model::Batch;
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};

const TEXTS: [&str; 4] = [
    "Would you be able to travel through time using a wormhole?",
    "My poodle and the doodle ran through space.",
    "Dogs are loyal friends, and my dog loves to travel.",
    "Physics says time-travel through a wormhole needs enormous energy.",
];

fn main() -> Result<()> {
    let scope_examples::Setup {
        model,
        tokenizer,
        sae,
        component,
    } = scope_examples::setup()?;
    let latent = 183;

    let graph = IntervenableModel::new(
        &model,
        vec![RepresentationConfig::new(
            component,
            sae::EncodeCollect::new(&sae),
        )],
    )?;
    let options = CallOptions::new().collect_only_stop_early(true);
    let ids = TEXTS
        .iter()
        .map(|text| tokenizer.encode(text, true))
        .collect::<Result<Vec<_>, _>>()?;

    let mut top = sae::TopExamples::new(&[latent], 3);
    for chunk in ids.chunks(2) {
        let rows: Vec<Batch> = chunk.iter().map(|row| Batch::from_ids(row)).collect();
        let refs: Vec<&Batch> = rows.iter().collect();
        let (batch, _) = Batch::stacked_end_padded(&refs, model.config().pad_token_id)?;
        let out = graph.forward(&batch, Sources::None, &options)?;
        let lens: Vec<i64> = chunk.iter().map(|row| row.len() as i64).collect();
        // Skip position 0: `<bos>` is an outlier many latents fire on.
        top.update(&out.collected[0], &lens, 1)?;
    }

    println!(
        "latent {latent} over {} texts ({} tokens):",
        top.texts(),
        top.tokens()
    );
    for e in top.examples(0) {
        let token = tokenizer.decode(&[ids[e.text][e.position]], false)?;
        println!(
            "  {:>8.3}  text {} position {:>2}  {token:?}",
            e.value, e.text, e.position
        );
    }
    Ok(())
}
