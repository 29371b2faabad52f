//! The shapes and settings of a model that the engine allocates and decides by.

use tch::{Device, Kind};

/// The shapes and settings the engine allocates and decides by.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Decoder layers.
    pub num_layers: usize,
    /// Key/value heads.
    pub kv_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// The sliding window of the layers that slide, if any.
    pub window: Option<i64>,
    /// Generation stops at these ids by default.
    pub eos_token_ids: Vec<i64>,
    /// Finished rows of a batch emit this id.
    pub pad_token_id: i64,
    /// Positions the model was trained for.
    pub max_positions: i64,
    /// Compute dtype.
    pub dtype: Kind,
    /// Where the weights live.
    pub device: Device,
}
