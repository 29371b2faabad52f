//! The workflows' error type.

use thiserror::Error;

/// What can go wrong in a workflow: the caller's input (naming it), or the layer below.
#[derive(Debug, Error)]
pub enum Error {
    /// A bad argument, named with the reason.
    #[error("{0}")]
    Input(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] gemma_model::Error),
    /// The SAE failed.
    #[error(transparent)]
    Sae(#[from] sae::Error),
    /// The intervention graph failed.
    #[error(transparent)]
    Intervene(#[from] intervene::Error),
    /// The engine refused a request or failed.
    #[error(transparent)]
    Engine(#[from] scope_engine::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The workflows' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
