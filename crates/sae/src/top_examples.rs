//! The strongest activations of chosen latents over many texts: the examples a feature
//! dashboard (SAELens, Neuronpedia) shows for a latent.
//!
//! Feed it the latents of one batch of texts at a time ([`TopExamples::update`]); it keeps,
//! for each chosen latent, the `k` (text, position) pairs with the largest activation seen so
//! far. Only positive activations count: a latent that never fires has no examples.

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
        let values = self.chosen_on_host(acts)?;
        let n = self.latents.len();
        for (row, &len) in lens.iter().enumerate() {
            let text = self.texts + row;
            for position in skip.max(0)..len {
                let at = (row * width as usize + position as usize) * n;
                for (latent, &value) in values[at..at + n].iter().enumerate() {
                    if value > 0.0 {
                        self.offer(
                            latent,
                            Example {
                                text,
                                position: position as usize,
                                value,
                            },
                        );
                    }
                }
            }
            self.tokens += (len - skip.max(0)).max(0) as usize;
        }
        self.texts += lens.len();
        Ok(())
    }

    /// The chosen latents' columns of `acts`, `[B, T, n]` row-major in f32 on the host (one
    /// transfer of `n` columns, not the whole SAE width).
    fn chosen_on_host(&self, acts: &Tensor) -> Result<Vec<f32>> {
        let index = Tensor::f_from_slice(&self.latents)?.f_to_device(acts.device())?;
        let chosen = acts
            .f_index_select(-1, &index)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        Ok(Vec::<f32>::try_from(chosen.f_flatten(0, -1)?)?)
    }

    /// Keeps `example` among latent `i`'s best if it ranks there: larger values first, then
    /// earlier texts, then earlier positions.
    fn offer(&mut self, i: usize, example: Example) {
        let best = &mut self.best[i];
        let ranks_before = |e: &Example| {
            example.value > e.value
                || (example.value == e.value
                    && (example.text, example.position) < (e.text, e.position))
        };
        let at = best.iter().position(ranks_before).unwrap_or(best.len());
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
