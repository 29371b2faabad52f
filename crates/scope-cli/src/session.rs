//! Loading what a command needs from its flags: the model, its tokenizer, the SAE.

use anyhow::{bail, Context, Result};
use gemma_model::{
    parse_device, parse_dtype, DTypeSpec, Gemma2Model, GemmaTokenizer, HubOptions, LoadOptions,
    ModelFiles,
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
            format!("model `{}` has no tokenizer.json in {}", args.model, files.dir.display())
        })?;
        let tokenizer = GemmaTokenizer::from_file(&tokenizer_path)?;
        let options = LoadOptions {
            dtype,
            device,
            hub,
        };
        let model = Gemma2Model::load(&args.model, &options)
            .with_context(|| format!("cannot load model `{}`", args.model))?;
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
    use gemma_model::{GenerationConfig, Sampling};
    let mut config = GenerationConfig::greedy(args.max_new_tokens);
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
