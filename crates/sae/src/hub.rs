//! Resolving SAE names to files. Hub files come through [`scope_hub`] (the standard Hugging
//! Face cache first, then a download into it; with `HF_HUB_OFFLINE=1` a miss is
//! [`scope_hub::Error::NotCached`]), by the same rules as the model's files.

use std::path::{Path, PathBuf};

pub use scope_hub::HubOptions;
use scope_hub::HubRepo;

use crate::error::{Error, Result};
use crate::gemma_scope_2;
use crate::name::{canonical_lookup, SaeName, SiteHint};

/// The on-disk layout of an SAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaeFormat {
    /// Gemma Scope `params.npz` (`W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`).
    GemmaScopeNpz,
    /// SAELens `sae_weights.safetensors` with a `cfg.json` beside it.
    SaeLens,
    /// Gemma Scope 2 `params.safetensors` (`w_enc`, `w_dec`, `b_enc`, `b_dec`, `threshold`,
    /// optionally `affine_skip_connection`), optionally with a `config.json` beside it.
    GemmaScope2,
}

/// A name resolved to a file on disk.
#[derive(Clone, Debug)]
pub struct ResolvedSae {
    /// The name as given.
    pub name: String,
    /// The parsed name.
    pub parsed: SaeName,
    /// The weights file (`params.npz`, `params.safetensors` or `sae_weights.safetensors`).
    pub path: PathBuf,
    /// Its layout.
    pub format: SaeFormat,
    /// What the name says about the site.
    pub hint: SiteHint,
}

const SAELENS_WEIGHTS: &str = "sae_weights.safetensors";
const SAELENS_CFG: &str = "cfg.json";

fn format_of_file(path: &Path) -> Option<SaeFormat> {
    if path.file_name().and_then(|n| n.to_str()) == Some(gemma_scope_2::WEIGHTS) {
        return Some(SaeFormat::GemmaScope2);
    }
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
        let gs2 = path.join(gemma_scope_2::WEIGHTS);
        if gs2.is_file() {
            return Ok((gs2, SaeFormat::GemmaScope2));
        }
        let st = path.join(SAELENS_WEIGHTS);
        if st.is_file() {
            return Ok((st, SaeFormat::SaeLens));
        }
        return Err(unknown(format!(
            "directory {} has neither params.npz, {} nor {SAELENS_WEIGHTS}",
            path.display(),
            gemma_scope_2::WEIGHTS
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

/// Resolve any of the four name forms to a weights file on disk, downloading it if needed (a
/// Gemma Scope 2 folder's `config.json` with it, when the hub has one).
pub fn resolve(name: &str, opts: &HubOptions) -> Result<ResolvedSae> {
    let parsed = SaeName::parse(name)?;
    resolve_parsed(name, parsed, opts)
}

/// Cross-layer transcoders (`clt/`): one file per layer whose decoder writes every later
/// layer. SAELens sums the decoder over those layers, which is not one site's output.
fn refuse_clt(name: &str, parsed: &SaeName) -> Result<()> {
    let clt = match parsed {
        SaeName::Local(p) => p.components().any(|c| c.as_os_str() == "clt"),
        SaeName::Hub { file, .. } => file.split('/').any(|p| p == "clt"),
        _ => false,
    };
    if clt {
        return Err(Error::UnknownName {
            name: name.to_string(),
            reason: "cross-layer transcoders (clt/) are not supported: their decoder writes \
                     every later layer, not one site"
                .to_string(),
        });
    }
    Ok(())
}

/// [`resolve`] for an already parsed name.
pub fn resolve_parsed(name: &str, parsed: SaeName, opts: &HubOptions) -> Result<ResolvedSae> {
    refuse_clt(name, &parsed)?;
    let hint = parsed.site_hint();
    let (path, format) = match &parsed {
        SaeName::Local(p) => local_weights(name, p)?,
        SaeName::Hub { repo, file } => fetch_weights(opts, repo, file)?,
        SaeName::Release { release, sae_id } => {
            let at = gemma_scope_2::locate(name, release, sae_id)?;
            fetch_weights(opts, &at.repo, &at.file)?
        }
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

/// `name` in the folder of `file` (a repository path).
fn beside(file: &str, name: &str) -> String {
    match file.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name.to_string(),
    }
}

fn fetch_weights(opts: &HubOptions, repo: &str, file: &str) -> Result<(PathBuf, SaeFormat)> {
    let repo = HubRepo::new(opts, repo);
    let format = format_of_file(Path::new(file)).unwrap_or(SaeFormat::GemmaScopeNpz);
    match format {
        // The config sits beside the weights; fetch it first so a miss fails fast.
        SaeFormat::SaeLens => {
            repo.get(&beside(file, SAELENS_CFG))?;
        }
        // Optional: fetched into the same snapshot folder when the hub has it, where the
        // loader looks for it.
        SaeFormat::GemmaScope2 => fetch_optional(&repo, &beside(file, gemma_scope_2::CONFIG))?,
        SaeFormat::GemmaScopeNpz => {}
    }
    Ok((repo.get(file)?, format))
}

/// Fetch a file that may not exist. A file the hub does not have is fine, and so is one that
/// is not cached in offline mode (a download, Python's included, fetches Gemma Scope 2's
/// `config.json` with the weights, so a cached SAE without it has none); any other failure
/// (network, authentication) is an error.
fn fetch_optional(repo: &HubRepo<'_>, file: &str) -> Result<()> {
    match repo.get(file) {
        Ok(_) | Err(scope_hub::Error::NotCached { .. }) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the hub answered 404. `hf-hub` wraps the HTTP client's error, whose type this crate
/// does not depend on; its message carries the status (`…: status code 404`), which the
/// mock-hub test of a missing `config.json` pins down.
fn is_not_found(e: &scope_hub::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.to_string().contains("status code 404") {
            return true;
        }
        source = err.source();
    }
    false
}
