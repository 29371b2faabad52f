//! Steering at scale: a sweep of one latent over several magnitudes on two prompts, all ten
//! requests at once through the continuous-batching engine (`scope::steer_many`). Each request
//! gets the tokens it would get alone, whatever else shares its batch; results arrive as each
//! request finishes, not in the order they were submitted.
//!
//! `cargo run -p scope-examples --example steer_many`

use anyhow::Result;
use gemma_model::{GemmaModel, GemmaTokenizer, LoadOptions, Sampling};
use scope::SaeAt;

const PROMPTS: [&str; 2] = [
    "Would you be able to travel through time using a wormhole?",
    "Dogs are loyal friends, and my dog loves to travel.",
];
/// Latent 51 at these magnitudes; 0 is the unsteered baseline.
const MAGNITUDES: [f64; 5] = [0.0, 4.0, 8.0, 16.0, 32.0];
const LATENT: i64 = 51;
const MAX_NEW_TOKENS: usize = 20;

fn main() -> Result<()> {
    let (model, tokenizer) =
        GemmaModel::from_pretrained(&scope_examples::model_source(), &LoadOptions::default())?;
    // The SAE at the layer its name says, checked against the model's width.
    let sae = SaeAt::from_pretrained(&scope_examples::sae_source(), &model)?;

    // 2 prompts x 5 magnitudes = 10 requests, each with its own id.
    let mut requests = Vec::new();
    for (p, prompt) in PROMPTS.iter().enumerate() {
        let ids = tokenizer.encode(prompt, true)?;
        for magnitude in MAGNITUDES {
            requests.push(scope::SteerRequest {
                id: format!("p{p}-m{magnitude}"),
                prompt: ids.clone(),
                // No pair at all is an unsteered request.
                steer: if magnitude == 0.0 {
                    Vec::new()
                } else {
                    vec![(LATENT, magnitude)]
                },
                max_new_tokens: MAX_NEW_TOKENS,
                sampling: Sampling::Greedy,
                top_latents: None,
            });
        }
    }

    // 8 rows decode together, so two requests wait for a free row; each row holds the longest
    // prompt plus its new tokens.
    let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let limits = scope_engine::Limits {
        max_rows: 8,
        context: longest + MAX_NEW_TOKENS,
    };
    println!(
        "latent {LATENT} at {MAGNITUDES:?} on {} prompts:",
        PROMPTS.len()
    );
    // A refused request (a latent out of range, too long a prompt) comes back as an error and
    // leaves the others running; the first error of printing is kept and returned at the end.
    let mut failed: Result<()> = Ok(());
    // The engine picks how its steps run for this model and CPU (`Engine::with_mode` takes
    // one: the fused kernels, libtorch's batched steps, one request at a time).
    let mut engine = scope_engine::Engine::new(&model, limits)?;
    scope::steer_many(&mut engine, Some(&sae), &requests, &mut |request, done| {
        if failed.is_ok() {
            failed = report(&tokenizer, request, done);
        }
    })?;
    failed
}

/// Prints one finished request: its id, why it stopped and its completion.
fn report(
    tokenizer: &GemmaTokenizer,
    request: &scope::SteerRequest,
    done: scope::Result<scope_engine::Finished>,
) -> Result<()> {
    match done {
        Ok(finished) => println!(
            "{:<9} {:<6} {}",
            finished.id,
            finished.reason.name(),
            tokenizer.decode(&finished.tokens, true)?
        ),
        Err(refused) => println!("{:<9} refused: {refused}", request.id),
    }
    Ok(())
}
