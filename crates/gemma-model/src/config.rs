//! `Gemma2Config`: the model's hyper-parameters read from a Hugging Face `config.json`, with
//! transformers' defaults for the keys Google's files leave out.
//!
//! serde reads the file into [`RawConfig`], whose fields are all optional and keep a value of
//! the wrong JSON type instead of failing ([`Field`]); the conversion into [`Gemma2Config`]
//! then applies the defaults and reports every problem with the file and the key.
//!
//! How keys are treated:
//!
//! - Shape keys (sizes, head counts, `query_pre_attn_scalar`) are required: a silent default of
//!   2304 for a missing `hidden_size` (what transformers does) would only surface later as a
//!   confusing shape error.
//! - `null` counts as absent, except for `sliding_window`, `attn_logit_softcapping` and
//!   `final_logit_softcapping`, where an explicit `null` turns the feature off.
//! - A known key holding the wrong JSON type is an error naming it; integers may be written as
//!   integral floats (`4096.0`), as Python writes them.
//! - Unknown keys are ignored, as transformers keeps them as attributes nothing reads: training
//!   and bookkeeping keys (`attention_dropout`, `initializer_range`, `use_cache`,
//!   `cache_implementation`, `architectures`, `model_type`, `transformers_version`), 9b's
//!   `sliding_window_size`, and anything a later release adds.
//! - Keys that change the computation in a way this port does not implement are rejected with
//!   an error naming the key instead of computing something else: `attention_bias: true`,
//!   `use_bidirectional_attention: true`, and a `rope_parameters.rope_type` other than
//!   `default`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

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
        let mut config = read_object::<RawConfig>(path)?.into_config(path)?;
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
        parse_object::<RawConfig>(text, &path)?.into_config(&path)
    }

    /// Takes `eos_token_id` (an int or a list), `bos_token_id` and `pad_token_id` from a
    /// `generation_config.json`.
    pub fn apply_generation_config(&mut self, path: &Path) -> Result<()> {
        let raw = read_object::<RawGenerationConfig>(path)?;
        let k = Keys { path };
        if let Some(ids) = k.id_list("eos_token_id", raw.eos_token_id)? {
            self.eos_token_ids = ids;
        }
        if let Some(id) = k.opt_i64("bos_token_id", raw.bos_token_id)? {
            self.bos_token_id = id;
        }
        if let Some(id) = k.opt_i64("pad_token_id", raw.pad_token_id)? {
            self.pad_token_id = id;
        }
        Ok(())
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

/// Reads the JSON object in `path` into `T`.
fn read_object<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_object(&text, path)
}

/// Parses `text` into `T`, refusing anything but a JSON object at the root (`path` names the
/// file in errors).
fn parse_object<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let json_error = |source| Error::Json {
        path: path.to_path_buf(),
        source,
    };
    let value: Value = serde_json::from_str(text).map_err(json_error)?;
    if !value.is_object() {
        return Err(Error::InvalidConfig {
            path: path.to_path_buf(),
            key: "<root>".into(),
            reason: "not a JSON object".into(),
        });
    }
    T::deserialize(value).map_err(json_error)
}

/// The value of a key: of the expected JSON type, or whatever stood there instead, kept so
/// that the error can name the key (serde's own errors only give a line and a column).
#[derive(Deserialize)]
#[serde(untagged)]
enum Field<T> {
    /// A value of the expected type.
    Valid(T),
    /// Any other JSON value.
    Invalid(Value),
}

/// A key whose absence means a default but whose explicit `null` means "none": `None` when
/// absent, `Some(None)` for `null`.
type Nullable<T> = Option<Option<Field<T>>>;

/// Deserializes a present key (even `null`) as `Some`, so that [`Nullable`] tells it from an
/// absent one (which `#[serde(default)]` makes `None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// An id or a list of ids (`eos_token_id` is either).
#[derive(Deserialize)]
#[serde(untagged)]
enum Ids {
    /// A single id.
    One(Number),
    /// A list of ids.
    Many(Vec<Field<i64>>),
}

/// `rope_parameters`, as transformers 5.x saves it.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RopeParameters {
    rope_type: Option<Field<String>>,
    rope_theta: Option<Field<f64>>,
}

/// The keys of `config.json` this crate reads, as found in the file (see the module docs for
/// the keys it ignores).
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    vocab_size: Option<Field<Number>>,
    hidden_size: Option<Field<Number>>,
    intermediate_size: Option<Field<Number>>,
    num_hidden_layers: Option<Field<Number>>,
    num_attention_heads: Option<Field<Number>>,
    num_key_value_heads: Option<Field<Number>>,
    head_dim: Option<Field<Number>>,
    query_pre_attn_scalar: Option<Field<f64>>,
    #[serde(deserialize_with = "present")]
    sliding_window: Nullable<Number>,
    #[serde(deserialize_with = "present")]
    attn_logit_softcapping: Nullable<f64>,
    #[serde(deserialize_with = "present")]
    final_logit_softcapping: Nullable<f64>,
    rms_norm_eps: Option<Field<f64>>,
    rope_theta: Option<Field<f64>>,
    rope_parameters: Option<Field<RopeParameters>>,
    hidden_activation: Option<Field<String>>,
    hidden_act: Option<Field<String>>,
    layer_types: Option<Field<Vec<Field<String>>>>,
    tie_word_embeddings: Option<Field<bool>>,
    max_position_embeddings: Option<Field<Number>>,
    bos_token_id: Option<Field<Number>>,
    eos_token_id: Option<Field<Ids>>,
    pad_token_id: Option<Field<Number>>,
    torch_dtype: Option<Field<String>>,
    dtype: Option<Field<String>>,
    attention_bias: Option<Field<bool>>,
    use_bidirectional_attention: Option<Field<bool>>,
}

/// The keys of `generation_config.json` this crate reads.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawGenerationConfig {
    bos_token_id: Option<Field<Number>>,
    eos_token_id: Option<Field<Ids>>,
    pad_token_id: Option<Field<Number>>,
}

impl RawConfig {
    /// Applies transformers' defaults and checks every key (in a fixed order, so the first
    /// problem reported does not depend on the file's key order).
    fn into_config(self, path: &Path) -> Result<Gemma2Config> {
        let k = Keys { path };
        let num_hidden_layers = k.count("num_hidden_layers", self.num_hidden_layers)?;
        let config = Gemma2Config {
            vocab_size: k.positive("vocab_size", self.vocab_size)?,
            hidden_size: k.positive("hidden_size", self.hidden_size)?,
            intermediate_size: k.positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers,
            num_attention_heads: k.positive("num_attention_heads", self.num_attention_heads)?,
            num_key_value_heads: k.positive("num_key_value_heads", self.num_key_value_heads)?,
            head_dim: k.positive("head_dim", self.head_dim)?,
            query_pre_attn_scalar: k.f64("query_pre_attn_scalar", self.query_pre_attn_scalar)?,
            sliding_window: k.nullable_i64("sliding_window", self.sliding_window, Some(4096))?,
            attn_logit_softcapping: k.nullable_f64(
                "attn_logit_softcapping",
                self.attn_logit_softcapping,
                Some(50.0),
            )?,
            final_logit_softcapping: k.nullable_f64(
                "final_logit_softcapping",
                self.final_logit_softcapping,
                Some(30.0),
            )?,
            rms_norm_eps: k
                .opt_f64("rms_norm_eps", self.rms_norm_eps)?
                .unwrap_or(1e-6),
            rope_theta: k.rope_theta(self.rope_theta, self.rope_parameters)?,
            hidden_activation: k.activation(self.hidden_activation, self.hidden_act)?,
            layer_types: k.layer_types(self.layer_types, num_hidden_layers)?,
            tie_word_embeddings: k
                .opt_bool("tie_word_embeddings", self.tie_word_embeddings)?
                .unwrap_or(true),
            max_position_embeddings: k
                .opt_i64("max_position_embeddings", self.max_position_embeddings)?
                .unwrap_or(8192),
            bos_token_id: k.opt_i64("bos_token_id", self.bos_token_id)?.unwrap_or(2),
            eos_token_ids: k
                .id_list("eos_token_id", self.eos_token_id)?
                .unwrap_or_else(|| vec![1]),
            pad_token_id: k.opt_i64("pad_token_id", self.pad_token_id)?.unwrap_or(0),
            torch_dtype: k.dtype(self.torch_dtype, self.dtype)?,
        };
        k.reject_unsupported(self.attention_bias, self.use_bidirectional_attention)?;
        config.validate(path)?;
        Ok(config)
    }
}

/// Checks raw values, with errors that name the file and the key.
struct Keys<'a> {
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

    /// The value of an optional key (`None` when absent or `null`); `expected` describes the
    /// JSON type in the error.
    fn opt<T>(&self, key: &str, field: Option<Field<T>>, expected: &str) -> Result<Option<T>> {
        match field {
            None => Ok(None),
            Some(Field::Valid(value)) => Ok(Some(value)),
            Some(Field::Invalid(v)) => {
                Err(self.invalid(key, format!("expected {expected}, got {v}")))
            }
        }
    }

    /// An integer, also when written as an integral float (`4096.0`).
    fn integer(&self, key: &str, n: &Number) -> Result<i64> {
        n.as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| self.invalid(key, format!("expected an integer, got {n}")))
    }

    fn opt_i64(&self, key: &str, field: Option<Field<Number>>) -> Result<Option<i64>> {
        self.opt(key, field, "an integer")?
            .map(|n| self.integer(key, &n))
            .transpose()
    }

    /// A required integer that must be positive.
    fn positive(&self, key: &str, field: Option<Field<Number>>) -> Result<i64> {
        let v = self.opt_i64(key, field)?.ok_or_else(|| self.missing(key))?;
        if v <= 0 {
            return Err(self.invalid(key, format!("expected a positive integer, got {v}")));
        }
        Ok(v)
    }

    /// A required positive integer used as a count.
    fn count(&self, key: &str, field: Option<Field<Number>>) -> Result<usize> {
        let v = self.positive(key, field)?;
        usize::try_from(v).map_err(|_| self.invalid(key, format!("{v} does not fit usize")))
    }

    fn opt_f64(&self, key: &str, field: Option<Field<f64>>) -> Result<Option<f64>> {
        self.opt(key, field, "a number")
    }

    fn f64(&self, key: &str, field: Option<Field<f64>>) -> Result<f64> {
        self.opt_f64(key, field)?.ok_or_else(|| self.missing(key))
    }

    fn nullable_f64(
        &self,
        key: &str,
        field: Nullable<f64>,
        default: Option<f64>,
    ) -> Result<Option<f64>> {
        match field {
            None => Ok(default),
            Some(value) => self.opt_f64(key, value),
        }
    }

    fn nullable_i64(
        &self,
        key: &str,
        field: Nullable<Number>,
        default: Option<i64>,
    ) -> Result<Option<i64>> {
        match field {
            None => Ok(default),
            Some(value) => self.opt_i64(key, value),
        }
    }

    fn opt_bool(&self, key: &str, field: Option<Field<bool>>) -> Result<Option<bool>> {
        self.opt(key, field, "a boolean")
    }

    fn opt_str(&self, key: &str, field: Option<Field<String>>) -> Result<Option<String>> {
        self.opt(key, field, "a string")
    }

    /// An id or a list of ids.
    fn id_list(&self, key: &str, field: Option<Field<Ids>>) -> Result<Option<Vec<i64>>> {
        match self.opt(key, field, "an integer")? {
            None => Ok(None),
            Some(Ids::One(n)) => Ok(Some(vec![self.integer(key, &n)?])),
            Some(Ids::Many(items)) => items
                .into_iter()
                .map(|item| match item {
                    Field::Valid(id) => Ok(id),
                    Field::Invalid(v) => {
                        Err(self.invalid(key, format!("expected integer ids, got {v}")))
                    }
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// `rope_theta` (4.x files) or `rope_parameters.rope_theta` (5.x re-saves), default 10000.
    fn rope_theta(
        &self,
        theta: Option<Field<f64>>,
        params: Option<Field<RopeParameters>>,
    ) -> Result<f64> {
        if let Some(theta) = self.opt_f64("rope_theta", theta)? {
            return Ok(theta);
        }
        let Some(params) = self.opt("rope_parameters", params, "an object")? else {
            return Ok(10000.0);
        };
        let rope_type = self.opt_str("rope_parameters.rope_type", params.rope_type)?;
        if let Some(rope_type) = rope_type.filter(|t| t != "default") {
            return Err(self.invalid(
                "rope_parameters",
                format!("rope_type `{rope_type}` is not supported (only `default`)"),
            ));
        }
        Ok(self
            .opt_f64("rope_parameters.rope_theta", params.rope_theta)?
            .unwrap_or(10000.0))
    }

    /// `hidden_activation`, falling back to `hidden_act`, default `gelu_pytorch_tanh`.
    fn activation(
        &self,
        hidden_activation: Option<Field<String>>,
        hidden_act: Option<Field<String>>,
    ) -> Result<Activation> {
        let (key, name) = match self.opt_str("hidden_activation", hidden_activation)? {
            Some(name) => ("hidden_activation", name),
            None => match self.opt_str("hidden_act", hidden_act)? {
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

    fn layer_types(
        &self,
        field: Option<Field<Vec<Field<String>>>>,
        num_layers: usize,
    ) -> Result<Vec<LayerType>> {
        let Some(items) = self.opt("layer_types", field, "a list")? else {
            return Ok(derived_layer_types(num_layers));
        };
        if items.len() != num_layers {
            return Err(self.invalid(
                "layer_types",
                format!("{} entries for {num_layers} layers", items.len()),
            ));
        }
        items
            .into_iter()
            .map(|item| match item {
                Field::Valid(name) if name == "sliding_attention" => Ok(LayerType::Sliding),
                Field::Valid(name) if name == "full_attention" => Ok(LayerType::Full),
                Field::Valid(name) => Err(self.invalid(
                    "layer_types",
                    format!("unknown layer type {}", Value::String(name)),
                )),
                Field::Invalid(v) => {
                    Err(self.invalid("layer_types", format!("unknown layer type {v}")))
                }
            })
            .collect()
    }

    /// `torch_dtype` (4.x files), else `dtype` (5.x re-saves).
    fn dtype(
        &self,
        torch_dtype: Option<Field<String>>,
        dtype: Option<Field<String>>,
    ) -> Result<Option<String>> {
        let torch_dtype = self.opt_str("torch_dtype", torch_dtype)?;
        Ok(torch_dtype.or(self.opt_str("dtype", dtype)?))
    }

    /// Options transformers supports for Gemma 2 that this port does not implement: refuse
    /// them instead of computing something else.
    fn reject_unsupported(
        &self,
        attention_bias: Option<Field<bool>>,
        bidirectional: Option<Field<bool>>,
    ) -> Result<()> {
        if self.opt_bool("attention_bias", attention_bias)? == Some(true) {
            return Err(self.invalid("attention_bias", "biases in attention are not supported"));
        }
        if self.opt_bool("use_bidirectional_attention", bidirectional)? == Some(true) {
            return Err(self.invalid(
                "use_bidirectional_attention",
                "bidirectional attention is not supported",
            ));
        }
        Ok(())
    }
}
