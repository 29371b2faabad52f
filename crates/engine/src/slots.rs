//! The device-side state of [`EngineMode::Batched`](crate::EngineMode::Batched) steps: one
//! step of fixed shape over every slot, reading static buffers in place (the tokens to feed,
//! each row's cache index, and one `[rows, width]` buffer of steering vectors per edited
//! site), so that on a GPU it is recorded once as a CUDA graph and replayed for every later
//! token, whatever requests come and go: a new request's steering is written into its row of
//! the buffers, never re-recorded. Only a step whose requests read readouts (host code) runs
//! unrecorded, and a new edited site records again.

use intervene::{Hooks, NoHooks, Site};
use tch::{Kind, Tensor};

use crate::batch::Batch;
use crate::cache::KvCache;
use crate::cuda::{self, CudaGraph};
use crate::error::{Error, Result};
use crate::hooks::add_in_its_dtype;
use crate::mask::Masks;
use crate::model::{last_position, Call, DecoderModel};

/// The static buffers of the batched step, and its recording.
pub(crate) struct SlotStep {
    /// `[rows, 1]` int64: each slot's token to feed (a pad for free slots).
    input_ids: Tensor,
    /// `[rows]` int64: each slot's cache index (0 for free slots, which admission overwrites).
    cursor: Tensor,
    /// Per edited site, `[rows, width]`: each slot's summed vectors, zeros where none.
    edits: Vec<(Site, Tensor)>,
    graph: Recording,
}

/// Where the step stands with its CUDA graph.
enum Recording {
    /// Not on a GPU with graphs: every step runs as it is.
    Never,
    /// The next step that can be recorded is.
    Wanted,
    /// Replay `graph`, which writes its logits into `logits` (declared first, so dropped
    /// before the graph whose memory pool holds it).
    Recorded { logits: Tensor, graph: CudaGraph },
}

impl SlotStep {
    /// The buffers for `rows` slots of `model`, recorded as a CUDA graph where it runs on one.
    pub(crate) fn new(model: &dyn DecoderModel, rows: usize) -> Result<Self> {
        let device = model.spec().device;
        let rows = rows as i64;
        Ok(SlotStep {
            input_ids: Tensor::f_zeros([rows, 1], (Kind::Int64, device))?,
            cursor: Tensor::f_zeros([rows], (Kind::Int64, device))?,
            edits: Vec::new(),
            graph: if device.is_cuda() && cuda::graphs_available() {
                Recording::Wanted
            } else {
                Recording::Never
            },
        })
    }

    /// Writes `edits` (each `[width]`, on the model's device) into row `slot`, clearing what
    /// the row held. A site no buffer has yet gets one, and the step records again.
    pub(crate) fn set_row(&mut self, slot: usize, edits: &[(Site, Tensor)]) -> Result<()> {
        self.clear_row(slot)?;
        let rows = self.input_ids.size().first().copied().unwrap_or(0);
        for (site, vector) in edits {
            let at = match self.edits.iter().position(|(s, _)| s == site) {
                Some(at) => at,
                None => {
                    let width = vector.size().first().copied().unwrap_or(0);
                    let buffer = Tensor::f_zeros([rows, width], (vector.kind(), vector.device()))?;
                    self.edits.push((*site, buffer));
                    if !matches!(self.graph, Recording::Never) {
                        self.graph = Recording::Wanted;
                    }
                    self.edits.len() - 1
                }
            };
            let buffer = &self.edits[at].1;
            let mut row = buffer.f_narrow(0, slot as i64, 1)?;
            let _ = row.f_add_(&vector.f_to_kind(buffer.kind())?)?;
        }
        Ok(())
    }

    /// Zeros row `slot` of every buffer (a finished request's steering stops).
    pub(crate) fn clear_row(&mut self, slot: usize) -> Result<()> {
        for (_, buffer) in &mut self.edits {
            let _ = buffer.f_narrow(0, slot as i64, 1)?.f_zero_()?;
        }
        Ok(())
    }

    /// One step: `feed` and `index` (one per slot) into the buffers, then the step run,
    /// replayed, or run and recorded. `reads` visits the readouts of the running requests
    /// (host code: with any, the step runs unrecorded). The last position's logits of every
    /// slot, `[rows, 1, vocab]`.
    pub(crate) fn run(
        &mut self,
        model: &dyn DecoderModel,
        cache: &mut KvCache,
        feed: &[i64],
        index: &[i64],
        reads: Option<&mut dyn Hooks>,
    ) -> Result<Tensor> {
        let device = self.cursor.device();
        self.input_ids.f_copy_(
            &Tensor::f_from_slice(feed)?
                .f_view([-1, 1])?
                .f_to_device(device)?,
        )?;
        self.cursor
            .f_copy_(&Tensor::f_from_slice(index)?.f_to_device(device)?)?;
        if let Some(reads) = reads {
            return self.once(model, cache, reads);
        }
        match std::mem::replace(&mut self.graph, Recording::Never) {
            Recording::Recorded { logits, graph } => {
                graph.replay()?;
                let out = logits.shallow_clone();
                self.graph = Recording::Recorded { logits, graph };
                Ok(out)
            }
            Recording::Never => self.once(model, cache, &mut NoHooks),
            Recording::Wanted => {
                let logits = self.once(model, cache, &mut NoHooks)?;
                // Recording fails where a library cannot be captured: the steps then run as
                // they are, which computes the same.
                self.graph = match self.record(model, cache) {
                    Ok(recorded) => recorded,
                    Err(_) => Recording::Never,
                };
                Ok(logits)
            }
        }
    }

    /// Records the step (without running it).
    fn record(&mut self, model: &dyn DecoderModel, cache: &mut KvCache) -> Result<Recording> {
        let mut graph = CudaGraph::new()?;
        graph.enter()?;
        let captured = graph.capture(|| self.once(model, cache, &mut NoHooks));
        graph.exit()?;
        Ok(Recording::Recorded {
            logits: captured?,
            graph,
        })
    }

    /// The step, as it is: every operation on the device, reading the buffers in place.
    fn once(
        &self,
        model: &dyn DecoderModel,
        cache: &mut KvCache,
        reads: &mut dyn Hooks,
    ) -> Result<Tensor> {
        let spec = model.spec();
        let rows = self.cursor.size().first().copied().unwrap_or(0);
        let positions = self.cursor.f_view([rows, 1])?;
        let batch =
            Batch::new(self.input_ids.shallow_clone()).with_position_ids(positions.shallow_clone());
        let masks = Masks::new(&positions, cache.max_len(), None, spec.window, spec.dtype)?;
        let call = Call {
            options: last_position(),
            masks: Some(masks),
            cursor: Some(&self.cursor),
            ..Call::cached(cache)
        };
        let mut hooks = SlotHooks {
            edits: &self.edits,
            reads,
        };
        model
            .run(&batch, call, &mut hooks)?
            .logits
            .ok_or_else(|| Error::Input("the decode step returned no logits".into()))
    }
}

/// Adds each slot's row of the edit buffers at their sites (rows without an edit add zeros,
/// which leave an activation as it was), then lets `reads` read.
struct SlotHooks<'a> {
    edits: &'a [(Site, Tensor)],
    reads: &'a mut dyn Hooks,
}

impl Hooks for SlotHooks<'_> {
    fn wants(&self, site: Site) -> bool {
        self.edits.iter().any(|(s, _)| *s == site) || self.reads.wants(site)
    }

    fn visit(&mut self, site: Site, activation: &mut Tensor) -> Result<(), intervene::Error> {
        for (_, buffer) in self.edits.iter().filter(|(s, _)| *s == site) {
            // `[rows, width]` over every position of `[rows, T, width]`.
            add_in_its_dtype(activation, &buffer.f_unsqueeze(1)?)?;
        }
        if self.reads.wants(site) {
            self.reads.visit(site, activation)?;
        }
        Ok(())
    }
}
