//! Resolving SAE names to files. Hub files come through [`scope_hub`] (the standard Hugging
//! Face cache first, then a download into it; with `HF_HUB_OFFLINE=1` a miss is
//! [`scope_hub::Error::NotCached`]), by the same rules as the model's files.

use std::path::{Path, PathBuf};

pub use scope_hub::HubOptions;
use scope_hub::HubRepo;

use crate::error::{Error, Result};
use crate::name::{canonical_lookup, SaeName, SiteHint};

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
    let repo = HubRepo::new(opts, repo);
    let format = format_of_file(Path::new(file)).unwrap_or(SaeFormat::GemmaScopeNpz);
    if format == SaeFormat::SaeLens {
        // The config sits beside the weights; fetch it first so a miss fails fast.
        let cfg = match file.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{SAELENS_CFG}"),
            None => SAELENS_CFG.to_string(),
        };
        repo.get(&cfg)?;
    }
    Ok((repo.get(file)?, format))
}
