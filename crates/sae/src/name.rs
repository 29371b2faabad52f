//! Naming an SAE: local paths, hub paths, canonical shorthands and Gemma Scope 2 release ids,
//! and what a name says about where the SAE reads (and a transcoder writes) the model.
//!
//! Four forms name an SAE, and [`SaeName::parse`] tells them apart:
//!
//! * a **local path** that exists: a `params.npz` file, a Gemma Scope 2 `params.safetensors`
//!   file, a SAELens `sae_weights.safetensors` file, or a directory holding one of them;
//! * a **hub path** `owner/repo/sub/folders`, e.g.
//!   `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`: the repository is the first
//!   two parts and the file is the rest plus `/params.npz` — `/params.safetensors` in a Gemma
//!   Scope 2 repository (`google/gemma-scope-2-1b-pt/resid_post/layer_13_width_16k_l0_small`) —
//!   unless the rest already names a `.npz` or `.safetensors` file; an optional `hf://` prefix
//!   is accepted;
//! * a **canonical shorthand** `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`,
//!   SAELens' `*-canonical` releases, resolved through the canonical L0 table shipped as data in
//!   `data/canonical_l0.tsv` (from SAELens' `pretrained_saes.yaml`) to the hub path
//!   `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`;
//! * a **Gemma Scope 2 release and SAE id** as SAELens names them,
//!   `gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small` (see [`crate::gemma_scope_2`]),
//!   checked against the release table in `data/gemma_scope_2.tsv`.
//!
//! The hook site follows from the name where it says it: a `layer_<L>` part (or the `layer_<L>_`
//! prefix of a Gemma Scope 2 folder) gives the layer, and the release suffix or the Gemma
//! Scope 2 folder gives the family (`-res`, `resid_post` → [`SiteKind::BlockOutput`](intervene::SiteKind::BlockOutput); `-mlp`,
//! `mlp_out` → [`SiteKind::PostFeedforwardNormOutput`](intervene::SiteKind::PostFeedforwardNormOutput); `-att`, `attn_out` →
//! [`SiteKind::AttentionValueOutput`](intervene::SiteKind::AttentionValueOutput), the input of `o_proj`; `-transcoders`, `transcoder` →
//! reads [`SiteKind::MlpInput`](intervene::SiteKind::MlpInput) and writes [`SiteKind::PostFeedforwardNormOutput`](intervene::SiteKind::PostFeedforwardNormOutput), see
//! [`SaeSites`]). See [`SaeFamily`] for the embedding SAEs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use intervene::Site;

use crate::error::{Error, Result};
pub use crate::family::{site_from_hook_name, SaeFamily, SaeSites};

/// What a name says about the SAE's site: its family and layer, where the name has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteHint {
    /// The family, from a `-res`/`-mlp`/`-att`/`-transcoders` part, a Gemma Scope 2 folder
    /// (`resid_post`, `attn_out`, `mlp_out`, `transcoder`, with or without `_all`) or an
    /// `embedding` folder.
    pub family: Option<SaeFamily>,
    /// The layer, from a `layer_<L>` part or the `layer_<L>_…` of a Gemma Scope 2 folder.
    pub layer: Option<usize>,
}

impl SiteHint {
    /// Read the hint from the parts of a path or hub name. The last matching part wins.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> SiteHint {
        let mut hint = SiteHint::default();
        let mut embedding = false;
        for part in parts {
            if let Some(family) =
                SaeFamily::from_release(part).or_else(|| SaeFamily::from_gemma_scope_2_folder(part))
            {
                hint.family = Some(family);
            }
            if let Some(l) = crate::gemma_scope_2::layer_of_part(part) {
                hint.layer = Some(l);
            }
            if part == "embedding" {
                embedding = true;
            }
        }
        if embedding && matches!(hint.family, None | Some(SaeFamily::Residual)) {
            hint.family = Some(SaeFamily::Embedding);
            hint.layer = Some(0);
        }
        hint
    }

    /// The hook site, when both family and layer are known and the family reads and writes one
    /// site (`None` for transcoders: see [`sites`](Self::sites)).
    pub fn site(&self) -> Option<Site> {
        match (self.family, self.layer) {
            (Some(SaeFamily::Embedding), _) => SaeFamily::Embedding.site(0),
            (Some(f), Some(l)) => f.site(l),
            _ => None,
        }
    }

    /// Where the SAE reads and writes, when both family and layer are known.
    pub fn sites(&self) -> Option<SaeSites> {
        match (self.family, self.layer) {
            (Some(SaeFamily::Embedding), _) => Some(SaeFamily::Embedding.sites(0)),
            (Some(f), Some(l)) => Some(f.sites(l)),
            _ => None,
        }
    }
}

/// A parsed SAE name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaeName {
    /// An existing file or directory.
    Local(PathBuf),
    /// A file in a hub repository.
    Hub {
        /// `owner/name`, e.g. `google/gemma-scope-2b-pt-res`.
        repo: String,
        /// The file inside it, e.g. `layer_20/width_16k/average_l0_71/params.npz`.
        file: String,
    },
    /// A Gemma Scope 2 SAE as SAELens names it: release and SAE id.
    Release {
        /// The SAELens release, e.g. `gemma-scope-2-1b-pt-res`.
        release: String,
        /// The SAE id, e.g. `layer_13_width_16k_l0_small` (`transcoder/…` in the
        /// `…-transcoders` releases).
        sae_id: String,
    },
    /// A SAELens canonical shorthand.
    Canonical {
        /// The release without `-canonical`, e.g. `gemma-scope-2b-pt-res`.
        release: String,
        /// The layer.
        layer: usize,
        /// The width label, e.g. `16k`.
        width: String,
    },
}

impl SaeName {
    /// Tell the four forms apart. An existing path always wins; then a first part ending in
    /// `-canonical` is a shorthand; then a first part starting with `gemma-scope-2-` is a
    /// Gemma Scope 2 release (checked against the release table); then three or more
    /// `/`-separated parts are a hub path.
    pub fn parse(name: &str) -> Result<SaeName> {
        let unknown = |reason: &str| Error::UnknownName {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = name.trim();
        if trimmed.is_empty() {
            return Err(unknown("the name is empty"));
        }
        if let Some(hub) = trimmed.strip_prefix("hf://") {
            return Self::parse_remote(name, hub)?
                .ok_or_else(|| unknown("expected hf://owner/repo/path/to/sae"));
        }
        let path = Path::new(trimmed);
        if path.exists() {
            return Ok(SaeName::Local(path.to_path_buf()));
        }
        if path.is_absolute() || trimmed.starts_with('.') || trimmed.starts_with('~') {
            return Err(unknown("no such file or directory"));
        }
        Self::parse_remote(name, trimmed)?.ok_or_else(|| {
            unknown(
                "not an existing path, a hub path (owner/repo/layer_L/width_W/average_l0_N), \
                 a canonical shorthand (<release>-canonical/layer_L/width_W/canonical) \
                 or a Gemma Scope 2 release and SAE id \
                 (gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small)",
            )
        })
    }

    fn parse_remote(name: &str, s: &str) -> Result<Option<SaeName>> {
        let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Ok(None);
        }
        if let Some(release) = parts.first().and_then(|p| p.strip_suffix("-canonical")) {
            let bad = |reason: String| Error::UnknownName {
                name: name.to_string(),
                reason,
            };
            let (layer, width) =
                match parts.as_slice() {
                    [_, l, w, c] if *c == "canonical" => (*l, *w),
                    _ => return Err(bad(
                        "a canonical shorthand reads <release>-canonical/layer_L/width_W/canonical"
                            .into(),
                    )),
                };
            let layer = layer
                .strip_prefix("layer_")
                .and_then(|l| l.parse::<usize>().ok())
                .ok_or_else(|| bad(format!("`{layer}` is not layer_<number>")))?;
            let width = width
                .strip_prefix("width_")
                .ok_or_else(|| bad(format!("`{width}` is not width_<size>")))?;
            return Ok(Some(SaeName::Canonical {
                release: release.to_string(),
                layer,
                width: width.to_string(),
            }));
        }
        if let Some(release) = parts
            .first()
            .filter(|p| p.starts_with(crate::gemma_scope_2::PREFIX))
        {
            let sae_id = parts[1..].join("/");
            // Checked now, so that a typo fails before any download.
            crate::gemma_scope_2::locate(name, release, &sae_id)?;
            return Ok(Some(SaeName::Release {
                release: (*release).to_string(),
                sae_id,
            }));
        }
        if parts.len() < 3 {
            return Ok(None);
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let rest = parts[2..].join("/");
        let file = if rest.ends_with(".npz") || rest.ends_with(".safetensors") {
            rest
        } else if parts[1].starts_with(crate::gemma_scope_2::PREFIX) {
            format!("{rest}/{}", crate::gemma_scope_2::WEIGHTS)
        } else {
            format!("{rest}/params.npz")
        };
        Ok(Some(SaeName::Hub { repo, file }))
    }

    /// What this name says about the site.
    pub fn site_hint(&self) -> SiteHint {
        match self {
            SaeName::Local(p) => {
                let parts: Vec<String> = p
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                SiteHint::from_parts(parts.iter().map(String::as_str))
            }
            SaeName::Hub { repo, file } => {
                SiteHint::from_parts(repo.split('/').chain(file.split('/')))
            }
            SaeName::Release { release, sae_id } => SiteHint {
                family: SaeFamily::from_release(release),
                layer: sae_id
                    .rsplit('/')
                    .next()
                    .and_then(crate::gemma_scope_2::layer_of_part),
            },
            SaeName::Canonical { release, layer, .. } => SiteHint {
                family: SaeFamily::from_release(release),
                layer: Some(*layer),
            },
        }
    }
}

/// One row of the canonical L0 table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalEntry {
    /// The release without `-canonical`; the hub repository is `google/<release>`.
    pub release: String,
    /// The layer.
    pub layer: usize,
    /// The width label, e.g. `16k`.
    pub width: String,
    /// The canonical average L0 (the `average_l0_<N>` folder).
    pub l0: u32,
}

impl CanonicalEntry {
    /// The hub repository, `google/<release>`.
    pub fn repo(&self) -> String {
        format!("google/{}", self.release)
    }

    /// The folder inside the repository, `layer_<L>/width_<W>/average_l0_<N>`.
    pub fn folder(&self) -> String {
        format!(
            "layer_{}/width_{}/average_l0_{}",
            self.layer, self.width, self.l0
        )
    }
}

const CANONICAL_TSV: &str = include_str!("../data/canonical_l0.tsv");

fn parse_canonical_table(text: &str) -> Result<Vec<CanonicalEntry>> {
    let mut rows = Vec::new();
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if !header_seen {
            if cols != ["release", "layer", "width", "l0"] {
                return Err(Error::CanonicalTable {
                    line: line_no,
                    reason: format!("expected the header release/layer/width/l0, got {cols:?}"),
                });
            }
            header_seen = true;
            continue;
        }
        let bad = |reason: String| Error::CanonicalTable {
            line: line_no,
            reason,
        };
        let [release, layer, width, l0] = cols.as_slice() else {
            return Err(bad(format!(
                "expected 4 tab-separated columns, got {}",
                cols.len()
            )));
        };
        rows.push(CanonicalEntry {
            release: (*release).to_string(),
            layer: layer
                .parse()
                .map_err(|_| bad(format!("layer `{layer}` is not a number")))?,
            width: (*width).to_string(),
            l0: l0
                .parse()
                .map_err(|_| bad(format!("l0 `{l0}` is not a number")))?,
        });
    }
    Ok(rows)
}

/// The canonical L0 table (parsed once from `data/canonical_l0.tsv`).
pub fn canonical_table() -> Result<&'static [CanonicalEntry]> {
    static TABLE: OnceLock<std::result::Result<Vec<CanonicalEntry>, (usize, String)>> =
        OnceLock::new();
    let parsed = TABLE.get_or_init(|| {
        parse_canonical_table(CANONICAL_TSV).map_err(|e| match e {
            Error::CanonicalTable { line, reason } => (line, reason),
            other => (0, other.to_string()),
        })
    });
    match parsed {
        Ok(rows) => Ok(rows.as_slice()),
        Err((line, reason)) => Err(Error::CanonicalTable {
            line: *line,
            reason: reason.clone(),
        }),
    }
}

/// The canonical entry for a release (with or without `-canonical`), layer and width label.
pub fn canonical_lookup(
    release: &str,
    layer: usize,
    width: &str,
) -> Result<&'static CanonicalEntry> {
    let release = release.strip_suffix("-canonical").unwrap_or(release);
    let width = width.strip_prefix("width_").unwrap_or(width);
    canonical_table()?
        .iter()
        .find(|e| e.release == release && e.layer == layer && e.width == width)
        .ok_or_else(|| Error::CanonicalNotFound {
            release: release.to_string(),
            layer,
            width: width.to_string(),
        })
}
