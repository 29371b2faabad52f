//! The hooks of one engine call: each row's own edits and readouts, by row.

use intervene::{Hooks, Site};
use tch::Tensor;

use crate::request::{Reading, Readout};

/// What one row of a call brings: its edits (vectors already on the model's device) and
/// readouts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RowInterventions<'a> {
    pub edits: &'a [(Site, Tensor)],
    pub readouts: &'a [Box<dyn Readout>],
}

/// Visits the sites any row wants. Each row's edits touch that row alone, elementwise, so a
/// row's values do not depend on the rows around it; a row without an edit at a site is left
/// untouched (not even `+ 0`).
pub(crate) struct RowHooks<'a> {
    rows: Vec<RowInterventions<'a>>,
    /// What the readouts read at the last position of each call: `reads[row][readout]`, one
    /// value per call.
    pub reads: Vec<Vec<Vec<Reading>>>,
}

impl<'a> RowHooks<'a> {
    pub(crate) fn new(rows: Vec<RowInterventions<'a>>) -> Self {
        let reads = rows
            .iter()
            .map(|r| r.readouts.iter().map(|_| Vec::new()).collect())
            .collect();
        RowHooks { rows, reads }
    }

    fn edit(&self, site: Site, activation: &mut Tensor) -> Result<(), intervene::Error> {
        for (row, interventions) in self.rows.iter().enumerate() {
            for (_, vector) in interventions.edits.iter().filter(|(s, _)| *s == site) {
                add_in_its_dtype(&mut activation.f_narrow(0, row as i64, 1)?, vector)?;
            }
        }
        Ok(())
    }

    fn read(&mut self, site: Site, activation: &Tensor) -> Result<(), intervene::Error> {
        let len = activation.size().get(1).copied().unwrap_or(1);
        for (row, interventions) in self.rows.iter().enumerate() {
            for (i, readout) in interventions.readouts.iter().enumerate() {
                if readout.site() != site {
                    continue;
                }
                let last = activation.f_select(0, row as i64)?.f_select(0, len - 1)?;
                let value = readout.read(&last).map_err(|why| {
                    intervene::Error::Invalid(format!("readout at {site}: {why}"))
                })?;
                self.reads[row][i].push(value);
            }
        }
        Ok(())
    }
}

/// `activation += vector` (broadcast), computed in the vector's dtype and rounded once on the
/// way back when the two differ, as pyvene writes an intervention's result into the model (a
/// float32 SAE direction on a bfloat16 model adds in float32).
pub(crate) fn add_in_its_dtype(activation: &mut Tensor, vector: &Tensor) -> tch::Result<()> {
    if activation.kind() == vector.kind() {
        let _ = activation.f_add_(vector)?;
    } else {
        let sum = activation.f_to_kind(vector.kind())?.f_add(vector)?;
        activation.f_copy_(&sum)?;
    }
    Ok(())
}

impl Hooks for RowHooks<'_> {
    fn wants(&self, site: Site) -> bool {
        self.rows.iter().any(|row| {
            row.edits.iter().any(|(s, _)| *s == site)
                || row.readouts.iter().any(|r| r.site() == site)
        })
    }

    fn visit(&mut self, site: Site, activation: &mut Tensor) -> Result<(), intervene::Error> {
        self.edit(site, activation)?;
        self.read(site, activation)
    }
}
