//! `GemmaModel`: the decoder stack and its one forward call, with every hook site.

use intervene::{
    ForwardInfo, ForwardOptions, HookPoint, Hooks, NoHooks, Site, SiteCatalog, SiteInfo, SiteKind,
};
use scope_engine::{Batch, Call, KvCache, Masks, ModelOutput};
use tch::{Device, Kind, Tensor};

use crate::attention::{Attention, AttentionContext};
use crate::config::{GemmaConfig, LayerType};
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::rope::Rope;

/// One decoder layer: sandwich norms around attention and MLP.
#[derive(Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: Attention,
    /// Norm on the attention output, before the residual add.
    pub post_attention_layernorm: RmsNorm,
    /// Norm before the MLP.
    pub pre_feedforward_layernorm: RmsNorm,
    /// GeGLU MLP.
    pub mlp: Mlp,
    /// Norm on the MLP output, before the residual add.
    pub post_feedforward_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor,
        ctx: &AttentionContext<'_>,
        cache: Option<&mut KvCache>,
        layer: usize,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let mut x = x;
        visit(hooks, layer, SiteKind::BlockInput, &mut x)?;
        let mut h = self.input_layernorm.forward(&x)?;
        visit(hooks, layer, SiteKind::AttentionInput, &mut h)?;
        let mut a = self.self_attn.forward(&h, ctx, cache, layer, hooks)?;
        visit(hooks, layer, SiteKind::AttentionOutput, &mut a)?;
        let x = x.f_add(&self.post_attention_layernorm.forward(&a)?)?;

        let mut h = self.pre_feedforward_layernorm.forward(&x)?;
        visit(hooks, layer, SiteKind::MlpInput, &mut h)?;
        let mut m = self.mlp.forward(&h, layer, hooks)?;
        visit(hooks, layer, SiteKind::MlpOutput, &mut m)?;
        let mut m = self.post_feedforward_layernorm.forward(&m)?;
        visit(hooks, layer, SiteKind::PostFeedforwardNormOutput, &mut m)?;
        let mut x = x.f_add(&m)?;
        visit(hooks, layer, SiteKind::BlockOutput, &mut x)?;
        Ok(x)
    }

    /// The layer's output at the last position only (`[B, 1, hidden]`), for the final layer of
    /// a call that wants only the last position's logits and hooks nothing in it: keys and
    /// values of every position (they are attended to, and cached), everything else — query,
    /// attention, MLP, norms — for one row. The caller visits the layer's input. Within float
    /// rounding of [`Self::forward`]'s last row (a one-row product may round differently from
    /// that row of a many-row product).
    fn forward_last_position(
        &self,
        x: &Tensor,
        ctx: &AttentionContext<'_>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Result<Tensor> {
        let t = x.size()[1];
        let h = self.input_layernorm.forward(x)?;
        let a = self.self_attn.forward_last_query(&h, ctx, cache, layer)?;
        let x = x
            .f_narrow(1, t - 1, 1)?
            .f_add(&self.post_attention_layernorm.forward(&a)?)?;
        let h = self.pre_feedforward_layernorm.forward(&x)?;
        let m = self.mlp.forward(&h, layer, &mut NoHooks)?;
        Ok(x.f_add(&self.post_feedforward_layernorm.forward(&m)?)?)
    }
}

/// The sites of `layers` a hook wants, in execution order.
pub(crate) fn wanted_sites(
    hooks: &dyn Hooks,
    layers: std::ops::RangeInclusive<usize>,
) -> impl Iterator<Item = Site> + '_ {
    layers
        .flat_map(|layer| SiteKind::ALL.map(|kind| Site::new(layer, kind)))
        .filter(move |&site| hooks.wants(site))
}

/// Whether a hook wants a site inside `layer` (after its input, which is whole in either way
/// of running the layer).
fn hooks_inside(hooks: &dyn Hooks, layer: usize) -> bool {
    wanted_sites(hooks, layer..=layer).any(|site| site.kind != SiteKind::BlockInput)
}

/// Visits `kind` at `layer` only when a hook wants it (one branch otherwise).
fn visit(hooks: &mut dyn Hooks, layer: usize, kind: SiteKind, t: &mut Tensor) -> Result<()> {
    let site = Site::new(layer, kind);
    if hooks.wants(site) {
        hooks.visit(site, t)?;
    }
    Ok(())
}

/// Gemma 2 for causal LM, weights in one dtype on one device, never tracking gradients.
#[derive(Debug)]
pub struct GemmaModel {
    pub(crate) config: GemmaConfig,
    pub(crate) dtype: Kind,
    pub(crate) device: Device,
    /// `[vocab, hidden]`; also the unembedding when tied.
    pub(crate) embed_tokens: Tensor,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    /// A separate unembedding, only for untied checkpoints.
    pub(crate) lm_head: Option<Tensor>,
    /// RoPE of the full-attention layers (Gemma 2: of every layer).
    pub(crate) rope_full: Rope,
    /// RoPE of the sliding layers where it differs from [`Self::rope_full`]'s (Gemma 3).
    pub(crate) rope_sliding: Option<Rope>,
    /// `sqrt(hidden)` rounded to the model dtype, a 0-dim tensor on the model's device (made
    /// once: a copy from the host per call would stall the GPU, and cannot be recorded).
    pub(crate) embed_scale: Tensor,
}

impl GemmaModel {
    /// The hyper-parameters.
    pub fn config(&self) -> &GemmaConfig {
        &self.config
    }

    /// The compute (and weight) dtype.
    pub fn dtype(&self) -> Kind {
        self.dtype
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The embedding matrix `[vocab, hidden]`.
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// The unembedding `[vocab, hidden]` (the embedding when tied).
    pub fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The decoder layers.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }

    /// Scaled embeddings `embed(ids) * sqrt(hidden)`, with the scale rounded to the model dtype
    /// first, as transformers does (59.75 for 9b in bf16).
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = input_ids.f_to_device(self.device)?;
        let rows = Tensor::f_embedding(&self.embed_tokens, &ids, -1, false, false)?;
        Ok(rows.f_mul(&self.embed_scale)?)
    }

    /// [`Self::embed`]'s scale for `config` in `dtype` on `device`.
    pub(crate) fn embed_scale(config: &GemmaConfig, dtype: Kind, device: Device) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(&[config.embedding_scale() as f32])?
            .f_reshape([] as [i64; 0])?
            .f_to_kind(dtype)?
            .f_to_device(device)?)
    }

    /// The one forward call: `batch` under `call` (by default every layer and every
    /// position's logits, no cache; see [`Call`]), visiting `hooks` at every site they want.
    ///
    /// With `call.cache`, the positions come after those cached (`batch.attention_mask`, when
    /// given, covers every key: `[B, cache.len() + T]`, HF's convention; default positions are
    /// `arange(T) + cache.len()`). With `call.start = (layer, hidden)` the call starts at the
    /// input of decoder layer `layer` from the residual stream `hidden` (`[B, T, hidden]`);
    /// given the `block_input` activation of `layer` from a run over the same `batch`, the
    /// result is that run's, bit for bit.
    pub fn forward(
        &self,
        batch: &Batch,
        call: Call<'_>,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let Call {
            options,
            start,
            mut cache,
            masks,
            cursor,
        } = call;
        let _guard = tch::no_grad_guard();
        let (b, t) = batch.shape()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_ref() {
            c.check_fits(b, t)?;
        }
        let last_layer = self.last_layer(&options)?;
        hooks.begin_forward(&ForwardInfo {
            batch: b,
            chunk_len: t,
            past_len: past,
        })?;

        let positions = self.positions(batch, b, t, past)?;
        // Built once per call, shared by every layer of a type.
        let full_angles = self.rope_full.angles(&positions, self.dtype)?;
        let sliding_angles = match &self.rope_sliding {
            Some(rope) => Some(rope.angles(&positions, self.dtype)?),
            None => None,
        };
        let masks = match masks {
            Some(masks) => masks,
            None => {
                let key_mask = self.key_mask(batch, b, past + t)?;
                Masks::of_chunk(
                    past,
                    t,
                    key_mask.as_ref(),
                    self.window(),
                    self.dtype,
                    self.device,
                )?
            }
        };

        let (first_layer, mut x) = match start {
            Some((layer, hidden)) => {
                let mut x = self.check_start(layer, hidden, b, t, last_layer)?;
                // `hidden` is the output of layer `layer - 1`: its last site comes first, as
                // in the full call.
                if let Some(previous) = layer.checked_sub(1) {
                    visit(hooks, previous, SiteKind::BlockOutput, &mut x)?;
                }
                (layer, x)
            }
            None => (0, self.embed(&batch.input_ids)?),
        };
        // Only the last position's logits: the final layer needs the other positions' keys
        // and values alone.
        let final_layer = self.layers.len().saturating_sub(1);
        let last_row_only = options.last_position_logits && last_layer == final_layer && t > 1;
        let layers = self.layers.iter().enumerate().take(last_layer + 1);
        for (layer, block) in layers.skip(first_layer) {
            let sliding = self.config.is_sliding(layer);
            let ctx = AttentionContext {
                angles: match &sliding_angles {
                    Some(angles) if self.uses_sliding_rope(layer) => angles,
                    _ => &full_angles,
                },
                mask: if sliding { &masks.sliding } else { &masks.full },
                cursor,
            };
            x = if last_row_only && layer == final_layer && !hooks_inside(hooks, layer) {
                visit(hooks, layer, SiteKind::BlockInput, &mut x)?;
                block.forward_last_position(&x, &ctx, cache.as_deref_mut(), layer)?
            } else {
                block.forward(x, &ctx, cache.as_deref_mut(), layer, hooks)?
            };
        }
        // A fixed step may be recorded rather than run: its caller counts the steps that ran.
        if let (Some(c), None) = (cache, cursor) {
            c.advance(t);
        }
        let logits = if last_layer + 1 == self.layers.len() {
            // Slicing before the final norm and unembedding, as transformers does for
            // `logits_to_keep=1` (the matmul over fewer rows may round differently).
            let keep = if options.last_position_logits {
                x.f_narrow(1, x.size()[1] - 1, 1)?
            } else {
                x.shallow_clone()
            };
            Some(self.unembed(&keep)?)
        } else {
            None
        };
        Ok(ModelOutput { logits, hidden: x })
    }

    /// The residual stream to start layer `layer` from, after checking it fits the call.
    pub(crate) fn check_start(
        &self,
        layer: usize,
        hidden: &Tensor,
        b: i64,
        t: i64,
        last_layer: usize,
    ) -> Result<Tensor> {
        if layer > last_layer {
            return Err(Error::Input(format!(
                "cannot start at layer {layer} of a call that stops after layer {last_layer}"
            )));
        }
        let want = [b, t, self.config.hidden_size];
        if hidden.size() != want {
            return Err(Error::Input(format!(
                "the residual stream to start from must be {want:?}, got {:?}",
                hidden.size()
            )));
        }
        Ok(hidden.f_to_device(self.device)?.f_to_kind(self.dtype)?)
    }

    /// The index of the last layer to run.
    pub(crate) fn last_layer(&self, options: &ForwardOptions) -> Result<usize> {
        let n = self.layers.len();
        match options.stop_after_layer {
            Some(l) if l >= n => Err(Error::LayerOutOfRange {
                layer: l,
                num_layers: n,
            }),
            Some(l) => Ok(l),
            None => Ok(n.saturating_sub(1)),
        }
    }

    /// Final norm, tied unembedding and final soft-cap, all in the model dtype.
    fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(x)?;
        let mut logits = normed.f_linear::<&Tensor>(self.unembedding(), None)?;
        if let Some(cap) = self.config.final_logit_softcapping {
            // In place on the fresh logits: [B, T, vocab] is the largest tensor of a forward
            // (65 MB for 512 rows of a 32k vocabulary), and two temporaries of it cost more than
            // the tanh. The same operations in the same order as transformers.
            let _ = logits.f_div_scalar_(cap)?.f_tanh_()?.f_mul_scalar_(cap)?;
        }
        Ok(logits)
    }

    fn positions(&self, batch: &Batch, b: i64, t: i64, past: i64) -> Result<Tensor> {
        match &batch.position_ids {
            Some(p) => {
                if p.size() != [b, t] && p.size() != [1, t] {
                    return Err(Error::Input(format!(
                        "position_ids must be [{b}, {t}] or [1, {t}], got {:?}",
                        p.size()
                    )));
                }
                Ok(p.f_to_device(self.device)?.f_expand([b, t], false)?)
            }
            None => Ok(
                Tensor::f_arange_start(past, past + t, (Kind::Int64, self.device))?
                    .f_unsqueeze(0)?
                    .f_expand([b, t], false)?,
            ),
        }
    }

    /// The 2-D key mask as bool `[B, S]`, or `None` when every key is real.
    fn key_mask(&self, batch: &Batch, b: i64, total: i64) -> Result<Option<Tensor>> {
        let Some(mask) = &batch.attention_mask else {
            return Ok(None);
        };
        if mask.size() != [b, total] {
            return Err(Error::Input(format!(
                "attention_mask must be [{b}, {total}] (cached + new positions), got {:?}",
                mask.size()
            )));
        }
        Ok(Some(mask.f_to_device(self.device)?.f_ne(0)?))
    }

    /// Whether decoder layer `layer` turns by the sliding layers' RoPE where it differs from
    /// the global one (Gemma 3: by `layer_types`, with or without a window).
    pub(crate) fn uses_sliding_rope(&self, layer: usize) -> bool {
        self.rope_sliding.is_some()
            && self.config.layer_types.get(layer) == Some(&LayerType::Sliding)
    }

    /// The sliding window, if any layer slides.
    pub(crate) fn window(&self) -> Option<i64> {
        self.config
            .sliding_window
            .filter(|_| self.config.layer_types.contains(&LayerType::Sliding))
    }

    /// Every hook site at every layer, with pyvene module paths and widths.
    pub fn site_catalog(&self) -> SiteCatalog {
        let c = &self.config;
        let mut sites = Vec::with_capacity(c.num_hidden_layers * SiteKind::ALL.len());
        let has_norms = c.architecture.has_query_key_norm();
        let kinds = SiteKind::ALL.into_iter().filter(|kind| {
            has_norms || !matches!(kind, SiteKind::QueryNormOutput | SiteKind::KeyNormOutput)
        });
        for layer in 0..c.num_hidden_layers {
            for kind in kinds.clone() {
                let (suffix, hook, width, heads) = site_layout(c, kind);
                sites.push(SiteInfo {
                    site: Site::new(layer, kind),
                    module_path: format!("model.layers[{layer}]{suffix}"),
                    hook,
                    width,
                    heads,
                });
            }
        }
        SiteCatalog {
            num_layers: c.num_hidden_layers,
            sites,
        }
    }
}

/// Where a kind lives in HF's module tree (suffix after `model.layers[L]`), which side of the
/// module, its width and head count.
fn site_layout(c: &GemmaConfig, kind: SiteKind) -> (&'static str, HookPoint, i64, Option<i64>) {
    use HookPoint::{Input, Output};
    let heads = Some(c.num_attention_heads);
    let kv_heads = Some(c.num_key_value_heads);
    match kind {
        SiteKind::BlockInput => ("", Input, c.hidden_size, None),
        SiteKind::BlockOutput => ("", Output, c.hidden_size, None),
        SiteKind::AttentionInput => (".self_attn", Input, c.hidden_size, None),
        SiteKind::AttentionOutput => (".self_attn", Output, c.hidden_size, None),
        SiteKind::AttentionValueOutput => (".self_attn.o_proj", Input, c.q_width(), heads),
        SiteKind::QueryOutput => (".self_attn.q_proj", Output, c.q_width(), heads),
        SiteKind::KeyOutput => (".self_attn.k_proj", Output, c.kv_width(), kv_heads),
        SiteKind::ValueOutput => (".self_attn.v_proj", Output, c.kv_width(), kv_heads),
        SiteKind::QueryNormOutput => (".self_attn.q_norm", Output, c.q_width(), heads),
        SiteKind::KeyNormOutput => (".self_attn.k_norm", Output, c.kv_width(), kv_heads),
        SiteKind::MlpInput => (".mlp", Input, c.hidden_size, None),
        SiteKind::MlpOutput => (".mlp", Output, c.hidden_size, None),
        SiteKind::MlpActivation => (".mlp.act_fn", Output, c.intermediate_size, None),
        SiteKind::PostFeedforwardNormOutput => {
            (".post_feedforward_layernorm", Output, c.hidden_size, None)
        }
    }
}
