//! Hugging Face Hub resolution: the standard cache layout
//! (`models--org--name/{refs/<rev>, snapshots/<commit>/...}`), read directly when offline, and
//! `hf-hub`'s sync API (which fills that same cache) when online.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::error::{Error, Result};
use crate::files::{is_hub_id, shard_names, HubOptions, ModelFiles, INDEX_FILE, SINGLE_FILE};

const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const TOKENIZER: &str = "tokenizer.json";

/// Resolves `repo_id` at `options.revision` to local files, downloading when online.
pub fn resolve(repo_id: &str, options: &HubOptions) -> Result<ModelFiles> {
    if options.offline {
        resolve_from_cache(repo_id, options)
    } else {
        resolve_online(repo_id, options)
    }
}

/// The cache folder of a model repository: `models--org--name`.
pub fn repo_folder(cache_dir: &Path, repo_id: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo_id.replace('/', "--")))
}

/// The snapshot directory for `revision`: a commit hash directly, or the commit a ref names.
pub fn snapshot_dir(cache_dir: &Path, repo_id: &str, revision: &str) -> Result<PathBuf> {
    let repo = repo_folder(cache_dir, repo_id);
    let direct = repo.join("snapshots").join(revision);
    if is_commit_hash(revision) && direct.is_dir() {
        return Ok(direct);
    }
    let ref_path = repo.join("refs").join(revision);
    let commit = std::fs::read_to_string(&ref_path).map_err(|e| Error::Hub {
        repo: repo_id.to_string(),
        file: ref_path.display().to_string(),
        reason: format!("offline and revision `{revision}` is not in the cache: {e}"),
    })?;
    let dir = repo.join("snapshots").join(commit.trim());
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(Error::Hub {
            repo: repo_id.to_string(),
            file: dir.display().to_string(),
            reason: "snapshot named by the ref is missing from the cache".into(),
        })
    }
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn resolve_from_cache(repo_id: &str, options: &HubOptions) -> Result<ModelFiles> {
    let dir = snapshot_dir(&options.cache_dir, repo_id, &options.revision)?;
    let missing = |file: &str| Error::Hub {
        repo: repo_id.to_string(),
        file: file.to_string(),
        reason: format!(
            "offline (HF_HUB_OFFLINE) and not in the cache at {}",
            dir.display()
        ),
    };
    let config = dir.join(CONFIG);
    if !config.is_file() {
        return Err(missing(CONFIG));
    }
    let weights = if dir.join(SINGLE_FILE).is_file() {
        vec![dir.join(SINGLE_FILE)]
    } else if dir.join(INDEX_FILE).is_file() {
        let mut files = Vec::new();
        for name in shard_names(&dir.join(INDEX_FILE))? {
            let path = dir.join(&name);
            if !path.is_file() {
                return Err(missing(&name));
            }
            files.push(path);
        }
        files
    } else {
        return Err(missing(SINGLE_FILE));
    };
    Ok(ModelFiles {
        generation_config: existing(dir.join(GENERATION_CONFIG)),
        tokenizer: existing(dir.join(TOKENIZER)),
        config,
        weights,
        dir,
    })
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn resolve_online(repo_id: &str, options: &HubOptions) -> Result<ModelFiles> {
    let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(options.cache_dir.clone()))
        .with_progress(options.progress)
        .with_token(options.token.clone());
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| Error::Hub {
        repo: repo_id.to_string(),
        file: String::new(),
        reason: e.to_string(),
    })?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        options.revision.clone(),
    ));
    let get = |file: &str| {
        repo.get(file).map_err(|e| Error::Hub {
            repo: repo_id.to_string(),
            file: file.to_string(),
            reason: e.to_string(),
        })
    };
    let config = get(CONFIG)?;
    let weights = match get(INDEX_FILE) {
        Ok(index) => shard_names(&index)?
            .iter()
            .map(|name| get(name))
            .collect::<Result<Vec<_>>>()?,
        Err(_) => vec![get(SINGLE_FILE)?],
    };
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(ModelFiles {
        generation_config: optional(&repo, GENERATION_CONFIG),
        tokenizer: optional(&repo, TOKENIZER),
        config,
        weights,
        dir,
    })
}

/// A file that may legitimately be absent from the repository.
fn optional(repo: &ApiRepo, file: &str) -> Option<PathBuf> {
    repo.get(file).ok()
}

impl ModelFiles {
    /// A local directory if `source` is one, otherwise a Hub id such as `google/gemma-2-2b`.
    pub fn resolve(source: &str, hub: &HubOptions) -> Result<Self> {
        let path = Path::new(source);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if is_hub_id(source) {
            return resolve(source, hub);
        }
        Err(Error::MissingFile {
            path: path.to_path_buf(),
        })
    }
}
