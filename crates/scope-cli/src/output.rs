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
    /// How the decode steps ran: `eager` (bit-identical to transformers), `fixed`, `graph`
    /// or `fused` (see `--decode`).
    pub decode: &'static str,
    /// The steering applied, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steering: Vec<SteeringReport>,
}

impl GenerateReport {
    /// The report of `new_tokens` generated after `prompt_ids`, decoded.
    pub fn new(
        session: &crate::session::Session,
        prompt_ids: Vec<i64>,
        new_tokens: Vec<i64>,
        decode: &'static str,
    ) -> anyhow::Result<Self> {
        let mut output_ids = prompt_ids.clone();
        output_ids.extend(&new_tokens);
        Ok(GenerateReport {
            completion: session.tokenizer.decode(&new_tokens, true)?,
            text: session.tokenizer.decode(&output_ids, true)?,
            prompt_ids,
            output_ids,
            decode,
            steering: Vec::new(),
        })
    }
}

/// One steered latent.
#[derive(Debug, Serialize)]
pub struct SteeringReport {
    /// The latent.
    pub latent: i64,
    /// Its magnitude.
    pub magnitude: f64,
}

impl SteeringReport {
    /// The reports of `(latent, magnitude)` pairs.
    pub fn of(pairs: &[(i64, f64)]) -> Vec<Self> {
        pairs
            .iter()
            .map(|&(latent, magnitude)| SteeringReport { latent, magnitude })
            .collect()
    }
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
    /// The site it reads there (`block_output`, `attention_value_output`,
    /// `post_feedforward_norm_output`, or a transcoder's `mlp_input`).
    pub site: String,
    /// Whether it is a transcoder (it writes the post-feedforward norm's output).
    pub transcoder: bool,
    /// Per token, the value of the one latent asked for (the server's `latent` field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latent_values: Option<Vec<f64>>,
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
    /// Why the result may say less than it seems (the latent is 0 at the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
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

/// `scope eval`: reconstruction quality over the texts' tokens, `<bos>` and padding excluded.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// Tokens counted.
    pub tokens: usize,
    /// The threshold L0 counts above.
    pub l0_threshold: f64,
    /// Mean L0 per token.
    pub mean_l0: f64,
    /// `mean((x̂ − x)²)` over every counted element.
    pub mse: f64,
    /// `1 − mse / var(x)` (the Gemma Scope tutorial's form).
    pub explained_variance: f64,
    /// `mean_t [1 − ‖x_t − x̂_t‖² / ‖x_t − μ‖²]` (SAELens' per-token form).
    pub explained_variance_per_token: f64,
    /// `1 − Σ‖x − x̂‖² / Σ‖x − μ‖²` (the conventional form, SAELens' since 6.45.1).
    pub explained_variance_conventional: f64,
    /// Next-token cross-entropy of the clean model.
    pub ce_clean: f64,
    /// With the reconstruction spliced in at every position but `<bos>`.
    pub ce_spliced: f64,
    /// `ce_spliced − ce_clean`.
    pub delta_ce: f64,
    /// The same with the SAE error added back (0 up to rounding).
    pub delta_ce_with_error: f64,
    /// Mean `KL(clean ‖ spliced)` per position.
    pub kl: f64,
    /// The same with the SAE error added back.
    pub kl_with_error: f64,
}

impl EvalReport {
    /// The human-readable form.
    pub fn print_table(&self) {
        let rows = [
            ("tokens (no <bos>, no padding)", self.tokens as f64),
            ("mean L0", self.mean_l0),
            ("MSE", self.mse),
            ("explained variance (tutorial)", self.explained_variance),
            (
                "explained variance (per token)",
                self.explained_variance_per_token,
            ),
            (
                "explained variance (conventional)",
                self.explained_variance_conventional,
            ),
            ("CE clean", self.ce_clean),
            ("CE spliced", self.ce_spliced),
            ("delta CE", self.delta_ce),
            ("delta CE with error term", self.delta_ce_with_error),
            ("KL(clean || spliced)", self.kl),
            ("KL with error term", self.kl_with_error),
        ];
        println!("L0 counts latents > {}", self.l0_threshold);
        for (name, value) in rows {
            println!("  {name:<34} {value:>12.6}");
        }
    }
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

/// The site an SAE reads, for a table's header: `residual` for the block output.
fn site_words(site: &str, transcoder: bool) -> String {
    let site = if site == "block_output" {
        "residual"
    } else {
        site
    };
    if transcoder {
        format!("{site} (transcoder)")
    } else {
        site.to_string()
    }
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
            "new tokens:    {} ({} decode)",
            self.output_ids.len() - self.prompt_ids.len(),
            self.decode
        );
        println!("---");
        println!("{}", self.text);
    }
}

impl LatentsReport {
    /// The human-readable form.
    pub fn print_table(&self) {
        println!(
            "layer {} {}, L0 counts latents > {}",
            self.layer,
            site_words(&self.site, self.transcoder),
            self.threshold
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
        if let Some(warning) = &self.warning {
            println!("warning: {warning}");
        }
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

/// One example of a latent firing (`scope top`).
#[derive(Debug, Serialize)]
pub struct TopExample {
    /// The text's index, in the order given (`--prompt`s first, then the file's lines).
    pub text: usize,
    /// The token position in that text (0 is `<bos>`).
    pub position: usize,
    /// The token there.
    pub token_id: i64,
    /// The token as a string.
    pub token: String,
    /// The latent's activation there.
    pub value: f64,
    /// The tokens around it, the example's token in `[[ ]]`.
    pub context: String,
}

/// One latent's examples (`scope top`).
#[derive(Debug, Serialize)]
pub struct LatentExamples {
    /// The latent.
    pub latent: i64,
    /// Its strongest activations, best first; empty when it never fired.
    pub examples: Vec<TopExample>,
}

/// `scope top`.
#[derive(Debug, Serialize)]
pub struct TopReport {
    /// The layer the SAE reads.
    pub layer: usize,
    /// The site it reads there (`block_output`, `attention_value_output`,
    /// `post_feedforward_norm_output`, or a transcoder's `mlp_input`).
    pub site: String,
    /// Whether it is a transcoder (it writes the post-feedforward norm's output).
    pub transcoder: bool,
    /// How many texts were searched.
    pub texts: usize,
    /// How many token positions were searched (without `<bos>` unless asked for).
    pub tokens: usize,
    /// Per latent, in the order asked for.
    pub latents: Vec<LatentExamples>,
}

impl TopReport {
    /// The readable form.
    pub fn print_table(&self) {
        println!(
            "layer {} {}: strongest activations over {} texts ({} tokens)",
            self.layer,
            site_words(&self.site, self.transcoder),
            self.texts,
            self.tokens
        );
        for latent in &self.latents {
            println!("latent {}:", latent.latent);
            if latent.examples.is_empty() {
                println!("  never fired on these texts");
                continue;
            }
            println!("  {:>10}  {:>5}  {:>4}  context", "value", "text", "pos");
            for e in &latent.examples {
                println!(
                    "  {:>10.4}  {:>5}  {:>4}  {}",
                    e.value, e.text, e.position, e.context
                );
            }
        }
    }
}

/// The error and its causes on one line, without repeating a cause its parent already quotes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}
