//! The engine's error type.

use thiserror::Error;

/// What can go wrong in the engine. A request's own problem (it can never fit, a bad edit)
/// is reported for that request and leaves the others running; a model failure ends the run.
#[derive(Debug, Error)]
pub enum Error {
    /// A request the engine cannot take, with its id and why.
    #[error("request `{id}`: {why}")]
    Request {
        /// The request's id.
        id: String,
        /// What is wrong with it.
        why: String,
    },
    /// The engine's limits themselves are unusable.
    #[error("engine limits: {0}")]
    Limits(String),
    /// Bad input to a call: shapes, ids, settings.
    #[error("invalid input: {0}")]
    Input(String),
    /// CUDA graphs or memory statistics are unavailable, or failed.
    #[error("{0}")]
    Cuda(String),
    /// The fused CPU kernels cannot run this model.
    #[error("the fused decode step cannot run this model: {0}")]
    Fused(String),
    /// The model's own forward failed.
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    /// A hook failed.
    #[error("intervention: {0}")]
    Intervene(#[from] intervene::Error),
    /// A tensor operation failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
