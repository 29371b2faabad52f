//! Loading a checkpoint's weights (found by [`crate::files`] / [`crate::hub`]) one tensor at a
//! time, straight into the requested dtype and device.
//!
//! Every safetensors file is memory-mapped. Each tensor is cast into its final dtype on the
//! CPU a piece of rows at a time ([`LOAD_PIECE_BYTES`] of the file), and each piece's pages of
//! the file are handed back to the kernel once copied (they stay in the page cache, out of the
//! process's memory). So peak memory is the model in its final dtype plus one piece: an f32
//! checkpoint loaded in bf16 never holds the f32 weights, as a whole or one tensor at a time.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::attention::{Attention, AttentionShape, AttentionWeights, QueryKeyNorms};
use crate::config::{Architecture, GemmaConfig};
use crate::device::{resolve_dtype, DTypeSpec};
use crate::error::{Error, Result};
use crate::files::ModelFiles;
use crate::mlp::Mlp;
use crate::model::{DecoderLayer, GemmaModel};
use crate::norm::RmsNorm;
use crate::rope::Rope;
use crate::tokenizer::{ChatTemplate, GemmaTokenizer};
use scope_hub::HubOptions;

/// How much of the file a tensor is cast from at a time (whole rows; at least one).
const LOAD_PIECE_BYTES: usize = 64 << 20;

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
            let invalid = |reason: String| Error::Safetensors {
                path: path.clone(),
                reason,
            };
            if let Some(t) = scope_hub::safetensors_header::tensor_past_end(&map) {
                return Err(invalid(format!(
                    "tensor `{}` ends at byte {} of a data section of {} bytes",
                    t.name, t.end, t.data_len
                )));
            }
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| invalid(e.to_string()))?;
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

    /// Every tensor's name and stored shape, sorted by name.
    pub fn tensors(&self) -> Vec<(String, Vec<i64>)> {
        let mut all: Vec<(String, Vec<i64>)> = self
            .entries
            .iter()
            .map(|(name, entry)| (name.clone(), entry.shape.clone()))
            .collect();
        all.sort();
        all
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
        let out = Tensor::f_empty(entry.shape.as_slice(), (dtype, Device::Cpu))?;
        let map = &self.maps[entry.file];
        for (rows, piece) in pieces(&entry.shape, bytes.len()) {
            let piece_bytes = &bytes[piece.clone()];
            let mut shape = entry.shape.clone();
            if let Some(first) = shape.first_mut() {
                *first = (rows.end - rows.start) as i64;
            }
            let stored_piece = stored_view(piece_bytes, &shape, stored)?;
            let mut target = if entry.shape.is_empty() {
                out.shallow_clone()
            } else {
                out.f_narrow(0, rows.start as i64, shape[0])?
            };
            target.f_copy_(&stored_piece)?;
            drop(stored_piece);
            // SAFETY: a read-only shared file mapping: pages dropped here are read from the
            // file again if touched, with the same bytes, so no borrow of the map sees a change.
            // A failed hint leaves the pages resident, which costs memory, not correctness.
            let _ = unsafe {
                map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    entry.start + piece.start,
                    piece.len(),
                )
            };
        }
        Ok(out.f_to_device(device)?)
    }

    fn searched(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `bytes` as a CPU tensor of `shape` and `kind`: a view of them where they are aligned for
/// `kind` (no copy), else a copy. The caller copies out of it before `bytes` go away.
fn stored_view(bytes: &[u8], shape: &[i64], kind: Kind) -> Result<Tensor> {
    let element = kind.elt_size_in_bytes();
    let numel: i64 = shape.iter().product();
    let fits = usize::try_from(numel).is_ok_and(|n| n.checked_mul(element) == Some(bytes.len()));
    if !fits || !(bytes.as_ptr() as usize).is_multiple_of(element) {
        return Ok(Tensor::f_from_data_size(bytes, shape, kind)?);
    }
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    // SAFETY: `bytes` holds exactly `numel` aligned elements of `kind` (checked above), and
    // the tensor, which does not own them, is only read by the caller's copy while `bytes`
    // is borrowed.
    Ok(unsafe { Tensor::f_from_blob(bytes.as_ptr(), shape, &strides, kind, Device::Cpu)? })
}

/// The pieces a tensor of `shape` and `len` bytes is cast in: ranges of its first dimension's
/// rows and of its bytes, each about [`LOAD_PIECE_BYTES`] (a scalar or an empty tensor is one
/// piece).
fn pieces(shape: &[i64], len: usize) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let rows = shape
        .first()
        .map_or(1, |&r| usize::try_from(r).unwrap_or(0));
    if rows == 0 || len == 0 {
        return vec![(0..rows, 0..len)];
    }
    let row_bytes = len / rows;
    let per_piece = (LOAD_PIECE_BYTES / row_bytes.max(1)).max(1);
    (0..rows)
        .step_by(per_piece)
        .map(|start| {
            let end = (start + per_piece).min(rows);
            (start..end, start * row_bytes..end * row_bytes)
        })
        .collect()
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

impl GemmaModel {
    /// The model and its tokenizer from a local directory or a Hub id
    /// (`google/gemma-2-2b`), in `options`' dtype on its device: the one call to start from.
    /// A checkpoint without a `tokenizer.json` is an error naming the folder.
    pub fn from_pretrained(
        source: &str,
        options: &LoadOptions,
    ) -> Result<(GemmaModel, GemmaTokenizer)> {
        let files = ModelFiles::resolve(source, &options.hub)?;
        let config = files.read_config()?;
        let tokenizer = open_tokenizer(&files, &config)?;
        let dtype = resolve_dtype(options.dtype, config.torch_dtype.as_deref())?;
        let model = Self::from_files(&files, config, dtype, options.device)?;
        Ok((model, tokenizer))
    }

    /// The model alone from a local directory or a Hub id (see
    /// [`from_pretrained`](Self::from_pretrained), which also loads the tokenizer).
    pub fn load(source: &str, options: &LoadOptions) -> Result<Self> {
        let files = ModelFiles::resolve(source, &options.hub)?;
        Self::load_files(&files, options.dtype, options.device)
    }

    /// Loads already resolved checkpoint files (callers that also need the tokenizer resolve
    /// once and pass the files here).
    pub fn load_files(files: &ModelFiles, dtype: DTypeSpec, device: Device) -> Result<Self> {
        let config = files.read_config()?;
        let dtype = resolve_dtype(dtype, config.torch_dtype.as_deref())?;
        Self::from_files(files, config, dtype, device)
    }

    /// Loads a local directory in `dtype` (a `Kind`, or [`DTypeSpec::Auto`] for the stored
    /// one) on `device`.
    pub fn from_dir(
        dir: impl AsRef<Path>,
        dtype: impl Into<DTypeSpec>,
        device: Device,
    ) -> Result<Self> {
        let files = ModelFiles::from_dir(dir)?;
        Self::load_files(&files, dtype.into(), device)
    }

    /// Loads the weights of `files` for `config`.
    pub fn from_files(
        files: &ModelFiles,
        config: GemmaConfig,
        dtype: Kind,
        device: Device,
    ) -> Result<Self> {
        if let Some((key, reason)) = width_overflow(&config) {
            let (path, key) = (files.config.clone(), key.to_string());
            return Err(Error::InvalidConfig { path, key, reason });
        }
        let store = WeightStore::open(&files.weights)?;
        let _guard = tch::no_grad_guard();
        let untied_head = !config.tie_word_embeddings;
        let names = TensorNames::find(&config, &store);
        Self::build(config, dtype, device, untied_head, &mut |name, shape| {
            store.load(&names.stored(name), shape, dtype, device)
        })
    }

    /// A model with random weights (seeded), for benchmarks and tests: linear weights
    /// N(0, 0.02²), norm offsets N(0, 0.1²) so that `1 + w` matters.
    pub fn random(config: &GemmaConfig, seed: i64, dtype: Kind, device: Device) -> Result<Self> {
        tch::manual_seed(seed);
        let _guard = tch::no_grad_guard();
        Self::build(
            config.clone(),
            dtype,
            device,
            !config.tie_word_embeddings,
            &mut |name, shape| Ok(random_weight(name, shape, device)?.f_to_kind(dtype)?),
        )
    }

    /// The weights of [`random`](Self::random) in float32 on the CPU, by their checkpoint
    /// names: what a random checkpoint on disk holds (a server's load test at a chosen
    /// shape).
    pub fn random_checkpoint(config: &GemmaConfig, seed: i64) -> Result<Vec<(String, Tensor)>> {
        tch::manual_seed(seed);
        let _guard = tch::no_grad_guard();
        let mut named = Vec::new();
        Self::build(
            config.clone(),
            Kind::Float,
            Device::Cpu,
            !config.tie_word_embeddings,
            &mut |name, shape| {
                let weight = random_weight(name, shape, Device::Cpu)?;
                named.push((name.to_string(), weight.shallow_clone()));
                Ok(weight)
            },
        )?;
        Ok(named)
    }

    /// Assembles the model from a tensor source (`name`, expected shape → tensor).
    fn build(
        config: GemmaConfig,
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
        if let Some((key, reason)) = width_overflow(c) {
            return Err(Error::Input(format!("config key `{key}`: {reason}")));
        }
        let embed_tokens = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        // Not `with_capacity(num_hidden_layers)`: the count comes from a file, and a missing
        // layer's first tensor ends the loop with an error long before a huge count matters.
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(DecoderLayer {
                input_layernorm: norm(get, &format!("{p}.input_layernorm.weight"))?,
                self_attn: attention(c, &p, get)?,
                post_attention_layernorm: norm(
                    get,
                    &format!("{p}.post_attention_layernorm.weight"),
                )?,
                pre_feedforward_layernorm: norm(
                    get,
                    &format!("{p}.pre_feedforward_layernorm.weight"),
                )?,
                mlp: Mlp::new(
                    &get(
                        &format!("{p}.mlp.gate_proj.weight"),
                        &[c.intermediate_size, h],
                    )?,
                    &get(
                        &format!("{p}.mlp.up_proj.weight"),
                        &[c.intermediate_size, h],
                    )?,
                    get(
                        &format!("{p}.mlp.down_proj.weight"),
                        &[h, c.intermediate_size],
                    )?,
                    c.hidden_activation,
                )?,
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
        let rope_full = Rope::of_config(c.head_dim, c.rope_full, device)?;
        let rope_sliding = if c.rope_sliding == c.rope_full {
            None
        } else {
            Some(Rope::of_config(c.head_dim, c.rope_sliding, device)?)
        };
        let embed_scale = GemmaModel::embed_scale(&config, dtype, device)?;
        Ok(GemmaModel {
            embed_scale,
            config,
            dtype,
            device,
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            rope_full,
            rope_sliding,
        })
    }
}

/// The tokenizer of `files` for a model of `config`: `tokenizer.json` (an error naming the
/// folder when absent), checked to produce only ids inside the vocabulary, with the chat
/// template of `tokenizer_config.json` (the architecture's own when the file names none).
pub fn open_tokenizer(files: &ModelFiles, config: &GemmaConfig) -> Result<GemmaTokenizer> {
    let path = files.tokenizer.as_ref().ok_or_else(|| Error::MissingFile {
        path: files.dir.join("tokenizer.json"),
    })?;
    let tokenizer = GemmaTokenizer::from_file(path)?.fit_to(config.vocab_size)?;
    let default = match config.architecture {
        Architecture::Gemma2 => ChatTemplate::Gemma2,
        Architecture::Gemma3 | Architecture::Gemma3Multimodal => ChatTemplate::Gemma3,
    };
    Ok(tokenizer.with_template_of(&files.dir.join("tokenizer_config.json"), default))
}

/// The self-attention of the layer whose tensors start with `p` (`model.layers.{l}`).
fn attention(
    c: &GemmaConfig,
    p: &str,
    get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>,
) -> Result<Attention> {
    let h = c.hidden_size;
    let attention = Attention::new(
        AttentionWeights {
            q_proj: get(&format!("{p}.self_attn.q_proj.weight"), &[c.q_width(), h])?,
            k_proj: get(&format!("{p}.self_attn.k_proj.weight"), &[c.kv_width(), h])?,
            v_proj: get(&format!("{p}.self_attn.v_proj.weight"), &[c.kv_width(), h])?,
            o_proj: get(&format!("{p}.self_attn.o_proj.weight"), &[h, c.q_width()])?,
        },
        AttentionShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            scale: c.attention_scale(),
            softcap: c.attn_logit_softcapping,
        },
    )?;
    if !c.architecture.has_query_key_norm() {
        return Ok(attention);
    }
    let norm = |get: &mut dyn FnMut(&str, &[i64]) -> Result<Tensor>, name: &str| {
        let weight = get(&format!("{p}.self_attn.{name}.weight"), &[c.head_dim])?;
        Ok::<_, Error>(RmsNorm::new(weight, c.rms_norm_eps))
    };
    Ok(attention.with_query_key_norms(QueryKeyNorms {
        query: norm(get, "q_norm")?,
        key: norm(get, "k_norm")?,
    }))
}

/// How the checkpoint names the text model's tensors: the names the model is built with
/// (`model.layers.0...`, `lm_head.weight`) map to those stored, which for a
/// `Gemma3ForConditionalGeneration` carry the language model's prefix.
struct TensorNames {
    /// Replaces the leading `model.`.
    prefix: &'static str,
    /// The stored name of an untied unembedding.
    lm_head: &'static str,
}

impl TensorNames {
    /// The first of the architecture's layouts whose embedding `store` holds (the first
    /// layout when none does, so that the error names the tensor as first tried).
    fn find(config: &GemmaConfig, store: &WeightStore) -> Self {
        let architecture = config.architecture;
        let prefixes = architecture.weight_prefixes();
        let prefix = prefixes
            .iter()
            .find(|p| store.contains(&format!("{p}embed_tokens.weight")))
            .or(prefixes.first())
            .copied()
            .unwrap_or("model.");
        let heads = architecture.lm_head_names();
        let lm_head = heads
            .iter()
            .find(|name| store.contains(name))
            .or(heads.first())
            .copied()
            .unwrap_or("lm_head.weight");
        TensorNames { prefix, lm_head }
    }

    /// The stored name of the tensor the model calls `name`.
    fn stored(&self, name: &str) -> String {
        if name == "lm_head.weight" {
            return self.lm_head.to_string();
        }
        match name.strip_prefix("model.") {
            Some(rest) => format!("{}{rest}", self.prefix),
            None => name.to_string(),
        }
    }
}

/// The attention widths (`heads * head_dim`) must fit in an `i64` before the config's
/// `q_width` / `kv_width` compute them (the fields are public, and `config.json` is not
/// trusted): the key and the reason when one does not.
fn width_overflow(c: &GemmaConfig) -> Option<(&'static str, String)> {
    [
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
    ]
    .into_iter()
    .find(|(_, heads)| heads.checked_mul(c.head_dim).is_none())
    .map(|(key, heads)| {
        let reason = format!("{heads} heads of head_dim {} overflow 64 bits", c.head_dim);
        (key, reason)
    })
}

/// One random weight: N(0, 0.02²) for linear weights, N(0, 0.1²) for norm offsets.
fn random_weight(name: &str, shape: &[i64], device: Device) -> Result<Tensor> {
    let std = if name.ends_with("norm.weight") {
        0.1
    } else {
        0.02
    };
    Ok(Tensor::f_randn(shape, (Kind::Float, device))?.f_mul_scalar(std)?)
}
