//! Distributed alignment search at inference: swap a learned subspace between two runs. Train the
//! rotation in pyvene (`LowRankRotatedSpaceIntervention`), save `rotate_layer.weight` with
//! safetensors, and load it here: the base's component along the rotation's columns at one
//! position is replaced by the source's, and the next-token distribution moves.
//!
//! `cargo run -p scope-examples --example rotated_interchange [ROTATION.safetensors NAME]`
//!
//! Without arguments it uses the rotation the fixture generator drew with pyvene's own init
//! (`rotated_space.low_rank.rotation`, 64 x 6) on layer 1 of the fixture model.

use anyhow::{bail, Context, Result};
use gemma_model::{Batch, GemmaModel, LoadOptions};
use intervene::{
    CallOptions, Component, IntervenableModel, Locations, LowRankRotatedSpace,
    RepresentationConfig, Sources, Subspaces,
};
use tch::{Kind, Tensor};

/// The rotation named `name` in the safetensors file at `path`.
fn load_rotation(path: &str, name: &str) -> Result<Tensor> {
    let tensors = Tensor::read_safetensors(path).with_context(|| format!("reading {path}"))?;
    match tensors.into_iter().find(|(n, _)| n == name) {
        Some((_, t)) => Ok(t),
        None => bail!("{path} has no tensor `{name}`"),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, name) = match &args[..] {
        [path, name] => (path.clone(), name.clone()),
        [] => (
            scope_examples::root()
                .join("fixtures/expected/tiny-f32/pyvene.safetensors")
                .display()
                .to_string(),
            "rotated_space.low_rank.rotation".to_string(),
        ),
        _ => bail!("usage: rotated_interchange [ROTATION.safetensors NAME]"),
    };
    let rotation = load_rotation(&path, &name)?;
    let (model, tokenizer) =
        GemmaModel::from_pretrained(&scope_examples::model_source(), &LoadOptions::default())?;

    let base_ids = tokenizer.encode("Dogs are loyal friends, and my dog loves to travel.", true)?;
    let source_ids = tokenizer.encode(
        "Would you be able to travel through time using a wormhole?",
        true,
    )?;
    let graph = IntervenableModel::new(
        &model,
        vec![RepresentationConfig::new(
            Component::typed("block_output", 1),
            LowRankRotatedSpace::new(rotation)?,
        )],
    )?;
    // Source position 5 into the base's last position, along learned directions 0 and 2.
    let options = CallOptions::new()
        .locations(Locations::pair(5, -1))
        .subspaces(Subspaces::Shared(vec![0, 2]))
        .output_original_output(true);
    let (base, source) = (Batch::from_ids(&base_ids), Batch::from_ids(&source_ids));
    let out = graph.forward(&base, Sources::Shared(&source), &options)?;

    let next = |logits: &Tensor| {
        logits
            .select(0, 0)
            .select(0, -1)
            .to_kind(Kind::Float)
            .softmax(-1, Kind::Float)
    };
    let original = next(
        &out.original
            .context("no original run")?
            .logits
            .context("no logits")?,
    );
    let intervened = next(&out.intervened.logits.context("no logits")?);
    println!("next-token probabilities that moved most (original -> intervened):");
    let (_, indices) = (&intervened - &original).abs().topk(5, 0, true, true);
    for i in Vec::<i64>::try_from(indices)? {
        println!(
            "  {:<12} {:.4} -> {:.4}",
            format!("{:?}", tokenizer.decode(&[i], false)?),
            original.double_value(&[i]),
            intervened.double_value(&[i])
        );
    }
    Ok(())
}
