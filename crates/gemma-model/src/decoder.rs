//! [`scope_engine::DecoderModel`] for [`GemmaModel`]: how the engine (generation, the
//! decode modes, the batching engine) reads this architecture.

use intervene::{Hooks, NoHooks, SiteCatalog};
use scope_engine::{
    Batch, Call, DecoderModel, FusedLayer, FusedWeights, Generated, GenerationConfig, KvCache,
    ModelOutput, ModelSpec, Step,
};
use tch::{Device, Kind, Tensor};

use crate::config::Activation;
use crate::error::{Error, Result};
use crate::model::GemmaModel;
use crate::norm::RmsNorm;

impl DecoderModel for GemmaModel {
    fn spec(&self) -> ModelSpec {
        let c = self.config();
        ModelSpec {
            num_layers: c.num_hidden_layers,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            window: self.window(),
            eos_token_ids: c.eos_token_ids.clone(),
            pad_token_id: c.pad_token_id,
            max_positions: c.max_position_embeddings,
            dtype: self.dtype(),
            device: self.device(),
        }
    }

    fn run(
        &self,
        batch: &Batch,
        call: Call<'_>,
        hooks: &mut dyn Hooks,
    ) -> scope_engine::Result<ModelOutput> {
        self.forward(batch, call, hooks).map_err(|e| match e {
            Error::Engine(inner) => inner,
            other => scope_engine::Error::Model(Box::new(other)),
        })
    }

    fn site_catalog(&self) -> SiteCatalog {
        GemmaModel::site_catalog(self)
    }

    fn fused_weights(&self) -> std::result::Result<FusedWeights<'_>, String> {
        if self.device() != Device::Cpu || !matches!(self.dtype(), Kind::Float | Kind::BFloat16) {
            return Err(format!(
                "it runs float32 and bfloat16 models on the CPU; this one is {:?} on {:?} \
                 (decode it in the auto or eager mode)",
                self.dtype(),
                self.device()
            ));
        }
        let c = self.config();
        if c.hidden_activation != Activation::GeluTanh {
            return Err(format!(
                "it has the tanh-approximated GELU only; the model's MLP uses {:?}",
                c.hidden_activation
            ));
        }
        fn norm(n: &RmsNorm, what: String) -> std::result::Result<&Tensor, String> {
            n.scale_f32().ok_or(format!("{what} has no f32 scale"))
        }
        let mut layers = Vec::with_capacity(self.layers().len());
        for (i, l) in self.layers().iter().enumerate() {
            layers.push(FusedLayer {
                qkv: l.self_attn.stacked_qkv(),
                o: &l.self_attn.o_proj,
                gate_up: l.mlp.stacked_gate_up(),
                down: &l.mlp.down_proj,
                input_norm: norm(&l.input_layernorm, format!("layer {i} input norm"))?,
                post_attention_norm: norm(
                    &l.post_attention_layernorm,
                    format!("layer {i} post-attention norm"),
                )?,
                pre_feedforward_norm: norm(
                    &l.pre_feedforward_layernorm,
                    format!("layer {i} pre-MLP norm"),
                )?,
                post_feedforward_norm: norm(
                    &l.post_feedforward_layernorm,
                    format!("layer {i} post-MLP norm"),
                )?,
                sliding: c.is_sliding(i),
                local_rope: self.uses_sliding_rope(i),
                query_key_norms: match l.self_attn.query_key_norms() {
                    Some(n) => Some((
                        norm(&n.query, format!("layer {i} q_norm"))?,
                        norm(&n.key, format!("layer {i} k_norm"))?,
                    )),
                    None => None,
                },
            });
        }
        let to_usize = |v: i64| usize::try_from(v).unwrap_or(0);
        Ok(FusedWeights {
            embed: self.embed_tokens(),
            embed_scale: c.embedding_scale() as f32,
            unembed: self.unembedding(),
            final_norm: norm(&self.norm, "the final norm".into())?,
            eps: c.rms_norm_eps as f32,
            final_softcap: c.final_logit_softcapping.map(|cap| cap as f32),
            heads: to_usize(c.num_attention_heads),
            kv_heads: to_usize(c.num_key_value_heads),
            head_dim: to_usize(c.head_dim),
            attention_scale: c.attention_scale() as f32,
            attention_softcap: c.attn_logit_softcapping.map(|cap| cap as f32),
            layers,
        })
    }

    fn rotary(&self, positions: &Tensor, local: bool) -> scope_engine::Result<(Tensor, Tensor)> {
        let rope = match (&self.rope_sliding, local) {
            (Some(rope), true) => rope,
            _ => &self.rope_full,
        };
        let angles = rope
            .angles(positions, Kind::Float)
            .map_err(|e| scope_engine::Error::Model(Box::new(e)))?;
        Ok((angles.cos, angles.signed_sin))
    }
}

impl GemmaModel {
    /// An empty KV cache for `batch` rows and up to `max_len` positions.
    pub fn new_cache(&self, batch: i64, max_len: i64) -> Result<KvCache> {
        Ok(KvCache::new(&self.spec(), batch, max_len)?)
    }

    /// Generates from `batch` (left-padded rows with an attention mask, or unpadded rows)
    /// with the engine's generation loop ([`scope_engine::generate()`]).
    pub fn generate(&self, batch: &Batch, config: &GenerationConfig) -> Result<Generated> {
        self.generate_with(batch, config, &mut NoHooks, &mut |_| true)
    }

    /// Generation visiting `hooks` at every forward call, calling `on_step` after each token;
    /// `on_step` returning false stops early.
    pub fn generate_with(
        &self,
        batch: &Batch,
        config: &GenerationConfig,
        hooks: &mut dyn Hooks,
        on_step: &mut dyn FnMut(&Step<'_>) -> bool,
    ) -> Result<Generated> {
        Ok(scope_engine::generate(self, batch, config, hooks, on_step)?)
    }
}
