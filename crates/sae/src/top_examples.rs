//! The strongest activations of chosen latents over many texts: the examples a feature
//! dashboard (SAELens, Neuronpedia) shows for a latent.
//!
//! Feed it the latents of one batch of texts at a time ([`TopExamples::update`]); it keeps,
//! for each chosen latent, the `k` (text, position) pairs with the largest activation seen so
//! far. Only positive activations count: a latent that never fires has no examples.

use std::cmp::Ordering;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// One place where a latent fired.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Example {
    /// The text's index, in the order the texts were fed.
    pub text: usize,
    /// The token position in that text.
    pub position: usize,
    /// The latent's activation there.
    pub value: f32,
}

impl Example {
    /// The order of examples: the larger value first; among equal values, the earlier text,
    /// then the earlier position.
    pub fn rank_order(&self, other: &Example) -> Ordering {
        other
            .value
            .total_cmp(&self.value)
            .then((self.text, self.position).cmp(&(other.text, other.position)))
    }
}

/// For each column of `acts` (`[N, n]`: `N` tokens in (text, position) order, `n` latents),
/// the rows `(row, value)` that can be among its `k` strongest positive values.
///
/// `topk` finds `k` candidates a column; when more rows tie with its `k`-th value, every row
/// at or above that value is returned, so that ranking the candidates by
/// [`Example::rank_order`] gives ties to the earlier rows exactly as one sort of all `N` would.
/// One transfer of `k × n` values to the host, whatever `N`.
pub fn strongest_rows(acts: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let [n_rows, n] = acts.size()[..] else {
        return Err(Error::input(
            "top examples",
            format!("expected [tokens, latents], got {:?}", acts.size()),
        ));
    };
    // Latent-major, so that topk and the tie count run along contiguous rows.
    let by_latent = acts
        .f_to_kind(Kind::Float)?
        .f_transpose(0, 1)?
        .f_contiguous()?;
    let kk = (k as i64).min(n_rows);
    if kk == 0 {
        return Ok(vec![Vec::new(); n as usize]);
    }
    let (values, rows) = by_latent.f_topk(kk, 1, true, true)?;
    let kth = values.f_narrow(1, kk - 1, 1)?;
    let tied = host::<i64>(by_latent.f_ge_tensor(&kth)?.f_sum_dim_intlist(
        1,
        false,
        Kind::Int64,
    )?)?;
    let (values, rows) = (
        host::<f32>(values.f_flatten(0, -1)?)?,
        host::<i64>(rows.f_flatten(0, -1)?)?,
    );
    let (n, kk) = (n as usize, kk as usize);
    (0..n)
        .map(|column| {
            let kth = values[column * kk + kk - 1];
            let candidates: Vec<(usize, f32)> = if kth > 0.0 && tied[column] > kk as i64 {
                let values = by_latent.f_select(0, column as i64)?;
                let at = values.f_ge(f64::from(kth))?.f_nonzero()?.f_flatten(0, -1)?;
                let chosen = host::<f32>(values.f_index_select(0, &at)?)?;
                host::<i64>(at)?
                    .into_iter()
                    .map(|r| r as usize)
                    .zip(chosen)
                    .collect()
            } else {
                let at = column * kk..(column + 1) * kk;
                rows[at.clone()]
                    .iter()
                    .map(|&r| r as usize)
                    .zip(values[at].iter().copied())
                    .collect()
            };
            Ok(candidates.into_iter().filter(|&(_, v)| v > 0.0).collect())
        })
        .collect()
}

/// A 1-D tensor's values, from any device.
fn host<T: tch::kind::Element + Copy>(t: Tensor) -> Result<Vec<T>> {
    Ok(Vec::<T>::try_from(
        t.f_to_device(Device::Cpu)?.f_contiguous()?,
    )?)
}

/// The `k` strongest examples of each of some latents.
#[derive(Clone, Debug)]
pub struct TopExamples {
    latents: Vec<i64>,
    k: usize,
    /// Per latent, best first.
    best: Vec<Vec<Example>>,
    texts: usize,
    tokens: usize,
}

impl TopExamples {
    /// Tracks `latents` (indices into the SAE's latents), keeping `k` examples of each.
    pub fn new(latents: &[i64], k: usize) -> Self {
        TopExamples {
            latents: latents.to_vec(),
            k,
            best: vec![Vec::new(); latents.len()],
            texts: 0,
            tokens: 0,
        }
    }

    /// Takes in the latents `acts` (`[B, T, d_sae]`) of the next `B` texts, of which row `b`
    /// has `lens[b]` real positions (the rest is padding). Positions before `skip` (1 skips
    /// `<bos>`) are not examples.
    pub fn update(&mut self, acts: &Tensor, lens: &[i64], skip: i64) -> Result<()> {
        let [rows, width, d_sae] = acts.size()[..] else {
            return Err(Error::input(
                "top examples",
                format!(
                    "latents must be [batch, positions, d_sae], got {:?}",
                    acts.size()
                ),
            ));
        };
        if lens.len() as i64 != rows || lens.iter().any(|&len| !(0..=width).contains(&len)) {
            return Err(Error::input(
                "top examples",
                format!(
                    "{} lengths for {rows} rows of {width} positions: {lens:?}",
                    lens.len()
                ),
            ));
        }
        if let Some(&latent) = self.latents.iter().find(|&&l| !(0..d_sae).contains(&l)) {
            return Err(Error::LatentOutOfRange { latent, d_sae });
        }
        let skip = skip.max(0);
        let mut at: Vec<(usize, usize)> = Vec::new();
        let mut flat: Vec<i64> = Vec::new();
        for (row, &len) in lens.iter().enumerate() {
            for position in skip..len {
                at.push((self.texts + row, position as usize));
                flat.push(row as i64 * width + position);
            }
            self.tokens += (len - skip).max(0) as usize;
        }
        self.texts += lens.len();
        if flat.is_empty() {
            return Ok(());
        }
        let device = acts.device();
        let rows = Tensor::f_from_slice(&flat)?.f_to_device(device)?;
        let columns = Tensor::f_from_slice(&self.latents)?.f_to_device(device)?;
        let chosen = acts
            .f_flatten(0, 1)?
            .f_index_select(0, &rows)?
            .f_index_select(1, &columns)?;
        for (i, candidates) in strongest_rows(&chosen, self.k)?.into_iter().enumerate() {
            for (row, value) in candidates {
                let (text, position) = at[row];
                self.offer(
                    i,
                    Example {
                        text,
                        position,
                        value,
                    },
                );
            }
        }
        Ok(())
    }

    /// Keeps `example` among latent `i`'s best if it ranks there ([`Example::rank_order`]).
    fn offer(&mut self, i: usize, example: Example) {
        let best = &mut self.best[i];
        let at = best.partition_point(|e| e.rank_order(&example) == Ordering::Less);
        if at < self.k {
            best.insert(at, example);
            best.truncate(self.k);
        }
    }

    /// The latents tracked, in the order given.
    pub fn latents(&self) -> &[i64] {
        &self.latents
    }

    /// Latent `latents()[i]`'s examples, best first (at most `k`; fewer if it fired less).
    pub fn examples(&self, i: usize) -> &[Example] {
        self.best.get(i).map_or(&[], Vec::as_slice)
    }

    /// How many texts were fed.
    pub fn texts(&self) -> usize {
        self.texts
    }

    /// How many positions were considered (without padding and skipped positions).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Brute force: every (text, position) of every row, sorted by the same order.
    fn brute(rows: &[Vec<Vec<f32>>], latent: usize, skip: usize, k: usize) -> Vec<Example> {
        let mut all: Vec<Example> = rows
            .iter()
            .enumerate()
            .flat_map(|(text, row)| {
                row.iter()
                    .enumerate()
                    .skip(skip)
                    .map(move |(position, acts)| Example {
                        text,
                        position,
                        value: acts[latent],
                    })
            })
            .filter(|e| e.value > 0.0)
            .collect();
        all.sort_by(|a, b| {
            b.value
                .total_cmp(&a.value)
                .then((a.text, a.position).cmp(&(b.text, b.position)))
        });
        all.truncate(k);
        all
    }

    #[test]
    fn batches_of_padded_rows_give_the_brute_force_top_k() {
        // 7 texts of 1..=6 positions, 5 latents, values with ties (rounded to halves).
        let d_sae = 5;
        let rows: Vec<Vec<Vec<f32>>> = (0..7)
            .map(|text| {
                (0..1 + text % 6)
                    .map(|pos| {
                        (0..d_sae)
                            .map(|l| (((text * 7 + pos * 3 + l * 5) % 11) as f32 - 4.0) / 2.0)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let latents = [4i64, 0, 2];
        for (batch, skip, k) in [(3, 1, 4), (2, 0, 3), (7, 1, 100), (1, 2, 1)] {
            let mut top = TopExamples::new(&latents, k);
            for chunk in rows.chunks(batch) {
                let width = chunk.iter().map(Vec::len).max().unwrap();
                // Padding holds large values that must never be picked.
                let mut flat = Vec::new();
                for row in chunk {
                    for pos in 0..width {
                        match row.get(pos) {
                            Some(acts) => flat.extend(acts),
                            None => flat.extend(std::iter::repeat_n(99.0f32, d_sae)),
                        }
                    }
                }
                let acts = Tensor::from_slice(&flat).reshape([
                    chunk.len() as i64,
                    width as i64,
                    d_sae as i64,
                ]);
                let lens: Vec<i64> = chunk.iter().map(|r| r.len() as i64).collect();
                top.update(&acts, &lens, skip as i64).unwrap();
            }
            for (i, &latent) in latents.iter().enumerate() {
                let want = brute(&rows, latent as usize, skip, k);
                assert_eq!(
                    top.examples(i),
                    want.as_slice(),
                    "batch {batch}, skip {skip}, latent {latent}"
                );
            }
            assert_eq!(top.texts(), 7);
            let tokens: usize = rows.iter().map(|r| r.len().saturating_sub(skip)).sum();
            assert_eq!(top.tokens(), tokens);
        }
    }

    #[test]
    fn bad_shapes_and_latents_are_refused() {
        let acts = Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu));
        let mut top = TopExamples::new(&[1], 2);
        assert!(
            top.update(&acts, &[3], 0).is_err(),
            "one length for two rows"
        );
        assert!(
            top.update(&acts, &[3, 4], 0).is_err(),
            "a length past the padding"
        );
        assert!(
            top.update(&acts.reshape([6, 4]), &[3, 3], 0).is_err(),
            "no batch axis"
        );
        let mut wide = TopExamples::new(&[4], 2);
        let err = wide.update(&acts, &[3, 3], 0).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LatentOutOfRange {
                    latent: 4,
                    d_sae: 4
                }
            ),
            "{err}"
        );
        // Nothing fires: no examples.
        top.update(&acts, &[3, 2], 1).unwrap();
        assert!(top.examples(0).is_empty());
        assert_eq!(top.tokens(), 3);
    }
}
