//! Where latents fire most over a set of texts.

use gemma_model::{Batch, GemmaModel};
use sae::TopExamples;

use crate::error::{Error, Result};
use crate::latents::LatentCollector;
use crate::sae_at::SaeAt;

/// What [`top_examples`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopQuery<'a> {
    /// The latents.
    pub latents: &'a [i64],
    /// Examples kept per latent.
    pub k: usize,
    /// Texts per forward call.
    pub batch: usize,
    /// Whether `<bos>` positions count (they fire on many latents, so by default they do not).
    pub include_bos: bool,
}

/// The `query.k` strongest activations of each of `query.latents` over `texts` (token ids,
/// `<bos>` included); `on_batch` hears how many texts each forward call took.
pub fn top_examples(
    model: &GemmaModel,
    sae: &SaeAt,
    texts: &[Vec<i64>],
    query: &TopQuery<'_>,
    on_batch: &mut dyn FnMut(usize),
) -> Result<TopExamples> {
    let TopQuery {
        latents,
        k,
        batch,
        include_bos,
    } = *query;
    if k < 1 || batch < 1 {
        return Err(Error::Input(format!(
            "k and the batch size must be at least 1, got {k} and {batch}"
        )));
    }
    for &latent in latents {
        sae.check_latent(latent)?;
    }
    let collector = LatentCollector::new(model, sae)?;
    let skip = if include_bos { 0 } else { 1 };
    let mut top = TopExamples::new(latents, k);
    for chunk in texts.chunks(batch) {
        // End-padded: each text's positions compute as in its own call (no position attends
        // to a later one), so the batch size changes no activation beyond rounding.
        let rows: Vec<Batch> = chunk.iter().map(|row| Batch::from_ids(row)).collect();
        let refs: Vec<&Batch> = rows.iter().collect();
        let (stacked, _) = Batch::stacked_end_padded(&refs, model.config().pad_token_id)?;
        let acts = collector.latents(&stacked)?;
        let lens: Vec<i64> = chunk.iter().map(|row| row.len() as i64).collect();
        top.update(&acts, &lens, skip)?;
        on_batch(chunk.len());
    }
    Ok(top)
}
