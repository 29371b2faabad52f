//! Loading what a command needs from its flags: the model, its tokenizer, the SAE.

use anyhow::{bail, Context, Result};
use gemma_model::{
    parse_device, parse_dtype, DTypeSpec, GemmaModel, GemmaTokenizer, HubOptions, ModelFiles,
};
use tch::{Device, Kind};

use crate::args::{GenerationArgs, LoadArgs};

/// A loaded model and its tokenizer.
pub struct Session {
    /// The model.
    pub model: GemmaModel,
    /// Its tokenizer.
    pub tokenizer: GemmaTokenizer,
}

impl Session {
    /// Load the model named by `--model` on `--device` in `--dtype`.
    pub fn open(args: &LoadArgs) -> Result<Session> {
        let device = parse_device(&args.device)?;
        let dtype = cli_dtype(&args.dtype, device)?;
        let hub = HubOptions::from_env();
        let files = ModelFiles::resolve(&args.model, &hub)
            .with_context(|| format!("cannot find model `{}`", args.model))?;
        let config = files
            .read_config()
            .with_context(|| format!("cannot load model `{}`", args.model))?;
        let tokenizer = gemma_model::open_tokenizer(&files, &config)?;
        let spinner = progress(format!("loading {} ({device:?})", args.model));
        let dtype = gemma_model::resolve_dtype(dtype, config.torch_dtype.as_deref())?;
        let model = GemmaModel::from_files(&files, config, dtype, device)
            .with_context(|| format!("cannot load model `{}`", args.model))?;
        spinner.finish_and_clear();
        Ok(Session { model, tokenizer })
    }

    /// The prompt as token ids (with `<bos>`, or through the chat template), checked against
    /// the model's context.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<i64>> {
        if prompt.trim().is_empty() {
            bail!("the prompt is empty");
        }
        let ids = if chat {
            let messages = [gemma_model::ChatMessage::new("user", prompt)];
            self.tokenizer.encode_chat(&messages, true)?
        } else {
            self.tokenizer.encode(prompt, true)?
        };
        self.check_fits(ids.len(), 0)?;
        Ok(ids)
    }

    /// Fail when `prompt_len + new_tokens` exceeds the model's context.
    pub fn check_fits(&self, prompt_len: usize, new_tokens: usize) -> Result<()> {
        let context = self.model.config().max_position_embeddings;
        let total = i64::try_from(prompt_len.saturating_add(new_tokens)).unwrap_or(i64::MAX);
        if total > context {
            bail!(
                "the prompt ({prompt_len} tokens) plus {new_tokens} new tokens exceeds the model's context of {context} tokens"
            );
        }
        Ok(())
    }

    /// The token ids as strings, one per id.
    pub fn token_strings(&self, ids: &[i64]) -> Result<Vec<String>> {
        ids.iter()
            .map(|id| Ok(self.tokenizer.decode(&[*id], false)?))
            .collect()
    }
}

/// A spinner on stderr for a long step (hidden when stderr is not a terminal).
fn progress(message: String) -> indicatif::ProgressBar {
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// `--dtype auto` means bf16 on CUDA and f32 on CPU (not the stored dtype).
fn cli_dtype(spec: &str, device: Device) -> Result<DTypeSpec> {
    Ok(match parse_dtype(spec)? {
        DTypeSpec::Auto if device.is_cuda() => DTypeSpec::Fixed(Kind::BFloat16),
        DTypeSpec::Auto => DTypeSpec::Fixed(Kind::Float),
        fixed => fixed,
    })
}

/// The model's generation settings from the CLI flags.
pub fn generation_config(args: &GenerationArgs) -> Result<gemma_model::GenerationConfig> {
    let mut config = gemma_model::GenerationConfig::greedy(args.max_new_tokens);
    config.decode = gemma_model::DecodeMode::parse(&args.decode)?;
    config.sampling = sampling(
        args.sample,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
    )?;
    Ok(config)
}

/// Greedy, or sampling with these settings, checked.
pub fn sampling(
    sample: bool,
    temperature: f64,
    top_k: i64,
    top_p: f64,
    seed: u64,
) -> Result<gemma_model::Sampling> {
    if !sample {
        return Ok(gemma_model::Sampling::Greedy);
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        bail!("top_p (--top-p) must be in (0, 1], got {top_p}");
    }
    if top_k < 0 {
        bail!("top_k (--top-k) must be >= 0, got {top_k}");
    }
    Ok(gemma_model::Sampling::Sample {
        temperature,
        top_k: (top_k > 0).then_some(top_k),
        top_p: (top_p < 1.0).then_some(top_p),
        seed: seed as i64,
    })
}

/// The SAE named by the flags, loaded on the model's device in the chosen dtype and placed
/// at its site (checked against the model).
pub fn open_sae(args: &crate::args::SaeArgs, session: &Session) -> Result<scope::SaeAt> {
    let resolved = sae::resolve(&args.sae, &sae::HubOptions::from_env())
        .with_context(|| format!("cannot find SAE `{}`", args.sae))?;
    let spinner = progress(format!("loading SAE {}", args.sae));
    let sae = sae::Sae::load(&resolved, session.model.device())
        .with_context(|| format!("cannot load SAE `{}`", args.sae))?;
    let dtype = match args.sae_dtype.as_str() {
        "model" => session.model.dtype(),
        other => match parse_dtype(other)? {
            DTypeSpec::Fixed(kind) => kind,
            DTypeSpec::Auto => session.model.dtype(),
        },
    };
    let sae = sae
        .to_dtype(dtype)
        .with_context(|| format!("cannot convert SAE `{}` to {dtype:?}", args.sae))?;
    spinner.finish_and_clear();
    if args.layer.is_none() && sae.site().is_none() && sae.info().layer.is_none() {
        bail!(
            "the SAE `{}` does not say which layer it reads: pass --layer L",
            args.sae
        );
    }
    let placement = scope::Placement {
        layer: args.layer,
        family: args
            .site
            .as_deref()
            .map(scope::Placement::parse_site)
            .transpose()?,
    };
    scope::SaeAt::place(sae, placement, &session.model)
        .with_context(|| format!("SAE `{}` does not fit this model", args.sae))
}

/// `--cache-gib`, checked: a positive number.
pub fn check_cache_gib(cache_gib: f64) -> Result<()> {
    if !(cache_gib > 0.0 && cache_gib.is_finite()) {
        bail!("--cache-gib must be a positive number, got {cache_gib}");
    }
    Ok(())
}

/// The engine's limits: `rows` slots of `context` positions, as many as fit in `cache_gib`
/// GiB of KV cache (`--cache-gib`).
pub fn engine_limits(
    model: &GemmaModel,
    rows: usize,
    context: usize,
    cache_gib: f64,
) -> Result<scope_engine::Limits> {
    check_cache_gib(cache_gib)?;
    let budget = (cache_gib * f64::from(1u32 << 30)) as u64;
    scope_engine::Limits::within_budget(model, rows, context, budget).context("--cache-gib")
}

/// How the engine runs `model`'s decode steps for `--decode NAME`.
pub fn engine_mode(
    model: &gemma_model::GemmaModel,
    decode: &str,
) -> Result<scope_engine::EngineMode> {
    let decode = gemma_model::DecodeMode::parse(decode).context("--decode")?;
    scope_engine::EngineMode::for_decode(model, decode).context("--decode")
}
