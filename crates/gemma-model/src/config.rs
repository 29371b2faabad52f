//! `Gemma2Config`: the model's hyper-parameters read from a Hugging Face `config.json`, with
//! transformers' defaults for the keys Google's files leave out.
//!
//! Shape keys (sizes, head counts, `query_pre_attn_scalar`) are required: a silent default of
//! 2304 for a missing `hidden_size` (what transformers does) would only surface later as a
//! confusing shape error.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The attention pattern of one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerType {
    /// Local attention over the last `sliding_window` positions.
    Sliding,
    /// Causal attention over every earlier position.
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

/// Gemma 2 hyper-parameters, as transformers 5.17 interprets `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma2Config {
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
    /// RoPE base.
    pub rope_theta: f64,
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

impl Gemma2Config {
    /// Reads `config.json`, then overrides the eos ids from `generation_config.json` beside it
    /// when that file exists (generation stops on those ids in transformers).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let map = read_json_object(path)?;
        let mut config = Self::from_map(&map, path)?;
        if let Some(dir) = path.parent() {
            let gen_path = dir.join("generation_config.json");
            if gen_path.is_file() {
                config.apply_generation_config(&gen_path)?;
            }
        }
        Ok(config)
    }

    /// Parses the text of a `config.json` (`origin` names it in errors).
    pub fn from_json_str(text: &str, origin: impl Into<PathBuf>) -> Result<Self> {
        let path = origin.into();
        let value: Value = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let map = as_object(value, &path)?;
        Self::from_map(&map, &path)
    }

    /// Takes `eos_token_id` (an int or a list), `bos_token_id` and `pad_token_id` from a
    /// `generation_config.json`.
    pub fn apply_generation_config(&mut self, path: &Path) -> Result<()> {
        let map = read_json_object(path)?;
        let keys = Keys { map: &map, path };
        if let Some(ids) = keys.id_list("eos_token_id")? {
            self.eos_token_ids = ids;
        }
        if let Some(id) = keys.opt_i64("bos_token_id")? {
            self.bos_token_id = id;
        }
        if let Some(id) = keys.opt_i64("pad_token_id")? {
            self.pad_token_id = id;
        }
        Ok(())
    }

    fn from_map(map: &Map<String, Value>, path: &Path) -> Result<Self> {
        let k = Keys { map, path };
        let num_hidden_layers = k.usize("num_hidden_layers")?;
        let config = Gemma2Config {
            vocab_size: k.i64("vocab_size")?,
            hidden_size: k.i64("hidden_size")?,
            intermediate_size: k.i64("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads: k.i64("num_attention_heads")?,
            num_key_value_heads: k.i64("num_key_value_heads")?,
            head_dim: k.i64("head_dim")?,
            query_pre_attn_scalar: k.f64("query_pre_attn_scalar")?,
            sliding_window: k.nullable_i64("sliding_window", Some(4096))?,
            attn_logit_softcapping: k.nullable_f64("attn_logit_softcapping", Some(50.0))?,
            final_logit_softcapping: k.nullable_f64("final_logit_softcapping", Some(30.0))?,
            rms_norm_eps: k.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: k.rope_theta()?,
            hidden_activation: k.activation()?,
            layer_types: k.layer_types(num_hidden_layers)?,
            tie_word_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(true),
            max_position_embeddings: k.opt_i64("max_position_embeddings")?.unwrap_or(8192),
            bos_token_id: k.opt_i64("bos_token_id")?.unwrap_or(2),
            eos_token_ids: k.id_list("eos_token_id")?.unwrap_or_else(|| vec![1]),
            pad_token_id: k.opt_i64("pad_token_id")?.unwrap_or(0),
            torch_dtype: k.opt_str("torch_dtype")?.or(k.opt_str("dtype")?),
        };
        k.reject_unsupported()?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the relations between sizes that the forward pass relies on.
    fn validate(&self, path: &Path) -> Result<()> {
        let invalid = |key: &str, reason: String| Error::InvalidConfig {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        if self.num_key_value_heads <= 0 || self.num_attention_heads % self.num_key_value_heads != 0
        {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} kv heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim <= 0 || self.head_dim % 2 != 0 {
            return Err(invalid(
                "head_dim",
                format!(
                    "{} is not a positive even number (RoPE splits it in halves)",
                    self.head_dim
                ),
            ));
        }
        if self.query_pre_attn_scalar <= 0.0 {
            return Err(invalid("query_pre_attn_scalar", "must be positive".into()));
        }
        if let Some(w) = self.sliding_window {
            if w <= 0 {
                return Err(invalid("sliding_window", format!("{w} is not positive")));
            }
        }
        Ok(())
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
        Gemma2Config {
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
            rope_theta: 10000.0,
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
        Gemma2Config {
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
}

/// transformers' rule when `layer_types` is absent: `(i + 1) % 2 != 0` → sliding, i.e. even
/// indices are sliding and the last layer (odd count) is global.
pub fn derived_layer_types(num_layers: usize) -> Vec<LayerType> {
    (0..num_layers)
        .map(|i| {
            if i % 2 == 0 {
                LayerType::Sliding
            } else {
                LayerType::Full
            }
        })
        .collect()
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    as_object(value, path)
}

fn as_object(value: Value, path: &Path) -> Result<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Error::InvalidConfig {
            path: path.to_path_buf(),
            key: "<root>".into(),
            reason: "not a JSON object".into(),
        }),
    }
}

/// Typed access to config keys with errors that name the file and the key.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Keys<'_> {
    fn invalid(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingConfigKey {
            path: self.path.to_path_buf(),
            key: key.to_string(),
        }
    }

    /// The value at `key`, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected an integer, got {v}"))),
        }
    }

    fn i64(&self, key: &str) -> Result<i64> {
        let v = self.opt_i64(key)?.ok_or_else(|| self.missing(key))?;
        if v <= 0 {
            return Err(self.invalid(key, format!("expected a positive integer, got {v}")));
        }
        Ok(v)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.i64(key)?;
        usize::try_from(v).map_err(|_| self.invalid(key, format!("{v} does not fit usize")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a number, got {v}"))),
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    /// A key whose absence means `default` but whose explicit `null` means "none".
    fn nullable_f64(&self, key: &str, default: Option<f64>) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => self.opt_f64(key),
        }
    }

    fn nullable_i64(&self, key: &str, default: Option<i64>) -> Result<Option<i64>> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => self.opt_i64(key),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(key, format!("expected a boolean, got {v}"))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.invalid(key, format!("expected a string, got {v}"))),
        }
    }

    /// An id or a list of ids (`eos_token_id` is either).
    fn id_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| self.invalid(key, format!("expected integer ids, got {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Ok(self.opt_i64(key)?.map(|id| vec![id])),
        }
    }

    /// `rope_theta` (4.x files) or `rope_parameters.rope_theta` (5.x re-saves), default 10000.
    fn rope_theta(&self) -> Result<f64> {
        if let Some(theta) = self.opt_f64("rope_theta")? {
            return Ok(theta);
        }
        let Some(params) = self.get("rope_parameters") else {
            return Ok(10000.0);
        };
        let rope_type = params
            .get("rope_type")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(self.invalid(
                "rope_parameters",
                format!("rope_type `{rope_type}` is not supported (only `default`)"),
            ));
        }
        match params.get("rope_theta") {
            None | Some(Value::Null) => Ok(10000.0),
            Some(v) => v.as_f64().ok_or_else(|| {
                self.invalid(
                    "rope_parameters.rope_theta",
                    format!("expected a number, got {v}"),
                )
            }),
        }
    }

    /// `hidden_activation`, falling back to `hidden_act`, default `gelu_pytorch_tanh`.
    fn activation(&self) -> Result<Activation> {
        let (key, name) = match self.opt_str("hidden_activation")? {
            Some(name) => ("hidden_activation", name),
            None => match self.opt_str("hidden_act")? {
                Some(name) => ("hidden_act", name),
                None => return Ok(Activation::GeluTanh),
            },
        };
        match name.as_str() {
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(self.invalid(key, format!("unsupported activation `{other}`"))),
        }
    }

    fn layer_types(&self, num_layers: usize) -> Result<Vec<LayerType>> {
        let Some(value) = self.get("layer_types") else {
            return Ok(derived_layer_types(num_layers));
        };
        let items = value
            .as_array()
            .ok_or_else(|| self.invalid("layer_types", "expected a list"))?;
        if items.len() != num_layers {
            return Err(self.invalid(
                "layer_types",
                format!("{} entries for {num_layers} layers", items.len()),
            ));
        }
        items
            .iter()
            .map(|v| match v.as_str() {
                Some("sliding_attention") => Ok(LayerType::Sliding),
                Some("full_attention") => Ok(LayerType::Full),
                _ => Err(self.invalid("layer_types", format!("unknown layer type {v}"))),
            })
            .collect()
    }

    /// Options transformers supports for Gemma 2 that this port does not implement: refuse
    /// them instead of computing something else.
    fn reject_unsupported(&self) -> Result<()> {
        if self.opt_bool("attention_bias")? == Some(true) {
            return Err(self.invalid("attention_bias", "biases in attention are not supported"));
        }
        if self.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(self.invalid(
                "use_bidirectional_attention",
                "bidirectional attention is not supported",
            ));
        }
        Ok(())
    }
}
