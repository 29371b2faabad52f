//! `Gemma2Model`: the decoder stack, the forward pass with every hook site, and the
//! [`intervene::HookedModel`] implementation.

use intervene::{
    ForwardInfo, ForwardOptions, HookPoint, Hooks, NoHooks, Paired, Site, SiteCatalog, SiteInfo,
    SiteKind, StackedPart,
};
use tch::{Device, Kind, Tensor};

use crate::attention::{Attention, AttentionContext};
use crate::cache::KvCache;
use crate::config::{Gemma2Config, LayerType};
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::rope::Rope;

/// Token ids with optional padding mask and position ids.
#[derive(Debug)]
pub struct Batch {
    /// `[B, T]`, int64.
    pub input_ids: Tensor,
    /// `[B, T]` (or `[B, past + T]` for a cached call), 1 = real token, 0 = padding.
    pub attention_mask: Option<Tensor>,
    /// `[B, T]` int64 positions; default `arange(T) + past_len` (pads counted, as HF forward).
    pub position_ids: Option<Tensor>,
}

impl Batch {
    /// A batch of `input_ids` (`[B, T]`) without padding.
    pub fn new(input_ids: Tensor) -> Self {
        Batch {
            input_ids,
            attention_mask: None,
            position_ids: None,
        }
    }

    /// One unpadded row `[1, len]`.
    ///
    /// Infallible for callers' convenience: building a 1-D int64 tensor from a slice and adding a
    /// leading axis can only fail on allocation failure, where libtorch aborts anyway.
    pub fn from_ids(ids: &[i64]) -> Self {
        Batch::new(Tensor::from_slice(ids).unsqueeze(0))
    }

    /// Rows of different lengths, left-padded with `pad_id` (the convention for generation),
    /// with the matching attention mask. Positions are left to the caller (forward uses
    /// arange, generate uses `cumsum(mask) - 1`).
    pub fn left_padded(rows: &[Vec<i64>], pad_id: i64) -> Result<Self> {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || width == 0 {
            return Err(Error::Input(
                "a batch needs at least one non-empty row".into(),
            ));
        }
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in rows {
            let pad = width - row.len();
            ids.extend(std::iter::repeat_n(pad_id, pad).chain(row.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, row.len())));
        }
        let shape = [rows.len() as i64, width as i64];
        Ok(Batch {
            input_ids: Tensor::f_from_slice(&ids)?.f_reshape(shape)?,
            attention_mask: Some(Tensor::f_from_slice(&mask)?.f_reshape(shape)?),
            position_ids: None,
        })
    }

    /// The same batch with `position_ids`.
    pub fn with_position_ids(mut self, position_ids: Tensor) -> Self {
        self.position_ids = Some(position_ids);
        self
    }

    /// The same batch with `attention_mask`.
    pub fn with_attention_mask(mut self, attention_mask: Tensor) -> Self {
        self.attention_mask = Some(attention_mask);
        self
    }

    /// The batch stacked on itself (`[2B, T]`): every row twice, the copies after the rows.
    pub fn twice(&self) -> Result<Self> {
        let stack = |t: &Tensor| Tensor::f_cat(&[t, t], 0);
        Ok(Batch {
            input_ids: stack(&self.input_ids)?,
            attention_mask: self.attention_mask.as_ref().map(stack).transpose()?,
            // `[1, T]` positions broadcast over any number of rows.
            position_ids: match &self.position_ids {
                Some(p) if p.size().first() == Some(&1) => Some(p.shallow_clone()),
                Some(p) => Some(stack(p)?),
                None => None,
            },
        })
    }

    /// `batches` as one batch: their rows one after another, each padded at the end to the
    /// longest with `pad_id` (attended, position 0: only later padding sees it, and nothing
    /// reads its outputs). Since no position attends to later ones, each real position is
    /// computed as in its own batch's call. Also returns where each batch sits.
    pub fn stacked_end_padded(batches: &[&Batch], pad_id: i64) -> Result<(Self, Vec<StackedPart>)> {
        let shapes = batches
            .iter()
            .map(|b| b.shape())
            .collect::<Result<Vec<_>>>()?;
        let width = shapes
            .iter()
            .map(|&(_, t)| t)
            .max()
            .ok_or_else(|| Error::Input("stacking needs at least one batch".into()))?;
        let pad_end = |t: &Tensor, value: i64| -> Result<Tensor> {
            let len = t.size().last().copied().unwrap_or(0);
            Ok(t.f_pad([0, width - len], "constant", Some(value as f64))?)
        };
        // A mask or positions for every part as soon as one part has them.
        let any_mask = batches.iter().any(|b| b.attention_mask.is_some());
        let any_positions = batches.iter().any(|b| b.position_ids.is_some());
        let (mut ids, mut masks, mut positions, mut parts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut first_row = 0;
        for (batch, &(rows, len)) in batches.iter().zip(&shapes) {
            let device = batch.input_ids.device();
            ids.push(pad_end(&batch.input_ids, pad_id)?);
            if any_mask {
                let mask = match &batch.attention_mask {
                    Some(mask) => mask.shallow_clone(),
                    None => Tensor::f_ones([rows, len], (Kind::Int64, device))?,
                };
                masks.push(pad_end(&mask, 1)?);
            }
            if any_positions {
                let own = match &batch.position_ids {
                    Some(p) => p.f_expand([rows, len], false)?,
                    None => Tensor::f_arange(len, (Kind::Int64, device))?
                        .f_expand([rows, len], false)?,
                };
                positions.push(pad_end(&own, 0)?);
            }
            parts.push(StackedPart {
                first_row,
                rows,
                len,
            });
            first_row += rows;
        }
        let cat = |parts: &[Tensor]| -> Result<Option<Tensor>> {
            Ok(match parts {
                [] => None,
                _ => Some(Tensor::f_cat(parts, 0)?),
            })
        };
        let input_ids =
            cat(&ids)?.ok_or_else(|| Error::Input("stacking needs at least one batch".into()))?;
        Ok((
            Batch {
                input_ids,
                attention_mask: cat(&masks)?,
                position_ids: cat(&positions)?,
            },
            parts,
        ))
    }

    /// `[B, T]`.
    pub fn shape(&self) -> Result<(i64, i64)> {
        match self.input_ids.size().as_slice() {
            [b, t] => Ok((*b, *t)),
            other => Err(Error::Input(format!(
                "input_ids must be [batch, seq], got {other:?}"
            ))),
        }
    }
}

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
fn wanted_sites(
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
pub struct Gemma2Model {
    pub(crate) config: Gemma2Config,
    pub(crate) dtype: Kind,
    pub(crate) device: Device,
    /// `[vocab, hidden]`; also the unembedding when tied.
    pub(crate) embed_tokens: Tensor,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    /// A separate unembedding, only for untied checkpoints.
    pub(crate) lm_head: Option<Tensor>,
    pub(crate) rope: Rope,
    /// `sqrt(hidden)` rounded to the model dtype, a 0-dim tensor on the model's device (made
    /// once: a copy from the host per call would stall the GPU, and cannot be recorded).
    pub(crate) embed_scale: Tensor,
}

impl Gemma2Model {
    /// The hyper-parameters.
    pub fn config(&self) -> &Gemma2Config {
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
    pub(crate) fn embed_scale(
        config: &Gemma2Config,
        dtype: Kind,
        device: Device,
    ) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(&[config.embedding_scale() as f32])?
            .f_reshape([] as [i64; 0])?
            .f_to_kind(dtype)?
            .f_to_device(device)?)
    }

    /// Full forward over `batch` without hooks: logits for every position.
    pub fn forward(&self, batch: &Batch) -> Result<ModelOutput> {
        self.forward_with(batch, &ForwardOptions::default(), &mut NoHooks)
    }

    /// Forward over `batch` visiting `hooks`, optionally stopping after a layer.
    pub fn forward_with(
        &self,
        batch: &Batch,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        self.run(batch, options, Call::default(), hooks)
    }

    /// Like [`forward_with`](Self::forward_with), but starting at the input of decoder layer
    /// `layer` with the residual stream `hidden` (`[B, T, hidden]`) instead of embedding the
    /// tokens and running the layers before it. Given the `block_input` activation of `layer`
    /// from a run over the same `batch`, the result is that run's, bit for bit.
    pub fn forward_from(
        &self,
        batch: &Batch,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let call = Call {
            start: Some((layer, hidden)),
            ..Call::default()
        };
        self.run(batch, options, call, hooks)
    }

    /// Two runs resumed at decoder layer `layer` (at least 1) from the same residual stream
    /// `hidden`, as one batch of twice the rows: the first visits `hooks` at the block output of
    /// layer `layer - 1` (the site [`forward_from`](Self::forward_from) visits first) and nowhere
    /// else, the second runs without hooks. Returns both, each within float rounding of its
    /// own `forward_from` call (the products run over twice the rows). Every
    /// weight from `layer` on, and the unembedding, is read once for both: an interchange's
    /// intervened run and the end of its clean run. A hook that wants a later site is an error.
    pub fn forward_from_paired(
        &self,
        batch: &Batch,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Paired<ModelOutput>> {
        let (b, t) = batch.shape()?;
        let previous = layer.checked_sub(1).ok_or_else(|| {
            Error::Input("a paired run resumes after a layer: `layer` must be at least 1".into())
        })?;
        let last_layer = self.last_layer(options)?;
        let plain = self.check_start(layer, hidden, b, t, last_layer)?;
        hooks.begin_forward(&ForwardInfo {
            batch: b,
            chunk_len: t,
            past_len: 0,
        })?;
        if let Some(site) = wanted_sites(hooks, layer..=last_layer).next() {
            return Err(Error::Input(format!(
                "a paired run visits hooks only at the output of layer {previous}, \
                 but a hook wants {site}"
            )));
        }
        // A copy: a hook may write into the activation it is given.
        let mut hooked = plain.f_detach_copy()?;
        visit(hooks, previous, SiteKind::BlockOutput, &mut hooked)?;
        let both = Tensor::f_cat(&[&hooked, &plain], 0)?;
        let call = Call {
            start: Some((layer, &both)),
            ..Call::default()
        };
        let out = self.run(&batch.twice()?, options, call, &mut NoHooks)?;
        let rows = |t: &Tensor, first: i64| t.f_narrow(0, first, b);
        let half = |first: i64| -> Result<ModelOutput> {
            Ok(ModelOutput {
                logits: out.logits.as_ref().map(|l| rows(l, first)).transpose()?,
                hidden: rows(&out.hidden, first)?,
            })
        };
        Ok(Paired {
            hooked: half(0)?,
            plain: half(b)?,
        })
    }

    /// An empty KV cache for `batch` rows and up to `max_len` positions.
    pub fn new_cache(&self, batch: i64, max_len: i64) -> Result<KvCache> {
        KvCache::new(&self.config, batch, max_len, self.dtype, self.device)
    }

    /// Forward over the next chunk of positions, reading and extending `cache`.
    ///
    /// `batch.attention_mask`, when given, covers every key: `[B, cache.len() + T]` (HF's
    /// convention). Default positions are `arange(T) + cache.len()`.
    pub fn forward_cached(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let call = Call {
            cache: Some(cache),
            ..Call::default()
        };
        self.run(batch, &ForwardOptions::default(), call, hooks)
    }

    /// Like [`forward_cached`](Self::forward_cached) but unembeds only the last position
    /// (`[B, 1, vocab]`), as transformers' `generate()` does with `logits_to_keep=1`. One-position
    /// chunks take their masks from `decode_masks` (and ignore `batch.attention_mask`).
    pub(crate) fn forward_step(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        decode_masks: &DecodeMasks,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let options = ForwardOptions {
            last_position_logits: true,
            ..ForwardOptions::default()
        };
        let call = Call {
            cache: Some(cache),
            decode_masks: Some(decode_masks),
            ..Call::default()
        };
        self.run(batch, &options, call, hooks)
    }

    /// One decode step of fixed shape: the tokens in `step.input_ids` at `step.positions`,
    /// keys and values written at `step.cursor`, attention over the whole cache buffer; the
    /// last position's logits (`[B, 1, vocab]`). Nothing on the host depends on the step, so
    /// it can be recorded once and replayed (a CUDA graph); the caller advances `step` and
    /// the cache after each step that ran.
    pub(crate) fn forward_fixed_step(
        &self,
        step: &FixedStep,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let options = ForwardOptions {
            last_position_logits: true,
            ..ForwardOptions::default()
        };
        let batch = Batch::new(step.input_ids.shallow_clone())
            .with_position_ids(step.positions.shallow_clone());
        let call = Call {
            cache: Some(cache),
            fixed: Some(step),
            ..Call::default()
        };
        self.run(&batch, &options, call, hooks)
    }

    fn run(
        &self,
        batch: &Batch,
        options: &ForwardOptions,
        call: Call<'_>,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        let Call {
            mut cache,
            start,
            decode_masks,
            fixed,
        } = call;
        let _guard = tch::no_grad_guard();
        let (b, t) = batch.shape()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_ref() {
            c.check_fits(b, t)?;
        }
        let last_layer = self.last_layer(options)?;
        hooks.begin_forward(&ForwardInfo {
            batch: b,
            chunk_len: t,
            past_len: past,
        })?;

        let positions = self.positions(batch, b, t, past)?;
        // Built once per call, shared by every layer.
        let angles = self.rope.angles(&positions, self.dtype)?;
        let masks = match (fixed, decode_masks) {
            (Some(step), _) => step.masks()?,
            (None, Some(d)) if t == 1 && past > 0 => d.step(past)?,
            _ => {
                let key_mask = self.key_mask(batch, b, past + t)?;
                self.masks(key_mask.as_ref(), b, t, past)?
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
            let ctx = AttentionContext {
                angles: &angles,
                mask: if self.config.is_sliding(layer) {
                    &masks.sliding
                } else {
                    &masks.full
                },
                cursor: fixed.map(|step| &step.cursor),
            };
            x = if last_row_only && layer == final_layer && !hooks_inside(hooks, layer) {
                visit(hooks, layer, SiteKind::BlockInput, &mut x)?;
                block.forward_last_position(&x, &ctx, cache.as_deref_mut(), layer)?
            } else {
                block.forward(x, &ctx, cache.as_deref_mut(), layer, hooks)?
            };
        }
        // A fixed step may be recorded rather than run: its caller counts the steps that ran.
        if let (Some(c), None) = (cache, fixed) {
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
    fn check_start(
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
    fn last_layer(&self, options: &ForwardOptions) -> Result<usize> {
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

    /// The additive masks of a call over `batch` (`[B, T]`) after `past` cached positions,
    /// `[B, 1, T, past + T]` each: what [`Self::forward_cached`] applies.
    pub(crate) fn chunk_masks(&self, batch: &Batch, b: i64, t: i64, past: i64) -> Result<Masks> {
        let key_mask = self.key_mask(batch, b, past + t)?;
        let Masks { full, sliding } = self.masks(key_mask.as_ref(), b, t, past)?;
        let shape = [b, 1, t, past + t];
        Ok(Masks {
            full: full.f_expand(shape, false)?,
            sliding: sliding.f_expand(shape, false)?,
        })
    }

    fn masks(&self, key_mask: Option<&Tensor>, b: i64, t: i64, past: i64) -> Result<Masks> {
        let full = additive_mask(key_mask, b, t, past, None, self.dtype, self.device)?;
        let sliding = match self.window() {
            Some(w) => additive_mask(key_mask, b, t, past, Some(w), self.dtype, self.device)?,
            None => full.shallow_clone(),
        };
        Ok(Masks { full, sliding })
    }

    /// The sliding window, if any layer slides.
    fn window(&self) -> Option<i64> {
        self.config
            .sliding_window
            .filter(|_| self.config.layer_types.contains(&LayerType::Sliding))
    }

    /// The masks of every one-position step of a generation over rows with the 2-D key mask
    /// `prompt_mask` (`[B, T]`, nonzero = real token) and up to `max_len` positions in all.
    pub(crate) fn decode_masks(&self, prompt_mask: &Tensor, max_len: i64) -> Result<DecodeMasks> {
        let size = prompt_mask.size();
        let (b, t) = (size[0], size[1]);
        // Every generated position is a real token (HF appends ones to the mask).
        let new = Tensor::f_ones([b, max_len - t], (Kind::Int64, self.device))?;
        let real = Tensor::f_cat(
            &[
                &prompt_mask
                    .f_to_device(self.device)?
                    .f_to_kind(Kind::Int64)?,
                &new,
            ],
            1,
        )?;
        let min = finfo_min(self.dtype);
        let keys = Tensor::f_zeros([b, 1, 1, max_len], (self.dtype, self.device))?
            .f_masked_fill(&real.f_eq(0)?.f_view([b, 1, 1, max_len])?, min)?;
        Ok(DecodeMasks {
            keys,
            window: self.window(),
            min,
        })
    }

    /// Every hook site at every layer, with pyvene module paths and widths.
    pub fn site_catalog(&self) -> SiteCatalog {
        let c = &self.config;
        let mut sites = Vec::with_capacity(c.num_hidden_layers * SiteKind::ALL.len());
        for layer in 0..c.num_hidden_layers {
            for kind in SiteKind::ALL {
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
fn site_layout(c: &Gemma2Config, kind: SiteKind) -> (&'static str, HookPoint, i64, Option<i64>) {
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
        SiteKind::MlpInput => (".mlp", Input, c.hidden_size, None),
        SiteKind::MlpOutput => (".mlp", Output, c.hidden_size, None),
        SiteKind::MlpActivation => (".mlp.act_fn", Output, c.intermediate_size, None),
        SiteKind::PostFeedforwardNormOutput => {
            (".post_feedforward_layernorm", Output, c.hidden_size, None)
        }
    }
}

/// The additive masks of one call, `[B, 1, T, S]` each.
pub(crate) struct Masks {
    /// For global layers.
    pub full: Tensor,
    /// For sliding-window layers (the same as `full` when nothing slides).
    pub sliding: Tensor,
}

/// What a forward call reads besides the batch and options.
#[derive(Default)]
struct Call<'a> {
    /// The KV cache to read and extend.
    cache: Option<&'a mut KvCache>,
    /// Start at this layer from this residual stream instead of embedding the tokens.
    start: Option<(usize, &'a Tensor)>,
    /// Prebuilt masks for one-position steps.
    decode_masks: Option<&'a DecodeMasks>,
    /// A fixed-shape decode step: its device-side cursor, positions and masks.
    fixed: Option<&'a FixedStep>,
}

/// The additive masks of one generation's decode steps, built once instead of per step: the
/// same values [`additive_mask`] gives for one query at physical index `past` (keys
/// `0..=past`, causality is then trivial).
pub(crate) struct DecodeMasks {
    /// `[B, 1, 1, max_len]`: 0 at real tokens, `finfo.min` at pads.
    keys: Tensor,
    window: Option<i64>,
    min: f64,
}

impl DecodeMasks {
    /// The masks of the query at physical index `past`.
    pub(crate) fn step(&self, past: i64) -> Result<Masks> {
        let s = past + 1;
        let full = self.keys.f_narrow(3, 0, s)?;
        let sliding = match self.window {
            // Keys `j <= past - w` are out of the window: the first `s - w`.
            Some(w) if s > w => {
                let m = full.f_detach_copy()?;
                let _ = m.f_narrow(3, 0, s - w)?.f_fill_(self.min)?;
                m
            }
            _ => full.shallow_clone(),
        };
        Ok(Masks { full, sliding })
    }
}

/// The device-side state of fixed-shape decode steps (see [`Gemma2Model::forward_fixed_step`]).
/// Every tensor keeps its storage for the whole generation: a recorded step reads them in
/// place, and [`FixedStep::advance`] updates them in place.
pub(crate) struct FixedStep {
    /// `[B, 1]` int64: the tokens to feed.
    pub input_ids: Tensor,
    /// `[B, 1]` int64: their position ids.
    pub positions: Tensor,
    /// `[1]` int64: the physical cache index they are written at.
    pub cursor: Tensor,
    /// `[B, 1, 1, max_len]` bool: pad keys (never visible).
    pads: Tensor,
    /// `[max_len]` int64: `0..max_len`.
    key_index: Tensor,
    /// `[B, 1, 1, max_len]` zeros in the model dtype, the mask's base.
    zeros: Tensor,
    window: Option<i64>,
    min: f64,
}

impl FixedStep {
    /// The state for the first step after `masks`' prompt: its tokens (fed later, see
    /// [`FixedStep::feed`]) at `positions` (`[B, 1]`), written at index `cursor`.
    pub(crate) fn new(masks: &DecodeMasks, positions: &Tensor, cursor: i64) -> Result<Self> {
        let device = masks.keys.device();
        let size = masks.keys.size();
        let max_len = size.last().copied().unwrap_or(0);
        let rows = size.first().copied().unwrap_or(0);
        Ok(FixedStep {
            input_ids: Tensor::f_zeros([rows, 1], (Kind::Int64, device))?,
            positions: positions.f_to_device(device)?.f_detach_copy()?,
            cursor: Tensor::f_full([1], cursor, (Kind::Int64, device))?,
            pads: masks.keys.f_ne(0.0)?,
            key_index: Tensor::f_arange(max_len, (Kind::Int64, device))?,
            zeros: masks.keys.f_zeros_like()?,
            window: masks.window,
            min: masks.min,
        })
    }

    /// The masks of the query at index `cursor`: the values [`DecodeMasks::step`] gives, over
    /// every key index, later ones hidden.
    fn masks(&self) -> Result<Masks> {
        let hidden = self
            .pads
            .f_logical_or(&self.key_index.f_gt_tensor(&self.cursor)?)?;
        let full = self.zeros.f_masked_fill(&hidden, self.min)?;
        let sliding = match self.window {
            // Keys `j <= cursor - w` are out of the window.
            Some(w) => {
                let oldest = self.cursor.f_sub_scalar(w)?;
                let outside = hidden.f_logical_or(&self.key_index.f_le_tensor(&oldest)?)?;
                self.zeros.f_masked_fill(&outside, self.min)?
            }
            None => full.shallow_clone(),
        };
        Ok(Masks { full, sliding })
    }

    /// Sets the step's tokens, `next` (`[B, 1]`).
    pub(crate) fn feed(&mut self, next: &Tensor) -> Result<()> {
        self.input_ids.f_copy_(next)?;
        Ok(())
    }

    /// Moves one position on, after a step ran.
    pub(crate) fn advance(&mut self) -> Result<()> {
        let _ = self.positions.f_add_scalar_(1)?;
        let _ = self.cursor.f_add_scalar_(1)?;
        Ok(())
    }
}

/// The smallest finite value of `dtype` (transformers masks with it, not `-inf`).
pub fn finfo_min(dtype: Kind) -> f64 {
    match dtype {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// The additive mask `[B, 1, T, S]` (S = past + T) in `dtype`: 0 where query `past + i` may see
/// key `j`, `finfo(dtype).min` elsewhere. Key `j` is visible iff `j <= i`, it is a real token,
/// and for sliding layers `i - window < j` (physical cache indices, pads counted).
pub fn additive_mask(
    key_mask: Option<&Tensor>,
    b: i64,
    t: i64,
    past: i64,
    window: Option<i64>,
    dtype: Kind,
    device: Device,
) -> Result<Tensor> {
    let s = past + t;
    let q = Tensor::f_arange_start(past, s, (Kind::Int64, device))?.f_unsqueeze(1)?;
    let k = Tensor::f_arange(s, (Kind::Int64, device))?.f_unsqueeze(0)?;
    let mut allowed = k.f_le_tensor(&q)?;
    if let Some(w) = window {
        allowed = allowed.f_logical_and(&k.f_gt_tensor(&q.f_sub_scalar(w)?)?)?;
    }
    let mut allowed = allowed.f_unsqueeze(0)?.f_unsqueeze(0)?; // [1, 1, T, S]
    if let Some(km) = key_mask {
        allowed = allowed.f_logical_and(&km.f_unsqueeze(1)?.f_unsqueeze(1)?)?; // [B, 1, T, S]
    }
    let allowed = allowed.f_expand([b, 1, t, s], false)?;
    Ok(Tensor::f_zeros([b, 1, t, s], (dtype, device))?
        .f_masked_fill(&allowed.f_logical_not()?, finfo_min(dtype))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed-shape step's masks, over the whole buffer, are the per-step masks followed by
    /// hidden keys, value for value: padded rows, inside and past the sliding window.
    #[test]
    fn fixed_step_masks_extend_the_per_step_masks() -> Result<()> {
        let config = Gemma2Config::small();
        let window = config.sliding_window.unwrap_or(0);
        assert!(window > 0, "the small config slides");
        let model = Gemma2Model::random(&config, 0, Kind::Float, Device::Cpu)?;
        // Row 0 has two pads, row 1 none; 5 prompt positions, room for 3 * window more.
        let prompt_mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 5]);
        let max_len = 5 + 3 * window;
        let masks = model.decode_masks(&prompt_mask, max_len)?;
        let positions = Tensor::zeros([2, 1], (Kind::Int64, Device::Cpu));
        let mut step = FixedStep::new(&masks, &positions, 5)?;
        for past in 5..max_len {
            let eager = masks.step(past)?;
            let fixed = step.masks()?;
            for (name, e, f) in [
                ("full", &eager.full, &fixed.full),
                ("sliding", &eager.sliding, &fixed.sliding),
            ] {
                let seen = f.narrow(3, 0, past + 1);
                assert!(seen.equal(e), "{name} mask at index {past}");
                let later = f.narrow(3, past + 1, max_len - past - 1);
                let min = finfo_min(Kind::Float);
                assert!(
                    later.eq(min).all().int64_value(&[]) == 1,
                    "{name} at {past}"
                );
            }
            step.advance()?;
        }
        Ok(())
    }
}
