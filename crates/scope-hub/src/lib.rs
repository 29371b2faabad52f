//! Files from the Hugging Face Hub, one set of rules for models (`gemma-model`) and SAEs (`sae`)
//! so that both read the same cache with the same token.
//!
//! [`HubOptions::from_env`] reads the environment as Python's `huggingface_hub` does, so Python
//! and Rust share downloads. [`HubRepo::get`] looks a file up in the cache first, by this crate
//! itself: `<cache>/models--<owner>--<name>/refs/<revision>` holds a commit hash, and the file is
//! `<cache>/models--<owner>--<name>/snapshots/<hash>/<file>`. A hit never touches the network.
//! On a miss, offline mode (`HF_HUB_OFFLINE=1`) gives [`Error::NotCached`]; otherwise `hf-hub`
//! downloads the file into that same cache. [`safetensors_header`] checks a downloaded
//! safetensors file's offsets before the `safetensors` crate reads them.
//!
//! ```
//! use scope_hub::{Error, HubOptions, HubRepo};
//!
//! let cache = std::env::temp_dir().join("scope-hub-doc-empty-cache");
//! let options = HubOptions::offline_in(&cache);
//! let repo = HubRepo::new(&options, "google/gemma-2-2b");
//! match repo.get("config.json") {
//!     Err(Error::NotCached { repo, file, .. }) => {
//!         assert_eq!((repo.as_str(), file.as_str()), ("google/gemma-2-2b", "config.json"));
//!     }
//!     other => panic!("expected a cache miss, got {other:?}"),
//! }
//! ```

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};

/// Why a file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Offline mode and the file is not in the local cache.
    #[error(
        "`{repo}/{file}` is not in the Hugging Face cache at {} ({reason}) and offline mode \
         (HF_HUB_OFFLINE) forbids downloading it: download it once online, or unset \
         HF_HUB_OFFLINE",
        cache_dir.display()
    )]
    NotCached {
        /// The repository, e.g. `google/gemma-scope-2b-pt-res`.
        repo: String,
        /// The file inside it.
        file: String,
        /// The cache directory searched.
        cache_dir: PathBuf,
        /// What exactly was missing (the ref, or the snapshot file).
        reason: String,
    },
    /// The download failed (network, authentication, no such file in the repository).
    #[error("downloading `{repo}/{file}` from the Hugging Face hub failed: {source}")]
    Download {
        /// The repository.
        repo: String,
        /// The file inside it.
        file: String,
        /// The hub client's error.
        #[source]
        source: Box<ApiError>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Where Hub files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache (the directory holding the `models--…` folders).
    pub cache_dir: PathBuf,
    /// Branch, tag or commit hash (default `main`).
    pub revision: String,
    /// Serve only from the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token for gated or private repositories.
    pub token: Option<String>,
    /// Hub endpoint, `https://huggingface.co` when `None` (`HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Show a progress bar on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// Options from the process environment; see [`HubOptions::from_vars`].
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// Options from the variables `var` returns, by `huggingface_hub`'s rules: the cache is
    /// `HF_HUB_CACHE`, else `HF_HOME/hub`, where `HF_HOME` defaults to
    /// `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`; the token is `HF_TOKEN`,
    /// else `HUGGING_FACE_HUB_TOKEN`, else the contents of the file `HF_TOKEN_PATH` (default
    /// `HF_HOME/token`); `HF_HUB_OFFLINE` is on for 1/true/yes/on; `HF_ENDPOINT` names a
    /// mirror. Empty or blank values count as unset.
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

    /// Options that read only `cache_dir` and never touch the network.
    pub fn offline_in(cache_dir: impl Into<PathBuf>) -> Self {
        HubOptions {
            cache_dir: cache_dir.into(),
            revision: "main".into(),
            offline: true,
            token: None,
            endpoint: None,
            progress: false,
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `owner/name` with exactly one slash, neither part empty, not starting with a dot (so that
/// `./x` and `../x` stay local paths).
pub fn is_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() && !a.starts_with('.')
    )
}

/// The cache folder of a model repository: `<cache>/models--owner--name`.
pub fn repo_folder(cache_dir: &Path, repo: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One repository at [`HubOptions::revision`]: files come from the cache, else (online) from a
/// download into it. The download client is built on the first miss only.
pub struct HubRepo<'a> {
    options: &'a HubOptions,
    repo: String,
    api: OnceCell<ApiRepo>,
}

impl std::fmt::Debug for HubRepo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubRepo")
            .field("repo", &self.repo)
            .field("revision", &self.options.revision)
            .finish_non_exhaustive()
    }
}

impl<'a> HubRepo<'a> {
    /// The repository `repo` (`owner/name`) under `options`.
    pub fn new(options: &'a HubOptions, repo: &str) -> Self {
        HubRepo {
            options,
            repo: repo.to_string(),
            api: OnceCell::new(),
        }
    }

    /// The local path of `file`, downloading it when it is not cached and not offline.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        let miss = match self.cached(file) {
            Ok(path) => return Ok(path),
            Err(reason) => reason,
        };
        if self.options.offline {
            return Err(Error::NotCached {
                repo: self.repo.clone(),
                file: file.to_string(),
                cache_dir: self.options.cache_dir.clone(),
                reason: miss,
            });
        }
        self.api(file)?
            .download(file)
            .map_err(|source| self.download_error(file, source))
    }

    /// `file` in the cache, without any network access; `Err` says what was missing.
    pub fn cached(&self, file: &str) -> std::result::Result<PathBuf, String> {
        let folder = repo_folder(&self.options.cache_dir, &self.repo);
        let revision = &self.options.revision;
        let commit = if is_commit_hash(revision) {
            revision.clone()
        } else {
            let ref_file = folder.join("refs").join(revision);
            std::fs::read_to_string(&ref_file)
                .map_err(|e| format!("cannot read {}: {e}", ref_file.display()))?
                .trim()
                .to_string()
        };
        let path = folder.join("snapshots").join(commit).join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} does not exist", path.display()))
        }
    }

    fn api(&self, file: &str) -> Result<&ApiRepo> {
        if let Some(api) = self.api.get() {
            return Ok(api);
        }
        let options = self.options;
        let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(options.cache_dir.clone()))
            .with_token(options.token.clone())
            .with_progress(options.progress);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder
            .build()
            .map_err(|source| self.download_error(file, source))?;
        Ok(self.api.get_or_init(|| {
            api.repo(hf_hub::Repo::with_revision(
                self.repo.clone(),
                hf_hub::RepoType::Model,
                options.revision.clone(),
            ))
        }))
    }

    fn download_error(&self, file: &str, source: ApiError) -> Error {
        Error::Download {
            repo: self.repo.clone(),
            file: file.to_string(),
            source: Box::new(source),
        }
    }
}

pub mod safetensors_header;

#[cfg(feature = "mock")]
pub mod mock;
