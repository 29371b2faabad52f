//! Command-line arguments of `scope`.

use clap::{Args, Parser, Subcommand};

/// Look inside Gemma 2 with Gemma Scope sparse autoencoders, and steer it.
#[derive(Debug, Parser)]
#[command(name = "scope", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text (greedy by default, or sampled).
    Generate(GenerateArgs),
    /// Read an SAE's latents per token at the site it reads (a transcoder's: the MLP input).
    Latents(LatentsArgs),
    /// Generate with `magnitude * W_dec[latent]` added at every position and generated token.
    Steer(SteerArgs),
    /// Swap one SAE latent from a source position into a base position; report the logits that moved.
    Patch(PatchArgs),
    /// The logit lens of a latent: the tokens its decoder direction promotes and suppresses.
    Explain(ExplainArgs),
    /// How well the SAE reconstructs the model on some text: L0, MSE, explained variance, and the
    /// change in next-token loss and the KL when it is spliced in.
    Eval(EvalArgs),
    /// The texts and tokens where some latents fire most (a feature dashboard's examples).
    Top(TopArgs),
    /// Feature statistics over a corpus for one or more SAEs from one forward pass: density,
    /// histogram, top examples per latent, and reconstruction metrics (`sweep merge` combines
    /// shards).
    Sweep(SweepArgs),
    /// Static HTML pages of a sweep's results: latents by density, and a page per latent with
    /// its top examples, activation histogram and logit lens.
    Dashboard(DashboardArgs),
    /// Fetch a model and/or an SAE into the Hugging Face cache.
    Download(DownloadArgs),
    /// Serve steering and inspection over HTTP (JSON, SSE streams, OpenAI's API) with a page
    /// for the browser at `/`.
    Serve(ServeArgs),
}

/// Flags every model command takes.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which model to load, where, and in which dtype.
#[derive(Clone, Debug, Args)]
pub struct LoadArgs {
    /// A local checkpoint directory or a Hugging Face hub id (e.g. google/gemma-2-2b).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// cpu, cuda, cuda:N, or auto (CUDA when available).
    #[arg(long, default_value = "auto", value_parser = device_flag)]
    pub device: String,
    /// f32, bf16, f16, or auto (bf16 on CUDA, f32 on CPU).
    #[arg(long, default_value = "auto", value_parser = DTYPES)]
    pub dtype: String,
}

/// Flags that name an SAE.
#[derive(Debug, Args)]
pub struct SaeArgs {
    /// A local path, a hub path (google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71,
    /// google/gemma-scope-2-1b-pt/resid_post/layer_13_width_16k_l0_small), a canonical name
    /// (gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical) or a Gemma Scope 2
    /// release and SAE id (gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small).
    #[arg(long, value_name = "PATH|HUB_PATH|CANONICAL|RELEASE/SAE_ID")]
    pub sae: String,
    /// The layer the SAE reads (a transcoder writes the same layer); needed only when the SAE's
    /// name does not say it, or to read another layer than it says.
    #[arg(long)]
    pub layer: Option<usize>,
    /// What the SAE reads and writes, when its name does not say it or to override it:
    /// resid_post (the decoder layer's output), attn_out (the heads entering o_proj), mlp_out
    /// (the post-feedforward norm's output), or transcoder (reads the MLP input, writes the
    /// post-feedforward norm's output).
    #[arg(long, value_parser = SITES)]
    pub site: Option<String>,
    /// The SAE's dtype: f32 (the Gemma Scope tutorial's), bf16 or f16 (half the memory), or
    /// `model` for the model's.
    #[arg(long, default_value = "f32", value_parser = SAE_DTYPES)]
    pub sae_dtype: String,
}

/// Generation flags shared by `generate` and `steer`.
#[derive(Debug, Args)]
pub struct GenerationArgs {
    /// The prompt.
    #[arg(
        long,
        required_unless_present = "requests",
        conflicts_with = "requests"
    )]
    pub prompt: Option<String>,
    /// Many requests, one JSON object a line (`id`, `prompt`, optionally `steer`,
    /// `max_new_tokens`, `sample`, `temperature`, `top_k`, `top_p`, `seed`, `chat`,
    /// `top_latents`), run
    /// together with continuous batching; one JSON line per request on stdout as it finishes.
    /// The sampling flags and --max-new-tokens are the defaults of every line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub requests: Option<std::path::PathBuf>,
    /// With --requests: at most this many requests decode together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_batch: u64,
    /// With --requests: the KV cache's budget in GiB; fewer requests decode together when
    /// --max-batch slots of the longest request would not fit.
    #[arg(long, default_value_t = 4.0)]
    pub cache_gib: f64,
    /// How many tokens to generate at most.
    #[arg(long, default_value_t = 50)]
    pub max_new_tokens: usize,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Keep only the K most likely tokens when sampling (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches P when sampling (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Random seed for sampling (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt in the Gemma chat template (for -it models).
    #[arg(long)]
    pub chat: bool,
    /// How decode steps run: auto (a CUDA graph replayed per token on a GPU when the
    /// interventions allow it, scope's fused kernels for a float32 or bf16 model on an AVX2 or
    /// AVX-512 CPU, per-step calls otherwise), eager (per-step libtorch calls, bit-identical to
    /// transformers), fixed (fixed-shape steps, what the graph replays), graph or fused (an
    /// error where they cannot be used). On the fused kernels a bf16 model runs about twice as
    /// fast as f32, its prompt bit-identical to transformers' bf16, its decode steps as
    /// accurate but not bit-identical. With --requests: how the engine runs them all (eager:
    /// one request at a time; fixed or graph: libtorch's batched steps).
    #[arg(long, default_value = "auto", value_parser = gemma_model::DecodeMode::NAMES)]
    pub decode: String,
}

/// `scope generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// `scope latents`.
#[derive(Debug, Args)]
pub struct LatentsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// A latent counts towards L0 when its activation is above this (the tutorial uses 1).
    #[arg(long, default_value_t = 1.0)]
    pub threshold: f64,
    /// How many of the strongest latents to list per token.
    #[arg(long, default_value_t = 5)]
    pub top_k: i64,
}

/// `scope steer`.
#[derive(Debug, Args)]
pub struct SteerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// The latent whose decoder direction is added.
    #[arg(long, conflicts_with = "requests")]
    pub latent: Option<i64>,
    /// The magnitude of the added direction.
    #[arg(long, allow_negative_numbers = true)]
    pub magnitude: Option<f64>,
    /// More latents as LATENT:MAGNITUDE (repeatable).
    #[arg(
        long = "steer",
        value_name = "LATENT:MAGNITUDE",
        allow_negative_numbers = true,
        conflicts_with = "requests"
    )]
    pub steer: Vec<String>,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// `scope patch`.
#[derive(Debug, Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// The prompt that is patched.
    #[arg(long)]
    pub base: String,
    /// The prompt the latent is taken from.
    #[arg(long)]
    pub source: String,
    /// Token position in the source (0-based, counting `<bos>`; negative counts from the end).
    #[arg(long, allow_negative_numbers = true)]
    pub source_pos: i64,
    /// Token position in the base (0-based, counting `<bos>`; negative counts from the end).
    #[arg(long, allow_negative_numbers = true)]
    pub base_pos: i64,
    /// The latent to swap.
    #[arg(long)]
    pub latent: i64,
    /// How many of the most-moved next-token logits to report.
    #[arg(long, default_value_t = 10)]
    pub top_k: i64,
    /// Add the SAE's reconstruction error back (pyvene does not).
    #[arg(long)]
    pub keep_error: bool,
}

/// `scope explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// The latent.
    pub latent: i64,
    /// How many tokens to list each way.
    #[arg(long, default_value_t = 10)]
    pub top_k: i64,
}

/// `scope eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// A text to evaluate on (repeatable; the texts form one left-padded batch).
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// A latent counts towards L0 when its activation is above this (SAELens uses 0).
    #[arg(long, default_value_t = 0.0)]
    pub threshold: f64,
}

/// `scope top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// A latent to find examples of (repeatable).
    #[arg(long = "latent", required = true)]
    pub latents: Vec<i64>,
    /// A text to search (repeatable).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// A UTF-8 file of texts to search, one per line (blank lines are skipped).
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// How many examples to keep per latent.
    #[arg(long, default_value_t = 5)]
    pub top_k: i64,
    /// How many tokens of context to show before an example's token (two are shown after).
    #[arg(long, default_value_t = 8)]
    pub context: usize,
    /// How many texts go through the model per call (end-padded to the longest of them).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Count the `<bos>` position too (skipped by default: its residual stream is an outlier
    /// that many latents fire on).
    #[arg(long)]
    pub include_bos: bool,
}

/// `scope sweep`: a run, or `scope sweep merge`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SweepArgs {
    /// `merge`: combine the shards of a sweep.
    #[command(subcommand)]
    pub merge: Option<SweepCommand>,
    /// The model (a nested flatten would hide the group clap needs to see these flags).
    #[command(flatten)]
    pub load: Option<LoadArgs>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: Option<SweepRunArgs>,
}

/// `scope sweep`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Combine finished shards (`--shard I/N` runs) into one result, equal to an unsharded run.
    Merge(MergeArgs),
}

/// `scope sweep merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shards' output directories.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<std::path::PathBuf>,
    /// Where the merged result goes.
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `scope sweep` (a run).
#[derive(Debug, Args)]
pub struct SweepRunArgs {
    /// An SAE (repeatable: all of them share one forward pass). Names as for the other commands.
    #[arg(
        long = "sae",
        required = true,
        value_name = "PATH|HUB_PATH|CANONICAL|RELEASE/SAE_ID"
    )]
    pub saes: Vec<String>,
    /// The layer an SAE reads, when its name does not say it: once for all SAEs, or once per --sae.
    #[arg(long = "layer")]
    pub layers: Vec<usize>,
    /// What an SAE reads and writes (resid_post, attn_out, mlp_out, transcoder), when its name
    /// does not say it: once for all SAEs, or once per --sae.
    #[arg(long = "site", value_parser = SITES)]
    pub sites: Vec<String>,
    /// The SAEs' dtype: f32, bf16, f16, or `model`.
    #[arg(long, default_value = "f32", value_parser = SAE_DTYPES)]
    pub sae_dtype: String,
    /// The corpus (repeatable): .txt (a document a line), .jsonl, .parquet, or a directory of them.
    #[arg(long = "file", required = true, value_name = "PATH")]
    pub files: Vec<std::path::PathBuf>,
    /// The JSON field or Parquet column that holds the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Where the results go: one folder per SAE, and the sweep's state (its checkpoint).
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// Tokens per document, `<bos>` included; longer documents are cut.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// Documents per forward pass (end-padded to the longest); also the unit of sharding.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Examples kept per latent.
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Take part I of N of the corpus (blocks of --batch documents, block b going to shard b mod N).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Count the `<bos>` position too (skipped by default: many latents fire on it).
    #[arg(long)]
    pub include_bos: bool,
    /// Also measure ΔCE and KL with each SAE's reconstruction spliced in (three more passes).
    #[arg(long)]
    pub downstream: bool,
    /// Continue the run whose checkpoint is in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seconds between checkpoints (0: after every batch).
    #[arg(long, default_value_t = 60.0)]
    pub checkpoint_secs: f64,
}

/// `scope dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// A sweep's output directory, or one SAE's folder in it.
    #[arg(value_name = "DIR")]
    pub dir: std::path::PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sae: SaeArgs,
    /// Where the pages go.
    #[arg(long, value_name = "HTML_DIR")]
    pub out: std::path::PathBuf,
    /// Pages for at most this many latents (those that fire most often); the pages an
    /// earlier run left in HTML_DIR for other latents are removed.
    #[arg(long, default_value_t = 1000)]
    pub max_pages: usize,
    /// Tokens shown per direction in each latent's logit lens.
    #[arg(long, default_value_t = 10)]
    pub lens_k: i64,
}

/// `scope download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// A hub model id, e.g. google/gemma-2-2b.
    #[arg(long)]
    pub model: Option<String>,
    /// A hub SAE path, e.g. google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71.
    #[arg(long)]
    pub sae: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The spellings `--dtype` accepts.
const DTYPES: [&str; 8] = [
    "auto", "f32", "float32", "bf16", "bfloat16", "f16", "float16", "half",
];

/// The names `--site` accepts (Gemma Scope 2's folder names).
const SITES: [&str; 4] = scope::Placement::SITE_NAMES;

/// The spellings `--sae-dtype` accepts.
const SAE_DTYPES: [&str; 8] = [
    "f32", "float32", "bf16", "bfloat16", "f16", "float16", "half", "model",
];

/// `--device` must be `cpu`, `cuda`, `cuda:N` or `auto`; whether CUDA is there is checked later.
fn device_flag(value: &str) -> Result<String, String> {
    let ok = matches!(value, "cpu" | "cuda" | "auto")
        || value
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("`{value}` is not cpu, cuda, cuda:N or auto"))
    }
}

/// `scope serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: LoadArgs,
    /// An SAE, as `--sae PATH|HUB_PATH|CANONICAL` or `--sae NAME=PATH…`; repeat for more.
    /// Requests pick one by name with `"sae"` (an unnamed one is named by what was given);
    /// the first is the default.
    #[arg(long = "sae", value_name = "[NAME=]SAE", required = true)]
    pub saes: Vec<String>,
    /// The layer the SAEs read; needed only when a name does not say it, or to override it.
    #[arg(long)]
    pub layer: Option<usize>,
    /// What the SAEs read and write (see `scope steer --help`), when a name does not say it.
    #[arg(long, value_parser = SITES)]
    pub site: Option<String>,
    /// The SAEs' dtype (see `scope steer --help`).
    #[arg(long, default_value = "f32", value_parser = SAE_DTYPES)]
    pub sae_dtype: String,
    /// The address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port; 0 picks a free one (printed in `listening on`).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_batch: u64,
    /// Requests accepted at once (running and waiting); more get 429 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queue: u64,
    /// Positions per request (prompt plus new tokens), at most the model's context.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(2..))]
    pub context: u64,
    /// The KV cache's budget in GiB: fewer rows than --max-batch when they do not fit.
    #[arg(long, default_value_t = 4.0)]
    pub cache_gib: f64,
    /// How decode steps run (see `scope generate --help`): auto, eager (one request at a
    /// time), fixed or graph (libtorch's batched steps), fused (the fused CPU kernels, which
    /// auto picks for a float32 or bf16 model on an AVX2 or AVX-512 CPU).
    #[arg(long, default_value = "auto", value_parser = gemma_model::DecodeMode::NAMES)]
    pub decode: String,
    /// The largest request body accepted, in KiB (larger get 413).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_body_kib: u64,
    /// Every /v1 request must send `Authorization: Bearer KEY` (default: $SCOPE_API_KEY).
    #[arg(long, env = "SCOPE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}
