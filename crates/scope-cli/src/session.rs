//! Loading what a command needs from its flags: the model, its tokenizer, the SAE.

use anyhow::{bail, Context, Result};
use gemma_model::{
    parse_device, parse_dtype, DTypeSpec, Gemma2Model, GemmaTokenizer, HubOptions, ModelFiles,
};
use tch::{Device, Kind};

use crate::args::{GenerationArgs, ModelArgs};

/// A loaded model and its tokenizer.
pub struct Session {
    /// The model.
    pub model: Gemma2Model,
    /// Its tokenizer.
    pub tokenizer: GemmaTokenizer,
}

impl Session {
    /// Load the model named by `--model` on `--device` in `--dtype`.
    pub fn open(args: &ModelArgs) -> Result<Session> {
        let device = parse_device(&args.device)?;
        let dtype = cli_dtype(&args.dtype, device)?;
        let hub = HubOptions::from_env();
        let files = ModelFiles::resolve(&args.model, &hub)
            .with_context(|| format!("cannot find model `{}`", args.model))?;
        let tokenizer_path = files.tokenizer.clone().with_context(|| {
            format!(
                "model `{}` has no tokenizer.json in {}",
                args.model,
                files.dir.display()
            )
        })?;
        let tokenizer = GemmaTokenizer::from_file(&tokenizer_path)?;
        let spinner = progress(format!("loading {} ({device:?})", args.model));
        let model = Gemma2Model::load_files(&files, dtype, device)
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
        let total = (prompt_len + new_tokens) as i64;
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
    use gemma_model::{DecodeMode, GenerationConfig, Sampling};
    let mut config = GenerationConfig::greedy(args.max_new_tokens);
    config.decode = DecodeMode::parse(&args.decode)?;
    if args.sample {
        if !(args.top_p > 0.0 && args.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", args.top_p);
        }
        if args.top_k < 0 {
            bail!("--top-k must be >= 0, got {}", args.top_k);
        }
        config.sampling = Sampling::Sample {
            temperature: args.temperature,
            top_k: (args.top_k > 0).then_some(args.top_k),
            top_p: (args.top_p < 1.0).then_some(args.top_p),
            seed: args.seed as i64,
        };
    }
    Ok(config)
}

/// An SAE loaded next to a model, with the site it reads.
pub struct LoadedSae {
    /// The SAE, on the model's device, in f32.
    pub sae: sae::Sae,
    /// Where it reads and writes.
    pub site: intervene::Site,
}

impl LoadedSae {
    /// Resolve and load `--sae` for `session`'s model, on its device; `--layer` overrides or
    /// supplies the layer the name does not say.
    pub fn open(args: &crate::args::SaeArgs, session: &Session) -> Result<LoadedSae> {
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
        let named = sae.site();
        let site = match (args.layer, named) {
            (Some(layer), Some(site)) => intervene::Site::new(layer, site.kind),
            (Some(layer), None) => intervene::Site::new(layer, intervene::SiteKind::BlockOutput),
            (None, Some(site)) => site,
            (None, None) => bail!(
                "the SAE `{}` does not say which layer it reads: pass --layer L",
                args.sae
            ),
        };
        let layers = session.model.config().num_hidden_layers;
        if site.layer >= layers {
            bail!(
                "layer {} is out of range: the model has {layers} layers (0..={})",
                site.layer,
                layers.saturating_sub(1)
            );
        }
        let catalog = intervene::HookedModel::site_catalog(&session.model);
        let width = catalog
            .get(site)
            .map(|info| info.width)
            .with_context(|| format!("the model has no site {site}"))?;
        sae.check_d_in(width)
            .with_context(|| format!("SAE `{}` does not fit this model's {site}", args.sae))?;
        Ok(LoadedSae { sae, site })
    }

    /// The intervention-graph component of the SAE's site.
    pub fn component(&self) -> intervene::Component {
        intervene::Component::typed(self.site.kind.type_name(), self.site.layer)
    }

    /// A latent index checked against the SAE's width.
    pub fn check_latent(&self, latent: i64) -> Result<i64> {
        let width = self.sae.d_sae();
        if !(0..width).contains(&latent) {
            bail!(
                "latent {latent} is out of range: the SAE has {width} latents (0..={})",
                width - 1
            );
        }
        Ok(latent)
    }
}

/// A 0-based position (negative counts from the end) checked against a sequence of `len`.
pub fn resolve_position(position: i64, len: usize, what: &str) -> Result<i64> {
    let len = len as i64;
    let resolved = if position < 0 {
        len + position
    } else {
        position
    };
    if !(0..len).contains(&resolved) {
        bail!(
            "{what} {position} is out of range for a prompt of {len} tokens (0..={})",
            len - 1
        );
    }
    Ok(resolved)
}
