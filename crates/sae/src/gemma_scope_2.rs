//! Gemma Scope 2: Google's JumpReLU SAEs and transcoders for Gemma 3, their names and their
//! layout, as SAELens reads them.
//!
//! # Facts this crate relies on
//!
//! Read from SAELens 6.54.12 (`sae_lens/pretrained_saes.yaml`, the `gemma_3` loader
//! `gemma_3_sae_huggingface_loader` / `get_gemma_3_config_from_hf` /
//! `_infer_gemma_3_raw_cfg_dict` in `sae_lens/loading/pretrained_sae_loaders.py`, and
//! `JumpReLUTranscoder` / `JumpReLUSkipTranscoder` in `sae_lens/saes/transcoder.py`):
//!
//! * **Repositories**: `google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}`. Inside, one folder
//!   per SAE: `<kind>/layer_<L>_width_<W>_l0_<S>` with `W` in `16k`, `65k`, `262k`, `1m` and
//!   `S` in `small`, `medium`, `big`, `medium_seed_1`; transcoders also come as
//!   `…_affine`. The weights are `<folder>/params.safetensors`; a `<folder>/config.json` may
//!   sit beside them (SAELens infers the config from the folder name when it is absent).
//! * **Kinds** (folder → what is read → where the output belongs, as Hugging Face module
//!   paths; `_all` folders hold every layer at fewer widths):
//!
//!   | folder | SAELens hook | reads | writes |
//!   |---|---|---|---|
//!   | `resid_post`, `resid_post_all` | `blocks.L.hook_resid_post` | `model.layers.L.output` ([`BlockOutput`](intervene::SiteKind::BlockOutput)) | the same |
//!   | `attn_out`, `attn_out_all` | `blocks.L.attn.hook_z` | `model.layers.L.self_attn.o_proj.input` ([`AttentionValueOutput`](intervene::SiteKind::AttentionValueOutput)) | the same |
//!   | `mlp_out`, `mlp_out_all` | `blocks.L.hook_mlp_out` | `model.layers.L.post_feedforward_layernorm.output` ([`PostFeedforwardNormOutput`](intervene::SiteKind::PostFeedforwardNormOutput)) | the same |
//!   | `transcoder`, `transcoder_all` | `blocks.L.hook_mlp_in` → `blocks.L.hook_mlp_out` | `model.layers.L.pre_feedforward_layernorm.output` ([`MlpInput`](intervene::SiteKind::MlpInput)) | `model.layers.L.post_feedforward_layernorm.output` ([`PostFeedforwardNormOutput`](intervene::SiteKind::PostFeedforwardNormOutput)) |
//!
//!   SAELens takes the layer from the first `layer_(\d+)` of the folder name and the kind from
//!   the folder name too (`resid_post`, `attn_out`, `mlp_out`, then `transcoder` or `clt`).
//!   `clt/` holds cross-layer transcoders (one file per layer, `W_dec` summed over the output
//!   layers by SAELens): this crate refuses them.
//! * **Tensors** (lowercase names): `w_enc` `[d_in, d_sae]`, `w_dec` `[d_sae, d_out]`, `b_enc`
//!   `[d_sae]`, `b_dec` `[d_out]`, `threshold` `[d_sae]`, and for affine transcoders
//!   `affine_skip_connection` `[d_in, d_out]` (SAELens stores its transpose as `W_skip`
//!   `[d_out, d_in]` and adds `x @ W_skip.T`, i.e. `x · affine_skip_connection`). `d_out` is
//!   `w_dec`'s last dimension; for an SAE it equals `d_in`.
//! * **Config**: `architecture` must be `jump_relu`; `affine_connection` (transcoders) says
//!   whether the skip is there (without a config: whether the folder name contains `affine`).
//!   SAELens then builds the config with `dtype = float32`, `apply_b_dec_to_input = false`
//!   (`b_dec` is **not** subtracted from the input), `normalize_activations = none`, no
//!   `finetuning_scaling_factor`; its architectures are `jumprelu`, `jumprelu_transcoder` and
//!   `jumprelu_skip_transcoder`.
//! * **Math**: `pre = x·W_enc + b_enc`, `acts = relu(pre) ⊙ (pre > threshold)` (strict), `out =
//!   acts·W_dec + b_dec`, plus `x · affine_skip_connection` for an affine transcoder (added in
//!   SAELens' `forward`, not in its `decode`). The skip reads the same `x` as the encoder.
//! * **Releases** (SAELens `release` / `sae_id`): `gemma-scope-2-<size>-<pt|it>-<kind>` with
//!   `<kind>` in `res`, `mlp`, `att`, `transcoders`, each also as `…-all`; release `…-res`
//!   lives in folder `resid_post`, `…-res-all` in `resid_post_all`, `…-mlp` in `mlp_out`,
//!   `…-att` in `attn_out`, `…-transcoders` in `transcoder` (and `_all` alike). The SAE id is
//!   the folder's last part (`layer_13_width_16k_l0_small`), except in the `…-transcoders`
//!   releases where SAELens includes the folder (`transcoder/layer_13_width_16k_l0_small`);
//!   both spellings are accepted here. The releases, their layers, widths and L0 labels are
//!   shipped as data in `data/gemma_scope_2.tsv` (generated from that `pretrained_saes.yaml`).
//!
//! # Names
//!
//! A Gemma Scope 2 SAE can be named three ways (see [`crate::name`]):
//!
//! * a local folder holding `params.safetensors` (optionally `config.json`), or that file;
//! * a hub path: `google/gemma-scope-2-1b-pt/resid_post/layer_13_width_16k_l0_small`;
//! * a SAELens release and SAE id: `gemma-scope-2-1b-pt-res/layer_13_width_16k_l0_small`,
//!   `gemma-scope-2-1b-pt-transcoders/transcoder/layer_13_width_16k_l0_small_affine`.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::family::SaeFamily;

/// The prefix of every Gemma Scope 2 release and repository name.
pub const PREFIX: &str = "gemma-scope-2-";

/// The weights file in each Gemma Scope 2 folder.
pub const WEIGHTS: &str = "params.safetensors";

/// The optional configuration beside it.
pub const CONFIG: &str = "config.json";

/// One Gemma Scope 2 release as SAELens names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// The SAELens release, e.g. `gemma-scope-2-1b-pt-res-all`.
    pub name: String,
    /// The layers it holds.
    pub layers: Vec<usize>,
    /// Its width labels, e.g. `16k`.
    pub widths: Vec<String>,
    /// Its L0 labels, e.g. `small`.
    pub l0s: Vec<String>,
}

impl Release {
    /// What the release holds: resid_post, attn_out, mlp_out or transcoder SAEs.
    pub fn family(&self) -> Option<SaeFamily> {
        SaeFamily::from_release(&self.name)
    }

    /// Whether it is an `…-all` release (every layer, folder `<kind>_all`).
    pub fn is_all(&self) -> bool {
        self.name.ends_with("-all")
    }

    /// The hub repository: `google/gemma-scope-2-<size>-<pt|it>`.
    pub fn repo(&self) -> String {
        let base = self.name.strip_suffix("-all").unwrap_or(&self.name);
        let model = base.rsplit_once('-').map_or(base, |(model, _)| model);
        format!("google/{model}")
    }

    /// The folder of its SAEs in the repository, e.g. `resid_post_all`.
    pub fn folder(&self) -> Option<String> {
        let kind = self.family()?.gemma_scope_2_folder()?;
        Some(if self.is_all() {
            format!("{kind}_all")
        } else {
            kind.to_string()
        })
    }
}

/// A Gemma Scope 2 SAE id: `layer_<L>_width_<W>_l0_<S>[_affine]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaeId {
    /// The layer.
    pub layer: usize,
    /// The width label, e.g. `16k`.
    pub width: String,
    /// The L0 label, e.g. `small` or `medium_seed_1`.
    pub l0: String,
    /// Whether it names an affine transcoder.
    pub affine: bool,
}

impl SaeId {
    /// Parse `layer_<L>_width_<W>_l0_<S>[_affine]`; `None` when it is not of that form.
    pub fn parse(id: &str) -> Option<SaeId> {
        let rest = id.strip_prefix("layer_")?;
        let (layer, rest) = rest.split_once("_width_")?;
        let layer = all_digits(layer)?.parse().ok()?;
        let (width, l0) = rest.split_once("_l0_")?;
        let (l0, affine) = match l0.strip_suffix("_affine") {
            Some(l0) => (l0, true),
            None => (l0, false),
        };
        if width.is_empty() || l0.is_empty() {
            return None;
        }
        Some(SaeId {
            layer,
            width: width.to_string(),
            l0: l0.to_string(),
            affine,
        })
    }

    /// The folder's last part, `layer_<L>_width_<W>_l0_<S>[_affine]`.
    pub fn folder(&self) -> String {
        let affine = if self.affine { "_affine" } else { "" };
        format!(
            "layer_{}_width_{}_l0_{}{affine}",
            self.layer, self.width, self.l0
        )
    }
}

fn all_digits(s: &str) -> Option<&str> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

/// The layer a Gemma Scope 2 folder part gives: the digits after `layer_` (`layer_12_width_…`
/// → 12, and the Gemma Scope 1 `layer_12` alike), as SAELens' `layer_(\d+)`.
pub fn layer_of_part(part: &str) -> Option<usize> {
    let rest = part.strip_prefix("layer_")?;
    let end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    all_digits(&rest[..end])?.parse().ok()
}

const RELEASES_TSV: &str = include_str!("../data/gemma_scope_2.tsv");

fn parse_layers(s: &str) -> Option<Vec<usize>> {
    if let Some((lo, hi)) = s.split_once('-') {
        let (lo, hi): (usize, usize) = (lo.parse().ok()?, hi.parse().ok()?);
        return (lo <= hi).then(|| (lo..=hi).collect());
    }
    s.split(',').map(|l| l.parse().ok()).collect()
}

fn parse_releases(text: &str) -> std::result::Result<Vec<Release>, String> {
    let mut rows = Vec::new();
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if !header_seen {
            if cols != ["release", "layers", "widths", "l0"] {
                return Err(format!("line {}: unexpected header {cols:?}", i + 1));
            }
            header_seen = true;
            continue;
        }
        let [name, layers, widths, l0s] = cols.as_slice() else {
            return Err(format!("line {}: expected 4 columns", i + 1));
        };
        let layers =
            parse_layers(layers).ok_or_else(|| format!("line {}: bad layers `{layers}`", i + 1))?;
        let list = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        rows.push(Release {
            name: (*name).to_string(),
            layers,
            widths: list(widths),
            l0s: list(l0s),
        });
    }
    Ok(rows)
}

/// Every Gemma Scope 2 release SAELens knows (parsed once from `data/gemma_scope_2.tsv`).
pub fn releases() -> Result<&'static [Release]> {
    static TABLE: OnceLock<std::result::Result<Vec<Release>, String>> = OnceLock::new();
    match TABLE.get_or_init(|| parse_releases(RELEASES_TSV)) {
        Ok(rows) => Ok(rows.as_slice()),
        Err(reason) => Err(Error::CanonicalTable {
            line: 0,
            reason: format!("data/gemma_scope_2.tsv: {reason}"),
        }),
    }
}

/// Where a SAELens Gemma Scope 2 name lives on the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The release.
    pub release: &'static Release,
    /// The parsed SAE id.
    pub id: SaeId,
    /// `google/gemma-scope-2-<size>-<pt|it>`.
    pub repo: String,
    /// `<folder>/<sae id>/params.safetensors`.
    pub file: String,
}

/// Find `release` and check `sae_id` against it (layer, width and L0 label in the release,
/// `_affine` only for transcoders); `name` is the whole name, for the error.
pub fn locate(name: &str, release: &str, sae_id: &str) -> Result<Located> {
    let bad = |reason: String| Error::UnknownName {
        name: name.to_string(),
        reason,
    };
    let table = releases()?;
    let rel = table.iter().find(|r| r.name == release).ok_or_else(|| {
        bad(format!(
            "SAELens has no Gemma Scope 2 release `{release}` (releases are \
             gemma-scope-2-<270m|1b|4b|12b|27b>-<pt|it>-<res|mlp|att|transcoders>[-all], \
             and not every combination exists)"
        ))
    })?;
    let family = rel.family();
    let folder = rel
        .folder()
        .ok_or_else(|| bad(format!("release `{release}` has no known folder")))?;
    // SAELens' `…-transcoders` ids carry the folder; accept them with or without it.
    let bare = sae_id.strip_prefix(&format!("{folder}/")).unwrap_or(sae_id);
    let id = SaeId::parse(bare).ok_or_else(|| {
        bad(format!(
            "`{sae_id}` is not a Gemma Scope 2 SAE id (layer_<L>_width_<W>_l0_<S>, e.g. \
             layer_{}_width_{}_l0_{})",
            rel.layers.first().copied().unwrap_or(0),
            rel.widths.first().map_or("16k", String::as_str),
            rel.l0s.first().map_or("small", String::as_str),
        ))
    })?;
    let listed = |what: &str, items: &[String]| format!("{what} {}", items.join(", "));
    if !rel.layers.contains(&id.layer) {
        let layers: Vec<String> = rel.layers.iter().map(usize::to_string).collect();
        return Err(bad(format!(
            "release `{release}` has no layer {}: it holds {}",
            id.layer,
            listed("layers", &layers)
        )));
    }
    if !rel.widths.contains(&id.width) {
        return Err(bad(format!(
            "release `{release}` has no width `{}`: it holds {}",
            id.width,
            listed("widths", &rel.widths)
        )));
    }
    if !rel.l0s.contains(&id.l0) {
        return Err(bad(format!(
            "release `{release}` has no L0 label `{}`: it holds {}",
            id.l0,
            listed("L0 labels", &rel.l0s)
        )));
    }
    if id.affine && family != Some(SaeFamily::Transcoder) {
        return Err(bad(format!(
            "`{sae_id}`: only transcoders come as `_affine`, and `{release}` holds no transcoders"
        )));
    }
    Ok(Located {
        repo: rel.repo(),
        file: format!("{folder}/{}/{WEIGHTS}", id.folder()),
        release: rel,
        id,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_maps_to_repos_and_folders() {
        let table = releases().unwrap();
        assert_eq!(table.len(), 75);
        let find = |n: &str| table.iter().find(|r| r.name == n).unwrap();
        let r = find("gemma-scope-2-1b-pt-res");
        assert_eq!(r.repo(), "google/gemma-scope-2-1b-pt");
        assert_eq!(r.folder().as_deref(), Some("resid_post"));
        assert_eq!(r.layers, vec![7, 13, 17, 22]);
        let r = find("gemma-scope-2-270m-it-transcoders-all");
        assert_eq!(r.repo(), "google/gemma-scope-2-270m-it");
        assert_eq!(r.folder().as_deref(), Some("transcoder_all"));
        assert_eq!(r.layers, (0..=17).collect::<Vec<_>>());
        assert_eq!(
            find("gemma-scope-2-12b-it-att-all").folder().as_deref(),
            Some("attn_out_all")
        );
        assert_eq!(
            find("gemma-scope-2-4b-pt-mlp").folder().as_deref(),
            Some("mlp_out")
        );
        for r in table {
            assert!(r.folder().is_some(), "{}", r.name);
            assert!(r.repo().starts_with("google/gemma-scope-2-"), "{}", r.name);
        }
    }

    #[test]
    fn ids_parse_and_print_back() {
        let id = SaeId::parse("layer_13_width_16k_l0_medium_seed_1").unwrap();
        assert_eq!(
            (id.layer, id.width.as_str(), id.l0.as_str(), id.affine),
            (13, "16k", "medium_seed_1", false)
        );
        assert_eq!(id.folder(), "layer_13_width_16k_l0_medium_seed_1");
        let id = SaeId::parse("layer_0_width_262k_l0_big_affine").unwrap();
        assert!(id.affine);
        assert_eq!(id.folder(), "layer_0_width_262k_l0_big_affine");
        for bad in [
            "layer_x_width_16k_l0_small",
            "layer_1_width__l0_small",
            "layer_1_width_16k",
            "width_16k_l0_small",
            "layer_1_width_16k_l0_",
        ] {
            assert_eq!(SaeId::parse(bad), None, "{bad}");
        }
        assert_eq!(layer_of_part("layer_12_width_16k_l0_small"), Some(12));
        assert_eq!(layer_of_part("layer_20"), Some(20));
        assert_eq!(layer_of_part("layer_"), None);
        assert_eq!(layer_of_part("layers_2"), None);
    }

    #[test]
    fn locate_checks_the_id_against_the_release() {
        let at = locate(
            "n",
            "gemma-scope-2-1b-pt-transcoders",
            "transcoder/layer_13_width_16k_l0_small_affine",
        )
        .unwrap();
        assert_eq!(at.repo, "google/gemma-scope-2-1b-pt");
        assert_eq!(
            at.file,
            "transcoder/layer_13_width_16k_l0_small_affine/params.safetensors"
        );
        let bare = locate(
            "n",
            "gemma-scope-2-1b-pt-transcoders",
            "layer_13_width_16k_l0_small_affine",
        )
        .unwrap();
        assert_eq!(bare.file, at.file);
        let all = locate(
            "n",
            "gemma-scope-2-1b-it-res-all",
            "layer_3_width_262k_l0_big",
        )
        .unwrap();
        assert_eq!(
            all.file,
            "resid_post_all/layer_3_width_262k_l0_big/params.safetensors"
        );
        let reason = |release: &str, id: &str| match locate("n", release, id) {
            Err(Error::UnknownName { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(
            reason("gemma-scope-2-27b-pt-mlp", "layer_16_width_16k_l0_small")
                .contains("no Gemma Scope 2 release")
        );
        assert!(
            reason("gemma-scope-2-1b-pt-res", "layer_3_width_16k_l0_small")
                .contains("7, 13, 17, 22")
        );
        assert!(
            reason("gemma-scope-2-1b-pt-res-all", "layer_3_width_65k_l0_small")
                .contains("no width `65k`")
        );
        assert!(
            reason("gemma-scope-2-1b-pt-res", "layer_7_width_16k_l0_huge").contains("no L0 label")
        );
        assert!(reason(
            "gemma-scope-2-1b-pt-res",
            "layer_7_width_16k_l0_small_affine"
        )
        .contains("only transcoders"));
        assert!(reason("gemma-scope-2-1b-pt-res", "resid_post").contains("not a Gemma Scope 2"));
    }
}
