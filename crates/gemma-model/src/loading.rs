//! Finding checkpoint files (a local directory or a Hugging Face Hub id) and loading the weights
//! one tensor at a time, straight into the requested dtype and device.
//!
//! Every safetensors file is memory-mapped; each tensor's bytes are copied once into a CPU
//! tensor, cast and moved, and that temporary is dropped before the next tensor, so peak memory
//! is the model in its final dtype plus one tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::attention::Attention;
use crate::config::Gemma2Config;
use crate::device::{resolve_dtype, DTypeSpec};
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::model::{DecoderLayer, Gemma2Model};
use crate::norm::RmsNorm;
use crate::rope::Rope;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The files of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory holding them (a snapshot directory for Hub models).
    pub dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `generation_config.json`, when present.
    pub generation_config: Option<PathBuf>,
    /// The safetensors files (one, or the shards named by the index).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    /// A local directory with `config.json` and `model.safetensors` or
    /// `model.safetensors.index.json` plus its shards.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = require_file(dir.join("config.json"))?;
        let weights = local_weight_files(dir)?;
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            generation_config: optional_file(dir.join("generation_config.json")),
            weights,
            tokenizer: optional_file(dir.join("tokenizer.json")),
        })
    }

    /// A local directory if `source` is one, otherwise a Hub id such as `google/gemma-2-2b`.
    pub fn resolve(source: &str, hub: &HubOptions) -> Result<Self> {
        let path = Path::new(source);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if is_hub_id(source) {
            return crate::hub::resolve(source, hub);
        }
        Err(Error::MissingFile {
            path: path.to_path_buf(),
        })
    }

    /// The config with eos ids from `generation_config.json` when present.
    pub fn read_config(&self) -> Result<Gemma2Config> {
        let mut config = Gemma2Config::from_json_str(
            &std::fs::read_to_string(&self.config).map_err(|e| Error::io(&self.config, e))?,
            &self.config,
        )?;
        if let Some(gen) = &self.generation_config {
            config.apply_generation_config(gen)?;
        }
        Ok(config)
    }
}

/// Where Hub files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
    /// Serve only from the cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token (`HF_TOKEN`, else the token file).
    pub token: Option<String>,
    /// Hub endpoint (`HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Show a progress bar on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// Options from the standard Hugging Face environment variables.
    pub fn from_env() -> Self {
        let hf_home = std::env::var_os("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home_dir().join(".cache").join("huggingface"));
        let cache_dir = std::env::var_os("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = non_empty(std::env::var("HF_TOKEN").ok()).or_else(|| {
            let path = std::env::var_os("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            non_empty(std::fs::read_to_string(path).ok())
        });
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        HubOptions {
            cache_dir,
            revision: "main".into(),
            offline,
            token,
            endpoint: non_empty(std::env::var("HF_ENDPOINT").ok()),
            progress: true,
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `org/name` with no path separators beyond the one slash.
fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() && !a.starts_with('.'))
}

fn require_file(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile { path })
    }
}

fn optional_file(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn local_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Err(Error::MissingFile { path: single });
    }
    shard_names(&index)?
        .into_iter()
        .map(|name| require_file(dir.join(name)))
        .collect()
}

/// The distinct shard file names of an index's `weight_map`, in first-seen order.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::MissingConfigKey {
            path: index.to_path_buf(),
            key: "weight_map".into(),
        })?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| Error::InvalidConfig {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            reason: format!("expected file names, got {file}"),
        })?;
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}

/// Where one tensor's bytes are.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// Memory-mapped safetensors files with a name → location table.
pub struct WeightStore {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("paths", &self.paths)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl WeightStore {
    /// Maps `paths` and reads their headers.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (file, path) in paths.iter().enumerate() {
            let handle = File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only and treated as immutable for the life of the
            // map; like every mmap-based loader we rely on nobody truncating it meanwhile.
            let map = unsafe { Mmap::map(&handle) }.map_err(|e| Error::io(path, e))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| Error::Safetensors {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let base = 8 + header_len;
            for (name, info) in metadata.tensors() {
                entries.insert(
                    name,
                    Entry {
                        file,
                        dtype: info.dtype,
                        shape: info.shape.iter().map(|&d| d as i64).collect(),
                        start: base + info.data_offsets.0,
                        end: base + info.data_offsets.1,
                    },
                );
            }
            maps.push(map);
        }
        Ok(WeightStore {
            paths: paths.to_vec(),
            maps,
            entries,
        })
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Tensor `name`, checked against `expected`, as `dtype` on `device`.
    pub fn load(
        &self,
        name: &str,
        expected: &[i64],
        dtype: Kind,
        device: Device,
    ) -> Result<Tensor> {
        let entry = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            searched: self.searched(),
        })?;
        let path = &self.paths[entry.file];
        if entry.shape != expected {
            return Err(Error::ShapeMismatch {
                path: path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: entry.shape.clone(),
            });
        }
        let stored = stored_kind(entry.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: path.clone(),
            name: name.to_string(),
            dtype: format!("{:?}", entry.dtype),
        })?;
        let bytes = self.maps[entry.file]
            .get(entry.start..entry.end)
            .ok_or_else(|| Error::Safetensors {
                path: path.clone(),
                reason: format!("tensor `{name}` points outside the file"),
            })?;
        // One copy into a CPU tensor; cast and move in a single step (a no-op when the dtype
        // and device already match).
        let cpu = Tensor::f_from_data_size(bytes, &entry.shape, stored)?;
        Ok(cpu.f_to_device_(device, dtype, false, false)?)
    }

    fn searched(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn stored_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute dtype (`Auto` = the stored `torch_dtype`).
    pub dtype: DTypeSpec,
    /// Target device.
    pub device: Device,
    /// Hub settings for ids that are not local directories.
    pub hub: HubOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DTypeSpec::Auto,
            device: Device::Cpu,
            hub: HubOptions::from_env(),
        }
    }
}

impl Gemma2Model {
    /// Loads a local directory or a Hub id.
    pub fn load(source: &str, options: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(source, &options.hub)?;
        let config = files.read_config()?;
        let dtype = resolve_dtype(options.dtype, config.torch_dtype.as_deref())?;
        Self::from_files(&files, config, dtype, options.device)
    }

    /// Loads a local directory in `dtype` on `device`.
    pub fn from_dir(dir: impl AsRef<Path>, dtype: Kind, device: Device) -> Result<Self> {
        let files = ModelFiles::from_dir(dir)?;
        let config = files.read_config()?;
        Self::from_files(&files, config, dtype, device)
    }

    /// Loads the weights of `files` for `config`.
    pub fn from_files(
        files: &ModelFiles,
        config: Gemma2Config,
        dtype: Kind,
        device: Device,
    ) -> Result<Self> {
        let store = WeightStore::open(&files.weights)?;
        let _guard = tch::no_grad_guard();
        let untied_head = !config.tie_word_embeddings;
        Self::build(config, dtype, device, untied_head, &mut |name, shape| {
            store.load(name, shape, dtype, device)
        })
    }

    /// A model with random weights (seeded), for benchmarks and tests: linear weights
    /// N(0, 0.02²), norm offsets N(0, 0.1²) so that `1 + w` matters.
    pub fn random(config: &Gemma2Config, seed: i64, dtype: Kind, device: Device) -> Result<Self> {
        tch::manual_seed(seed);
        let _guard = tch::no_grad_guard();
        Self::build(
            config.clone(),
            dtype,
            device,
            !config.tie_word_embeddings,
            &mut |name, shape| {
                let std = if name.ends_with("norm.weight") {
                    0.1
                } else {
                    0.02
                };
                Ok(Tensor::f_randn(shape, (Kind::Float, device))?
                    .f_mul_scalar(std)?
                    .f_to_kind(dtype)?)
            },
        )
    }

    /// Assembles the model from a tensor source (`name`, expected shape → tensor).
    fn build(
        config: Gemma2Config,
        dtype: Kind,
        device: Device,
        untied_head: bool,
        get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
    ) -> Result<Self> {
        let c = &config;
        let h = c.hidden_size;
        let norm = |get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>, name: &str| {
            Ok::<_, Error>(RmsNorm::new(get(name, &[h])?, c.rms_norm_eps))
        };
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(DecoderLayer {
                input_layernorm: norm(get, &format!("{p}.input_layernorm.weight"))?,
                self_attn: Attention {
                    q_proj: get(&format!("{p}.self_attn.q_proj.weight"), &[c.q_width(), h])?,
                    k_proj: get(&format!("{p}.self_attn.k_proj.weight"), &[c.kv_width(), h])?,
                    v_proj: get(&format!("{p}.self_attn.v_proj.weight"), &[c.kv_width(), h])?,
                    o_proj: get(&format!("{p}.self_attn.o_proj.weight"), &[h, c.q_width()])?,
                    heads: c.num_attention_heads,
                    kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                    scale: c.attention_scale(),
                    softcap: c.attn_logit_softcapping,
                },
                post_attention_layernorm: norm(
                    get,
                    &format!("{p}.post_attention_layernorm.weight"),
                )?,
                pre_feedforward_layernorm: norm(
                    get,
                    &format!("{p}.pre_feedforward_layernorm.weight"),
                )?,
                mlp: Mlp {
                    gate_proj: get(
                        &format!("{p}.mlp.gate_proj.weight"),
                        &[c.intermediate_size, h],
                    )?,
                    up_proj: get(
                        &format!("{p}.mlp.up_proj.weight"),
                        &[c.intermediate_size, h],
                    )?,
                    down_proj: get(
                        &format!("{p}.mlp.down_proj.weight"),
                        &[h, c.intermediate_size],
                    )?,
                    activation: c.hidden_activation,
                },
                post_feedforward_layernorm: norm(
                    get,
                    &format!("{p}.post_feedforward_layernorm.weight"),
                )?,
            });
        }
        let final_norm = norm(get, "model.norm.weight")?;
        let lm_head = if untied_head {
            Some(get("lm_head.weight", &[c.vocab_size, h])?)
        } else {
            None
        };
        let rope = Rope::new(c.head_dim, c.rope_theta, device)?;
        Ok(Gemma2Model {
            config,
            dtype,
            device,
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            rope,
        })
    }
}
