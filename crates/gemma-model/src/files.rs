//! The files of a checkpoint (`config.json`, `generation_config.json`, `tokenizer.json`, one
//! safetensors file or the shards named by `model.safetensors.index.json`) and where Hub files
//! come from ([`HubOptions`]).

use std::path::{Path, PathBuf};

use crate::config::Gemma2Config;
use crate::error::{Error, Result};

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// The files of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory holding them (a snapshot directory for Hub models).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `generation_config.json`, when present.
    pub generation_config: Option<PathBuf>,
    /// The safetensors files (one, or the shards named by the index).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    /// A local directory with `config.json` and `model.safetensors` or
    /// `model.safetensors.index.json` plus its shards.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = require_file(dir.join("config.json"))?;
        let weights = local_weight_files(dir)?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            generation_config: optional_file(dir.join("generation_config.json")),
            weights,
            tokenizer: optional_file(dir.join("tokenizer.json")),
        })
    }

    /// The config with eos ids from `generation_config.json` when present.
    pub fn read_config(&self) -> Result<Gemma2Config> {
        let mut config = Gemma2Config::from_json_str(
            &std::fs::read_to_string(&self.config).map_err(|e| Error::io(&self.config, e))?,
            &self.config,
        )?;
        if let Some(gen) = &self.generation_config {
            config.apply_generation_config(gen)?;
        }
        Ok(config)
    }
}

/// Where Hub files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
    /// Serve only from the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token (`HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// Hub endpoint (`HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Show a progress bar on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// Options from the standard Hugging Face environment variables, read as `huggingface_hub`
    /// reads them (the same rules as `sae::HubOptions::from_env`, so models and SAEs share one
    /// cache).
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// Options from the variables `var` returns: `HF_HUB_CACHE`, else `HF_HOME/hub`, where
    /// `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`;
    /// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH` (default
    /// `HF_HOME/token`); `HF_HUB_OFFLINE` (1/true/yes/on); `HF_ENDPOINT`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |key: &str| non_empty(var(key));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    var("HOME")
                        .map_or_else(|| PathBuf::from("."), PathBuf::from)
                        .join(".cache")
                })
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                non_empty(std::fs::read_to_string(path).ok())
            });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubOptions {
            cache_dir,
            revision: "main".into(),
            offline,
            token,
            endpoint: var("HF_ENDPOINT"),
            progress: true,
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `org/name` with no path separators beyond the one slash.
pub(crate) fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() && !a.starts_with('.'))
}

fn require_file(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile { path })
    }
}

fn optional_file(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn local_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Err(Error::MissingFile { path: single });
    }
    shard_names(&index)?
        .into_iter()
        .map(|name| require_file(dir.join(name)))
        .collect()
}

/// The distinct shard file names of an index's `weight_map`, in first-seen order.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::MissingConfigKey {
            path: index.to_path_buf(),
            key: "weight_map".into(),
        })?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| Error::InvalidConfig {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            reason: format!("expected file names, got {file}"),
        })?;
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}
