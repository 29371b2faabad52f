//! The error type of this crate: one enum whose variants carry the facts needed to act on them
//! (the file, the tensor, both shapes, the layer, the key).

use std::path::PathBuf;

/// Everything that can go wrong while loading or running Gemma 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- files ----------------------------------------------------------------------------
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("missing file {path}")]
    MissingFile {
        /// The file that was expected.
        path: PathBuf,
    },
    /// A JSON file that does not parse.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },

    // --- config ---------------------------------------------------------------------------
    /// A required key is absent from a config file.
    #[error("{path}: missing config key `{key}`")]
    MissingConfigKey {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A config key holds a value this crate cannot use.
    #[error("{path}: config key `{key}`: {reason}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    // --- weights --------------------------------------------------------------------------
    /// A safetensors file that cannot be parsed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A tensor the model needs is in none of the weight files.
    #[error("tensor `{name}` not found (searched {searched})")]
    MissingTensor {
        /// The checkpoint name.
        name: String,
        /// The files or index searched.
        searched: String,
    },
    /// A tensor whose shape does not match the config.
    #[error("{path}: tensor `{name}` has shape {got:?}, the config expects {expected:?}")]
    ShapeMismatch {
        /// The file it came from.
        path: PathBuf,
        /// The checkpoint name.
        name: String,
        /// The shape the config implies.
        expected: Vec<i64>,
        /// The shape in the file.
        got: Vec<i64>,
    },
    /// A tensor stored in a dtype this crate does not read.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The checkpoint name.
        name: String,
        /// The stored dtype.
        dtype: String,
    },

    // --- devices and dtypes ---------------------------------------------------------------
    /// A device string that is not `cpu`, `cuda`, `cuda:N` or `auto`.
    #[error("unknown device `{spec}` (expected cpu, cuda, cuda:N or auto)")]
    UnknownDevice {
        /// What was asked for.
        spec: String,
    },
    /// A dtype string that is not `f32`, `bf16`, `f16` or `auto`.
    #[error("unknown dtype `{spec}` (expected f32, bf16, f16 or auto)")]
    UnknownDtype {
        /// What was asked for.
        spec: String,
    },
    /// CUDA was requested but cannot be used.
    #[error(
        "CUDA requested ({requested}) but libtorch_cuda could not be loaded / no GPU: {reason}"
    )]
    CudaUnavailable {
        /// The device asked for.
        requested: String,
        /// What failed.
        reason: String,
    },

    // --- hub ------------------------------------------------------------------------------
    /// A Hugging Face Hub lookup or download failed (names the repository and the file).
    #[error(transparent)]
    Hub(#[from] scope_hub::Error),

    // --- tokenizer ------------------------------------------------------------------------
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat conversation the Gemma template rejects.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    // --- running --------------------------------------------------------------------------
    /// Inputs that do not fit the model (shapes, dtypes, ids, lengths).
    #[error("invalid input: {0}")]
    Input(String),
    /// A stop-after layer beyond the model's depth.
    #[error("layer {layer} is out of range: the model has {num_layers} layers")]
    LayerOutOfRange {
        /// The layer asked for.
        layer: usize,
        /// The model's depth.
        num_layers: usize,
    },
    /// An error from libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error raised by a hook of the intervention graph.
    #[error("intervention: {0}")]
    Intervene(#[from] intervene::Error),
    /// The engine (generation, masks, the KV cache, CUDA graphs) failed.
    #[error(transparent)]
    Engine(#[from] scope_engine::Error),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile { path }
        } else {
            Error::Io { path, source }
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
