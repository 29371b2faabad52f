//! Naming an SAE: local paths, hub paths and canonical shorthands, and what a name says about
//! where the SAE reads the model.
//!
//! Three forms name an SAE, and [`SaeName::parse`] tells them apart:
//!
//! * a **local path** that exists: a `params.npz` file, a SAELens `sae_weights.safetensors`
//!   file, or a directory holding one of them;
//! * a **hub path** `owner/repo/sub/folders`, e.g.
//!   `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`: the repository is the first
//!   two parts and the file is the rest plus `/params.npz` (unless the rest already names a
//!   `.npz` or `.safetensors` file); an optional `hf://` prefix is accepted;
//! * a **canonical shorthand** `gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical`,
//!   SAELens' `*-canonical` releases, resolved through the canonical L0 table shipped as data in
//!   `data/canonical_l0.tsv` (from SAELens' `pretrained_saes.yaml`) to the hub path
//!   `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`.
//!
//! The hook site follows from the name where it says it: a `layer_<L>` part gives the layer, and
//! the release suffix gives the family (`-res` → [`SiteKind::BlockOutput`], `-mlp` →
//! [`SiteKind::PostFeedforwardNormOutput`], `-att` → [`SiteKind::AttentionValueOutput`], the
//! input of `o_proj`). See [`SaeFamily`] for the embedding SAEs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use intervene::{Site, SiteKind};

use crate::error::{Error, Result};

/// Which Gemma Scope family an SAE belongs to, i.e. which activation it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaeFamily {
    /// Residual stream after decoder layer `L` (`-res`, SAELens `blocks.L.hook_resid_post`).
    Residual,
    /// Output of the post-feedforward norm of layer `L` (`-mlp`, SAELens `blocks.L.hook_mlp_out`).
    Mlp,
    /// Input of `o_proj` of layer `L`, heads concatenated (`-att`, SAELens `blocks.L.attn.hook_z`).
    Attention,
    /// The token embedding (`-res/embedding/...`, SAELens `hook_embed`).
    ///
    /// Gemma Scope trained these on the *unscaled* embedding. As SAELens does, the loader divides
    /// `W_enc` and multiplies `W_dec` by `sqrt(d_in)` so that the SAE reads the *scaled*
    /// embedding, which is what enters decoder layer 0: the site is
    /// [`SiteKind::BlockInput`] at layer 0.
    Embedding,
    /// MLP transcoders (`-transcoders`): they read the MLP input and predict its output, which is
    /// not one hook site; they load, but have no [`Site`].
    Transcoder,
}

impl SaeFamily {
    /// The family a release or directory name ends with (`…-res`, `…-mlp`, `…-att`,
    /// `…-transcoders`), if any.
    pub fn from_release(name: &str) -> Option<SaeFamily> {
        let name = name.strip_suffix("-canonical").unwrap_or(name);
        if name.ends_with("-res") || name.contains("-res-") {
            Some(SaeFamily::Residual)
        } else if name.ends_with("-mlp") || name.contains("-mlp-") {
            Some(SaeFamily::Mlp)
        } else if name.ends_with("-att") || name.contains("-att-") {
            Some(SaeFamily::Attention)
        } else if name.ends_with("-transcoders") {
            Some(SaeFamily::Transcoder)
        } else {
            None
        }
    }

    /// The family of a SAELens hook name, with its layer: `blocks.L.hook_resid_post`,
    /// `blocks.L.hook_mlp_out`, `blocks.L.attn.hook_z`, `hook_embed`. Other hooks (e.g.
    /// `blocks.L.hook_resid_pre`) are no Gemma Scope family: `None` here; see
    /// [`site_from_hook_name`] for their sites.
    pub fn from_hook_name(hook: &str) -> Option<(SaeFamily, usize)> {
        if hook == "hook_embed" {
            return Some((SaeFamily::Embedding, 0));
        }
        let rest = hook.strip_prefix("blocks.")?;
        let (layer, tail) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let family = match tail {
            "hook_resid_post" => SaeFamily::Residual,
            "hook_mlp_out" => SaeFamily::Mlp,
            "attn.hook_z" => SaeFamily::Attention,
            _ => return None,
        };
        Some((family, layer))
    }

    /// The hook site of this family at `layer`, if it is one site.
    pub fn site(self, layer: usize) -> Option<Site> {
        match self {
            SaeFamily::Residual => Some(Site::new(layer, SiteKind::BlockOutput)),
            SaeFamily::Mlp => Some(Site::new(layer, SiteKind::PostFeedforwardNormOutput)),
            SaeFamily::Attention => Some(Site::new(layer, SiteKind::AttentionValueOutput)),
            SaeFamily::Embedding => Some(Site::new(0, SiteKind::BlockInput)),
            SaeFamily::Transcoder => None,
        }
    }
}

/// The site a SAELens hook name denotes: the families of [`SaeFamily::from_hook_name`] plus
/// `blocks.L.hook_resid_pre` ([`SiteKind::BlockInput`]).
pub fn site_from_hook_name(hook: &str) -> Option<Site> {
    if let Some((family, layer)) = SaeFamily::from_hook_name(hook) {
        return family.site(layer);
    }
    let rest = hook.strip_prefix("blocks.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    (tail == "hook_resid_pre").then(|| Site::new(layer, SiteKind::BlockInput))
}

/// What a name says about the SAE's site: its family and layer, where the name has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteHint {
    /// The family, from a `-res`/`-mlp`/`-att` part or an `embedding` folder.
    pub family: Option<SaeFamily>,
    /// The layer, from a `layer_<L>` part.
    pub layer: Option<usize>,
}

impl SiteHint {
    /// Read the hint from the parts of a path or hub name. The last matching part wins.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> SiteHint {
        let mut hint = SiteHint::default();
        let mut embedding = false;
        for part in parts {
            if let Some(family) = SaeFamily::from_release(part) {
                hint.family = Some(family);
            }
            if let Some(l) = part.strip_prefix("layer_").and_then(|l| l.parse().ok()) {
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

    /// The hook site, when both family and layer are known.
    pub fn site(&self) -> Option<Site> {
        match (self.family, self.layer) {
            (Some(SaeFamily::Embedding), _) => SaeFamily::Embedding.site(0),
            (Some(f), Some(l)) => f.site(l),
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
    /// Tell the three forms apart. An existing path always wins; then a first part ending in
    /// `-canonical` is a shorthand; then three or more `/`-separated parts are a hub path.
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
                "not an existing path, a hub path (owner/repo/layer_L/width_W/average_l0_N) \
                 or a canonical shorthand (<release>-canonical/layer_L/width_W/canonical)",
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
        if parts.len() < 3 {
            return Ok(None);
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let rest = parts[2..].join("/");
        let file = if rest.ends_with(".npz") || rest.ends_with(".safetensors") {
            rest
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
