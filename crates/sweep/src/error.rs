//! What can go wrong in a sweep, with the file, document, field or SAE it concerns.

use std::path::PathBuf;

/// A sweep's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A corpus file holds something that is not a document.
    #[error("corpus file {}: {message}", path.display())]
    Corpus {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line or row.
        message: String,
    },
    /// A Parquet file could not be read or written.
    #[error("parquet file {}: {message}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's or writer's message.
        message: String,
    },
    /// A sweep's saved state is damaged or from another version.
    #[error("sweep state {}: {message}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Runs that cannot be combined or continued: other corpus, SAEs or options.
    #[error("{0}")]
    Mismatch(String),
    /// An argument out of range.
    #[error("{0}")]
    Input(String),
    /// A workflow call failed.
    #[error(transparent)]
    Scope(#[from] scope::Error),
    /// The SAE failed.
    #[error(transparent)]
    Sae(#[from] sae::Error),
    /// The model or its tokenizer failed.
    #[error(transparent)]
    Model(#[from] gemma_model::Error),
    /// A batch could not be built.
    #[error(transparent)]
    Engine(#[from] scope_engine::Error),
    /// The intervention graph failed.
    #[error(transparent)]
    Intervene(#[from] intervene::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A sweep's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
