//! Resolving names to files: the Hugging Face cache, offline mode, downloads.
//!
//! Files are fetched with `hf-hub` (sync API, with a progress bar) into the standard Hugging
//! Face cache, so Python and Rust share downloads. The cache is looked up first, by this module
//! itself: `<cache>/models--<owner>--<name>/refs/<revision>` holds a commit hash, and the file is
//! `<cache>/models--<owner>--<name>/snapshots/<hash>/<file>`. With `HF_HUB_OFFLINE=1` nothing
//! else is tried, and a miss is [`Error::OfflineMissing`].
//!
//! Environment: see [`HubOptions::from_vars`].

use std::path::{Path, PathBuf};

use crate::name::{canonical_lookup, SaeName, SiteHint};
use crate::{Error, Result};

/// How to reach the hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The hub cache directory (the one holding `models--…` folders).
    pub cache_dir: PathBuf,
    /// Resolve from the cache only.
    pub offline: bool,
    /// Access token for gated or private repositories.
    pub token: Option<String>,
    /// Hub endpoint, `https://huggingface.co` when `None`.
    pub endpoint: Option<String>,
    /// Branch, tag or commit hash.
    pub revision: String,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl HubOptions {
    /// Options from the environment, as `huggingface_hub` reads it (the same rules as
    /// `gemma_model::HubOptions::from_env`, so models and SAEs share one cache).
    pub fn from_env() -> HubOptions {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// Options from the variables `var` returns: `HF_HUB_CACHE`, else `HF_HOME/hub`, where
    /// `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`;
    /// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH` (default
    /// `HF_HOME/token`); `HF_HUB_OFFLINE` (1/true/yes/on); `HF_ENDPOINT`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubOptions {
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
            offline,
            token,
            endpoint: var("HF_ENDPOINT"),
            revision: "main".to_string(),
            progress: true,
        }
    }

    /// Options that read only `cache_dir` and never touch the network.
    pub fn offline_in(cache_dir: impl Into<PathBuf>) -> HubOptions {
        HubOptions {
            cache_dir: cache_dir.into(),
            offline: true,
            token: None,
            endpoint: None,
            revision: "main".to_string(),
            progress: false,
        }
    }
}

/// The on-disk layout of an SAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaeFormat {
    /// Gemma Scope `params.npz` (`W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`).
    GemmaScopeNpz,
    /// SAELens `sae_weights.safetensors` with a `cfg.json` beside it.
    SaeLens,
}

/// A name resolved to a file on disk.
#[derive(Clone, Debug)]
pub struct ResolvedSae {
    /// The name as given.
    pub name: String,
    /// The parsed name.
    pub parsed: SaeName,
    /// The weights file (`params.npz` or `sae_weights.safetensors`).
    pub path: PathBuf,
    /// Its layout.
    pub format: SaeFormat,
    /// What the name says about the site.
    pub hint: SiteHint,
}

const SAELENS_WEIGHTS: &str = "sae_weights.safetensors";
const SAELENS_CFG: &str = "cfg.json";

fn format_of_file(path: &Path) -> Option<SaeFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => Some(SaeFormat::GemmaScopeNpz),
        Some("safetensors") => Some(SaeFormat::SaeLens),
        _ => None,
    }
}

fn local_weights(name: &str, path: &Path) -> Result<(PathBuf, SaeFormat)> {
    let unknown = |reason: String| Error::UnknownName {
        name: name.to_string(),
        reason,
    };
    if path.is_dir() {
        let npz = path.join("params.npz");
        if npz.is_file() {
            return Ok((npz, SaeFormat::GemmaScopeNpz));
        }
        let st = path.join(SAELENS_WEIGHTS);
        if st.is_file() {
            return Ok((st, SaeFormat::SaeLens));
        }
        return Err(unknown(format!(
            "directory {} has neither params.npz nor {SAELENS_WEIGHTS}",
            path.display()
        )));
    }
    let format = format_of_file(path).ok_or_else(|| {
        unknown(format!(
            "{} is neither a .npz nor a .safetensors file",
            path.display()
        ))
    })?;
    Ok((path.to_path_buf(), format))
}

/// The cache folder of a model repository: `<cache>/models--owner--name`.
pub fn repo_cache_dir(cache_dir: &Path, repo: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Look `repo/file` up in the cache without any network access.
///
/// `Err(reason)` says what was missing.
pub fn cached_file(
    cache_dir: &Path,
    repo: &str,
    revision: &str,
    file: &str,
) -> std::result::Result<PathBuf, String> {
    let repo_dir = repo_cache_dir(cache_dir, repo);
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let refs = repo_dir.join("refs").join(revision);
        std::fs::read_to_string(&refs)
            .map_err(|e| format!("cannot read {}: {e}", refs.display()))?
            .trim()
            .to_string()
    };
    let path = repo_dir.join("snapshots").join(&commit).join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} does not exist", path.display()))
    }
}

fn fetch(opts: &HubOptions, repo: &str, file: &str) -> Result<PathBuf> {
    let miss = match cached_file(&opts.cache_dir, repo, &opts.revision, file) {
        Ok(p) => return Ok(p),
        Err(reason) => reason,
    };
    if opts.offline {
        return Err(Error::OfflineMissing {
            repo: repo.to_string(),
            file: file.to_string(),
            cache_dir: opts.cache_dir.clone(),
            reason: miss,
        });
    }
    let download_err = |source: hf_hub::api::sync::ApiError| Error::Download {
        repo: repo.to_string(),
        file: file.to_string(),
        source: Box::new(source),
    };
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(opts.cache_dir.clone()))
            .with_token(opts.token.clone())
            .with_progress(opts.progress);
    if let Some(endpoint) = &opts.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(download_err)?;
    let handle = api.repo(hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        opts.revision.clone(),
    ));
    handle.download(file).map_err(download_err)
}

/// Resolve any of the three name forms to a weights file on disk, downloading it if needed.
pub fn resolve(name: &str, opts: &HubOptions) -> Result<ResolvedSae> {
    let parsed = SaeName::parse(name)?;
    resolve_parsed(name, parsed, opts)
}

/// [`resolve`] for an already parsed name.
pub fn resolve_parsed(name: &str, parsed: SaeName, opts: &HubOptions) -> Result<ResolvedSae> {
    let hint = parsed.site_hint();
    let (path, format) = match &parsed {
        SaeName::Local(p) => local_weights(name, p)?,
        SaeName::Hub { repo, file } => fetch_weights(opts, repo, file)?,
        SaeName::Canonical {
            release,
            layer,
            width,
        } => {
            let entry = canonical_lookup(release, *layer, width)?;
            let file = format!("{}/params.npz", entry.folder());
            fetch_weights(opts, &entry.repo(), &file)?
        }
    };
    Ok(ResolvedSae {
        name: name.to_string(),
        parsed,
        path,
        format,
        hint,
    })
}

fn fetch_weights(opts: &HubOptions, repo: &str, file: &str) -> Result<(PathBuf, SaeFormat)> {
    let format = format_of_file(Path::new(file)).unwrap_or(SaeFormat::GemmaScopeNpz);
    if format == SaeFormat::SaeLens {
        // The config sits beside the weights; fetch it first so a miss fails fast.
        let cfg = match file.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{SAELENS_CFG}"),
            None => SAELENS_CFG.to_string(),
        };
        fetch(opts, repo, &cfg)?;
    }
    Ok((fetch(opts, repo, file)?, format))
}
