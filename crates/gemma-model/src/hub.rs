//! Checkpoints from the Hugging Face Hub. Where files come from (the shared cache, offline mode,
//! downloads, the token) is [`scope_hub`]'s business, so models and SAEs follow one set of rules.

use std::path::{Path, PathBuf};

use scope_hub::{HubOptions, HubRepo};

use crate::error::Result;
use crate::files::{shard_names, ModelFiles, INDEX_FILE, SINGLE_FILE};

const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const TOKENIZER: &str = "tokenizer.json";

/// Resolves `repo_id` at `options.revision` to local files: each from the cache, else (online)
/// downloaded into it. The weights are the shards an index names, else the single file.
pub fn resolve(repo_id: &str, options: &HubOptions) -> Result<ModelFiles> {
    let repo = HubRepo::new(options, repo_id);
    let config = repo.get(CONFIG)?;
    let weights = match repo.get(INDEX_FILE) {
        Ok(index) => shard_names(&index)?
            .iter()
            .map(|name| repo.get(name))
            .collect::<scope_hub::Result<Vec<_>>>()?,
        Err(_) => vec![repo.get(SINGLE_FILE)?],
    };
    Ok(ModelFiles {
        dir: config.parent().map(Path::to_path_buf).unwrap_or_default(),
        generation_config: optional(&repo, GENERATION_CONFIG),
        tokenizer: optional(&repo, TOKENIZER),
        config,
        weights,
    })
}

/// A file that may legitimately be absent from the repository.
fn optional(repo: &HubRepo<'_>, file: &str) -> Option<PathBuf> {
    repo.get(file).ok()
}

impl ModelFiles {
    /// A local directory if `source` is one, otherwise a Hub id such as `google/gemma-2-2b`.
    pub fn resolve(source: &str, hub: &HubOptions) -> Result<Self> {
        let path = Path::new(source);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if scope_hub::is_repo_id(source) {
            return resolve(source, hub);
        }
        Err(crate::error::Error::MissingFile {
            path: path.to_path_buf(),
        })
    }
}
