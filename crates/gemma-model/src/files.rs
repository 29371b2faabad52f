//! The files of a checkpoint (`config.json`, `generation_config.json`, `tokenizer.json`, one
//! safetensors file or the shards named by `model.safetensors.index.json`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::GemmaConfig;
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
    pub fn read_config(&self) -> Result<GemmaConfig> {
        let mut config = GemmaConfig::from_json_str(
            &std::fs::read_to_string(&self.config).map_err(|e| Error::io(&self.config, e))?,
            &self.config,
        )?;
        if let Some(gen) = &self.generation_config {
            config.apply_generation_config(gen)?;
        }
        Ok(config)
    }
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
    let invalid = |reason: String| Error::InvalidConfig {
        path: index.to_path_buf(),
        key: "weight_map".into(),
        reason,
    };
    // A set beside the list: an index naming many distinct files must not cost a quadratic
    // scan before the first missing one is reported.
    let (mut names, mut seen) = (Vec::new(), HashSet::new());
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| invalid(format!("expected file names, got {file}")))?;
        // Shards sit beside the index: a name with a directory part (`../x`, `/etc/x`) would
        // read, or fetch, a file elsewhere.
        if !is_plain_file_name(file) {
            return Err(invalid(format!(
                "`{file}` is not a plain file name beside the index"
            )));
        }
        if seen.insert(file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}

/// A file name with no directory part: not empty, not `.` or `..`, no `/` or `\`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}
