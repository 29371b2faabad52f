//! What the intervention graph is built from and called with, and what a call returns: the
//! config entries ([`RepresentationConfig`], pyvene's representation configs), the source
//! inputs, the per-call settings ([`CallOptions`], pyvene's keyword arguments) and the output.
//! [`crate::graph`] runs them.

use tch::Tensor;

use crate::component::{Component, ResolvedComponent};
use crate::intervention::{Intervention, Subspaces};
use crate::location::{Locations, PerIntervention};

/// How source runs feed the base run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every interchange reads its own source run; all write into one base run (pyvene's
    /// default).
    #[default]
    Parallel,
    /// `source_0 → source_1 → … → base`: intervention `g` reads source `g`, which ran with
    /// intervention `g-1` active, and writes into source `g+1` (the last one into the base).
    Serial,
}

/// One entry of the config: a component and the intervention attached there.
pub struct RepresentationConfig {
    /// Where.
    pub component: Component,
    /// What.
    pub intervention: Box<dyn Intervention>,
}

impl RepresentationConfig {
    /// `intervention` at `component`.
    pub fn new(component: impl Into<Component>, intervention: impl Intervention + 'static) -> Self {
        RepresentationConfig {
            component: component.into(),
            intervention: Box::new(intervention),
        }
    }

    /// An already boxed intervention at `component`.
    pub fn boxed(component: impl Into<Component>, intervention: Box<dyn Intervention>) -> Self {
        RepresentationConfig {
            component: component.into(),
            intervention,
        }
    }
}

/// The source inputs of a call.
pub enum Sources<'a, I> {
    /// No sources (only sourceless interventions and collects can run).
    None,
    /// One source for every intervention that reads one (pyvene repeats a 1-element list). In
    /// parallel mode it runs once for all of them.
    Shared(&'a I),
    /// One source (or none) per intervention, in config order. Entries that are the same
    /// reference run once.
    Each(Vec<Option<&'a I>>),
}

impl<I> Clone for Sources<'_, I> {
    fn clone(&self) -> Self {
        match self {
            Sources::None => Sources::None,
            Sources::Shared(s) => Sources::Shared(s),
            Sources::Each(v) => Sources::Each(v.clone()),
        }
    }
}

impl<'a, I> Sources<'a, I> {
    /// The source of intervention `i`.
    pub fn get(&self, i: usize) -> Option<&'a I> {
        match self {
            Sources::None => None,
            Sources::Shared(s) => Some(*s),
            Sources::Each(v) => v.get(i).copied().flatten(),
        }
    }
}

/// The per-call settings (pyvene's keyword arguments of `forward` and `generate`).
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Where each intervention acts. Default: the whole tensor of every call.
    pub unit_locations: PerIntervention<Locations>,
    /// Subspaces per intervention (dims for the built-ins, latents for SAE interventions).
    pub subspaces: PerIntervention<Option<Subspaces>>,
    /// Also run the base once with no hooks and return it as `original`.
    pub output_original_output: bool,
    /// Generation only: whether the prompt call is intervened (pyvene's `intervene_on_prompt`,
    /// default false). See [`IntervenableModel::generate`] for the four gating cases.
    ///
    /// [`IntervenableModel::generate`]: crate::IntervenableModel::generate
    pub intervene_on_prompt: bool,
    /// Forward only: when every intervention is a collect, stop the base run after the deepest
    /// hooked layer. The model's output then carries no logits.
    pub collect_only_stop_early: bool,
    /// Forward only: the original and intervened runs compute logits for the last position
    /// only (`[B, 1, vocab]`, transformers' `logits_to_keep=1`), and the model may run its
    /// final layer for that position alone when nothing is hooked inside it (see
    /// [`ForwardOptions::last_position_logits`]): within float rounding of the last row of
    /// full logits, not bit-equal. Source runs are unaffected.
    ///
    /// [`ForwardOptions::last_position_logits`]: crate::ForwardOptions::last_position_logits
    pub last_position_logits: bool,
}

impl CallOptions {
    /// Defaults: whole tensor, no subspaces, no original run.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// The same locations for every intervention.
    pub fn locations(mut self, locations: Locations) -> Self {
        self.unit_locations = PerIntervention::All(locations);
        self
    }

    /// One [`Locations`] per intervention, in config order.
    pub fn locations_each(mut self, locations: Vec<Locations>) -> Self {
        self.unit_locations = PerIntervention::Each(locations);
        self
    }

    /// The same subspaces for every intervention.
    pub fn subspaces(mut self, subspaces: Subspaces) -> Self {
        self.subspaces = PerIntervention::All(Some(subspaces));
        self
    }

    /// Subspaces per intervention, in config order.
    pub fn subspaces_each(mut self, subspaces: Vec<Option<Subspaces>>) -> Self {
        self.subspaces = PerIntervention::Each(subspaces);
        self
    }

    /// Also return the clean run.
    pub fn output_original_output(mut self, yes: bool) -> Self {
        self.output_original_output = yes;
        self
    }

    /// Generation: intervene on the prompt call.
    pub fn intervene_on_prompt(mut self, yes: bool) -> Self {
        self.intervene_on_prompt = yes;
        self
    }

    /// Forward: logits for the last position only.
    pub fn last_position_logits(mut self, yes: bool) -> Self {
        self.last_position_logits = yes;
        self
    }

    /// Forward: stop early when only collects are attached.
    pub fn collect_only_stop_early(mut self, yes: bool) -> Self {
        self.collect_only_stop_early = yes;
        self
    }
}

/// What a call returns (pyvene's `IntervenableModelOutput`).
#[derive(Debug)]
pub struct IntervenableOutput<O> {
    /// The clean run, when `output_original_output` was set.
    pub original: Option<O>,
    /// The intervened run.
    pub intervened: O,
    /// Collected activations as pyvene lists them: for each collect intervention in config
    /// order, one tensor per hook call, in call order.
    pub collected: Vec<Tensor>,
    /// For each entry of `collected`, the index of the intervention that produced it.
    pub collected_from: Vec<usize>,
    /// For each intervention in config order, the source slice it read (`[batch, k, width]`,
    /// gathered at its source locations), `None` for one without a source. Not in pyvene's
    /// output; it saves a second source run to inspect what was swapped in.
    pub source_slices: Vec<Option<Tensor>>,
}

impl<O> IntervenableOutput<O> {
    /// The activations collected by intervention `i`, in call order.
    pub fn collected_for(&self, i: usize) -> Vec<&Tensor> {
        self.collected
            .iter()
            .zip(&self.collected_from)
            .filter(|(_, &j)| j == i)
            .map(|(t, _)| t)
            .collect()
    }
}

/// One attached intervention and where it acts.
pub(crate) struct Entry {
    pub(crate) component: Component,
    pub(crate) resolved: ResolvedComponent,
    pub(crate) key: String,
    pub(crate) intervention: Box<dyn Intervention>,
}
