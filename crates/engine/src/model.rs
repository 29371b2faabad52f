//! How the engine reads a model: one forward call over a batch and a cache view
//! ([`DecoderModel::run`]), the shapes it allocates for ([`ModelSpec`]), and the weights the
//! fused CPU kernels stream ([`FusedWeights`]). An architecture implements [`DecoderModel`]
//! and gets generation, the decode modes and the batching engine without copying them.

use intervene::{ForwardOptions, Hooks, SiteCatalog};
use tch::Tensor;

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::error::Result;
use crate::mask::Masks;
use crate::spec::ModelSpec;

/// What a forward call returns.
#[derive(Debug)]
pub struct ModelOutput {
    /// `[B, T, vocab]` in the model dtype, soft-capped; `None` when stopped early.
    pub logits: Option<Tensor>,
    /// The residual stream after the last layer computed (before the final norm), `[B, T, hidden]`;
    /// `[B, 1, hidden]` when only the last position's logits were asked for and the final layer
    /// ran for that position alone.
    pub hidden: Tensor,
}

/// What a forward call reads besides the batch and the hooks. The default is a plain
/// forward: every layer, every position's logits, no cache.
#[derive(Debug, Default)]
pub struct Call<'a> {
    /// Stop after a layer; only the last position's logits.
    pub options: ForwardOptions,
    /// Start at the input of this decoder layer with this residual stream (`[B, T, hidden]`)
    /// instead of embedding the tokens and running the layers before it.
    pub start: Option<(usize, &'a Tensor)>,
    /// The KV cache to read and extend: the call's positions come after those it holds.
    pub cache: Option<&'a mut KvCache>,
    /// Masks built by the caller (decode steps); by default they are built for the chunk
    /// from the batch's attention mask ([`Masks::of_chunk`]).
    pub masks: Option<Masks>,
    /// A fixed-shape step: keys and values are written at this device-side cache index
    /// (`[1]`, int64), attention runs over the whole cache buffer, and the cache's length is
    /// left to the caller, so that the step can be recorded once and replayed.
    pub cursor: Option<&'a Tensor>,
}

/// Options of a call that wants only the last position's logits (transformers'
/// `logits_to_keep=1`).
pub(crate) fn last_position() -> ForwardOptions {
    ForwardOptions {
        last_position_logits: true,
        ..ForwardOptions::default()
    }
}

impl<'a> Call<'a> {
    /// A call with `options`.
    pub fn with_options(options: ForwardOptions) -> Self {
        Call {
            options,
            ..Call::default()
        }
    }

    /// A call reading and extending `cache`.
    pub fn cached(cache: &'a mut KvCache) -> Self {
        Call {
            cache: Some(cache),
            ..Call::default()
        }
    }
}

/// A decoder-only language model the engine can run.
pub trait DecoderModel {
    /// Its shapes and settings.
    fn spec(&self) -> ModelSpec;

    /// The one forward call: `batch` under `call`, visiting `hooks` at every site they want.
    fn run(&self, batch: &Batch, call: Call<'_>, hooks: &mut dyn Hooks) -> Result<ModelOutput>;

    /// Every hook site with its width.
    fn site_catalog(&self) -> SiteCatalog;

    /// The weights as the fused CPU kernels read them, or why they cannot (not float32 on
    /// the CPU, an activation they lack).
    fn fused_weights(&self) -> std::result::Result<FusedWeights<'_>, String>;

    /// The rotary `(cos, signed_sin)` of `positions` (`[B, T]`, int64), `[B, T, head_dim]`
    /// each in float32, exactly as the model's own attention turns them: the layers with
    /// [`FusedLayer::local_rope`] when `local`, the others otherwise.
    fn rotary(&self, positions: &Tensor, local: bool) -> Result<(Tensor, Tensor)>;
}

/// A model's weights for the fused kernels: contiguous float32 CPU tensors, checked and
/// borrowed as slices when a fused decoder is built.
#[derive(Debug)]
pub struct FusedWeights<'m> {
    /// `[vocab, hidden]`.
    pub embed: &'m Tensor,
    /// The embedding scale, rounded to float32.
    pub embed_scale: f32,
    /// `[vocab, hidden]` (the embedding when tied).
    pub unembed: &'m Tensor,
    /// The final norm's `1 + w`.
    pub final_norm: &'m Tensor,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// The final logit soft-cap.
    pub final_softcap: Option<f32>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The attention scale.
    pub attention_scale: f32,
    /// The attention-score soft-cap.
    pub attention_softcap: Option<f32>,
    /// Per layer.
    pub layers: Vec<FusedLayer<'m>>,
}

/// One decoder layer's weights for the fused kernels (Gemma's sandwich norms, GeGLU with
/// the tanh GELU).
#[derive(Debug)]
pub struct FusedLayer<'m> {
    /// `[q + k + v, hidden]`, stacked.
    pub qkv: &'m Tensor,
    /// `[hidden, q]`.
    pub o: &'m Tensor,
    /// `[2 * intermediate, hidden]`: gate rows then up rows.
    pub gate_up: &'m Tensor,
    /// `[hidden, intermediate]`.
    pub down: &'m Tensor,
    /// The norms' `1 + w`: before attention, after it, before the MLP, after it.
    pub input_norm: &'m Tensor,
    /// After attention.
    pub post_attention_norm: &'m Tensor,
    /// Before the MLP.
    pub pre_feedforward_norm: &'m Tensor,
    /// After the MLP.
    pub post_feedforward_norm: &'m Tensor,
    /// Whether the layer attends within the sliding window.
    pub sliding: bool,
    /// Whether the layer turns queries and keys by the model's second rotary table (Gemma
    /// 3's local base on its sliding layers; see [`DecoderModel::rotary`]).
    pub local_rope: bool,
    /// The `1 + w` of the RMSNorm of each query head and each key head, over `head_dim`,
    /// before the rotation (Gemma 3's `q_norm` and `k_norm`), when the layer has them.
    pub query_key_norms: Option<(&'m Tensor, &'m Tensor)>,
}
