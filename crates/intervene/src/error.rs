//! The error type of the intervention graph.

use crate::site::Site;

/// Everything that can go wrong while building or running interventions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A component name that is neither a known type name nor a raw module path of the model.
    #[error("unknown component `{component}`: {reason}")]
    UnknownComponent {
        /// The component as the user wrote it.
        component: String,
        /// Why it did not resolve.
        reason: String,
    },
    /// A layer beyond the model's depth.
    #[error("layer {layer} is out of range: the model has {num_layers} layers (0..={max})", max = num_layers.saturating_sub(1))]
    LayerOutOfRange {
        /// The layer asked for.
        layer: usize,
        /// The model's depth.
        num_layers: usize,
    },
    /// A position beyond the sequence the hook sees.
    #[error("position {position} is out of range for a sequence of length {len} at {site}")]
    PositionOutOfRange {
        /// The position as given (may be negative).
        position: i64,
        /// The sequence length at that call.
        len: i64,
        /// Where.
        site: Site,
    },
    /// A position beyond the current decode chunk, for an intervention gated to decode calls
    /// (given positions with `intervene_on_prompt = false`): positions index the chunk, not the
    /// whole sequence.
    #[error(
        "position {position} is out of range for the decode chunk of length {len} at {site}: \
         with intervene_on_prompt = false, positions index the current decode chunk (length 1 \
         with a KV cache), not the sequence; use intervene_on_prompt = true for prompt positions"
    )]
    DecodePositionOutOfRange {
        /// The position as given (may be negative).
        position: i64,
        /// The chunk length.
        len: i64,
        /// Where.
        site: Site,
    },
    /// A head index beyond the component's head count.
    #[error("head {head} is out of range for {heads} heads at {site}")]
    HeadOutOfRange {
        /// The head as given (may be negative).
        head: i64,
        /// The number of heads.
        heads: i64,
        /// Where.
        site: Site,
    },
    /// A subspace (latent or dimension) index beyond the intervention's width.
    #[error("subspace index {index} is out of range for width {width}")]
    SubspaceOutOfRange {
        /// The index.
        index: i64,
        /// The width.
        width: i64,
    },
    /// An intervention that needs a source run was called without one.
    #[error("intervention `{intervention}` needs sources, but none were given")]
    MissingSource {
        /// The intervention's name.
        intervention: String,
    },
    /// Shapes that do not fit together.
    #[error("shape mismatch in {context}: expected {expected:?}, got {got:?}")]
    Shape {
        /// What was being done.
        context: String,
        /// The expected shape.
        expected: Vec<i64>,
        /// The shape seen.
        got: Vec<i64>,
    },
    /// A request that cannot be honoured, explained.
    #[error("{0}")]
    Invalid(String),
    /// An error from libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// An error from the model being driven.
    #[error("model: {0}")]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
