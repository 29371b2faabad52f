//! `GemmaConfig`: the text model's hyper-parameters read from a Hugging Face `config.json`,
//! Gemma 2's or Gemma 3's, with transformers' defaults for the keys Google's files leave out.
//!
//! serde reads the file into `RawConfig`, whose fields are optional and plainly typed;
//! `serde_path_to_error` names the key of a value of the wrong JSON type. The conversion into
//! [`GemmaConfig`] then applies the defaults and checks the values, naming the file and the key.
//!
//! How keys are treated:
//!
//! - `model_type` decides the [`Architecture`]: `gemma2`, `gemma3_text` (`Gemma3ForCausalLM`),
//!   or `gemma3` (`Gemma3ForConditionalGeneration`, whose text model is read from
//!   `text_config`; see `config/gemma3.rs` for what Gemma 3 reads differently). Any other
//!   `model_type`, or `architectures` without the type's class, is refused by key: another
//!   architecture's checkpoint would otherwise load and run with Gemma's arithmetic.
//! - Gemma 2's shape keys (sizes, head counts, `query_pre_attn_scalar`) are required: a silent
//!   default of 2304 for a missing `hidden_size` (what transformers does) would only surface
//!   later as a confusing shape error. Gemma 3's take `Gemma3TextConfig`'s defaults, which
//!   Google's own 4b-27b files rely on.
//! - `null` counts as absent, except for `sliding_window`, `attn_logit_softcapping` and
//!   `final_logit_softcapping`, where an explicit `null` turns the feature off.
//! - A known key holding the wrong JSON type is an error naming it; integers may be written as
//!   integral floats (`4096.0`), as Python writes them.
//! - Unknown keys are ignored, as transformers keeps them as attributes nothing reads: training
//!   and bookkeeping keys (`attention_dropout`, `initializer_range`, `use_cache`,
//!   `cache_implementation`, `transformers_version`), 9b's `sliding_window_size`, 5.x's
//!   `_sliding_window_pattern`, and anything a later release adds.
//! - Keys that change the computation in a way this port does not implement are rejected with
//!   an error naming the key instead of computing something else: `attention_bias: true`,
//!   `use_bidirectional_attention: true`, `partial_rotary_factor`, a soft-cap of another name,
//!   a RoPE other than `default` and `linear` (and for Gemma 2 any scaling, a local base or a
//!   per-layer-type `rope_parameters`: Gemma 2 has one RoPE). `null` values pass.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use crate::error::{Error, Result};

mod gemma3;
pub use gemma3::layer_types_of_pattern;

/// The attention pattern of one decoder layer (an entry of `layer_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum LayerType {
    /// Local attention over the last `sliding_window` positions.
    #[serde(rename = "sliding_attention")]
    Sliding,
    /// Causal attention over every earlier position.
    #[serde(rename = "full_attention")]
    Full,
}

/// The MLP activation (`hidden_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_pytorch_tanh` / `gelu_new` / `gelu_fast`: GELU with the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf GELU.
    Gelu,
}

/// Which checkpoint a `config.json` describes, from its `model_type` (and `architectures`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `gemma2`: `Gemma2ForCausalLM`.
    Gemma2,
    /// `gemma3_text`: `Gemma3ForCausalLM` (270m, 1b), weights under `model.`.
    Gemma3,
    /// `gemma3`: `Gemma3ForConditionalGeneration` (4b, 12b, 27b), a vision tower beside the
    /// text model: the config under `text_config`, the text weights under the language-model
    /// prefix. scope loads the text model and skips the vision tower.
    Gemma3Multimodal,
}

impl Architecture {
    /// Whether attention normalises each query and key head (`q_norm`, `k_norm`).
    pub fn has_query_key_norm(self) -> bool {
        self != Architecture::Gemma2
    }

    /// The prefixes of the text model's tensors (`{prefix}layers.0...`), in the order tried:
    /// Google's released files, then what transformers 5 writes.
    pub fn weight_prefixes(self) -> &'static [&'static str] {
        match self {
            Architecture::Gemma2 | Architecture::Gemma3 => &["model."],
            Architecture::Gemma3Multimodal => &["language_model.model.", "model.language_model."],
        }
    }

    /// The names an untied unembedding may have, in the order tried.
    pub fn lm_head_names(self) -> &'static [&'static str] {
        match self {
            Architecture::Gemma2 | Architecture::Gemma3 => &["lm_head.weight"],
            Architecture::Gemma3Multimodal => &["language_model.lm_head.weight", "lm_head.weight"],
        }
    }
}

/// The rotary position embedding of one attention type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// transformers' `linear` scaling: the inverse frequencies are divided by it (1: none).
    pub linear_factor: f64,
}

impl RopeConfig {
    /// Unscaled RoPE with base `theta`.
    pub fn plain(theta: f64) -> Self {
        RopeConfig {
            theta,
            linear_factor: 1.0,
        }
    }
}

/// Gemma 2 and Gemma 3 text-model hyper-parameters, as transformers 5.17 interprets
/// `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// The checkpoint's architecture.
    pub architecture: Architecture,
    /// Rows of the embedding (256000 for the released models).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of each GeGLU branch.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// The attention scale is `query_pre_attn_scalar^-0.5` (not `head_dim^-0.5`: 144 for 27b).
    pub query_pre_attn_scalar: f64,
    /// Window of the sliding layers; `None` makes every layer full.
    pub sliding_window: Option<i64>,
    /// Attention-score soft-cap (`50`), `None` when the config says `null`.
    pub attn_logit_softcapping: Option<f64>,
    /// Final-logit soft-cap (`30`), `None` when the config says `null`.
    pub final_logit_softcapping: Option<f64>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE of the full-attention layers (Gemma 2: of every layer).
    pub rope_full: RopeConfig,
    /// RoPE of the sliding layers (Gemma 2: the same as [`Self::rope_full`]; Gemma 3:
    /// `rope_local_base_freq`, 10000, while the global layers turn by 1M with a linear
    /// scaling from 4b up).
    pub rope_sliding: RopeConfig,
    /// MLP activation.
    pub hidden_activation: Activation,
    /// Per-layer attention pattern (derived as even = sliding when absent).
    pub layer_types: Vec<LayerType>,
    /// Whether the unembedding is the embedding matrix (HF default true).
    pub tie_word_embeddings: bool,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: i64,
    /// `<bos>` id.
    pub bos_token_id: i64,
    /// Ids that end generation (from generation_config.json when present).
    pub eos_token_ids: Vec<i64>,
    /// `<pad>` id.
    pub pad_token_id: i64,
    /// The dtype the checkpoint is stored in (`torch_dtype` / `dtype`), if the config says.
    pub torch_dtype: Option<String>,
}

impl GemmaConfig {
    /// Reads `config.json`, then overrides the eos ids from `generation_config.json` beside it
    /// when that file exists (generation stops on those ids in transformers).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config = Self::from_json_str(&text, path)?;
        let gen_path = path.parent().map(|dir| dir.join("generation_config.json"));
        if let Some(gen_path) = gen_path.filter(|p| p.is_file()) {
            config.apply_generation_config(&gen_path)?;
        }
        Ok(config)
    }

    /// Parses the text of a `config.json` (`origin` names it in errors).
    pub fn from_json_str(text: &str, origin: impl Into<PathBuf>) -> Result<Self> {
        let path = origin.into();
        let value = parse_value(text, &path)?;
        let architecture = architecture(&value, &path)?;
        let value = match architecture {
            Architecture::Gemma3Multimodal => gemma3::text_config(value, &path)?,
            Architecture::Gemma2 | Architecture::Gemma3 => value,
        };
        refuse_other_arithmetic(architecture, &value, &path)?;
        deserialize::<RawConfig>(value, &path)?.into_config(architecture, &path)
    }

    /// Takes `eos_token_id` (an int or a list), `bos_token_id` and `pad_token_id` from a
    /// `generation_config.json`.
    pub fn apply_generation_config(&mut self, path: &Path) -> Result<()> {
        let raw = read_object::<RawGenerationConfig>(path)?;
        if let Some(ids) = raw.eos_token_id {
            self.eos_token_ids = ids.into();
        }
        if let Some(Int(id)) = raw.bos_token_id {
            self.bos_token_id = id;
        }
        if let Some(Int(id)) = raw.pad_token_id {
            self.pad_token_id = id;
        }
        self.check_token_ids(path)
    }

    /// Every special token id (`bos`, `pad`, `eos`) inside the vocabulary: an id past it would
    /// fail deep inside libtorch instead of naming the file and the key.
    fn check_token_ids(&self, path: &Path) -> Result<()> {
        let vocab = self.vocab_size;
        let ids = [
            ("bos_token_id", self.bos_token_id),
            ("pad_token_id", self.pad_token_id),
        ]
        .into_iter()
        .chain(self.eos_token_ids.iter().map(|&id| ("eos_token_id", id)));
        for (key, id) in ids {
            if !(0..vocab).contains(&id) {
                return Err(invalid(
                    path,
                    key,
                    format!("{id} is outside the vocabulary of {vocab}"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the relations between sizes that the forward pass relies on.
    fn validate(&self, path: &Path) -> Result<()> {
        let (heads, kv) = (self.num_attention_heads, self.num_key_value_heads);
        let (dim, layers) = (self.head_dim, self.num_hidden_layers);
        let (key, reason) = if kv <= 0 || heads % kv != 0 {
            let reason = format!("{heads} query heads are not a multiple of {kv} kv heads");
            ("num_key_value_heads", reason)
        } else if dim <= 0 || dim % 2 != 0 {
            let reason = format!("{dim} is not a positive even number (RoPE splits it in halves)");
            ("head_dim", reason)
        } else if self.query_pre_attn_scalar <= 0.0 {
            ("query_pre_attn_scalar", "must be positive".to_string())
        } else if self.layer_types.len() != layers {
            let reason = format!("{} entries for {layers} layers", self.layer_types.len());
            ("layer_types", reason)
        } else if let Some(w) = self.sliding_window.filter(|&w| w <= 0) {
            ("sliding_window", format!("{w} is not positive"))
        } else if heads.checked_mul(dim).is_none_or(|w| w > MAX_SIZE) {
            (
                "num_attention_heads",
                format!("{heads} heads of {dim} are too wide"),
            )
        } else if let Some((key, value)) = self.rope_numbers().find(|(_, v)| !positive_finite(*v)) {
            (key, format!("{value} is not a positive number"))
        } else if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            (
                "rms_norm_eps",
                format!("{} is not a non-negative number", self.rms_norm_eps),
            )
        } else if let Some((key, cap)) =
            self.soft_caps().find(|(_, c)| !(*c > 0.0 && c.is_finite()))
        {
            (
                key,
                format!("{cap} is not a positive number (null turns it off)"),
            )
        } else if self.max_position_embeddings <= 0 {
            let reason = format!("{} is not positive", self.max_position_embeddings);
            ("max_position_embeddings", reason)
        } else {
            return self.check_token_ids(path);
        };
        Err(invalid(path, key, reason))
    }

    /// The RoPE bases and scaling factors, by key.
    fn rope_numbers(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("rope_theta", self.rope_full.theta),
            ("rope_scaling.factor", self.rope_full.linear_factor),
            ("rope_local_base_freq", self.rope_sliding.theta),
            (
                "rope_parameters.sliding_attention.factor",
                self.rope_sliding.linear_factor,
            ),
        ]
        .into_iter()
    }

    /// The RoPE of decoder layer `layer`.
    pub fn rope_of(&self, layer: usize) -> RopeConfig {
        if self.layer_types.get(layer) == Some(&LayerType::Sliding) {
            self.rope_sliding
        } else {
            self.rope_full
        }
    }

    /// The soft-caps that are on, by key.
    fn soft_caps(&self) -> impl Iterator<Item = (&'static str, f64)> {
        let attn = self
            .attn_logit_softcapping
            .map(|c| ("attn_logit_softcapping", c));
        let last = self
            .final_logit_softcapping
            .map(|c| ("final_logit_softcapping", c));
        attn.into_iter().chain(last)
    }

    /// Whether decoder layer `layer` uses the sliding window (the single source of truth for
    /// masks and caches).
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.layer_types.get(layer) == Some(&LayerType::Sliding)
    }

    /// `query_pre_attn_scalar^-0.5`, the factor applied to `q @ kᵀ`.
    pub fn attention_scale(&self) -> f64 {
        self.query_pre_attn_scalar.powf(-0.5)
    }

    /// Query heads per kv head.
    pub fn kv_groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Width of `q_proj`'s output and `o_proj`'s input (`heads * head_dim`, not `hidden_size`).
    pub fn q_width(&self) -> i64 {
        self.num_attention_heads * self.head_dim
    }

    /// Width of `k_proj` / `v_proj` outputs.
    pub fn kv_width(&self) -> i64 {
        self.num_key_value_heads * self.head_dim
    }

    /// `sqrt(hidden_size)` in f64; the model rounds it to its dtype before use.
    pub fn embedding_scale(&self) -> f64 {
        (self.hidden_size as f64).sqrt()
    }

    /// A small config for tests and CPU benchmarks (random weights): 4 layers, hidden 64.
    pub fn small() -> Self {
        GemmaConfig {
            architecture: Architecture::Gemma2,
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            query_pre_attn_scalar: 16.0,
            sliding_window: Some(8),
            attn_logit_softcapping: Some(50.0),
            final_logit_softcapping: Some(30.0),
            rms_norm_eps: 1e-6,
            rope_full: RopeConfig::plain(10000.0),
            rope_sliding: RopeConfig::plain(10000.0),
            hidden_activation: Activation::GeluTanh,
            layer_types: derived_layer_types(4),
            tie_word_embeddings: true,
            max_position_embeddings: 8192,
            bos_token_id: 2,
            eos_token_ids: vec![1],
            pad_token_id: 0,
            torch_dtype: None,
        }
    }

    /// The gemma-2-2b shapes (for benchmarks with random weights).
    pub fn gemma2_2b() -> Self {
        GemmaConfig {
            vocab_size: 256000,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            query_pre_attn_scalar: 256.0,
            sliding_window: Some(4096),
            layer_types: derived_layer_types(26),
            max_position_embeddings: 8192,
            ..Self::small()
        }
    }

    /// The config as transformers 5.17 saves it (`config.json` of a random checkpoint
    /// written for a benchmark or a load test): `layer_types` and `rope_parameters` spelled
    /// out, per layer type for Gemma 3. [`Self::from_json_str`] reads it back to `self`.
    pub fn to_hf_json(&self) -> Value {
        let layer_types: Vec<&str> = self
            .layer_types
            .iter()
            .map(|t| match t {
                LayerType::Sliding => "sliding_attention",
                LayerType::Full => "full_attention",
            })
            .collect();
        let rope = |r: RopeConfig| {
            if r.linear_factor == 1.0 {
                serde_json::json!({"rope_type": "default", "rope_theta": r.theta})
            } else {
                serde_json::json!({"rope_type": "linear", "factor": r.linear_factor, "rope_theta": r.theta})
            }
        };
        let (class, model_type, rope_parameters) = match self.architecture {
            Architecture::Gemma2 => ("Gemma2ForCausalLM", "gemma2", rope(self.rope_full)),
            Architecture::Gemma3 | Architecture::Gemma3Multimodal => (
                "Gemma3ForCausalLM",
                "gemma3_text",
                serde_json::json!({
                    "full_attention": rope(self.rope_full),
                    "sliding_attention": rope(self.rope_sliding),
                }),
            ),
        };
        let activation = match self.hidden_activation {
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::Gelu => "gelu",
        };
        serde_json::json!({
            "architectures": [class], "model_type": model_type,
            "dtype": self.torch_dtype.as_deref().unwrap_or("float32"),
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "sliding_window": self.sliding_window, "layer_types": layer_types,
            "attn_logit_softcapping": self.attn_logit_softcapping,
            "final_logit_softcapping": self.final_logit_softcapping,
            "rms_norm_eps": self.rms_norm_eps, "hidden_activation": activation,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
        })
    }

    /// A small Gemma 3 config for tests and CPU benchmarks: [`Self::small`]'s shapes with
    /// query/key norms, six layers with a global one in the middle, two RoPE bases (the
    /// global one scaled) and no attention soft-cap.
    pub fn small_gemma3() -> Self {
        GemmaConfig {
            architecture: Architecture::Gemma3,
            num_hidden_layers: 6,
            layer_types: layer_types_of_pattern(6, 3),
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            rope_full: RopeConfig {
                theta: 1_000_000.0,
                linear_factor: 8.0,
            },
            rope_sliding: RopeConfig::plain(10_000.0),
            ..Self::small()
        }
    }

    /// The gemma-3-1b shapes (for benchmarks with random weights).
    pub fn gemma3_1b() -> Self {
        GemmaConfig {
            architecture: Architecture::Gemma3,
            vocab_size: 262_144,
            hidden_size: 1152,
            intermediate_size: 6912,
            num_hidden_layers: 26,
            num_attention_heads: 4,
            num_key_value_heads: 1,
            head_dim: 256,
            query_pre_attn_scalar: 256.0,
            sliding_window: Some(512),
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            rope_full: RopeConfig::plain(1_000_000.0),
            rope_sliding: RopeConfig::plain(10_000.0),
            layer_types: layer_types_of_pattern(26, 6),
            max_position_embeddings: 32_768,
            eos_token_ids: vec![1, 106],
            ..Self::small()
        }
    }
}

fn positive_finite(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

/// transformers' rule when `layer_types` is absent: `(i + 1) % 2 != 0` → sliding, i.e. even
/// indices are sliding and the last layer (odd count) is global.
pub fn derived_layer_types(num_layers: usize) -> Vec<LayerType> {
    let pattern = [LayerType::Sliding, LayerType::Full];
    pattern.into_iter().cycle().take(num_layers).collect()
}

/// Reads the JSON object in `path` into `T`.
fn read_object<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_object(&text, path)
}

/// Parses `text` into `T`: a syntax error is [`Error::Json`], a value of the wrong type an
/// [`Error::InvalidConfig`] naming its key (serde_json alone gives only a line and a column).
fn parse_object<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    deserialize(parse_value(text, path)?, path)
}

/// `text` as a JSON object.
fn parse_value(text: &str, path: &Path) -> Result<Value> {
    let value: Value = serde_json::from_str(text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    // serde's derive would also read a struct from a JSON array (fields by position).
    if !value.is_object() {
        return Err(invalid(path, "<root>", "not a JSON object"));
    }
    Ok(value)
}

/// `value` as a `T`, naming the key of a value of the wrong type.
fn deserialize<T: DeserializeOwned>(value: Value, path: &Path) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        invalid(path, &key, e.into_inner().to_string())
    })
}

/// More layers than any checkpoint has: a larger count is a damaged file, refused before a
/// list of that many layer types is built.
const MAX_LAYERS: i64 = 4096;
/// The widest projection accepted (heads × head_dim), for the same reason.
const MAX_SIZE: i64 = 1 << 24;

/// Keys that change Gemma 2's arithmetic and that its port does not read (see the module
/// docs); Gemma 3 reads the first three.
const OTHER_ARITHMETIC: [&str; 4] = [
    "rope_scaling",
    "rope_local_base_freq",
    "sliding_window_pattern",
    "partial_rotary_factor",
];
/// The soft-caps this port applies.
const KNOWN_SOFTCAPS: [&str; 2] = ["attn_logit_softcapping", "final_logit_softcapping"];

/// The architecture a config describes: `model_type` decides (`gemma2`, `gemma3_text`,
/// `gemma3`), and `architectures`, when given, must name that architecture's class. Anything
/// else is refused, naming the key, rather than run with another model's arithmetic.
fn architecture(config: &Value, path: &Path) -> Result<Architecture> {
    let set = |key: &str| config.get(key).filter(|v| !v.is_null());
    let model_type = set("model_type");
    let architecture = match model_type.map(|t| t.as_str()) {
        None | Some(Some("gemma2")) => Architecture::Gemma2,
        Some(Some("gemma3_text")) => Architecture::Gemma3,
        Some(Some("gemma3")) => Architecture::Gemma3Multimodal,
        Some(_) => {
            let model_type = model_type.map_or_else(String::new, Value::to_string);
            let reason = format!(
                "{model_type} is not an architecture scope implements (gemma2, gemma3_text, gemma3)"
            );
            return Err(invalid(path, "model_type", reason));
        }
    };
    let class = match architecture {
        Architecture::Gemma2 => "Gemma2ForCausalLM",
        Architecture::Gemma3 => "Gemma3ForCausalLM",
        Architecture::Gemma3Multimodal => "Gemma3ForConditionalGeneration",
    };
    if let Some(architectures) = set("architectures") {
        let names = architectures
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str));
        if !names.is_some_and(|mut names| names.any(|n| n == class)) {
            let reason = format!("{architectures} does not include {class}");
            return Err(invalid(path, "architectures", reason));
        }
    }
    Ok(architecture)
}

/// Refuses a config asking for arithmetic this port does not implement, naming the key
/// (non-null values only).
fn refuse_other_arithmetic(architecture: Architecture, config: &Value, path: &Path) -> Result<()> {
    let set = |key: &str| config.get(key).filter(|v| !v.is_null());
    let unread: &[&str] = match architecture {
        Architecture::Gemma2 => &OTHER_ARITHMETIC,
        Architecture::Gemma3 | Architecture::Gemma3Multimodal => &OTHER_ARITHMETIC[3..],
    };
    if let Some(key) = unread.iter().find(|key| set(key).is_some()) {
        return Err(invalid(
            path,
            key,
            "changes the arithmetic in a way scope does not implement",
        ));
    }
    let object = config.as_object().into_iter().flatten();
    if let Some((key, _)) = object
        .filter(|(key, value)| key.contains("softcap") && !value.is_null())
        .find(|(key, _)| !KNOWN_SOFTCAPS.contains(&key.as_str()))
    {
        return Err(invalid(path, key, "a soft-cap scope does not apply"));
    }
    if architecture != Architecture::Gemma2 {
        return Ok(());
    }
    if let Some(params) = set("rope_parameters").and_then(Value::as_object) {
        if let Some(key) = params
            .keys()
            .find(|k| !["rope_type", "rope_theta"].contains(&k.as_str()))
        {
            let reason = format!("`{key}` is not read (only rope_type and rope_theta)");
            return Err(invalid(path, "rope_parameters", reason));
        }
    }
    Ok(())
}

/// An [`Error::InvalidConfig`] for `key` of the file `path`.
fn invalid(path: &Path, key: &str, reason: impl Into<String>) -> Error {
    let (path, key, reason) = (path.to_path_buf(), key.to_string(), reason.into());
    Error::InvalidConfig { path, key, reason }
}

/// The value of a required key, or an [`Error::MissingConfigKey`] naming it.
fn required<T>(path: &Path, key: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| {
        let (path, key) = (path.to_path_buf(), key.to_string());
        Error::MissingConfigKey { path, key }
    })
}

/// A required integer that must be positive (a size or a count).
fn positive(path: &Path, key: &str, value: Option<Int>) -> Result<i64> {
    let Int(v) = required(path, key, value)?;
    if v <= 0 {
        let reason = format!("expected a positive integer, got {v}");
        return Err(invalid(path, key, reason));
    }
    Ok(v)
}

/// An integer, also when written as an integral float (`4096.0`), as Python may save it.
#[derive(Clone, Copy, Deserialize)]
#[serde(try_from = "Number")]
struct Int(i64);

impl TryFrom<Number> for Int {
    type Error = String;

    fn try_from(n: Number) -> Result<Self, String> {
        n.as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Int)
            .ok_or_else(|| format!("expected an integer, got {n}"))
    }
}

/// Deserializes a present key, `null` included, as `Some`: with `#[serde(default)]` making an
/// absent key `None`, an `Option<Option<T>>` tells "absent" (default) from `null` (off).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `eos_token_id`: one id or a list of ids (`expecting` replaces serde's "data did not match
/// any variant" in the error).
#[derive(Deserialize)]
#[serde(untagged, expecting = "expected an integer or a list of integers")]
enum Ids {
    One(Int),
    Many(Vec<Int>),
}

impl From<Ids> for Vec<i64> {
    fn from(ids: Ids) -> Self {
        match ids {
            Ids::One(Int(id)) => vec![id],
            Ids::Many(ids) => ids.into_iter().map(|id| id.0).collect(),
        }
    }
}

/// `rope_parameters`, as transformers 5.x saves it.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RopeParameters {
    rope_type: Option<String>,
    rope_theta: Option<f64>,
}

/// The keys of `config.json` this crate reads (unknown keys are ignored, see the module docs).
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    vocab_size: Option<Int>,
    hidden_size: Option<Int>,
    intermediate_size: Option<Int>,
    num_hidden_layers: Option<Int>,
    num_attention_heads: Option<Int>,
    num_key_value_heads: Option<Int>,
    head_dim: Option<Int>,
    query_pre_attn_scalar: Option<f64>,
    #[serde(deserialize_with = "present")]
    sliding_window: Option<Option<Int>>,
    #[serde(deserialize_with = "present")]
    attn_logit_softcapping: Option<Option<f64>>,
    #[serde(deserialize_with = "present")]
    final_logit_softcapping: Option<Option<f64>>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_local_base_freq: Option<f64>,
    rope_scaling: Option<Value>,
    sliding_window_pattern: Option<Int>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
    layer_types: Option<Vec<LayerType>>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<Int>,
    bos_token_id: Option<Int>,
    eos_token_id: Option<Ids>,
    pad_token_id: Option<Int>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    attention_bias: Option<bool>,
    use_bidirectional_attention: Option<bool>,
}

/// The keys of `generation_config.json` this crate reads.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawGenerationConfig {
    bos_token_id: Option<Int>,
    eos_token_id: Option<Ids>,
    pad_token_id: Option<Int>,
}

impl RawConfig {
    /// Applies transformers' defaults for `architecture` and checks the values in a fixed
    /// order, so that the first problem reported does not depend on the file's key order.
    fn into_config(self, architecture: Architecture, path: &Path) -> Result<GemmaConfig> {
        let defaults = Defaults::of(architecture);
        let shape = |key: &'static str, value: Option<Int>| {
            let default = defaults.shape(key).map(Int);
            positive(path, key, value.or(default))
        };
        let layers = shape("num_hidden_layers", self.num_hidden_layers)?;
        if layers > MAX_LAYERS {
            let reason = format!("{layers} is more than {MAX_LAYERS}");
            return Err(invalid(path, "num_hidden_layers", reason));
        }
        let num_hidden_layers = usize::try_from(layers)
            .map_err(|e| invalid(path, "num_hidden_layers", e.to_string()))?;
        let scalar = self
            .query_pre_attn_scalar
            .or(defaults.shape("query_pre_attn_scalar").map(|v| v as f64));
        let scalar = required(path, "query_pre_attn_scalar", scalar)?;
        let (rope_full, rope_sliding) = match architecture {
            Architecture::Gemma2 => {
                let rope =
                    RopeConfig::plain(rope_theta(path, self.rope_theta, self.rope_parameters)?);
                (rope, rope)
            }
            Architecture::Gemma3 | Architecture::Gemma3Multimodal => gemma3::ropes(
                path,
                gemma3::RopeKeys {
                    rope_theta: self.rope_theta,
                    rope_local_base_freq: self.rope_local_base_freq,
                    rope_scaling: self.rope_scaling,
                    rope_parameters: self.rope_parameters,
                },
            )?,
        };
        let layer_types = match (self.layer_types, architecture) {
            (Some(types), _) => types,
            (None, Architecture::Gemma2) => derived_layer_types(num_hidden_layers),
            (None, _) => gemma3::layer_types(path, num_hidden_layers, self.sliding_window_pattern)?,
        };
        let config = GemmaConfig {
            architecture,
            vocab_size: shape("vocab_size", self.vocab_size)?,
            hidden_size: shape("hidden_size", self.hidden_size)?,
            intermediate_size: shape("intermediate_size", self.intermediate_size)?,
            num_hidden_layers,
            num_attention_heads: shape("num_attention_heads", self.num_attention_heads)?,
            num_key_value_heads: shape("num_key_value_heads", self.num_key_value_heads)?,
            head_dim: shape("head_dim", self.head_dim)?,
            query_pre_attn_scalar: scalar,
            sliding_window: self.sliding_window.map_or(Some(4096), |w| w.map(|n| n.0)),
            attn_logit_softcapping: self
                .attn_logit_softcapping
                .unwrap_or(defaults.attn_logit_softcapping),
            final_logit_softcapping: self
                .final_logit_softcapping
                .unwrap_or(defaults.final_logit_softcapping),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_full,
            rope_sliding,
            hidden_activation: activation(path, self.hidden_activation, self.hidden_act)?,
            layer_types,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
            max_position_embeddings: self
                .max_position_embeddings
                .map_or(defaults.max_position_embeddings, |n| n.0),
            bos_token_id: self.bos_token_id.map_or(2, |n| n.0),
            eos_token_ids: self.eos_token_id.map_or_else(|| vec![1], Vec::from),
            pad_token_id: self.pad_token_id.map_or(0, |n| n.0),
            // `torch_dtype` in 4.x files, `dtype` in 5.x re-saves.
            torch_dtype: self.torch_dtype.or(self.dtype),
        };
        // Options transformers supports that this port does not implement: refuse them
        // instead of computing something else.
        if self.attention_bias == Some(true) {
            let reason = "biases in attention are not supported";
            return Err(invalid(path, "attention_bias", reason));
        }
        if self.use_bidirectional_attention == Some(true) {
            let reason = "bidirectional attention is not supported";
            return Err(invalid(path, "use_bidirectional_attention", reason));
        }
        config.validate(path)?;
        Ok(config)
    }
}

/// transformers' defaults that differ between the architectures.
struct Defaults {
    /// Gemma 2's shape keys are required (a silent 2304 for a missing `hidden_size` would
    /// surface later as a confusing shape error); Google's Gemma 3 files leave out those
    /// that equal `Gemma3TextConfig`'s defaults (the 4b `text_config` names no head count),
    /// so Gemma 3 takes them.
    shapes: Option<[(&'static str, i64); 8]>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    max_position_embeddings: i64,
}

impl Defaults {
    fn of(architecture: Architecture) -> Self {
        match architecture {
            Architecture::Gemma2 => Defaults {
                shapes: None,
                attn_logit_softcapping: Some(50.0),
                final_logit_softcapping: Some(30.0),
                max_position_embeddings: 8192,
            },
            Architecture::Gemma3 | Architecture::Gemma3Multimodal => Defaults {
                shapes: Some(gemma3::SHAPE_DEFAULTS),
                attn_logit_softcapping: None,
                final_logit_softcapping: None,
                max_position_embeddings: 131_072,
            },
        }
    }

    /// The default of a shape key, if it has one.
    fn shape(&self, key: &str) -> Option<i64> {
        let shapes = self.shapes.as_ref()?;
        shapes.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// `rope_theta` (4.x files) or `rope_parameters.rope_theta` (5.x re-saves), default 10000;
/// a scaled RoPE (`rope_type` other than `default`) is refused.
fn rope_theta(path: &Path, theta: Option<f64>, params: Option<Value>) -> Result<f64> {
    let params: RopeParameters = match params {
        Some(value) => deserialize(value, path)?,
        None => RopeParameters::default(),
    };
    if let Some(rope_type) = params.rope_type.filter(|t| t != "default") {
        let reason = format!("rope_type `{rope_type}` is not supported (only `default`)");
        return Err(invalid(path, "rope_parameters", reason));
    }
    Ok(theta.or(params.rope_theta).unwrap_or(10000.0))
}

/// `hidden_activation`, falling back to `hidden_act`, default `gelu_pytorch_tanh`.
fn activation(path: &Path, activation: Option<String>, act: Option<String>) -> Result<Activation> {
    let (key, name) = match (activation, act) {
        (Some(name), _) => ("hidden_activation", name),
        (None, Some(name)) => ("hidden_act", name),
        (None, None) => return Ok(Activation::GeluTanh),
    };
    match name.as_str() {
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::Gelu),
        other => Err(invalid(
            path,
            key,
            format!("unsupported activation `{other}`"),
        )),
    }
}
