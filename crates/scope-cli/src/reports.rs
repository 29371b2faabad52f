//! The JSON objects of `scope latents`, `patch` and `explain`, built from a session and an
//! SAE: one implementation for the commands and for `scope serve`'s endpoints.

use anyhow::{bail, Result};

use crate::output::{
    ExplainReport, LatentValue, LatentsReport, PatchReport, TokenDiff, TokenScore,
};
use crate::session::Session;

/// What `scope latents` asks for.
#[derive(Debug)]
pub struct LatentsQuery<'a> {
    /// The text, encoded with `<bos>`.
    pub prompt: &'a str,
    /// Latents listed per token.
    pub top_k: i64,
    /// L0 counts latents above this.
    pub threshold: f64,
    /// A latent whose value at every token is reported too (the server's page shades
    /// tokens by it).
    pub focus: Option<i64>,
}

/// The SAE's latents at every token of the prompt.
pub fn latents(
    session: &Session,
    sae: &scope::SaeAt,
    q: &LatentsQuery<'_>,
) -> Result<LatentsReport> {
    if q.top_k < 1 {
        bail!("top_k (--top-k) must be at least 1, got {}", q.top_k);
    }
    let ids = session.encode_prompt(q.prompt, false)?;
    let latents = scope::latents(&session.model, sae, &ids)?;
    let k = (q.top_k as usize).min(sae.sae.d_sae() as usize);
    let top = latents.top(k)?;
    let strongest = latents.strongest()?;
    let latent_values = match q.focus {
        Some(latent) => Some(
            latents
                .values_of(latent)?
                .into_iter()
                .map(f64::from)
                .collect(),
        ),
        None => None,
    };
    let per_token = |t: usize, top: &sae::TopK| -> Vec<LatentValue> {
        top.token(t)
            .map(|(latent, value)| LatentValue {
                latent,
                value: f64::from(value),
            })
            .collect()
    };
    Ok(LatentsReport {
        tokens: session.token_strings(&ids)?,
        l0: latents.l0(q.threshold)?,
        max_latent: strongest.iter().map(|&(latent, _)| latent).collect(),
        max_value: strongest.iter().map(|&(_, v)| f64::from(v)).collect(),
        top: (0..ids.len()).map(|t| per_token(t, &top)).collect(),
        token_ids: ids,
        threshold: q.threshold,
        layer: sae.site.layer,
        site: sae.site.kind.type_name().to_string(),
        transcoder: sae.is_transcoder(),
        latent_values,
    })
}

/// What `scope patch` asks for: texts and positions as the user gave them.
#[derive(Debug)]
pub struct PatchQuery<'a> {
    /// The run that is patched.
    pub base: &'a str,
    /// The run the latent's value is read from.
    pub source: &'a str,
    /// Positions; negative counts from the end.
    pub base_pos: i64,
    /// See `base_pos`.
    pub source_pos: i64,
    /// The latent swapped.
    pub latent: i64,
    /// Keep the SAE's error term.
    pub keep_error: bool,
    /// Logit changes listed.
    pub top_k: i64,
}

/// One latent's value swapped from the source run into the base run, and the logits that
/// moved.
pub fn patch(session: &Session, sae: &scope::SaeAt, q: &PatchQuery<'_>) -> Result<PatchReport> {
    if q.top_k < 1 {
        bail!("top_k (--top-k) must be at least 1, got {}", q.top_k);
    }
    let base_ids = session.encode_prompt(q.base, false)?;
    let source_ids = session.encode_prompt(q.source, false)?;
    let base_pos = scope::resolve_position(q.base_pos, base_ids.len(), "base_pos / --base-pos")?;
    let source_pos =
        scope::resolve_position(q.source_pos, source_ids.len(), "source_pos / --source-pos")?;
    let patched = scope::patch(
        &session.model,
        sae,
        &scope::Patch {
            base: &base_ids,
            source: &source_ids,
            base_pos,
            source_pos,
            latent: q.latent,
            keep_error: q.keep_error,
            top_k: q.top_k,
        },
    )?;
    Ok(PatchReport {
        position: base_ids.len() as i64 - 1,
        top: patched
            .top
            .iter()
            .map(|&(token_id, logit_diff)| {
                Ok(TokenDiff {
                    token_id,
                    token: session.tokenizer.decode(&[token_id], false)?,
                    logit_diff,
                })
            })
            .collect::<Result<_>>()?,
        base_pos,
        source_pos,
        latent: q.latent,
        base_value: patched.base_value,
        source_value: patched.source_value,
        warning: patched.warning,
    })
}

/// A latent's logit lens: the tokens its decoder direction promotes and suppresses most.
pub fn explain(
    session: &Session,
    sae: &scope::SaeAt,
    latent: i64,
    top_k: i64,
) -> Result<ExplainReport> {
    if top_k < 1 {
        bail!("top_k (--top-k) must be at least 1, got {top_k}");
    }
    let lens = scope::explain(&session.model, sae, latent, top_k)?;
    let scores = |pairs: &[(i64, f32)]| -> Result<Vec<TokenScore>> {
        pairs
            .iter()
            .map(|&(token_id, score)| {
                Ok(TokenScore {
                    token_id,
                    token: session.tokenizer.decode(&[token_id], false)?,
                    score: f64::from(score),
                })
            })
            .collect()
    };
    Ok(ExplainReport {
        latent,
        promoted: scores(&lens.promoted)?,
        suppressed: scores(&lens.suppressed)?,
    })
}
