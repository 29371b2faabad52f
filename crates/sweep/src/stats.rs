//! One SAE's running statistics over a corpus, taken in a batch at a time and merged across
//! shards.
//!
//! Over the `N` counted tokens (every real token but `<bos>`, unless it is included), with `a`
//! the SAE's latents, `x̂` its reconstruction and `y` what it reconstructs (its input; a
//! transcoder's write site):
//!
//! | statistic | formula | kept as |
//! |---|---|---|
//! | `count_i` | `#{t : a_t,i > 0}` | i64 |
//! | `density_i` | `count_i / N` | from the count |
//! | `max_i` | `max_t a_t,i` (0 when it never fires) | f32 |
//! | `mean_i` | `Σ_t a_t,i / count_i` over the tokens where it fires | f64 sum |
//! | histogram | `count` of `a_t,i > 0` per bin: bin `0` is `(0, 10⁻²)`, bin `j` in `1..=60` is `[10^(−2+(j−1)/10), 10^(−2+j/10))`, bin `61` is `[10⁴, ∞)`; the bin is `clamp(⌊(log10 a + 2)·10⌋ + 1, 0, 61)` in f32 | i64 |
//! | top examples | the `k` largest `a_t,i > 0`; ties go to the lower (doc, position) | values f32 |
//! | mean L0 | `Σ_t #{i : a_t,i > 0} / N` | f64 |
//! | MSE | `Σ‖y − x̂‖² / (N·d)` | f64 |
//! | explained variance | `1 − Σ‖y − x̂‖² / (Σ‖y‖² − ‖Σy‖²/N)` (SAELens ≥ 6.45.1) | f64 sums |
//! | tutorial explained variance | `1 − MSE / var(y)`, `var` unbiased over all `N·d` elements | f64 sums |
//! | ΔCE, KL | as `scope eval` ([`sae::splice_metrics`]), weighted by positions | f64 sums |
//!
//! Every sum is taken in f64 and every count is exact, so two shards merged differ from one
//! run only by the order of float additions; maxima, counts and top examples are identical.

use std::cmp::Ordering;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// A 1-D tensor's values, from any device.
fn host<T: tch::kind::Element + Copy>(t: Tensor) -> Result<Vec<T>> {
    Ok(Vec::<T>::try_from(
        t.f_to_device(tch::Device::Cpu)?.f_contiguous()?,
    )?)
}

/// Bins of the activation histogram (see the module docs).
pub const HISTOGRAM_BINS: usize = 62;

/// The histogram's inner edges: `10^(−2 + j/10)` for `j` in `0..=60`; bin `b` lies between
/// edges `b − 1` and `b` (bin 0 starts at 0, bin 61 is open-ended).
pub fn histogram_edges() -> Vec<f64> {
    (0..HISTOGRAM_BINS - 1)
        .map(|j| 10f64.powf(-2.0 + j as f64 / 10.0))
        .collect()
}

/// One place where a latent fired, with the tokens around it.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The activation.
    pub value: f32,
    /// The document's index in corpus order.
    pub doc: usize,
    /// The token's position, `<bos>` being 0.
    pub position: usize,
    /// The token.
    pub token_id: i64,
    /// The position of `context[0]`.
    pub context_start: usize,
    /// The tokens around it (see [`Context`]).
    pub context: Vec<i64>,
}

impl Example {
    /// Strongest first; among equal values, the lower (doc, position) first
    /// ([`sae::Example::rank_order`]).
    pub fn rank_order(&self, other: &Example) -> Ordering {
        self.key().rank_order(&other.key())
    }

    fn key(&self) -> sae::Example {
        sae::Example {
            text: self.doc,
            position: self.position,
            value: self.value,
        }
    }
}

/// How many tokens an example keeps before and after the one that fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Context {
    /// Tokens before.
    pub before: usize,
    /// Tokens after.
    pub after: usize,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            before: 12,
            after: 4,
        }
    }
}

impl Context {
    /// The window `(start, tokens)` around `position` of `ids`.
    pub fn around(self, ids: &[i64], position: usize) -> (usize, Vec<i64>) {
        let start = position.saturating_sub(self.before);
        let end = (position + self.after + 1).min(ids.len());
        (start, ids.get(start..end).unwrap_or_default().to_vec())
    }
}

/// The documents of one batch: row `b` of the batch is document `index` with tokens `ids`.
#[derive(Clone, Debug)]
pub struct BatchDoc {
    /// Its index in corpus order.
    pub index: usize,
    /// Its tokens, `<bos>` first.
    pub ids: Vec<i64>,
}

/// The counted tokens of a batch, as the rows of the tensors [`SaeStats::update`] takes.
#[derive(Clone, Debug, Default)]
pub struct Counted {
    /// Per row: (batch row, position).
    pub at: Vec<(usize, usize)>,
}

/// Sums for the reconstruction metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reconstruction {
    /// `N`.
    pub tokens: u64,
    /// `Σ_t #{i : a_t,i > 0}`.
    pub l0: f64,
    /// `Σ‖y − x̂‖²`.
    pub squared_error: f64,
    /// `Σ_t y_t`, per dimension.
    pub target_sum: Vec<f64>,
    /// `Σ‖y‖²`.
    pub target_squared: f64,
}

/// Sums for the downstream metrics (`--downstream`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Downstream {
    /// Σ of the clean next-token cross-entropy.
    pub ce_clean: f64,
    /// Σ of the cross-entropy with the reconstruction spliced in.
    pub ce_spliced: f64,
    /// Positions the cross-entropies count.
    pub ce_positions: u64,
    /// Σ `KL(clean ‖ spliced)`.
    pub kl: f64,
    /// Positions the KL counts.
    pub kl_positions: u64,
}

/// The metrics of a sweep's `summary.json`. Over no tokens (a shard that got no document)
/// the means are NaN, written as `null`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Mean L0 (latents `> 0`).
    #[serde(deserialize_with = "number_or_nan")]
    pub mean_l0: f64,
    /// Mean squared error per element.
    #[serde(deserialize_with = "number_or_nan")]
    pub mse: f64,
    /// `1 − Σ‖y − x̂‖² / Σ‖y − μ‖²`, SAELens' since 6.45.1.
    #[serde(deserialize_with = "number_or_nan")]
    pub explained_variance: f64,
    /// `1 − MSE / var(y)`, the Gemma Scope tutorial's.
    #[serde(deserialize_with = "number_or_nan")]
    pub explained_variance_tutorial: f64,
    /// `CE(spliced) − CE(clean)`, with `--downstream`.
    pub delta_ce: Option<f64>,
    /// Clean CE, with `--downstream`.
    pub ce_clean: Option<f64>,
    /// Spliced CE, with `--downstream`.
    pub ce_spliced: Option<f64>,
    /// Mean `KL(clean ‖ spliced)`, with `--downstream`.
    pub kl: Option<f64>,
}

/// A number, or NaN where JSON has `null` (JSON has no NaN; serde_json writes it as `null`).
fn number_or_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let number: Option<f64> = serde::Deserialize::deserialize(deserializer)?;
    Ok(number.unwrap_or(f64::NAN))
}

/// One SAE's statistics so far.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeStats {
    /// Per latent: tokens where it fired.
    pub count: Vec<i64>,
    /// Per latent: Σ of its activations.
    pub sum: Vec<f64>,
    /// Per latent: its largest activation.
    pub max: Vec<f32>,
    /// `[d_sae, HISTOGRAM_BINS]`, row-major.
    pub histogram: Vec<i64>,
    /// Per latent: its best examples, best first.
    pub top: Vec<Vec<Example>>,
    /// Reconstruction sums.
    pub reconstruction: Reconstruction,
    /// Downstream sums, when they are taken.
    pub downstream: Option<Downstream>,
    top_k: usize,
    context: Context,
}

impl SaeStats {
    /// Empty statistics of `d_sae` latents reconstructing `d_out` dimensions.
    pub fn new(
        d_sae: usize,
        d_out: usize,
        top_k: usize,
        context: Context,
        downstream: bool,
    ) -> Self {
        SaeStats {
            count: vec![0; d_sae],
            sum: vec![0.0; d_sae],
            max: vec![0.0; d_sae],
            histogram: vec![0; d_sae * HISTOGRAM_BINS],
            top: vec![Vec::new(); d_sae],
            reconstruction: Reconstruction {
                target_sum: vec![0.0; d_out],
                ..Reconstruction::default()
            },
            downstream: downstream.then(Downstream::default),
            top_k,
            context,
        }
    }

    /// The number of latents.
    pub fn d_sae(&self) -> usize {
        self.count.len()
    }

    /// Examples kept per latent.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// The context kept around examples.
    pub fn context(&self) -> Context {
        self.context
    }

    /// Takes in one batch: `acts` `[N, d_sae]`, `target` and `recon` `[N, d_out]` at the `N`
    /// counted tokens `counted` of `docs`.
    pub fn update(
        &mut self,
        acts: &Tensor,
        target: &Tensor,
        recon: &Tensor,
        counted: &Counted,
        docs: &[BatchDoc],
    ) -> Result<()> {
        let acts = acts.f_to_kind(Kind::Float)?.f_contiguous()?;
        let n = acts.size().first().copied().unwrap_or(0);
        if n as usize != counted.at.len() || acts.size().get(1) != Some(&(self.d_sae() as i64)) {
            return Err(Error::Input(format!(
                "latents {:?} for {} counted tokens of {} latents",
                acts.size(),
                counted.at.len(),
                self.d_sae()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        self.update_latents(&acts)?;
        self.update_reconstruction(&acts, target, recon)?;
        self.update_top(&acts, counted, docs)
    }

    /// Counts, sums, maxima and histograms, from the `M` firing entries only (one pass over
    /// the whole batch for the mask and one for the maxima; SAEs are sparse).
    fn update_latents(&mut self, acts: &Tensor) -> Result<()> {
        let d = self.d_sae() as i64;
        let bins = HISTOGRAM_BINS as i64;
        let fired = acts.f_gt(0.0)?;
        let latent = fired.f_nonzero()?.f_select(1, 1)?;
        let values = acts.f_masked_select(&fired)?;
        let count = host::<i64>(latent.f_bincount(None::<Tensor>, d)?)?;
        let sum = Tensor::f_zeros([d], (Kind::Double, acts.device()))?.f_index_add(
            0,
            &latent,
            &values.f_to_kind(Kind::Double)?,
        )?;
        let max = host::<f32>(acts.f_amax([0].as_slice(), false)?)?;
        for (i, ((c, s), m)) in count
            .into_iter()
            .zip(host::<f64>(sum)?)
            .zip(max)
            .enumerate()
        {
            self.count[i] += c;
            self.sum[i] += s;
            self.max[i] = self.max[i].max(m);
        }
        let bin = values
            .f_log10()?
            .f_add_scalar(2.0)?
            .f_mul_scalar(10.0)?
            .f_floor()?
            .f_add_scalar(1.0)?
            .f_clamp(0.0, (bins - 1) as f64)?
            .f_to_kind(Kind::Int64)?;
        let flat = bin.f_add(&latent.f_mul_scalar(bins)?)?;
        let hist = host::<i64>(flat.f_bincount(None::<Tensor>, d * bins)?)?;
        for (h, add) in self.histogram.iter_mut().zip(hist) {
            *h += add;
        }
        self.reconstruction.l0 += values.size()[0] as f64;
        Ok(())
    }

    fn update_reconstruction(
        &mut self,
        acts: &Tensor,
        target: &Tensor,
        recon: &Tensor,
    ) -> Result<()> {
        let n = acts.size()[0];
        let target = target.f_to_kind(Kind::Double)?;
        let recon = recon.f_to_kind(Kind::Double)?;
        if target.size() != recon.size()
            || target.size() != [n, self.reconstruction.target_sum.len() as i64]
        {
            return Err(Error::Input(format!(
                "target {:?} and reconstruction {:?} for {n} tokens of width {}",
                target.size(),
                recon.size(),
                self.reconstruction.target_sum.len()
            )));
        }
        let r = &mut self.reconstruction;
        r.tokens += n as u64;
        r.squared_error += target
            .f_sub(&recon)?
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        r.target_squared += target
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        let sum = host::<f64>(target.f_sum_dim_intlist(0, false, Kind::Double)?)?;
        for (s, add) in r.target_sum.iter_mut().zip(sum) {
            *s += add;
        }
        Ok(())
    }

    /// Offers each latent's strongest tokens of the batch ([`sae::strongest_rows`]: ties at
    /// the `k`-th value included, so that they go to the lower (doc, position)).
    fn update_top(&mut self, acts: &Tensor, counted: &Counted, docs: &[BatchDoc]) -> Result<()> {
        let candidates = sae::strongest_rows(acts, self.top_k)?;
        for (latent, rows) in candidates.into_iter().enumerate() {
            for (row, value) in rows {
                // A value below the worst kept one cannot enter a full list (ties go on to
                // `offer`, which orders them by document and position).
                let full = self.top[latent].len() >= self.top_k;
                if full
                    && self.top[latent]
                        .last()
                        .is_some_and(|worst| value < worst.value)
                {
                    continue;
                }
                self.offer(latent, value, row, counted, docs)?;
            }
        }
        Ok(())
    }

    fn offer(
        &mut self,
        latent: usize,
        value: f32,
        row: usize,
        counted: &Counted,
        docs: &[BatchDoc],
    ) -> Result<()> {
        let &(b, position) = counted
            .at
            .get(row)
            .ok_or_else(|| Error::Input(format!("counted token {row} out of range")))?;
        let doc = docs
            .get(b)
            .ok_or_else(|| Error::Input(format!("batch row {b} out of range")))?;
        let best = &mut self.top[latent];
        let probe = Example {
            value,
            doc: doc.index,
            position,
            token_id: 0,
            context_start: 0,
            context: Vec::new(),
        };
        let at = best.partition_point(|e| e.rank_order(&probe) == Ordering::Less);
        if at >= self.top_k {
            return Ok(());
        }
        let (context_start, context) = self.context.around(&doc.ids, position);
        best.insert(
            at,
            Example {
                token_id: doc.ids.get(position).copied().unwrap_or(-1),
                context_start,
                context,
                ..probe
            },
        );
        best.truncate(self.top_k);
        Ok(())
    }

    /// Adds one batch's downstream means, each over its number of positions.
    pub fn add_downstream(
        &mut self,
        metrics: &sae::SpliceMetrics,
        ce_positions: u64,
        kl_positions: u64,
    ) {
        if let Some(d) = &mut self.downstream {
            d.ce_clean += metrics.ce_clean * ce_positions as f64;
            d.ce_spliced += metrics.ce_spliced * ce_positions as f64;
            d.ce_positions += ce_positions;
            d.kl += metrics.kl * kl_positions as f64;
            d.kl_positions += kl_positions;
        }
    }

    /// Adds `other`'s statistics (another shard's) to these.
    pub fn merge(&mut self, other: &SaeStats) -> Result<()> {
        if other.d_sae() != self.d_sae()
            || other.top_k != self.top_k
            || other.context != self.context
            || other.reconstruction.target_sum.len() != self.reconstruction.target_sum.len()
            || other.downstream.is_some() != self.downstream.is_some()
        {
            return Err(Error::Mismatch(
                "the statistics differ in width, top-k, context or --downstream".into(),
            ));
        }
        for i in 0..self.d_sae() {
            self.count[i] += other.count[i];
            self.sum[i] += other.sum[i];
            self.max[i] = self.max[i].max(other.max[i]);
            let mut best = std::mem::take(&mut self.top[i]);
            best.extend(other.top[i].iter().cloned());
            best.sort_by(Example::rank_order);
            best.truncate(self.top_k);
            self.top[i] = best;
        }
        for (h, add) in self.histogram.iter_mut().zip(&other.histogram) {
            *h += add;
        }
        let (r, o) = (&mut self.reconstruction, &other.reconstruction);
        r.tokens += o.tokens;
        r.l0 += o.l0;
        r.squared_error += o.squared_error;
        r.target_squared += o.target_squared;
        for (s, add) in r.target_sum.iter_mut().zip(&o.target_sum) {
            *s += add;
        }
        if let (Some(d), Some(o)) = (&mut self.downstream, &other.downstream) {
            d.ce_clean += o.ce_clean;
            d.ce_spliced += o.ce_spliced;
            d.ce_positions += o.ce_positions;
            d.kl += o.kl;
            d.kl_positions += o.kl_positions;
        }
        Ok(())
    }

    /// The summary metrics (see the module docs).
    pub fn metrics(&self) -> Metrics {
        let r = &self.reconstruction;
        let n = r.tokens as f64;
        let width = r.target_sum.len() as f64;
        let elements = n * width;
        let sum_sq_of_mean: f64 = r.target_sum.iter().map(|s| s * s).sum::<f64>();
        let total_variance = r.target_squared - sum_sq_of_mean / n;
        let explained_variance = if total_variance / n < 1e-10 {
            if r.squared_error / n < 1e-10 {
                1.0
            } else {
                0.0
            }
        } else {
            1.0 - r.squared_error / total_variance
        };
        let grand_sum: f64 = r.target_sum.iter().sum();
        let variance = (r.target_squared - grand_sum * grand_sum / elements) / (elements - 1.0);
        let mse = r.squared_error / elements;
        let downstream = self.downstream.as_ref().filter(|d| d.ce_positions > 0);
        let ce = |sum: f64| downstream.map(|d| sum / d.ce_positions as f64);
        Metrics {
            mean_l0: r.l0 / n,
            mse,
            explained_variance,
            explained_variance_tutorial: 1.0 - mse / variance,
            ce_clean: downstream.and_then(|d| ce(d.ce_clean)),
            ce_spliced: downstream.and_then(|d| ce(d.ce_spliced)),
            delta_ce: downstream.map(|d| (d.ce_spliced - d.ce_clean) / d.ce_positions as f64),
            kl: downstream
                .filter(|d| d.kl_positions > 0)
                .map(|d| d.kl / d.kl_positions as f64),
        }
    }
}
