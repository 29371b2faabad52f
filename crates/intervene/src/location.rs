//! Unit locations: which positions (and heads) of the hooked tensor an intervention sees.
//!
//! pyvene takes `unit_locations` as loosely typed nested lists whose meaning depends on their
//! shape (`{"base": [0, 3]}` is read as a *pair*, source 0 → base 3). This crate takes typed
//! constructors instead, so every form says what it is:
//!
//! | pyvene | here |
//! |---|---|
//! | `unit_locations=None` | [`Locations::all`] |
//! | `{"base": p}` / `{"base": [p, q, r]}` | [`Locations::base`] (any length, 2 included) |
//! | `{"base": [[[0,3],[1,2]]]}` (per row) | [`Locations::base_per_row`] |
//! | `{"sources->base": p}` / `[p, q, r]` | [`Locations::same`] (source and base at the same positions) |
//! | `{"sources->base": (s, b)}` | [`Locations::pair`] |
//! | `{"sources->base": ([[[s1,s2]]], [[[b1,b2]]])}` | [`Locations::pairs`] / [`Locations::pairs_per_row`] |
//!
//! Positions are indices along dim 1 of the tensor the hook sees: BOS and left padding count,
//! and in generation a decode call sees only its chunk. They may be negative: `-1` is the last
//! position of that tensor (our addition). A position outside the tensor is [`Error::PositionOutOfRange`](crate::Error).
//! Every batch row must select the same number of positions.

use crate::error::{Error, Result};

/// Positions for each batch row: the same list for every row, or one list per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowPositions {
    /// The same positions for every row.
    Shared(Vec<i64>),
    /// One list per batch row; all lists have the same length.
    PerRow(Vec<Vec<i64>>),
}

impl RowPositions {
    /// Number of positions selected per row.
    pub fn len(&self) -> usize {
        match self {
            RowPositions::Shared(v) => v.len(),
            RowPositions::PerRow(rows) => rows.first().map_or(0, Vec::len),
        }
    }

    /// Whether no position is selected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Check the shape once: rows are not ragged and, for per-row lists, `batch` rows are given.
    pub(crate) fn check(&self, batch: Option<i64>, what: &str) -> Result<()> {
        if let RowPositions::PerRow(rows) = self {
            let k = rows.first().map_or(0, Vec::len);
            if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != k) {
                return Err(Error::Invalid(format!(
                    "{what}: every batch row must select the same number of positions; row 0 \
                     selects {k}, row {i} selects {}",
                    r.len()
                )));
            }
            if let Some(b) = batch {
                if rows.len() as i64 != b {
                    return Err(Error::Invalid(format!(
                        "{what}: {} rows of positions for a batch of {b}",
                        rows.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Absolute positions `[batch * k]` (row-major) for a tensor of length `len`, negative
    /// positions counted from the end. `Err((position, len))` for the first one out of range.
    pub(crate) fn resolve(&self, batch: i64, len: i64) -> Result<Vec<i64>, i64> {
        let fix = |p: i64| -> Result<i64, i64> {
            let a = if p < 0 { p + len } else { p };
            if (0..len).contains(&a) {
                Ok(a)
            } else {
                Err(p)
            }
        };
        match self {
            RowPositions::Shared(v) => {
                let row: Vec<i64> = v.iter().map(|&p| fix(p)).collect::<Result<_, _>>()?;
                let mut out = Vec::with_capacity(row.len() * batch.max(0) as usize);
                for _ in 0..batch {
                    out.extend_from_slice(&row);
                }
                Ok(out)
            }
            RowPositions::PerRow(rows) => rows.iter().flatten().map(|&p| fix(p)).collect(),
        }
    }
}

impl From<Vec<i64>> for RowPositions {
    fn from(v: Vec<i64>) -> Self {
        RowPositions::Shared(v)
    }
}

impl From<Vec<Vec<i64>>> for RowPositions {
    fn from(v: Vec<Vec<i64>>) -> Self {
        RowPositions::PerRow(v)
    }
}

/// Where one intervention acts, in the base (and, for interchanges, where it reads the source).
///
/// `base: None` is the whole tensor of every call (pyvene's `unit_locations=None`). `source:
/// None` reads the whole source tensor, which then must have the base slice's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locations {
    /// Positions in the base run (or, in generation, in the current chunk).
    pub base: Option<RowPositions>,
    /// Positions in the source run; the k-th source position feeds the k-th base position.
    pub source: Option<RowPositions>,
    /// For `head_*` components: which heads, per row (`None`: all heads).
    pub heads: Option<RowPositions>,
}

impl Locations {
    /// The whole tensor of every hook call (pyvene's `unit_locations=None`).
    pub fn all() -> Self {
        Locations::default()
    }

    /// The same base positions in every batch row; any number of positions, two included
    /// (pyvene's `{"base": [a, b]}` would read two positions as a source→base pair).
    pub fn base(positions: impl Into<Vec<i64>>) -> Self {
        Locations {
            base: Some(RowPositions::Shared(positions.into())),
            ..Locations::default()
        }
    }

    /// Base positions per batch row (every row selects the same number).
    pub fn base_per_row(rows: Vec<Vec<i64>>) -> Self {
        Locations {
            base: Some(RowPositions::PerRow(rows)),
            ..Locations::default()
        }
    }

    /// Source and base at the same positions, in every row (`{"sources->base": [p, q]}`).
    pub fn same(positions: impl Into<Vec<i64>>) -> Self {
        let p = RowPositions::Shared(positions.into());
        Locations {
            base: Some(p.clone()),
            source: Some(p),
            heads: None,
        }
    }

    /// One source position into one base position, in every row (`{"sources->base": (s, b)}`).
    pub fn pair(source: i64, base: i64) -> Self {
        Locations::pairs(vec![source], vec![base])
    }

    /// The k-th source position into the k-th base position, in every row.
    pub fn pairs(source: impl Into<Vec<i64>>, base: impl Into<Vec<i64>>) -> Self {
        Locations {
            base: Some(RowPositions::Shared(base.into())),
            source: Some(RowPositions::Shared(source.into())),
            heads: None,
        }
    }

    /// Per-row pairs: `source[b][k]` of row `b` into `base[b][k]`.
    pub fn pairs_per_row(source: Vec<Vec<i64>>, base: Vec<Vec<i64>>) -> Self {
        Locations {
            base: Some(RowPositions::PerRow(base)),
            source: Some(RowPositions::PerRow(source)),
            heads: None,
        }
    }

    /// Select these heads (in every row) of a `head_*` component.
    pub fn with_heads(mut self, heads: impl Into<Vec<i64>>) -> Self {
        self.heads = Some(RowPositions::Shared(heads.into()));
        self
    }

    /// Select heads per row of a `head_*` component.
    pub fn with_heads_per_row(mut self, heads: Vec<Vec<i64>>) -> Self {
        self.heads = Some(RowPositions::PerRow(heads));
        self
    }

    /// Whether this is the whole-tensor form (no base positions).
    pub fn is_all(&self) -> bool {
        self.base.is_none()
    }

    pub(crate) fn check(&self) -> Result<()> {
        if let Some(b) = &self.base {
            b.check(None, "base positions")?;
        }
        if let Some(s) = &self.source {
            s.check(None, "source positions")?;
        }
        if let Some(h) = &self.heads {
            h.check(None, "heads")?;
        }
        if let (Some(b), Some(s)) = (&self.base, &self.source) {
            if b.len() != s.len() {
                return Err(Error::Invalid(format!(
                    "{} source positions for {} base positions: pairs need one source position \
                     per base position",
                    s.len(),
                    b.len()
                )));
            }
        }
        Ok(())
    }
}

/// A per-call setting for every intervention at once, or one per intervention in config order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerIntervention<T> {
    /// The same value for every intervention (pyvene copies the simple forms to all).
    All(T),
    /// One value per intervention, in config order.
    Each(Vec<T>),
}

impl<T: Default> Default for PerIntervention<T> {
    fn default() -> Self {
        PerIntervention::All(T::default())
    }
}

impl<T> PerIntervention<T> {
    /// The value for intervention `i`.
    pub fn get(&self, i: usize) -> Option<&T> {
        match self {
            PerIntervention::All(v) => Some(v),
            PerIntervention::Each(v) => v.get(i),
        }
    }

    pub(crate) fn check_len(&self, n: usize, what: &str) -> Result<()> {
        match self {
            PerIntervention::Each(v) if v.len() != n => Err(Error::Invalid(format!(
                "{} {what} given for {n} interventions",
                v.len()
            ))),
            _ => Ok(()),
        }
    }
}
