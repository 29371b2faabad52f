//! The error type of the SAE crate.
//!
//! Every error about a file names the file, and every error about one tensor names its key, so a
//! message alone says what to fix.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, loading or running an SAE.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- names and resolution -----------------------------------------------------------------
    /// A name that is neither an existing local path, a hub path, nor a canonical shorthand.
    #[error("cannot resolve SAE `{name}`: {reason}")]
    UnknownName {
        /// The name as given.
        name: String,
        /// Why it did not resolve.
        reason: String,
    },
    /// A canonical shorthand with no row in the canonical L0 table.
    #[error(
        "no canonical SAE for `{release}-canonical/layer_{layer}/width_{width}/canonical` \
         (the canonical table has no such release, layer and width)"
    )]
    CanonicalNotFound {
        /// The release without `-canonical`, e.g. `gemma-scope-2b-pt-res`.
        release: String,
        /// The layer.
        layer: usize,
        /// The width label, e.g. `16k`.
        width: String,
    },
    /// The canonical table shipped with the crate does not parse (a build defect).
    #[error("canonical table, line {line}: {reason}")]
    CanonicalTable {
        /// 1-based line number in `data/canonical_l0.tsv`.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file is not in the Hugging Face cache and could not be downloaded (offline, or the
    /// download failed); names the repository and the file.
    #[error(transparent)]
    Hub(#[from] scope_hub::Error),

    // ---- files ----------------------------------------------------------------------------------
    /// An I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An npz archive (or one of its entries) that cannot be read: truncated, corrupt, not a zip.
    #[error("{}: {}: {source}", path.display(), key.as_deref().map_or_else(|| "corrupt or truncated npz archive".to_string(), |k| format!("entry `{k}` is unreadable")))]
    Npz {
        /// The file.
        path: PathBuf,
        /// The entry, when the archive itself opened.
        key: Option<String>,
        /// The reader's error.
        #[source]
        source: ndarray_npy::ReadNpzError,
    },
    /// A safetensors file that cannot be parsed, or one of its tensors.
    #[error("{}: {}: {source}", path.display(), key.as_deref().map_or_else(|| "corrupt or truncated safetensors file".to_string(), |k| format!("tensor `{k}` is unreadable")))]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The tensor, when the header parsed.
        key: Option<String>,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A required tensor is absent.
    #[error("{}: missing key `{key}` (found: {found:?})", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key looked for (`W_enc` also accepts `w_enc`, `W_dec` also `w_dec`).
        key: String,
        /// The keys present.
        found: Vec<String>,
    },
    /// A tensor the SAE cannot use where it sits: an affine skip
    /// (`affine_skip_connection`) on an SAE that reads and writes one site.
    #[error("{}: key `{key}` {reason}", path.display())]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why it does not fit.
        reason: String,
    },
    /// A tensor stored with an element type the loader does not convert.
    #[error("{}: key `{key}` has dtype {dtype}; expected float32 or float64 (safetensors: also float16/bfloat16)", path.display())]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The stored dtype as the file spells it.
        dtype: String,
    },
    /// A tensor whose shape is wrong, alone or compared with the others.
    #[error("{}: key `{key}` has shape {got:?}, expected {expected}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The shape found.
        got: Vec<i64>,
        /// The expected shape, in words (e.g. `[d_in=64, d_sae=256] (from W_enc)`).
        expected: String,
    },
    /// A `scaling_factor` that is not all ones (Gemma Scope releases only ship all-ones ones,
    /// which are dropped, as in SAELens).
    #[error(
        "{}: key `scaling_factor` is not all ones (min {min}, max {max}); a fine-tuning scaling \
         factor is not supported",
        path.display()
    )]
    ScalingFactor {
        /// The file.
        path: PathBuf,
        /// Smallest entry.
        min: f64,
        /// Largest entry.
        max: f64,
    },
    /// A `cfg.json` that is missing, malformed, or asks for something unsupported.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The SAE's input width does not match the model's activation width at its site.
    #[error(
        "SAE {} reads {d_in}-wide activations but the model's activation is {model_d} wide",
        path.display()
    )]
    DInMismatch {
        /// The SAE's file.
        path: PathBuf,
        /// The SAE's `d_in`.
        d_in: i64,
        /// The model's width.
        model_d: i64,
    },
    /// The SAE's output width does not match the model's activation width at its write site.
    #[error(
        "SAE {} writes {d_out}-wide activations but the model's activation at its write site is \
         {model_d} wide",
        path.display()
    )]
    DOutMismatch {
        /// The SAE's file.
        path: PathBuf,
        /// The SAE's `d_out`.
        d_out: i64,
        /// The model's width.
        model_d: i64,
    },

    // ---- running --------------------------------------------------------------------------------
    /// A latent index outside `0..d_sae`.
    #[error("latent {latent} is out of range for an SAE with {d_sae} latents")]
    LatentOutOfRange {
        /// The latent asked for.
        latent: i64,
        /// The SAE's width.
        d_sae: i64,
    },
    /// An input tensor of the wrong shape or kind.
    #[error("{context}: {reason}")]
    Input {
        /// What was being done.
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// An error from libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error from the intervention graph.
    #[error("intervene: {0}")]
    Intervene(#[from] intervene::Error),
    /// An error from the model being driven.
    #[error("model: {0}")]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn input(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Input {
            context: context.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for intervene::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Intervene(e) => e,
            Error::Torch(e) => intervene::Error::Torch(e),
            other => intervene::Error::Invalid(other.to_string()),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
