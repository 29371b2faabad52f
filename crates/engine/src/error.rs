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
    /// The model failed.
    #[error(transparent)]
    Model(#[from] gemma_model::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
