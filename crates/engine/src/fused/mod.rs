//! Generation on the CPU in float32 or bfloat16 on scope's own kernels instead of one
//! libtorch operation at a time ([`DecodeMode::Fused`](crate::DecodeMode::Fused)): every
//! decode step, and a float32 model's prompts of up to [`MAX_FUSED_PROMPT`] tokens
//! ([`FusedDecoder::takes_prompt`]). A bf16 model keeps its weights and cache in bf16 and
//! rounds its activations as libtorch's bf16 path does (the `bf16` module).
//!
//! A decode step of the `small` benchmark model reads its ~191 MB of weights through 33
//! matrix-vector products and does about 440 tiny operations. Through libtorch the products
//! ran at 30–31 GB/s (MKL's sgemv) and the dispatches cost another 2.5 ms: 8.2–8.6 ms a step.
//! Here the products stream the weights at 33–36 GB/s ([`matvec`]) on libtorch's own OpenMP
//! threads ([`pool`]), and everything else is a loop over a few hundred floats ([`ops`]):
//! 5.7–6.0 ms a step. A prompt's tokens, or a batch's rows, go six (AVX2: two) at a time
//! against each block of weight rows (the benchmark's 14-token prompt: 13 ms instead of 17,
//! measured with tiles of four).
//!
//! Numbers: the same operations in the same order as the eager path, except the summation
//! order inside dot products and branch-free `tanh`/`exp` (within 2 ulp) for libtorch's
//! vectorised ones: on the test fixtures every site is within 1.7e-4 of the eager steps over
//! 22 steps (values up to ~25), and the greedy tokens are HF's.
//!
//! Hooks see every site they want as a `[B, T, width]` tensor (a copy of the buffer, copied
//! back after the visit), so interventions run unchanged.

mod bf16;
mod matvec;
mod ops;
mod pool;

use intervene::{ForwardInfo, Hooks, Site, SiteKind};
use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::mask::{DecodeMasks, Masks};
use crate::model::{DecoderModel, FusedWeights};
use bf16::{Precision, Widen};
use matvec::{matvec, Isa, Matrix};
use ops::{attend_one, gelu_tanh_all, rms_norm, rotate, soft_cap, OneQuery};
use pool::Pool;

/// Whether `DecodeMode::Auto` decodes `model` on the fused kernels: they can read its
/// weights (a float32 or bf16 CPU model) and the CPU has the vector instructions they are
/// written for. (Measured on the `small` model: AVX-512 5.7 ms a step, AVX2 6.2, plain Rust
/// 13.6, libtorch 8.3.) As the f32 steps are MKL's to float rounding, the bf16 steps are as
/// far from transformers' f32 as transformers' bf16 are, not bit for bit transformers' bf16
/// (see the `bf16` module); `DecodeMode::Eager` is the bit-for-bit path.
pub fn preferred(model: &dyn DecoderModel) -> bool {
    Isa::detect() != Isa::Portable
        && model
            .fused_weights()
            .and_then(|view| Weights::of(&view))
            .is_ok()
}

/// A generation on the fused kernels: the weights as slices, the threads, the buffers.
///
/// [`DecodeMode::Fused`](crate::DecodeMode::Fused) generation drives it row by row of one
/// cache; a batching engine drives it through [`FusedDecoder::forward_slots`], where each row
/// of a call has a cache row and a length of its own.
pub struct FusedDecoder<'m> {
    model: &'m dyn DecoderModel,
    weights: Weights<'m>,
    /// The sliding window of the layers that slide.
    window: Option<i64>,
    pool: Pool,
    isa: Isa,
    /// The position id of each row's next token.
    positions: Vec<i64>,
    buffers: Buffers,
}

/// Prompts of up to this many tokens in all rows run through the fused kernels too (where
/// the CPU has the registers for tiles of tokens); longer ones through libtorch, whose
/// matrix products and attention use every core better there. Measured with the
/// benchmark's 14-token prompt: 13 ms instead of 17 for the `small` model, 0.62 s instead
/// of 1.22 at gemma-2-2b's shapes.
const MAX_FUSED_PROMPT: usize = 64;

impl<'m> FusedDecoder<'m> {
    /// The decoder for `model` whose first step feeds tokens at `positions` (one per row).
    pub(crate) fn new(model: &'m dyn DecoderModel, positions: Vec<i64>) -> Result<Self> {
        let view = model.fused_weights().map_err(Error::Fused)?;
        let weights = Weights::of(&view).map_err(Error::Fused)?;
        let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
        Ok(FusedDecoder {
            model,
            window: model.spec().window,
            buffers: Buffers::new(&weights, positions.len(), positions.len()),
            weights,
            pool: Pool::new(threads),
            isa: Isa::detect(),
            positions,
        })
    }

    /// A decoder for calls over cache slots ([`Self::forward_slots`]), or why the fused
    /// kernels cannot run `model` (not a float32 CPU model, or an activation they lack).
    pub fn for_slots(model: &'m dyn DecoderModel) -> Result<Self> {
        Self::new(model, Vec::new())
    }

    /// Whether a prompt of `tokens` tokens in all runs here ([`Self::prompt`],
    /// [`Self::forward_slots`]) rather than through the model's own forward: a float32
    /// model's short prompts, where the CPU has the registers for tiles of tokens.
    ///
    /// A bf16 model's prompts run through libtorch, whose products (oneDNN's, on AMX tiles
    /// where the CPU has them) and attention are transformers' own: the prompt's logits and
    /// cache are transformers' bf16 ones bit for bit, where these kernels' other summation
    /// order would move them (the `bf16` module), and AMX runs a prompt's tokens faster than
    /// these tiles.
    pub fn takes_prompt(&self, tokens: usize) -> bool {
        self.weights.precision == Precision::F32
            && tokens <= MAX_FUSED_PROMPT
            && self.isa.tile_inputs() > 1
    }

    /// Runs a prompt (`[B, T]` tokens with a `[B, T]` attention mask and position ids) into
    /// the empty `cache` and returns the last position's logits, `[B, 1, vocab]`, as
    /// the model's own last-position call does.
    pub(crate) fn prompt(
        &mut self,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let (b, t) = batch.shape()?;
        let past = cache.len();
        let spec = self.model.spec();
        let masks = Masks::of_chunk(
            past,
            t,
            batch.attention_mask.as_ref(),
            self.window,
            spec.dtype,
            spec.device,
        )?;
        let positions = match &batch.position_ids {
            Some(p) => host::<i64>(&p.f_expand([b, t], false)?)?,
            None => (0..b).flat_map(|_| past..past + t).collect(),
        };
        let tokens = host::<i64>(&batch.input_ids)?;
        let chunk = Chunk {
            tokens: &tokens,
            len: usize::try_from(t).unwrap_or(0),
            positions: &positions,
            places: RowPlace::uniform(b, past),
            masks: ChunkMasks::of(&masks, b, t, past + t)?,
        };
        self.forward_in_order(&chunk, cache, hooks)
    }

    /// Feeds `tokens` (one per row) at the cache's next position and returns the step's
    /// logits, `[B, 1, vocab]`, soft-capped, visiting `hooks` at every site they want.
    pub(crate) fn step(
        &mut self,
        tokens: &[i64],
        cache: &mut KvCache,
        masks: &DecodeMasks,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        if tokens.len() != self.positions.len() {
            return Err(Error::Input(format!(
                "{} tokens for a generation of {} rows",
                tokens.len(),
                self.positions.len()
            )));
        }
        let step_masks = masks.step(cache.len())?;
        let positions = self.positions.clone();
        let chunk = Chunk {
            tokens,
            len: 1,
            positions: &positions,
            places: RowPlace::uniform(positions.len() as i64, cache.len()),
            masks: ChunkMasks::of(&step_masks, positions.len() as i64, 1, cache.len() + 1)?,
        };
        let logits = self.forward_in_order(&chunk, cache, hooks)?;
        for p in &mut self.positions {
            *p += 1;
        }
        Ok(logits)
    }

    /// `chunk` over the rows of `cache` in order, all at the cache's length, which it then
    /// advances: the last position's logits.
    fn forward_in_order(
        &mut self,
        chunk: &Chunk<'_>,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let t = chunk.len.max(1);
        let batch = chunk.tokens.len() / t;
        if batch != self.positions.len() {
            return Err(Error::Input(format!(
                "{} tokens do not make {} rows of {t}",
                chunk.tokens.len(),
                self.positions.len()
            )));
        }
        cache.check_fits(batch as i64, t as i64)?;
        let logits = self.forward(chunk, cache, hooks)?;
        cache.advance(t as i64);
        Ok(logits)
    }

    /// Runs `call.len` tokens of every row of `call`, each row in its own cache row (slot)
    /// after the positions that slot already holds, and returns the last position's logits
    /// of every row, `[rows, 1, vocab]`, soft-capped. Row `r`'s tokens sit at positions
    /// `past[r]..past[r] + len` (unpadded rows: the position id is the cache index) and see
    /// their own slot's keys causally (and within the sliding window on sliding layers).
    /// The cache's own length is neither read nor advanced: the caller keeps each slot's.
    ///
    /// Every row is computed as it would be alone: the products sum each row in the same
    /// order whatever rows share the call, and everything else runs row by row. So a row's
    /// logits are bit-identical whichever and however many other rows the call holds.
    pub fn forward_slots(
        &mut self,
        call: &SlotCall<'_>,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let t = call.len;
        let rows = call.slots.len();
        if t == 0 || rows == 0 || call.past.len() != rows || call.tokens.len() != rows * t {
            return Err(Error::Input(format!(
                "a slot call needs tokens for each of its {rows} rows: {} slots, {} lengths, \
                 {} tokens for chunks of {t}",
                call.slots.len(),
                call.past.len(),
                call.tokens.len()
            )));
        }
        let capacity = usize::try_from(cache.max_len()).unwrap_or(0);
        let slots = usize::try_from(cache.batch()).unwrap_or(0);
        let mut places = Vec::with_capacity(rows);
        for (&slot, &past) in call.slots.iter().zip(call.past) {
            if slot >= slots || past + t > capacity {
                return Err(Error::Input(format!(
                    "slot {slot} with {past} cached + {t} new positions does not fit a cache \
                     of {slots} slots of {capacity} positions"
                )));
            }
            places.push(RowPlace { slot, past });
        }
        let positions: Vec<i64> = places
            .iter()
            .flat_map(|p| (p.past..p.past + t).map(|i| i as i64))
            .collect();
        let keys = places.iter().map(|p| p.past).max().unwrap_or(0) + t;
        let queries = Tensor::f_from_slice(&positions)?.f_reshape([rows as i64, t as i64])?;
        let masks = Masks::new(&queries, keys as i64, None, self.window, Kind::Float)?;
        let chunk = Chunk {
            tokens: call.tokens,
            len: t,
            positions: &positions,
            masks: ChunkMasks::of(&masks, rows as i64, t as i64, keys as i64)?,
            places,
        };
        self.forward(&chunk, cache, hooks)
    }

    /// The model over `chunk`, writing its keys and values into each row's place in
    /// `cache`: the last position's logits.
    fn forward(
        &mut self,
        chunk: &Chunk<'_>,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let t = chunk.len.max(1);
        let batch = chunk.tokens.len() / t;
        if batch != chunk.places.len() || chunk.positions.len() != chunk.tokens.len() {
            return Err(Error::Input(format!(
                "{} tokens and {} positions do not make {} rows of {t}",
                chunk.tokens.len(),
                chunk.positions.len(),
                chunk.places.len()
            )));
        }
        hooks.begin_forward(&ForwardInfo {
            batch: batch as i64,
            chunk_len: t as i64,
            past_len: chunk.places.iter().map(|p| p.past).min().unwrap_or(0) as i64,
        })?;
        // The same number of rows can come as a different split ([4 rows, 1 token] after
        // [1 row, 4 tokens]): the buffers are laid out by both.
        if self.buffers.rows != batch * t || self.buffers.batch != batch {
            self.buffers = Buffers::new(&self.weights, batch, batch * t);
        }
        let global = self.angles(chunk.positions, batch, t, false)?;
        let local = if self.weights.layers.iter().any(|l| l.local_rope) {
            Some(self.angles(chunk.positions, batch, t, true)?)
        } else {
            None
        };
        self.embed(chunk.tokens)?;
        for layer in 0..self.weights.layers.len() {
            let LayerWeights {
                sliding,
                local_rope,
                ..
            } = self.weights.layers[layer];
            let (cos, signed_sin) = match (&local, local_rope) {
                (Some(local), true) => local,
                _ => &global,
            };
            let step = AttentionStep {
                layer,
                len: t,
                places: &chunk.places,
                mask: chunk.masks.of_layer(sliding),
                cos,
                signed_sin,
            };
            self.layer(&step, cache, hooks)?;
        }
        self.unembed(t)
    }

    /// `(cos, signed_sin)` of every position, `[B * T * head_dim]` each, from the model's
    /// own rotary tables (so exactly the eager step's angles).
    fn angles(
        &self,
        positions: &[i64],
        batch: usize,
        t: usize,
        local: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let positions = Tensor::f_from_slice(positions)?.f_reshape([batch as i64, t as i64])?;
        let (cos, signed_sin) = self.model.rotary(&positions, local)?;
        // Cast to the model dtype before they touch queries and keys, as the model does.
        let (mut cos, mut signed_sin) = (host::<f32>(&cos)?, host::<f32>(&signed_sin)?);
        self.weights.precision.store(&mut cos);
        self.weights.precision.store(&mut signed_sin);
        Ok((cos, signed_sin))
    }

    /// The scaled embeddings of `tokens` into the residual buffer.
    fn embed(&mut self, tokens: &[i64]) -> Result<()> {
        let hidden = self.buffers.hidden;
        let vocab = self.weights.embed.len() / hidden.max(1);
        let precision = self.weights.precision;
        for (row, &token) in self.buffers.x.chunks_exact_mut(hidden).zip(tokens) {
            let id = usize::try_from(token)
                .ok()
                .filter(|&id| id < vocab)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "token id {token} is outside the vocabulary of {vocab}"
                    ))
                })?;
            self.weights.embed.row_into(id, hidden, row);
            for x in row.iter_mut() {
                *x = precision.store_one(*x * self.weights.embed_scale);
            }
        }
        Ok(())
    }

    /// One decoder layer over the residual buffer, as the model's decoder layer runs it.
    fn layer(
        &mut self,
        step: &AttentionStep<'_>,
        cache: &mut KvCache,
        hooks: &mut dyn Hooks,
    ) -> Result<()> {
        let FusedDecoder {
            weights,
            pool,
            isa,
            buffers: buf,
            ..
        } = self;
        let (pool, isa) = (&*pool, *isa);
        let w = &weights.layers[step.layer];
        let (eps, p) = (weights.eps, weights.precision);
        let (hidden, rows, layer) = (buf.hidden, buf.rows, step.layer);
        let shape = [buf.batch as i64, step.len as i64];
        let visit = |hooks: &mut dyn Hooks, kind, data: &mut [f32]| {
            visit_rows(hooks, Site::new(layer, kind), data, shape, p)
        };
        // Every product, norm and sum is stored in the model's precision (`p.store`), as
        // the model's own tensors hold them.
        let product = |w: Matrix<'_>, k: usize, xs: &[f32], out: &mut [f32]| {
            matvec(pool, isa, w, k, xs, out).map(|()| p.store(out))
        };

        visit(hooks, SiteKind::BlockInput, &mut buf.x)?;
        norm_rows(isa, &buf.x, w.input_norm, eps, &mut buf.h, p);
        visit(hooks, SiteKind::AttentionInput, &mut buf.h)?;
        product(w.qkv, hidden, &buf.h, &mut buf.qkv)?;
        let norms = w.query_key_norms;
        attention(
            &weights.attention,
            norms,
            eps,
            p,
            isa,
            buf,
            step,
            cache,
            hooks,
        )?;
        visit(hooks, SiteKind::AttentionValueOutput, &mut buf.z)?;
        product(w.o, buf.z.len() / rows, &buf.z, &mut buf.a)?;
        visit(hooks, SiteKind::AttentionOutput, &mut buf.a)?;
        norm_rows(isa, &buf.a, w.post_attention_norm, eps, &mut buf.h, p);
        add(&mut buf.x, &buf.h, p);

        norm_rows(isa, &buf.x, w.pre_feedforward_norm, eps, &mut buf.h, p);
        visit(hooks, SiteKind::MlpInput, &mut buf.h)?;
        product(w.gate_up, hidden, &buf.h, &mut buf.gate_up)?;
        let intermediate = buf.act.len() / rows;
        for (act, gate_up) in buf
            .act
            .chunks_exact_mut(intermediate)
            .zip(buf.gate_up.chunks_exact(2 * intermediate))
        {
            gelu_tanh_all(isa, &gate_up[..intermediate], act);
            p.store(act);
        }
        visit(hooks, SiteKind::MlpActivation, &mut buf.act)?;
        for (act, gate_up) in buf
            .act
            .chunks_exact_mut(intermediate)
            .zip(buf.gate_up.chunks_exact(2 * intermediate))
        {
            for (a, &u) in act.iter_mut().zip(&gate_up[intermediate..]) {
                *a = p.store_one(*a * u);
            }
        }
        product(w.down, intermediate, &buf.act, &mut buf.a)?;
        visit(hooks, SiteKind::MlpOutput, &mut buf.a)?;
        norm_rows(isa, &buf.a, w.post_feedforward_norm, eps, &mut buf.h, p);
        visit(hooks, SiteKind::PostFeedforwardNormOutput, &mut buf.h)?;
        add(&mut buf.x, &buf.h, p);
        visit(hooks, SiteKind::BlockOutput, &mut buf.x)
    }

    /// Final norm, unembedding and final soft-cap of the last of every `t` positions of the
    /// residual buffer: `[B, 1, vocab]`.
    fn unembed(&mut self, t: usize) -> Result<Tensor> {
        let buf = &mut self.buffers;
        let w = &self.weights;
        let hidden = buf.hidden;
        let last: Vec<f32> = buf
            .x
            .chunks_exact(t * hidden)
            .flat_map(|row| row[(t - 1) * hidden..].iter().copied())
            .collect();
        let normed = &mut buf.h[..last.len()];
        let p = w.precision;
        norm_rows(self.isa, &last, w.final_norm, w.eps, normed, p);
        matvec(
            &self.pool,
            self.isa,
            w.unembed,
            hidden,
            normed,
            &mut buf.logits,
        )?;
        p.store(&mut buf.logits);
        if let Some(cap) = w.final_softcap {
            soft_cap(self.isa, &mut buf.logits, cap, p);
        }
        let vocab = (buf.logits.len() / buf.batch) as i64;
        let logits = Tensor::f_from_slice(&buf.logits)?.f_reshape([buf.batch as i64, 1, vocab])?;
        Ok(logits.f_to_kind(p.kind())?)
    }
}

/// A chunk of tokens to run: `len` consecutive positions of every row.
struct Chunk<'a> {
    /// `[B * len]`.
    tokens: &'a [i64],
    len: usize,
    /// Position ids, `[B * len]`.
    positions: &'a [i64],
    /// Where each row's keys and values go in the cache.
    places: Vec<RowPlace>,
    masks: ChunkMasks,
}

/// The rows of a call over cache slots (see [`FusedDecoder::forward_slots`]).
#[derive(Clone, Copy, Debug)]
pub struct SlotCall<'a> {
    /// The cache row of each row of the call.
    pub slots: &'a [usize],
    /// The positions each slot holds before the call.
    pub past: &'a [usize],
    /// `[rows * len]`: each row's tokens, row after row.
    pub tokens: &'a [i64],
    /// Tokens per row.
    pub len: usize,
}

/// One row's place in the cache: its cache row and the positions cached there before.
#[derive(Clone, Copy, Debug)]
struct RowPlace {
    slot: usize,
    past: usize,
}

impl RowPlace {
    /// Rows `0..rows` of a cache, each after `past` positions.
    fn uniform(rows: i64, past: i64) -> Vec<RowPlace> {
        let past = usize::try_from(past).unwrap_or(0);
        (0..usize::try_from(rows).unwrap_or(0))
            .map(|slot| RowPlace { slot, past })
            .collect()
    }
}

/// The additive masks of a chunk on the host, `[B, len, keys]` each: a row reads the first
/// `past + len` keys of each of its tokens' rows (those after are hidden anyway).
struct ChunkMasks {
    full: Vec<f32>,
    sliding: Vec<f32>,
    keys: usize,
}

impl ChunkMasks {
    /// `masks` (`[B or 1, 1, len, keys]`) for `rows` rows, on the host.
    fn of(masks: &Masks, rows: i64, len: i64, keys: i64) -> Result<Self> {
        let host_mask = |m: &Tensor| host::<f32>(&m.f_expand([rows, 1, len, keys], false)?);
        Ok(ChunkMasks {
            full: host_mask(&masks.full)?,
            sliding: host_mask(&masks.sliding)?,
            keys: usize::try_from(keys).unwrap_or(0),
        })
    }

    /// What a layer reads.
    fn of_layer(&self, sliding: bool) -> LayerMask<'_> {
        LayerMask {
            values: if sliding { &self.sliding } else { &self.full },
            keys: self.keys,
        }
    }
}

/// One layer's masks of a chunk: `[B, len, keys]`.
#[derive(Clone, Copy)]
struct LayerMask<'a> {
    values: &'a [f32],
    keys: usize,
}

/// What one layer reads besides the buffers and the cache.
struct AttentionStep<'a> {
    layer: usize,
    /// Tokens per row in the chunk.
    len: usize,
    /// Each row's cache row and its first token's cache index.
    places: &'a [RowPlace],
    /// This layer's masking.
    mask: LayerMask<'a>,
    /// Rotary angles, `[B * len, head_dim]` each.
    cos: &'a [f32],
    signed_sin: &'a [f32],
}

/// From the projections in the `qkv` buffer to the merged heads in `z`: visits the
/// projection sites, rotates queries and keys, writes keys and values to the cache from
/// each row's place on, and attends from each token over its row's keys, masked.
#[allow(clippy::too_many_arguments)]
fn attention(
    shape: &OneQuery,
    norms: Option<(&[f32], &[f32])>,
    eps: f32,
    p: Precision,
    isa: Isa,
    buf: &mut Buffers,
    step: &AttentionStep<'_>,
    cache: &mut KvCache,
    hooks: &mut dyn Hooks,
) -> Result<()> {
    let (qw, kvw) = (
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
    );
    let (batch, t) = (buf.batch, step.len);
    let stride = qw + 2 * kvw;
    for (kind, start, width) in [
        (SiteKind::QueryOutput, 0, qw),
        (SiteKind::KeyOutput, qw, kvw),
        (SiteKind::ValueOutput, qw + kvw, kvw),
    ] {
        let site = Site::new(step.layer, kind);
        if hooks.wants(site) {
            let shape = [batch as i64, t as i64];
            visit_columns(hooks, site, &mut buf.qkv, shape, stride, start, width, p)?;
        }
    }
    if let Some((query_norm, key_norm)) = norms {
        for token in buf.qkv.chunks_exact_mut(stride) {
            norm_heads(isa, &mut token[..qw], query_norm, eps, &mut buf.head, p);
            norm_heads(
                isa,
                &mut token[qw..qw + kvw],
                key_norm,
                eps,
                &mut buf.head,
                p,
            );
        }
        for (kind, start, width) in [
            (SiteKind::QueryNormOutput, 0, qw),
            (SiteKind::KeyNormOutput, qw, kvw),
        ] {
            let site = Site::new(step.layer, kind);
            if hooks.wants(site) {
                let shape = [batch as i64, t as i64];
                visit_columns(hooks, site, &mut buf.qkv, shape, stride, start, width, p)?;
            }
        }
    }
    let capacity = usize::try_from(cache.max_len()).unwrap_or(0);
    let (keys, values) = cache.layer_buffers_mut(step.layer)?;
    // Named only on failure: this runs for every layer of every step.
    let what = |kind: &'static str| {
        move || format!("the KV cache's {kind} buffer of layer {}", step.layer)
    };
    let cached = CachedLayer {
        shape,
        p,
        isa,
        step,
        capacity,
    };
    match p {
        Precision::F32 => {
            let keys = slice_mut::<f32>(keys, what("key")).map_err(Error::Fused)?;
            let values = slice_mut::<f32>(values, what("value")).map_err(Error::Fused)?;
            cached.write_and_attend(buf, keys, values)
        }
        Precision::Bf16 => {
            let keys = slice_mut::<u16>(keys, what("key")).map_err(Error::Fused)?;
            let values = slice_mut::<u16>(values, what("value")).map_err(Error::Fused)?;
            cached.write_and_attend(buf, keys, values)
        }
    }
}

/// One layer's attention over its cache buffers, once they are borrowed as slices.
struct CachedLayer<'a> {
    shape: &'a OneQuery,
    p: Precision,
    isa: Isa,
    step: &'a AttentionStep<'a>,
    /// Positions per cache row.
    capacity: usize,
}

impl CachedLayer<'_> {
    /// Rotates the chunk's queries and keys, writes its keys and values from each row's place
    /// on, and attends from each token over its row's keys, masked.
    fn write_and_attend<W: matvec::Weight>(
        &self,
        buf: &mut Buffers,
        keys: &mut [W],
        values: &mut [W],
    ) -> Result<()> {
        let CachedLayer {
            shape,
            p,
            isa,
            step,
            capacity,
        } = *self;
        let (qw, kvw, hd) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
            shape.head_dim,
        );
        let (t, stride) = (step.len, qw + 2 * kvw);
        let per_row_cache = shape.kv_heads * capacity * hd;
        for (row, place) in step.places.iter().enumerate() {
            let slot = place.slot * per_row_cache..(place.slot + 1) * per_row_cache;
            let (Some(keys), Some(values)) = (keys.get_mut(slot.clone()), values.get_mut(slot))
            else {
                return Err(Error::Input(format!(
                    "cache slot {} is outside the KV cache",
                    place.slot
                )));
            };
            // Every token's key and value first: a token attends to the chunk's earlier ones.
            for i in 0..t {
                let token = row * t + i;
                let qkv = &mut buf.qkv[token * stride..(token + 1) * stride];
                rotate(
                    &mut qkv[..qw + kvw],
                    &step.cos[token * hd..(token + 1) * hd],
                    &step.signed_sin[token * hd..(token + 1) * hd],
                    p,
                );
                for head in 0..shape.kv_heads {
                    let at = (head * capacity + place.past + i) * hd;
                    let (k, v) = (qw + head * hd, qw + kvw + head * hd);
                    store_into(&mut keys[at..at + hd], &qkv[k..k + hd]);
                    store_into(&mut values[at..at + hd], &qkv[v..v + hd]);
                }
            }
            for i in 0..t {
                let token = row * t + i;
                let row_start = token * step.mask.keys;
                let mask = &step.mask.values[row_start..row_start + place.past + t];
                attend_one(
                    isa,
                    shape,
                    p,
                    &buf.qkv[token * stride..token * stride + qw],
                    keys,
                    values,
                    capacity,
                    mask,
                    &mut buf.scores,
                    &mut buf.z[token * qw..(token + 1) * qw],
                );
            }
        }
        Ok(())
    }
}

/// `from` (values already in the cache's precision) into a cache slice.
fn store_into<W: Widen>(to: &mut [W], from: &[f32]) {
    for (to, &x) in to.iter_mut().zip(from) {
        *to = W::narrow(x);
    }
}

/// The model's weights as slices, borrowed for one generation: the matrices in the model's
/// dtype (f32 or bf16), the norms' scales in f32.
struct Weights<'m> {
    /// The model's dtype: what activations are stored in.
    precision: Precision,
    /// `[vocab, hidden]`.
    embed: Matrix<'m>,
    /// `sqrt(hidden)` rounded to the model's dtype.
    embed_scale: f32,
    /// `[vocab, hidden]` (the embedding when tied).
    unembed: Matrix<'m>,
    /// The final norm's `1 + w`.
    final_norm: &'m [f32],
    eps: f32,
    final_softcap: Option<f32>,
    attention: OneQuery,
    /// Width of the residual stream.
    hidden: usize,
    layers: Vec<LayerWeights<'m>>,
}

/// One layer's weights: the stacked projections and the norms' `1 + w`.
struct LayerWeights<'m> {
    qkv: Matrix<'m>,
    o: Matrix<'m>,
    gate_up: Matrix<'m>,
    down: Matrix<'m>,
    input_norm: &'m [f32],
    post_attention_norm: &'m [f32],
    pre_feedforward_norm: &'m [f32],
    post_feedforward_norm: &'m [f32],
    /// Whether it attends within the sliding window.
    sliding: bool,
    /// Whether it turns by the model's second rotary table.
    local_rope: bool,
    /// The query and key heads' norms (`1 + w`, `head_dim` each).
    query_key_norms: Option<(&'m [f32], &'m [f32])>,
    /// Width of each GeGLU branch.
    intermediate: usize,
}

impl<'m> Weights<'m> {
    /// The slices of `view`'s tensors, or why the fused step cannot read them.
    fn of(view: &FusedWeights<'m>) -> std::result::Result<Self, String> {
        let precision = match view.embed.kind() {
            Kind::BFloat16 => Precision::Bf16,
            _ => Precision::F32,
        };
        let matrix = |t: &'m Tensor, what: &dyn Fn() -> String| match precision {
            Precision::F32 => slice::<f32>(t, what).map(Matrix::F32),
            Precision::Bf16 => slice::<u16>(t, what).map(Matrix::Bf16),
        };
        let mut layers = Vec::with_capacity(view.layers.len());
        for (i, l) in view.layers.iter().enumerate() {
            let named = |what: &str| format!("layer {i} {what}");
            layers.push(LayerWeights {
                qkv: matrix(l.qkv, &|| named("q/k/v"))?,
                o: matrix(l.o, &|| named("o_proj"))?,
                gate_up: matrix(l.gate_up, &|| named("gate/up"))?,
                down: matrix(l.down, &|| named("down_proj"))?,
                input_norm: slice::<f32>(l.input_norm, || named("input norm"))?,
                post_attention_norm: slice::<f32>(l.post_attention_norm, || {
                    named("post-attention norm")
                })?,
                pre_feedforward_norm: slice::<f32>(l.pre_feedforward_norm, || {
                    named("pre-MLP norm")
                })?,
                post_feedforward_norm: slice::<f32>(l.post_feedforward_norm, || {
                    named("post-MLP norm")
                })?,
                sliding: l.sliding,
                local_rope: l.local_rope,
                query_key_norms: match l.query_key_norms {
                    Some((q, k)) => Some((
                        head_norm(q, view.head_dim, || named("q_norm"))?,
                        head_norm(k, view.head_dim, || named("k_norm"))?,
                    )),
                    None => None,
                },
                intermediate: usize::try_from(l.down.size().last().copied().unwrap_or(0))
                    .unwrap_or(0),
            });
        }
        let hidden = usize::try_from(view.embed.size().last().copied().unwrap_or(0)).unwrap_or(0);
        Ok(Weights {
            precision,
            embed: matrix(view.embed, &|| "embed_tokens".into())?,
            embed_scale: precision.store_one(view.embed_scale),
            unembed: matrix(view.unembed, &|| "the unembedding".into())?,
            final_norm: slice::<f32>(view.final_norm, || "the final norm".into())?,
            eps: view.eps,
            final_softcap: view.final_softcap,
            attention: OneQuery {
                heads: view.heads,
                kv_heads: view.kv_heads,
                head_dim: view.head_dim,
                scale: view.attention_scale,
                softcap: view.attention_softcap,
            },
            hidden,
            layers,
        })
    }
}

/// An element type a tensor's storage is read as: f32, or bf16 as its bit patterns.
trait HostElement: Copy {
    /// The tensor kind stored as this type.
    const KIND: Kind;
}

impl HostElement for f32 {
    const KIND: Kind = Kind::Float;
}

impl HostElement for u16 {
    const KIND: Kind = Kind::BFloat16;
}

/// Why `t` cannot be read as a slice of `T` (naming it `what()`), or `None` when it is a
/// contiguous CPU tensor of `T`'s kind.
fn not_host<T: HostElement>(t: &Tensor, what: impl FnOnce() -> String) -> Option<String> {
    (t.kind() != T::KIND || t.device() != Device::Cpu || !t.is_contiguous()).then(|| {
        format!(
            "{} is not a contiguous {:?} CPU tensor ({:?} on {:?})",
            what(),
            T::KIND,
            t.kind(),
            t.device()
        )
    })
}

/// The values of a contiguous CPU tensor of `T`'s kind, borrowed.
fn slice<T: HostElement>(
    t: &Tensor,
    what: impl FnOnce() -> String,
) -> std::result::Result<&[T], String> {
    if let Some(why) = not_host::<T>(t, what) {
        return Err(why);
    }
    let n = t.numel();
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: a contiguous CPU tensor of `T`'s kind holds `numel` values of `T`'s size and
    // layout at `data_ptr`, alive as long as the tensor. The model's weights are never written
    // after loading, so nothing writes them while the slice is borrowed.
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, n) })
}

/// A per-head norm's scale as a slice, checked to be one head wide.
fn head_norm(
    t: &Tensor,
    head_dim: usize,
    what: impl Fn() -> String,
) -> std::result::Result<&[f32], String> {
    let scale = slice::<f32>(t, &what)?;
    if scale.len() != head_dim {
        return Err(format!(
            "{} has {} values for heads of {head_dim}",
            what(),
            scale.len()
        ));
    }
    Ok(scale)
}

/// The values of a contiguous CPU tensor of `T`'s kind, borrowed to write: for the KV
/// cache's own buffers.
fn slice_mut<T: HostElement>(
    t: &mut Tensor,
    what: impl FnOnce() -> String,
) -> std::result::Result<&mut [T], String> {
    if let Some(why) = not_host::<T>(t, what) {
        return Err(why);
    }
    let n = t.numel();
    if n == 0 {
        return Ok(&mut []);
    }
    // SAFETY: as in `slice`. The cache's buffers are its own (made in `KvCache::new`, never
    // handed out whole), the views its `write` returns live only inside one forward call,
    // and the caller holds the cache mutably, so nothing else reads or writes them meanwhile.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) })
}

/// A tensor's values on the host as `T`, flattened (a copy).
pub(crate) fn host<T: tch::kind::Element>(t: &Tensor) -> Result<Vec<T>>
where
    for<'a> Vec<T>: TryFrom<&'a Tensor, Error = tch::TchError>,
{
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(T::KIND)?
        .f_contiguous()?
        .f_flatten(0, -1)?;
    Ok(Vec::<T>::try_from(&t)?)
}

/// The buffers of one call, `[rows, width]` each (`rows` tokens of `batch` rows), allocated
/// once per shape.
struct Buffers {
    batch: usize,
    rows: usize,
    hidden: usize,
    /// The residual stream.
    x: Vec<f32>,
    /// Normed states.
    h: Vec<f32>,
    /// Stacked query, key and value projections.
    qkv: Vec<f32>,
    /// Merged attention heads.
    z: Vec<f32>,
    /// Attention or MLP output.
    a: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    logits: Vec<f32>,
    /// One head's attention scores.
    scores: Vec<f32>,
    /// One head, normed (Gemma 3's query and key norms).
    head: Vec<f32>,
}

impl Buffers {
    fn new(weights: &Weights<'_>, batch: usize, rows: usize) -> Self {
        let n = |width: usize| vec![0f32; rows * width];
        let hidden = weights.hidden;
        let OneQuery {
            heads,
            kv_heads,
            head_dim,
            ..
        } = weights.attention;
        let intermediate = weights.layers.first().map_or(0, |l| l.intermediate);
        Buffers {
            batch,
            rows,
            hidden,
            x: n(hidden),
            h: n(hidden),
            qkv: n((heads + 2 * kv_heads) * head_dim),
            z: n(heads * head_dim),
            a: n(hidden),
            gate_up: n(2 * intermediate),
            act: n(intermediate),
            logits: vec![0f32; batch * weights.embed.len() / hidden.max(1)],
            scores: Vec::new(),
            head: vec![0f32; head_dim],
        }
    }
}

/// RMSNorm of every row of `x` into `out`, stored in precision `p`.
fn norm_rows(isa: Isa, x: &[f32], scale: &[f32], eps: f32, out: &mut [f32], p: Precision) {
    let width = scale.len();
    for (x, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        rms_norm(isa, x, scale, eps, out);
        p.store(out);
    }
}

/// RMSNorm of each `scale.len()`-wide head of `x`, in place (`scratch` holds one head),
/// stored in precision `p`.
fn norm_heads(isa: Isa, x: &mut [f32], scale: &[f32], eps: f32, scratch: &mut [f32], p: Precision) {
    for head in x.chunks_exact_mut(scale.len().max(1)) {
        rms_norm(isa, head, scale, eps, scratch);
        p.store(scratch);
        head.copy_from_slice(scratch);
    }
}

/// `x += y`, stored in precision `p`.
fn add(x: &mut [f32], y: &[f32], p: Precision) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a = p.store_one(*a + b);
    }
}

/// Visits `site` with `data` (`[B * T, width]`) as a `[B, T, width]` tensor (`[B, T]` is
/// `rows`) of the model's dtype (precision `p`), when a hook wants it, and copies what the
/// hook leaves back, stored in `p`.
fn visit_rows(
    hooks: &mut dyn Hooks,
    site: Site,
    data: &mut [f32],
    rows: [i64; 2],
    p: Precision,
) -> Result<()> {
    if !hooks.wants(site) {
        return Ok(());
    }
    let tokens = usize::try_from(rows[0] * rows[1]).unwrap_or(0).max(1);
    let shape = [rows[0], rows[1], (data.len() / tokens) as i64];
    let mut t = Tensor::f_from_slice(data)?
        .f_reshape(shape)?
        .f_to_kind(p.kind())?;
    hooks.visit(site, &mut t)?;
    if t.size() != shape {
        return Err(Error::Input(format!(
            "a hook at {site} replaced the {shape:?} activation by one of shape {:?}",
            t.size()
        )));
    }
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    t.f_copy_data(data, data.len())?;
    p.store(data);
    Ok(())
}

/// Visits the columns `start..start + width` of the rows of `data` (`stride` wide).
#[allow(clippy::too_many_arguments)]
fn visit_columns(
    hooks: &mut dyn Hooks,
    site: Site,
    data: &mut [f32],
    rows: [i64; 2],
    stride: usize,
    start: usize,
    width: usize,
    p: Precision,
) -> Result<()> {
    let mut part: Vec<f32> = data
        .chunks_exact(stride)
        .flat_map(|row| row[start..start + width].iter().copied())
        .collect();
    visit_rows(hooks, site, &mut part, rows, p)?;
    for (row, from) in data.chunks_exact_mut(stride).zip(part.chunks_exact(width)) {
        row[start..start + width].copy_from_slice(from);
    }
    Ok(())
}
