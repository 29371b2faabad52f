//! The intervention trait: what runs on a selected slice of activations.

use tch::Tensor;

use crate::error::Error;

/// Latent or dimension indices an intervention acts on, for each batch row.
///
/// pyvene 0.1.8 applies the union of all rows' indices to every row when rows differ; this
/// crate applies each row's own list to that row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subspaces {
    /// The same indices for every row.
    Shared(Vec<i64>),
    /// One list per batch row.
    PerRow(Vec<Vec<i64>>),
}

impl Subspaces {
    /// The indices for batch row `row`.
    pub fn for_row(&self, row: usize) -> Option<&[i64]> {
        match self {
            Subspaces::Shared(v) => Some(v),
            Subspaces::PerRow(rows) => rows.get(row).map(Vec::as_slice),
        }
    }
}

/// How the graph treats an intervention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterventionRole {
    /// Writes its result back into the model; needs no source run (add, zero, constant source).
    Sourceless,
    /// Writes its result back and needs a source run (interchange); calling it without sources
    /// is an error (pyvene silently does nothing).
    NeedsSource,
    /// Returns a value that is collected; the model is never changed.
    Collect,
}

/// One intervention. It receives the selected base slice `[batch, k, width]` (k = positions
/// selected, or the whole chunk when unit locations are `None`), the matching source slice when
/// it has one, and the subspaces, and returns the new slice (or, for collect, the value to keep).
///
/// Results are cast back to the activation's dtype by the graph when they are written back, so an
/// intervention may compute in f32 for a bf16 model (as pyvene's SAE interventions do).
pub trait Intervention: Send {
    /// A short name for messages and keys.
    fn name(&self) -> String;

    /// How the graph treats it.
    fn role(&self) -> InterventionRole;

    /// Apply to one hook call's selected slice.
    fn apply(
        &self,
        base: &Tensor,
        source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> Result<Tensor, Error>;

    /// `source`, which an intervention that needs a source run cannot do without, or
    /// [`Error::MissingSource`] naming it.
    fn required_source<'a>(&self, source: Option<&'a Tensor>) -> Result<&'a Tensor, Error> {
        source.ok_or_else(|| Error::MissingSource {
            intervention: self.name(),
        })
    }

    /// Whether, from its second call on with slices of one shape, `apply` enqueues the same
    /// device work on the same tensors every time: no state that changes between calls, no
    /// reading device values on the host, no new host data copied to the device (what the
    /// first call copies, it keeps). A model may then record one generation step with it and
    /// replay that record for the next steps (a CUDA graph). False unless the intervention
    /// says so; a collect must say false (a replay collects nothing).
    fn replayable(&self) -> bool {
        false
    }
}
