//! The intervention graph: several interventions at several components of one model, run
//! together (pyvene's `IntervenableModel`).
//!
//! One call ([`IntervenableModel::forward`] or [`IntervenableModel::generate`]) does, in order:
//! 1. validate every per-call setting against the config (before any model run);
//! 2. the source runs: in [`Mode::Parallel`], one forward per distinct source input gathers the
//!    source slices of every interchange that reads it; in [`Mode::Serial`], the chain
//!    `source_0 → source_1 → … → base`, where source `g` runs with intervention `g-1`'s setter
//!    active and intervention `g` reads it (pyvene's serial mode);
//! 3. with `output_original_output`, one clean run of the base (no hooks; in generation it
//!    comes before the source runs, as in pyvene — the runs are independent either way);
//! 4. the base run (or generation) with the setters active: in parallel mode all of them, in
//!    serial mode the last one. Setters at the same site run in config order and compose.
//!
//! A forward does no more model work than it must. The base run resumes from the clean run's
//! residual stream at the first layer it hooks (bit for bit the full run). When every hook of
//! the base run acts at one block output and the clean run is asked for, the clean run stops
//! there, and its rest and the base run go as one paired model call
//! ([`HookedModel::forward_hooked_from_paired`]: twice the rows, every later weight read once;
//! within float rounding of two calls). In that case, with one source input in parallel mode,
//! the source run and the start of the clean run go as one stacked call too
//! ([`HookedModel::stack_inputs`]): every weight before the hooked layer is read once.

use tch::Tensor;

use crate::component::{pyvene_key, ResolvedComponent};
use crate::config::Entry;
pub use crate::config::{CallOptions, IntervenableOutput, Mode, RepresentationConfig, Sources};
use crate::error::{Error, Result};
use crate::hooks::{ForwardOptions, HookedModel, Hooks, NoHooks, Paired};
use crate::intervention::{Intervention, InterventionRole};
use crate::runner::{acts_in_base, finish, HookErrors, Recorder, Runner, SplitHooks};
use crate::site::{Site, SiteKind};

/// A model with interventions attached (pyvene's `IntervenableModel`).
pub struct IntervenableModel<'m, M: HookedModel> {
    model: &'m M,
    entries: Vec<Entry>,
    mode: Mode,
}

impl<'m, M: HookedModel> IntervenableModel<'m, M> {
    /// Attach `configs` to `model`, resolving every component against the model's catalog.
    /// An unknown component or a layer out of range is an error here.
    pub fn new(model: &'m M, configs: Vec<RepresentationConfig>) -> Result<Self> {
        let catalog = model.site_catalog();
        let mut entries: Vec<Entry> = Vec::with_capacity(configs.len());
        for c in configs {
            let resolved = c.component.resolve(&catalog)?;
            let dup = entries
                .iter()
                .filter(|e| pyvene_key(&e.component, 0) == pyvene_key(&c.component, 0))
                .count();
            entries.push(Entry {
                key: pyvene_key(&c.component, dup),
                component: c.component,
                resolved,
                intervention: c.intervention,
            });
        }
        Ok(IntervenableModel {
            model,
            entries,
            mode: Mode::Parallel,
        })
    }

    /// Use `mode` for source runs.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The model.
    pub fn model(&self) -> &'m M {
        self.model
    }

    /// Number of interventions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no intervention is attached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// pyvene's keys, in config order (`layer_20_comp_block_output_unit_pos_nunit_1#0`, ...).
    pub fn keys(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.key.as_str()).collect()
    }

    /// The resolved component of intervention `i`.
    pub fn component(&self, i: usize) -> Option<&ResolvedComponent> {
        self.entries.get(i).map(|e| &e.resolved)
    }

    /// Intervention `i`.
    pub fn intervention(&self, i: usize) -> Option<&dyn Intervention> {
        self.entries.get(i).map(|e| e.intervention.as_ref())
    }

    /// One intervened forward of `base` (pyvene's `pv_model(base, sources, unit_locations,
    /// subspaces=..., output_original_output=...)`).
    pub fn forward(
        &self,
        base: &M::Input,
        sources: Sources<'_, M::Input>,
        options: &CallOptions,
    ) -> Result<IntervenableOutput<M::Output>> {
        self.validate(&sources, options)?;
        let clean_opts = ForwardOptions {
            last_position_logits: options.last_position_logits,
            ..ForwardOptions::default()
        };
        let fopts = self.intervened_options(options, clean_opts);
        // Up to the first hooked layer the intervened base run computes exactly what the clean
        // run did: resume it there from the clean run's residual stream.
        let resume = self.resume_layer(&fopts).filter(|&l| l > 0);
        // Sources first, then the clean run, then the intervened run: the runs are independent,
        // and this way the intervened run finds the weights the clean run read last (its final
        // layers, the unembedding) still in cache (0.8 ms of 31 on the CPU `small` shapes).
        let mut runner = self.runner(options, None);
        let paired = resume.filter(|&layer| {
            options.output_original_output && self.acts_only_at_output_of(layer - 1, &fopts)
        });
        // A paired finish needs the clean run only up to the hooked layer, as far as the source
        // run goes: the two can then run as one stacked call.
        let prefix = match paired {
            Some(layer) => self.run_source_with_prefix(base, &sources, layer, &mut runner)?,
            None => None,
        };
        if prefix.is_none() {
            self.run_sources(&mut runner, &sources)?;
        }
        runner.base_phase(self.mode);
        let (original, intervened) = match paired {
            Some(layer) => {
                let (original, intervened) =
                    self.run_paired(base, layer, prefix, &clean_opts, &fopts, &mut runner)?;
                (Some(original), intervened)
            }
            None => {
                let (original, start) = if options.output_original_output {
                    let mut recorder = Recorder::new(resume);
                    let out = self.run_forward(base, &clean_opts, &mut recorder)?;
                    (Some(out), recorder.take())
                } else {
                    (None, None)
                };
                (original, self.run_base(base, &fopts, start, &mut runner)?)
            }
        };
        Ok(runner.into_output(original, intervened))
    }

    /// The options of the intervened base run: `clean`, stopped after the deepest hooked layer
    /// when asked to and every intervention is a collect.
    fn intervened_options(&self, options: &CallOptions, clean: ForwardOptions) -> ForwardOptions {
        let all_collect = !self.entries.is_empty()
            && self
                .entries
                .iter()
                .all(|e| e.intervention.role() == InterventionRole::Collect);
        if options.collect_only_stop_early && all_collect {
            ForwardOptions {
                stop_after_layer: self.entries.iter().map(|e| e.resolved.site.layer).max(),
                ..clean
            }
        } else {
            clean
        }
    }

    /// Whether the base run's hooks all act at the block output of `layer` (and the run goes to
    /// the logits): then the clean and intervened runs can finish as one paired call.
    fn acts_only_at_output_of(&self, layer: usize, options: &ForwardOptions) -> bool {
        let n = self.entries.len();
        let site = Site::new(layer, SiteKind::BlockOutput);
        options.stop_after_layer.is_none()
            && self
                .entries
                .iter()
                .enumerate()
                .filter(|&(i, _)| acts_in_base(self.mode, i, n))
                .all(|(_, e)| e.resolved.site == site)
    }

    /// The clean run up to the residual stream entering `layer` (unless `prefix` already holds
    /// it), then the rest of it and the intervened run as one paired model call from there (the
    /// weights from `layer` on are read once for both). Returns `(original, intervened)`. A
    /// model without the paired form gets the two resumed calls instead.
    fn run_paired(
        &self,
        base: &M::Input,
        layer: usize,
        prefix: Option<Tensor>,
        clean: &ForwardOptions,
        intervened: &ForwardOptions,
        runner: &mut Runner<'_>,
    ) -> Result<(M::Output, M::Output)> {
        let hidden = match prefix {
            Some(hidden) => hidden,
            None => {
                let mut recorder = Recorder::new(Some(layer));
                let prefix = ForwardOptions {
                    stop_after_layer: Some(layer - 1),
                    ..*clean
                };
                self.run_forward(base, &prefix, &mut recorder)?;
                recorder.entering(layer)?
            }
        };
        let paired = self.model.forward_hooked_from_paired(
            base,
            layer,
            &hidden,
            intervened,
            runner.as_hooks(),
        );
        if let Some(Paired { hooked, plain }) = finish(paired, runner)? {
            return Ok((plain, hooked));
        }
        let resumed = self
            .model
            .forward_hooked_from(base, layer, &hidden, clean, &mut NoHooks);
        let original = match finish(resumed, &mut NoHooks)? {
            Some(out) => out,
            None => self.run_forward(base, clean, &mut NoHooks)?,
        };
        let intervened = self.run_base(base, intervened, Some((layer, hidden)), runner)?;
        Ok((original, intervened))
    }

    /// The intervened base run: resumed at `start` (a layer and the clean run's residual
    /// stream there) when the model supports it, a full forward otherwise.
    fn run_base(
        &self,
        base: &M::Input,
        options: &ForwardOptions,
        start: Option<(usize, Tensor)>,
        runner: &mut Runner<'_>,
    ) -> Result<M::Output> {
        if let Some((layer, hidden)) = start {
            let resumed =
                self.model
                    .forward_hooked_from(base, layer, &hidden, options, runner.as_hooks());
            if let Some(out) = finish(resumed, runner)? {
                return Ok(out);
            }
        }
        self.run_forward(base, options, runner)
    }

    /// Where the intervened base run can resume from the clean run: the shallowest layer a
    /// hook of the base run acts at or, when every hook there is on that layer's output (the
    /// model visits it first when resuming at the next layer), the layer after it.
    fn resume_layer(&self, options: &ForwardOptions) -> Option<usize> {
        let first = self.first_base_layer()?;
        let n = self.entries.len();
        let only_outputs = self
            .entries
            .iter()
            .enumerate()
            .filter(|&(i, e)| acts_in_base(self.mode, i, n) && e.resolved.site.layer == first)
            .all(|(_, e)| e.resolved.site.kind == SiteKind::BlockOutput);
        let last = match options.stop_after_layer {
            Some(l) => l,
            None => self.model.site_catalog().num_layers.checked_sub(1)?,
        };
        Some(if only_outputs && first < last {
            first + 1
        } else {
            first
        })
    }

    /// The shallowest layer any hook of the base run acts at (see [`Runner::base_phase`]).
    fn first_base_layer(&self) -> Option<usize> {
        let n = self.entries.len();
        self.entries
            .iter()
            .enumerate()
            .filter(|&(i, _)| acts_in_base(self.mode, i, n))
            .map(|(_, e)| e.resolved.site.layer)
            .min()
    }

    /// Generation with interventions (pyvene's `pv_model.generate(base, sources,
    /// unit_locations, intervene_on_prompt=..., subspaces=...)`).
    ///
    /// Sources run once, before generation. The model calls
    /// [`Hooks::begin_forward`] once per forward call; the first call is the prompt. Each
    /// intervention is gated by its own locations and `options.intervene_on_prompt`:
    ///
    /// | locations | intervene_on_prompt | prompt call | each decode call |
    /// |---|---|---|---|
    /// | [`Locations::all`] | true | every position (BOS included) | the whole chunk |
    /// | [`Locations::all`] | false | skipped | chunk position 0 (pyvene's `{"base": 0}`) |
    /// | given | true | the given positions | not intervened |
    /// | given | false | skipped | the given positions **of the current chunk** |
    ///
    /// In the last row, with a KV cache the chunk has length 1: only `0` and `-1` are valid,
    /// and anything else is [`Error::DecodePositionOutOfRange`] at the first decode call.
    /// A collect gives one entry per gated call.
    ///
    /// [`Locations::all`]: crate::Locations::all
    pub fn generate(
        &self,
        base: &M::Input,
        sources: Sources<'_, M::Input>,
        options: &CallOptions,
        config: &M::GenerateConfig,
    ) -> Result<IntervenableOutput<M::Generated>> {
        self.validate(&sources, options)?;
        let original = if options.output_original_output {
            Some(self.run_generate(base, config, &mut NoHooks)?)
        } else {
            None
        };
        let mut runner = self.runner(options, Some(options.intervene_on_prompt));
        self.run_sources(&mut runner, &sources)?;
        runner.base_phase(self.mode);
        let intervened = self.run_generate(base, config, &mut runner)?;
        Ok(runner.into_output(original, intervened))
    }

    fn validate(&self, sources: &Sources<'_, M::Input>, options: &CallOptions) -> Result<()> {
        let n = self.entries.len();
        options.unit_locations.check_len(n, "unit locations")?;
        options.subspaces.check_len(n, "subspace settings")?;
        if let Sources::Each(v) = sources {
            if v.len() != n {
                return Err(Error::Invalid(format!(
                    "source length {} is not equal to intervention length {n}",
                    v.len()
                )));
            }
        }
        for (i, e) in self.entries.iter().enumerate() {
            let loc = options
                .unit_locations
                .get(i)
                .ok_or_else(|| Error::Invalid(format!("no unit locations for `{}`", e.key)))?;
            loc.check()?;
            if loc.heads.is_some() && e.resolved.heads.is_none() {
                return Err(Error::Invalid(format!(
                    "heads selected for `{}`, which is not a head_* component",
                    e.component
                )));
            }
            let role = e.intervention.role();
            if role == InterventionRole::NeedsSource && sources.get(i).is_none() {
                return Err(Error::MissingSource {
                    intervention: format!("{} ({})", e.intervention.name(), e.key),
                });
            }
            if self.mode == Mode::Serial && sources.get(i).is_none() {
                return Err(Error::Invalid(format!(
                    "serial mode runs source_0 → … → base and needs a source for every \
                     intervention; source {i} (`{}`) is missing",
                    e.key
                )));
            }
        }
        Ok(())
    }

    fn runner(&self, options: &CallOptions, generation: Option<bool>) -> Runner<'_> {
        Runner::new(&self.entries, options, generation)
    }

    /// Parallel mode's source runs: each distinct source input with the interventions that
    /// read it, in config order.
    fn source_groups<'s>(
        &self,
        sources: &Sources<'s, M::Input>,
    ) -> Result<Vec<(&'s M::Input, Vec<usize>)>> {
        let mut groups: Vec<(&M::Input, Vec<usize>)> = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.intervention.role() != InterventionRole::NeedsSource {
                continue;
            }
            let src = sources.get(i).ok_or_else(|| Error::MissingSource {
                intervention: e.key.clone(),
            })?;
            match groups.iter_mut().find(|(s, _)| std::ptr::eq(*s, src)) {
                Some((_, v)) => v.push(i),
                None => groups.push((src, vec![i])),
            }
        }
        Ok(groups)
    }

    /// The deepest layer the interventions `members` read their source at.
    fn deepest_site(&self, members: &[usize]) -> Option<usize> {
        members
            .iter()
            .map(|&i| self.entries[i].resolved.site.layer)
            .max()
    }

    /// The source run and the clean base run up to the residual stream entering `layer`, as
    /// one stacked call ([`HookedModel::stack_inputs`]): in parallel mode with a single source
    /// input read no deeper than `layer - 1`, when the model can stack. Returns that residual
    /// stream (the source slices are kept in `runner`), or `None` when nothing was run.
    fn run_source_with_prefix(
        &self,
        base: &M::Input,
        sources: &Sources<'_, M::Input>,
        layer: usize,
        runner: &mut Runner<'_>,
    ) -> Result<Option<Tensor>> {
        if self.mode != Mode::Parallel {
            return Ok(None);
        }
        let groups = self.source_groups(sources)?;
        let [(source, members)] = groups.as_slice() else {
            return Ok(None);
        };
        if self
            .deepest_site(members)
            .is_none_or(|deepest| deepest >= layer)
        {
            return Ok(None);
        }
        let stacked = match self.model.stack_inputs(&[base, *source]) {
            Ok(Some(stacked)) => stacked,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::Model(Box::new(e))),
        };
        let [base_part, source_part] = stacked.parts.as_slice() else {
            return Err(Error::Invalid(format!(
                "the model stacked 2 inputs into {} parts",
                stacked.parts.len()
            )));
        };
        runner.source_phase(None, members);
        let mut recorder = Recorder::new(Some(layer));
        let mut split = SplitHooks {
            parts: [
                (*base_part, &mut recorder as &mut dyn Hooks),
                (*source_part, runner.as_hooks()),
            ],
        };
        let options = ForwardOptions {
            stop_after_layer: Some(layer - 1),
            ..ForwardOptions::default()
        };
        let result = self
            .model
            .forward_hooked(&stacked.input, &options, &mut split);
        finish(result, runner)?;
        for &i in members {
            runner.keep_gathered(i)?;
        }
        recorder.entering(layer).map(Some)
    }

    fn run_sources(&self, runner: &mut Runner<'_>, sources: &Sources<'_, M::Input>) -> Result<()> {
        let n = self.entries.len();
        match self.mode {
            Mode::Parallel => {
                // One forward per distinct source input, gathering for every interchange it feeds.
                for (src, members) in self.source_groups(sources)? {
                    runner.source_phase(None, &members);
                    let stop = self.deepest_site(&members);
                    self.run_forward(
                        src,
                        &ForwardOptions {
                            stop_after_layer: stop,
                            ..ForwardOptions::default()
                        },
                        runner,
                    )?;
                    for &i in &members {
                        runner.keep_gathered(i)?;
                    }
                }
            }
            Mode::Serial => {
                for g in 0..n {
                    let src = sources.get(g).ok_or_else(|| {
                        Error::Invalid(format!("serial mode: source {g} is missing"))
                    })?;
                    let reads =
                        self.entries[g].intervention.role() == InterventionRole::NeedsSource;
                    let getters: Vec<usize> = if reads { vec![g] } else { Vec::new() };
                    let setter = g.checked_sub(1);
                    runner.source_phase(setter, &getters);
                    let mut stop = getters
                        .iter()
                        .map(|&i| self.entries[i].resolved.site.layer)
                        .max();
                    if let Some(p) = setter {
                        if self.entries[p].intervention.role() == InterventionRole::Collect {
                            let l = self.entries[p].resolved.site.layer;
                            stop = Some(stop.map_or(l, |s| s.max(l)));
                        }
                    }
                    self.run_forward(
                        src,
                        &ForwardOptions {
                            stop_after_layer: stop,
                            ..ForwardOptions::default()
                        },
                        runner,
                    )?;
                    if reads {
                        runner.keep_gathered(g)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn run_forward(
        &self,
        input: &M::Input,
        options: &ForwardOptions,
        hooks: &mut dyn HookErrors,
    ) -> Result<M::Output> {
        let result = self.model.forward_hooked(input, options, hooks.as_hooks());
        finish(result, hooks)
    }

    fn run_generate(
        &self,
        input: &M::Input,
        config: &M::GenerateConfig,
        hooks: &mut dyn HookErrors,
    ) -> Result<M::Generated> {
        let result = self.model.generate_hooked(input, config, hooks.as_hooks());
        finish(result, hooks)
    }
}
