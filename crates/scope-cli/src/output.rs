//! What `scope` prints: stable JSON objects (`--json`) and readable tables.
//!
//! The JSON keys named in the README are a contract: other keys may be added, these must not
//! change.

use serde::Serialize;

/// `scope generate` and `scope steer`.
#[derive(Debug, Serialize)]
pub struct GenerateReport {
    /// The prompt's token ids (with `<bos>`).
    pub prompt_ids: Vec<i64>,
    /// Prompt + new tokens, as Hugging Face `generate` returns them.
    pub output_ids: Vec<i64>,
    /// The new tokens decoded, special tokens skipped.
    pub completion: String,
    /// All of `output_ids` decoded, special tokens skipped.
    pub text: String,
    /// The steering applied, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steering: Vec<SteeringReport>,
}

/// One steered latent.
#[derive(Debug, Serialize)]
pub struct SteeringReport {
    /// The latent.
    pub latent: i64,
    /// Its magnitude.
    pub magnitude: f64,
}

/// One latent and its activation.
#[derive(Debug, Serialize)]
pub struct LatentValue {
    /// The latent index.
    pub latent: i64,
    /// Its activation.
    pub value: f64,
}

/// `scope latents`.
#[derive(Debug, Serialize)]
pub struct LatentsReport {
    /// The prompt's token ids (with `<bos>`).
    pub token_ids: Vec<i64>,
    /// Each token as a string.
    pub tokens: Vec<String>,
    /// Per token, the number of latents above the threshold.
    pub l0: Vec<i64>,
    /// Per token, the most active latent.
    pub max_latent: Vec<i64>,
    /// Per token, its activation.
    pub max_value: Vec<f64>,
    /// Per token, the top-k latents.
    pub top: Vec<Vec<LatentValue>>,
    /// The threshold L0 counts above.
    pub threshold: f64,
    /// The layer the SAE reads.
    pub layer: usize,
}

/// One token and a score.
#[derive(Debug, Serialize)]
pub struct TokenScore {
    /// The token id.
    pub token_id: i64,
    /// The token as a string.
    pub token: String,
    /// The score (a logit difference or a logit-lens score).
    pub score: f64,
}

/// One token whose logit moved.
#[derive(Debug, Serialize)]
pub struct TokenDiff {
    /// The token id.
    pub token_id: i64,
    /// The token as a string.
    pub token: String,
    /// Intervened minus original logit.
    pub logit_diff: f64,
}

/// `scope patch`.
#[derive(Debug, Serialize)]
pub struct PatchReport {
    /// The base position whose next-token logits are reported (the last one).
    pub position: i64,
    /// The most-moved logits, largest first.
    pub top: Vec<TokenDiff>,
    /// The patched base position (resolved, non-negative).
    pub base_pos: i64,
    /// The source position read (resolved, non-negative).
    pub source_pos: i64,
    /// The latent swapped.
    pub latent: i64,
    /// The latent's value at the base position before and after the swap.
    pub base_value: f64,
    /// The latent's value at the source position.
    pub source_value: f64,
}

/// `scope explain`.
#[derive(Debug, Serialize)]
pub struct ExplainReport {
    /// The latent.
    pub latent: i64,
    /// Tokens the latent's decoder direction promotes most.
    pub promoted: Vec<TokenScore>,
    /// Tokens it suppresses most.
    pub suppressed: Vec<TokenScore>,
}

/// `scope download`.
#[derive(Debug, Serialize)]
pub struct DownloadReport {
    /// Where each fetched thing lives in the cache.
    pub paths: Vec<String>,
}

/// Print `value` as one JSON object on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// A token as a table cell: visible whitespace, no newlines.
pub fn cell(token: &str) -> String {
    token.replace('\n', "\\n").replace('\t', "\\t")
}

impl GenerateReport {
    /// The human-readable form.
    pub fn print_table(&self) {
        for s in &self.steering {
            println!("steering: latent {} x {}", s.latent, s.magnitude);
        }
        println!("prompt tokens: {}", self.prompt_ids.len());
        println!(
            "new tokens:    {}",
            self.output_ids.len() - self.prompt_ids.len()
        );
        println!("---");
        println!("{}", self.text);
    }
}

impl LatentsReport {
    /// The human-readable form.
    pub fn print_table(&self) {
        println!(
            "layer {} residual, L0 counts latents > {}",
            self.layer, self.threshold
        );
        println!(
            "{:>4}  {:<16} {:>6}  {:>8} {:>10}  top",
            "pos", "token", "L0", "max", "value"
        );
        for (i, token) in self.tokens.iter().enumerate() {
            let top: Vec<String> = self.top[i]
                .iter()
                .map(|lv| format!("{}:{:.3}", lv.latent, lv.value))
                .collect();
            println!(
                "{:>4}  {:<16} {:>6}  {:>8} {:>10.3}  {}",
                i,
                cell(token),
                self.l0[i],
                self.max_latent[i],
                self.max_value[i],
                top.join(" ")
            );
        }
    }
}

impl PatchReport {
    /// The human-readable form.
    pub fn print_table(&self) {
        println!(
            "latent {}: source position {} (value {:.4}) -> base position {} (value {:.4})",
            self.latent, self.source_pos, self.source_value, self.base_pos, self.base_value
        );
        println!(
            "next-token logit differences at base position {} (intervened - original):",
            self.position
        );
        for d in &self.top {
            println!(
                "  {:>+10.4}  {:>7}  {}",
                d.logit_diff,
                d.token_id,
                cell(&d.token)
            );
        }
    }
}

impl ExplainReport {
    /// The human-readable form.
    pub fn print_table(&self) {
        println!("latent {}: promoted", self.latent);
        for t in &self.promoted {
            println!(
                "  {:>+10.4}  {:>7}  {}",
                t.score,
                t.token_id,
                cell(&t.token)
            );
        }
        println!("latent {}: suppressed", self.latent);
        for t in &self.suppressed {
            println!(
                "  {:>+10.4}  {:>7}  {}",
                t.score,
                t.token_id,
                cell(&t.token)
            );
        }
    }
}
