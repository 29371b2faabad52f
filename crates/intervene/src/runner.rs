//! How one call of the intervention graph runs: the hooks the model visits.
//!
//! [`Runner`] holds every intervention's per-call state (locations, gates, the source slices
//! gathered, what was collected) and applies setters and getters at each site; [`Recorder`]
//! keeps the clean run's residual stream where the intervened run resumes; [`SplitHooks`]
//! gives each input of a stacked call its own hooks.

use tch::Tensor;

use crate::config::{CallOptions, Entry, IntervenableOutput, Mode};
use crate::error::{Error, Result};
use crate::hooks::{ForwardInfo, Hooks, NoHooks, StackedPart};
use crate::intervention::{InterventionRole, Subspaces};
use crate::location::{Locations, RowPositions};
use crate::select::{cast_to, gather, scatter, IndexCache, Selection};
use crate::site::{Site, SiteKind};

/// The model's result, with a hook's own error (typed) preferred over the model's wrapping of it.
pub(crate) fn finish<T, E: std::error::Error + Send + Sync + 'static>(
    result: std::result::Result<T, E>,
    hooks: &mut dyn HookErrors,
) -> Result<T> {
    match result {
        Ok(v) => match hooks.take_error() {
            Some(e) => Err(e),
            None => Ok(v),
        },
        Err(e) => Err(hooks
            .take_error()
            .unwrap_or_else(|| Error::Model(Box::new(e)))),
    }
}

/// Hooks that remember the first error they raised, so the caller gets it back typed.
pub(crate) trait HookErrors {
    fn as_hooks(&mut self) -> &mut dyn Hooks;
    fn take_error(&mut self) -> Option<Error>;
}

impl HookErrors for NoHooks {
    fn as_hooks(&mut self) -> &mut dyn Hooks {
        self
    }
    fn take_error(&mut self) -> Option<Error> {
        None
    }
}

/// Whether intervention `i` of `n` acts (as a setter) in the base run of `mode`: all of them in
/// parallel mode, the last one in serial mode.
pub(crate) fn acts_in_base(mode: Mode, i: usize, n: usize) -> bool {
    match mode {
        Mode::Parallel => true,
        Mode::Serial => i + 1 == n,
    }
}

/// Hooks of the clean run: a copy of the residual stream entering one layer, where the
/// intervened run can resume.
pub(crate) struct Recorder {
    site: Option<Site>,
    hidden: Option<Tensor>,
}

impl Recorder {
    /// Records the residual stream entering `layer` (at least 1) as the output of the layer
    /// before it, so that a run stopped after that layer records it too.
    pub(crate) fn new(layer: Option<usize>) -> Self {
        Recorder {
            site: layer
                .and_then(|l| l.checked_sub(1))
                .map(|previous| Site::new(previous, SiteKind::BlockOutput)),
            hidden: None,
        }
    }

    /// The layer and the residual stream entering it, if the run reached it.
    pub(crate) fn take(self) -> Option<(usize, Tensor)> {
        Some((self.site?.layer + 1, self.hidden?))
    }

    /// The residual stream entering `layer`, which the run must have reached.
    pub(crate) fn entering(self, layer: usize) -> Result<Tensor> {
        self.take().map(|(_, hidden)| hidden).ok_or_else(|| {
            Error::Invalid(format!(
                "the clean run never reached the input of layer {layer}"
            ))
        })
    }
}

impl Hooks for Recorder {
    fn wants(&self, site: Site) -> bool {
        self.site == Some(site)
    }

    fn visit(&mut self, _site: Site, activation: &mut Tensor) -> Result<(), Error> {
        // A copy: the model may go on to update its residual stream in place.
        self.hidden = Some(activation.f_detach_copy()?);
        Ok(())
    }
}

impl HookErrors for Recorder {
    fn as_hooks(&mut self) -> &mut dyn Hooks {
        self
    }
    fn take_error(&mut self) -> Option<Error> {
        None
    }
}

/// Hooks for a stacked call ([`stack_inputs`](crate::HookedModel::stack_inputs)): each part's
/// hooks see only its own rows and positions, as in that input's own call.
pub(crate) struct SplitHooks<'h, const N: usize> {
    pub(crate) parts: [(StackedPart, &'h mut dyn Hooks); N],
}

impl<const N: usize> Hooks for SplitHooks<'_, N> {
    fn begin_forward(&mut self, info: &ForwardInfo) -> Result<(), Error> {
        for (part, hooks) in &mut self.parts {
            hooks.begin_forward(&ForwardInfo {
                batch: part.rows,
                chunk_len: part.len.min(info.chunk_len),
                past_len: info.past_len,
            })?;
        }
        Ok(())
    }

    fn wants(&self, site: Site) -> bool {
        self.parts.iter().any(|(_, hooks)| hooks.wants(site))
    }

    fn visit(&mut self, site: Site, activation: &mut Tensor) -> Result<(), Error> {
        for (part, hooks) in &mut self.parts {
            if !hooks.wants(site) {
                continue;
            }
            let mut view = activation
                .f_narrow(0, part.first_row, part.rows)?
                .f_narrow(1, 0, part.len)?;
            let mut seen = view.shallow_clone();
            hooks.visit(site, &mut seen)?;
            // A hook that assigned a new tensor rather than writing into the view: write it back.
            if seen.data_ptr() != view.data_ptr() {
                view.f_copy_(&seen)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    Always,
    PromptOnly,
    DecodeOnly,
}

struct Slot<'e> {
    entry: &'e Entry,
    locations: Locations,
    subspaces: Option<Subspaces>,
    gate: Gate,
    setter: bool,
    getter: bool,
    source_slice: Option<Tensor>,
    gathered: Option<Tensor>,
    base_idx: IndexCache,
    src_idx: IndexCache,
    head_idx: IndexCache,
    collected: Vec<Tensor>,
}

pub(crate) struct Runner<'e> {
    slots: Vec<Slot<'e>>,
    by_site: Vec<(Site, Vec<usize>)>,
    /// Index of the current forward call within the current run (0 = prompt).
    call: usize,
    started: bool,
    /// Source runs are plain forwards: gates do not apply.
    source_run: bool,
    error: Option<Error>,
}

impl HookErrors for Runner<'_> {
    fn as_hooks(&mut self) -> &mut dyn Hooks {
        self
    }
    fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }
}

impl<'e> Runner<'e> {
    /// The hooks of one call over `entries`: each with its per-call locations and
    /// subspaces, gated by prompt/decode in generation (`Some(intervene_on_prompt)`).
    pub(crate) fn new(
        entries: &'e [Entry],
        options: &CallOptions,
        generation: Option<bool>,
    ) -> Runner<'e> {
        let mut slots = Vec::with_capacity(entries.len());
        let mut by_site: Vec<(Site, Vec<usize>)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let loc = options.unit_locations.get(i).cloned().unwrap_or_default();
            let (gate, loc) = match generation {
                None => (Gate::Always, loc),
                Some(true) if loc.is_all() => (Gate::Always, loc),
                Some(false) if loc.is_all() => (
                    Gate::DecodeOnly,
                    Locations {
                        base: Some(RowPositions::Shared(vec![0])),
                        ..loc
                    },
                ),
                Some(true) => (Gate::PromptOnly, loc),
                Some(false) => (Gate::DecodeOnly, loc),
            };
            slots.push(Slot {
                entry: e,
                locations: loc,
                subspaces: options.subspaces.get(i).cloned().flatten(),
                gate,
                setter: false,
                getter: false,
                source_slice: None,
                gathered: None,
                base_idx: IndexCache::default(),
                src_idx: IndexCache::default(),
                head_idx: IndexCache::default(),
                collected: Vec::new(),
            });
            match by_site.iter_mut().find(|(s, _)| *s == e.resolved.site) {
                Some((_, v)) => v.push(i),
                None => by_site.push((e.resolved.site, vec![i])),
            }
        }
        Runner {
            slots,
            by_site,
            call: 0,
            started: false,
            source_run: false,
            error: None,
        }
    }

    fn reset_calls(&mut self) {
        self.call = 0;
        self.started = false;
    }

    pub(crate) fn source_phase(&mut self, setter: Option<usize>, getters: &[usize]) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            s.setter = setter == Some(i);
            s.getter = getters.contains(&i);
            s.gathered = None;
        }
        self.source_run = true;
        self.reset_calls();
    }

    pub(crate) fn base_phase(&mut self, mode: Mode) {
        let n = self.slots.len();
        for (i, s) in self.slots.iter_mut().enumerate() {
            s.setter = acts_in_base(mode, i, n);
            s.getter = false;
        }
        self.source_run = false;
        self.reset_calls();
    }

    pub(crate) fn keep_gathered(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        match slot.gathered.take() {
            Some(t) => {
                slot.source_slice = Some(t);
                Ok(())
            }
            None => Err(Error::Invalid(format!(
                "the source run never visited {} for `{}`",
                slot.entry.resolved.site, slot.entry.key
            ))),
        }
    }

    /// The call's output: the two runs, the collected tensors with the index of the
    /// intervention of each, and each intervention's source slice.
    pub(crate) fn into_output<O>(
        self,
        original: Option<O>,
        intervened: O,
    ) -> IntervenableOutput<O> {
        let mut collected = Vec::new();
        let mut collected_from = Vec::new();
        let mut source_slices = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.into_iter().enumerate() {
            for t in s.collected {
                collected.push(t);
                collected_from.push(i);
            }
            source_slices.push(s.source_slice);
        }
        IntervenableOutput {
            original,
            intervened,
            collected,
            collected_from,
            source_slices,
        }
    }

    fn open(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.setter
            && (self.source_run
                || match s.gate {
                    Gate::Always => true,
                    Gate::PromptOnly => self.call == 0,
                    Gate::DecodeOnly => self.call >= 1,
                })
    }

    fn visit_inner(&mut self, site: Site, act: &mut Tensor) -> Result<()> {
        let Some(j) = self.by_site.iter().position(|(s, _)| *s == site) else {
            return Ok(());
        };

        // Setters first, in config order (each sees the previous one's result); then getters,
        // which see the site after the setters (pyvene registers a serial stage's setters first).
        for n in 0..self.by_site[j].1.len() {
            let i = self.by_site[j].1[n];
            if self.open(i) {
                self.apply_setter(i, site, act)?;
            }
        }
        for n in 0..self.by_site[j].1.len() {
            let i = self.by_site[j].1[n];
            if self.slots[i].getter {
                self.apply_getter(i, site, act)?;
            }
        }
        Ok(())
    }

    fn apply_setter(&mut self, i: usize, site: Site, act: &mut Tensor) -> Result<()> {
        let decode_gated = self.slots[i].gate == Gate::DecodeOnly && !self.source_run;
        let slot = &mut self.slots[i];
        let (batch, len) = batch_and_len(act);
        let device = act.device();
        let pos = match &slot.locations.base {
            None => None,
            Some(p) => Some(
                slot.base_idx
                    .get(p, batch, len, device, site, false)
                    .map_err(|e| match e {
                        Error::PositionOutOfRange {
                            position,
                            len,
                            site,
                        } if decode_gated => Error::DecodePositionOutOfRange {
                            position,
                            len,
                            site,
                        },
                        other => other,
                    })?,
            ),
        };
        let heads = head_index(slot, batch, device, site)?;
        let sel = Selection {
            positions: pos.as_ref(),
            heads: heads.as_ref().map(|(h, t)| (*h, t.as_ref())),
        };
        let base_slice = gather(act, &sel)?;
        let intervention = slot.entry.intervention.as_ref();
        let role = intervention.role();
        let source =
            match role {
                InterventionRole::NeedsSource => Some(slot.source_slice.as_ref().ok_or_else(
                    || Error::MissingSource {
                        intervention: format!("{} ({})", intervention.name(), slot.entry.key),
                    },
                )?),
                _ => slot.source_slice.as_ref(),
            };
        if let Some(src) = source {
            let (s, b) = (src.size(), base_slice.size());
            let vector = s.len() == 1 && s.last() == b.last();
            if s != b && !vector {
                return Err(Error::Shape {
                    context: format!(
                        "source slice for `{}` at {site} (the source must select as many \
                         rows and positions as the base)",
                        slot.entry.key
                    ),
                    expected: b,
                    got: s,
                });
            }
        }
        let y = intervention.apply(&base_slice, source, slot.subspaces.as_ref())?;
        if role == InterventionRole::Collect {
            slot.collected.push(y);
            return Ok(());
        }
        if y.size() != base_slice.size() {
            return Err(Error::Shape {
                context: format!("result of `{}` at {site}", slot.entry.key),
                expected: base_slice.size(),
                got: y.size(),
            });
        }
        let y = cast_to(y, act.kind())?;
        *act = scatter(act, &sel, &y)?;
        Ok(())
    }

    fn apply_getter(&mut self, i: usize, site: Site, act: &Tensor) -> Result<()> {
        let slot = &mut self.slots[i];
        let (batch, len) = batch_and_len(act);
        let device = act.device();
        let pos = match &slot.locations.source {
            None => None,
            Some(p) => Some(slot.src_idx.get(p, batch, len, device, site, false)?),
        };
        let heads = head_index(slot, batch, device, site)?;
        let sel = Selection {
            positions: pos.as_ref(),
            heads: heads.as_ref().map(|(h, t)| (*h, t.as_ref())),
        };
        let g = gather(act, &sel)?;
        // The whole-tensor form is the live activation: keep a copy.
        let g = if pos.is_none() { g.f_detach_copy()? } else { g };
        slot.gathered = Some(g);
        Ok(())
    }
}

/// An activation's `[batch, positions, ...]` sizes (0 for a missing axis).
fn batch_and_len(act: &Tensor) -> (i64, i64) {
    let size = act.size();
    (
        size.first().copied().unwrap_or(0),
        size.get(1).copied().unwrap_or(0),
    )
}

fn head_index(
    slot: &mut Slot<'_>,
    batch: i64,
    device: tch::Device,
    site: Site,
) -> Result<Option<(i64, Option<Tensor>)>> {
    match slot.entry.resolved.heads {
        None => Ok(None),
        Some(h) => {
            let t = match &slot.locations.heads {
                None => None,
                Some(hs) => Some(slot.head_idx.get(hs, batch, h, device, site, true)?),
            };
            Ok(Some((h, t)))
        }
    }
}

impl Hooks for Runner<'_> {
    fn begin_forward(&mut self, _info: &ForwardInfo) -> Result<(), Error> {
        if self.started {
            self.call += 1;
        } else {
            self.started = true;
        }
        Ok(())
    }

    fn wants(&self, site: Site) -> bool {
        self.by_site
            .iter()
            .find(|(s, _)| *s == site)
            .is_some_and(|(_, v)| v.iter().any(|&i| self.slots[i].getter || self.open(i)))
    }

    /// A base run's decode steps open the same interventions (gates depend only on whether
    /// the call is the prompt) at the same chunk-relative positions; it is enough that each
    /// of them is replayable. Source runs are plain forwards and never generate.
    fn decode_steps_replayable(&self) -> bool {
        !self.source_run
            && self.slots.iter().all(|s| {
                let acts_in_decode = s.setter && s.gate != Gate::PromptOnly;
                !acts_in_decode
                    || (s.entry.intervention.role() != InterventionRole::Collect
                        && s.entry.intervention.replayable())
            })
    }

    fn visit(&mut self, site: Site, activation: &mut Tensor) -> Result<(), Error> {
        match self.visit_inner(site, activation) {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = e.to_string();
                if self.error.is_none() {
                    self.error = Some(e);
                }
                Err(Error::Invalid(msg))
            }
        }
    }
}
