//! What Gemma 3's `config.json` says differently from Gemma 2's, as transformers 5.17's
//! `Gemma3TextConfig` and `Gemma3Config` read it:
//!
//! - `Gemma3ForConditionalGeneration` (4b, 12b, 27b) nests the text model's keys under
//!   `text_config`; the token ids and the dtype may sit at the top level.
//! - Keys the released files leave out take `Gemma3TextConfig`'s defaults
//!   ([`SHAPE_DEFAULTS`]; no soft-caps; 131072 positions).
//! - Two rotary embeddings: the sliding layers turn by `rope_local_base_freq` (10000), the
//!   global ones by `rope_theta` (1M), scaled by `rope_scaling` (`linear`, factor 8 from 4b
//!   up). transformers 5 writes the same as one `rope_parameters` entry per layer type.
//! - Without `layer_types`, every `sliding_window_pattern`-th layer (default 6) is global.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{invalid, Int, LayerType, RopeConfig};
use crate::error::{Error, Result};

/// `Gemma3TextConfig`'s defaults for the shape keys.
pub(super) const SHAPE_DEFAULTS: [(&str, i64); 8] = [
    ("vocab_size", 262_208),
    ("hidden_size", 2304),
    ("intermediate_size", 9216),
    ("num_hidden_layers", 26),
    ("num_attention_heads", 8),
    ("num_key_value_heads", 4),
    ("head_dim", 256),
    ("query_pre_attn_scalar", 256),
];

/// Keys of a conditional-generation config's top level that the text model reads when
/// `text_config` does not set them.
const INHERITED: [&str; 6] = [
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "dtype",
    "tie_word_embeddings",
];

/// The text model's config of a `Gemma3ForConditionalGeneration` file: `text_config`, with
/// the top level's token ids and dtype where it has none.
pub(super) fn text_config(config: Value, path: &Path) -> Result<Value> {
    let Value::Object(mut top) = config else {
        return Err(invalid(path, "<root>", "not a JSON object"));
    };
    let mut text = match top.remove("text_config") {
        Some(Value::Object(text)) => text,
        Some(other) => {
            let reason = format!("expected an object, got {other}");
            return Err(invalid(path, "text_config", reason));
        }
        None => {
            let (path, key) = (path.to_path_buf(), "text_config".to_string());
            return Err(Error::MissingConfigKey { path, key });
        }
    };
    if let Some(model_type) = text.get("model_type").filter(|v| !v.is_null()) {
        if model_type.as_str() != Some("gemma3_text") {
            let reason = format!("{model_type} is not gemma3_text");
            return Err(invalid(path, "text_config.model_type", reason));
        }
    }
    // The text part is checked as a `Gemma3ForCausalLM` of its own.
    text.remove("model_type");
    text.remove("architectures");
    inherit(&mut text, &top);
    Ok(Value::Object(text))
}

/// Copies [`INHERITED`] keys from `top` into `text` where `text` has none.
fn inherit(text: &mut Map<String, Value>, top: &Map<String, Value>) {
    for key in INHERITED {
        let unset = text.get(key).is_none_or(Value::is_null);
        if let (true, Some(value)) = (unset, top.get(key).filter(|v| !v.is_null())) {
            text.insert(key.to_string(), value.clone());
        }
    }
}

/// The keys that define Gemma 3's two rotary embeddings, in either form.
pub(super) struct RopeKeys {
    pub rope_theta: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub rope_scaling: Option<Value>,
    pub rope_parameters: Option<Value>,
}

/// One entry of `rope_parameters` (or the old `rope_scaling`, which says `type` in older
/// files): `default` or `linear` with its factor.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RopeEntry {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    old_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
}

/// `rope_parameters` in transformers 5's per-layer-type form.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RopeByType {
    full_attention: Option<RopeEntry>,
    sliding_attention: Option<RopeEntry>,
}

/// The RoPE of the full-attention layers and of the sliding ones.
pub(super) fn ropes(path: &Path, keys: RopeKeys) -> Result<(RopeConfig, RopeConfig)> {
    let by_type: RopeByType = match keys.rope_parameters {
        Some(value) => read(value, path, "rope_parameters")?,
        None => RopeByType::default(),
    };
    let scaling: Option<RopeEntry> = match keys.rope_scaling {
        Some(value) => Some(read(value, path, "rope_scaling")?),
        None => None,
    };
    // As transformers merges them: `rope_scaling` updates the global entry, and the entry's
    // own base wins over `rope_theta` / `rope_local_base_freq`.
    let full = by_type.full_attention.or(scaling);
    let full = rope(
        path,
        "rope_parameters.full_attention",
        full,
        keys.rope_theta,
        1e6,
    )?;
    let sliding = rope(
        path,
        "rope_parameters.sliding_attention",
        by_type.sliding_attention,
        keys.rope_local_base_freq,
        1e4,
    )?;
    Ok((full, sliding))
}

/// One layer type's RoPE from its entry, with `theta` (or `default_theta`) as its base when
/// the entry names none.
fn rope(
    path: &Path,
    key: &str,
    entry: Option<RopeEntry>,
    theta: Option<f64>,
    default_theta: f64,
) -> Result<RopeConfig> {
    let entry = entry.unwrap_or_default();
    let theta = entry.rope_theta.or(theta).unwrap_or(default_theta);
    let kind = entry.rope_type.or(entry.old_type);
    let linear_factor = match (kind.as_deref(), entry.factor) {
        (None | Some("default"), _) => 1.0,
        (Some("linear"), Some(factor)) => factor,
        (Some("linear"), None) => {
            return Err(invalid(path, key, "a linear RoPE scaling needs `factor`"))
        }
        (Some(other), _) => {
            let reason = format!("rope_type `{other}` is not supported (only default and linear)");
            return Err(invalid(path, key, reason));
        }
    };
    Ok(RopeConfig {
        theta,
        linear_factor,
    })
}

/// `value` as a `T`, naming the key under `key` that is wrong.
fn read<T: for<'de> Deserialize<'de>>(value: Value, path: &Path, key: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let name = if inner == "." {
            key.to_string()
        } else {
            format!("{key}.{inner}")
        };
        invalid(path, &name, e.into_inner().to_string())
    })
}

/// The layer types from `sliding_window_pattern` (default 6) when `layer_types` is absent.
pub(super) fn layer_types(
    path: &Path,
    layers: usize,
    pattern: Option<Int>,
) -> Result<Vec<LayerType>> {
    let pattern = pattern.map_or(6, |Int(p)| p);
    let pattern = usize::try_from(pattern)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            let reason = format!("{pattern} is not a positive integer");
            invalid(path, "sliding_window_pattern", reason)
        })?;
    Ok(layer_types_of_pattern(layers, pattern))
}

/// transformers' rule: layer `i` slides unless `(i + 1)` is a multiple of `pattern`.
pub fn layer_types_of_pattern(layers: usize, pattern: usize) -> Vec<LayerType> {
    (0..layers)
        .map(|i| {
            if (i + 1) % pattern.max(1) == 0 {
                LayerType::Full
            } else {
                LayerType::Sliding
            }
        })
        .collect()
}
