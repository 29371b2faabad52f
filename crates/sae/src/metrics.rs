//! Reconstruction metrics (L0, MSE, explained variance) and downstream metrics (ΔCE, KL) of an
//! SAE spliced into a model.
//!
//! All metrics skip the `<bos>` position and padding: the caller passes a boolean position mask
//! `[batch, seq]` (see [`position_mask`]), `true` where a token counts. Everything is computed in
//! float32 with the same torch reductions the Python references use.
//!
//! # Formulas
//!
//! Over the `N` counted tokens, with `x` the SAE input, `x̂ = decode(encode(x))`, `a = encode(x)`,
//! `d = d_in`:
//!
//! * **L0** of token `t`: `#{ i : a_t,i > τ }` with an explicit threshold `τ`. Google's Gemma Scope
//!   tutorial counts `a > 1` (`τ = 1`), SAELens counts `a > 0` (`τ = 0`).
//! * **MSE**: `mean over t, j of (x̂_t,j − x_t,j)²` (all `N·d` elements).
//! * **Explained variance, tutorial form** ([`ReconstructionMetrics::explained_variance`]):
//!   `1 − mean((x̂ − x)²) / var(x)`, where `var` is torch's default *unbiased* variance over all
//!   `N·d` elements (`x.var()`, one mean over everything).
//! * **Explained variance, conventional form**
//!   ([`ReconstructionMetrics::explained_variance_conventional`]):
//!   `1 − Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − μ‖²` with `μ = mean over t of x_t`, i.e.
//!   `1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)`: the fraction of the total variance (summed over
//!   dimensions) that the reconstruction explains, R². This is SAELens' `explained_variance`
//!   since 6.45.1 (`ExplainedVarianceCalculator` in `sae_lens/evals.py`; read in 6.54.12):
//!   sums accumulated in float64, and `1` when the variance is below `1e-10` and so is the
//!   error, `0` when only the variance is. Here every sum is taken in float64.
//! * **Explained variance, SAELens per-token form**
//!   ([`ReconstructionMetrics::explained_variance_per_token`]):
//!   `mean over t of [ 1 − ‖x_t − x̂_t‖² / ‖x_t − μ‖² ]` with `μ = mean over t of x_t` (per
//!   dimension). This is what SAELens reported as `explained_variance` until April 2025 (PR #443
//!   renamed it `explained_variance_legacy`): averaging per-token ratios is not the conventional
//!   definition, and tokens with small `‖x_t − μ‖` dominate it. (SAELens 6.0 to 6.45.0 reported
//!   `1 − E‖x − x̂‖² / (E‖x‖² − E_d[(E_t x_d²)²])`, which subtracts the square of the mean
//!   *squared* activation and is neither; 6.45.1 replaced it with the conventional form.)
//!
//! For a transcoder, `x` is its input (the read site) and the reconstruction is compared with
//! the activation of its write site `y`: MSE and the explained variances use `y` in place of
//! `x` ([`Sae::reconstruction_metrics_against`]).
//!
//! Downstream, with the SAE spliced into the model at its site at every real position except the
//! `<bos>` (which keeps the model's own activation, as SAELens' `ignore_tokens` does):
//!
//! * **CE**: mean over positions `t < T − 1` (input and target real, the `<bos>` position
//!   included since it predicts the first word) of `−log softmax(logits_t)[ids_{t+1}]`.
//! * **ΔCE** = `CE(spliced) − CE(clean)`.
//! * **KL** = mean over real positions of `KL(p_clean ‖ p_spliced)` =
//!   `Σ_v p_clean,v (log p_clean,v − log p_spliced,v)` (torch `kl_div(log_softmax(spliced),
//!   softmax(clean), reduction="none").sum(-1)`, SAELens' `_kl`).
//! * **with error term**: the splice writes `x̂ + (x − x̂)` (computed in f32) instead of `x̂`, as
//!   SAELens' `use_error_term`; ΔCE and KL are then float-rounding small.
//! * **transcoders** replace the MLP path: [`SpliceHooks`] keeps the read site's activation
//!   (the MLP input, visited first in the layer) and writes the transcoder's output computed
//!   from it (with the skip) at the write site (the post-feedforward norm's output), in place
//!   of the MLP's; with the error term, `x̂ + (y − x̂)` with `y` the write site's activation.

use intervene::{ForwardInfo, ForwardOptions, HookedModel, Hooks, NoHooks, Site};
use tch::{Kind, Reduction, Tensor};

use crate::error::{Error, Result};
use crate::name::SaeSites;
use crate::sae::Sae;

/// Reconstruction quality over a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconstructionMetrics {
    /// Number of counted tokens.
    pub tokens: usize,
    /// The L0 threshold `τ` used (`a > τ` counts).
    pub l0_threshold: f64,
    /// L0 of each counted token, row-major.
    pub l0_per_token: Vec<i64>,
    /// Mean of [`l0_per_token`](Self::l0_per_token).
    pub mean_l0: f64,
    /// Mean squared error over all counted elements.
    pub mse: f64,
    /// Tutorial form: `1 − mse / var(x)` (unbiased variance over all counted elements).
    pub explained_variance: f64,
    /// SAELens legacy per-token form (see the module docs).
    pub explained_variance_per_token: f64,
    /// Conventional form `1 − Σ‖x − x̂‖² / Σ‖x − μ‖²`, SAELens' `explained_variance` since
    /// 6.45.1 (see the module docs).
    pub explained_variance_conventional: f64,
}

/// A position mask `[batch, seq]` that is `true` for real tokens except the first real token
/// of each row (the `<bos>`). With no attention mask, every position but 0 counts.
pub fn position_mask(attention_mask: Option<&Tensor>, batch: i64, seq: i64) -> Result<Tensor> {
    match attention_mask {
        None => {
            let device = tch::Device::Cpu;
            let m = Tensor::f_ones([batch, seq], (Kind::Bool, device))?;
            let _ = m.f_narrow(1, 0, 1.min(seq))?.f_fill_(0)?;
            Ok(m)
        }
        Some(am) => {
            let am = am.f_to_kind(Kind::Int64)?;
            let real = am.f_gt(0)?;
            // The first real token has cumulative count 1.
            let first = am.f_cumsum(1, Kind::Int64)?.f_eq(1)?.f_logical_and(&real)?;
            Ok(real.f_logical_and(&first.f_logical_not()?)?)
        }
    }
}

fn check_mask(mask: &Tensor, lead: &[i64], what: &str) -> Result<Tensor> {
    if mask.size() != lead {
        return Err(Error::input(
            what,
            format!("mask shape {:?} does not match {:?}", mask.size(), lead),
        ));
    }
    Ok(mask.f_to_kind(Kind::Bool)?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.f_double_value(&[])?)
}

impl Sae {
    /// L0, MSE and explained variance of `x` (`[..., d_in]`) over the positions where `mask`
    /// (shape `x.size()[..-1]`) is true; all positions when `mask` is `None`. See the module docs
    /// for the formulas. A transcoder is measured against its write site: see
    /// [`reconstruction_metrics_against`](Self::reconstruction_metrics_against).
    pub fn reconstruction_metrics(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        l0_threshold: f64,
    ) -> Result<ReconstructionMetrics> {
        if self.is_transcoder() {
            return Err(Error::input(
                "reconstruction metrics",
                "a transcoder reconstructs its write site, not its input: use \
                 reconstruction_metrics_against(x, target, ...)",
            ));
        }
        self.reconstruction_metrics_against(x, x, mask, l0_threshold)
    }

    /// L0 of `encode(x)` and MSE and explained variances of `reconstruct(x)` against `target`
    /// (`[..., d_out]`, the write site's activation at the same positions; `x` itself for an
    /// SAE), over the positions where `mask` is true.
    pub fn reconstruction_metrics_against(
        &self,
        x: &Tensor,
        target: &Tensor,
        mask: Option<&Tensor>,
        l0_threshold: f64,
    ) -> Result<ReconstructionMetrics> {
        let size = x.size();
        let lead = &size[..size.len().saturating_sub(1)];
        let target_size = target.size();
        if target_size.split_last().map(|(_, l)| l) != Some(lead) {
            return Err(Error::input(
                "reconstruction metrics",
                format!("target {target_size:?} does not have the positions of x {size:?}"),
            ));
        }
        let rows = |t: &Tensor, width: i64| -> Result<Tensor> {
            let t = t
                .f_to_device(self.device())?
                .f_to_kind(Kind::Float)?
                .f_reshape([-1, width])?;
            Ok(match mask {
                Some(m) => {
                    let m = check_mask(m, lead, "reconstruction metrics")?
                        .f_to_device(self.device())?
                        .f_reshape([-1])?;
                    t.f_index(&[Some(m)])?
                }
                None => t,
            })
        };
        let x2 = rows(x, self.d_in())?;
        let y2 = rows(target, self.d_out())?;
        let tokens = x2.size().first().copied().unwrap_or(0);
        if tokens == 0 {
            return Err(Error::input("reconstruction metrics", "no counted tokens"));
        }
        let acts = self.encode(&x2)?;
        let recon = self.output(&acts, &x2)?.f_to_kind(Kind::Float)?;
        let l0 = acts
            .f_gt(l0_threshold)?
            .f_sum_dim_intlist(-1, false, Kind::Int64)?;
        let l0_per_token = Vec::<i64>::try_from(l0.f_to_device(tch::Device::Cpu)?)?;
        let mean_l0 = l0_per_token.iter().sum::<i64>() as f64 / l0_per_token.len() as f64;

        let diff2 = recon.f_sub(&y2)?.f_square()?;
        let mse_t = diff2.f_mean(Kind::Float)?;
        let var_t = y2.f_var(true)?;
        let ev = mse_t.f_div(&var_t)?.f_neg()?.f_add_scalar(1.0)?;

        let resid_ss = diff2.f_sum_dim_intlist(-1, false, Kind::Float)?;
        let mu = y2.f_mean_dim(0, true, Kind::Float)?;
        let total_ss = y2
            .f_sub(&mu)?
            .f_square()?
            .f_sum_dim_intlist(-1, false, Kind::Float)?;
        let ev_tok = resid_ss
            .f_div(&total_ss)?
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_mean(Kind::Float)?;
        Ok(ReconstructionMetrics {
            tokens: tokens as usize,
            l0_threshold,
            l0_per_token,
            mean_l0,
            mse: scalar(&mse_t)?,
            explained_variance: scalar(&ev)?,
            explained_variance_per_token: scalar(&ev_tok)?,
            explained_variance_conventional: conventional_explained_variance(&y2, &recon)?,
        })
    }
}

/// `1 − E‖y − ŷ‖² / (E‖y‖² − ‖E y‖²)` over the rows of `y` and `recon` (`[N, d]`), every sum in
/// float64, with SAELens' guard for a variance below `1e-10` (see the module docs).
pub fn conventional_explained_variance(y: &Tensor, recon: &Tensor) -> Result<f64> {
    let y = y.f_to_kind(Kind::Double)?;
    let recon = recon.f_to_kind(Kind::Double)?;
    let n = y.size().first().copied().unwrap_or(0);
    if n == 0 {
        return Ok(0.0);
    }
    let n = n as f64;
    let mean_sq_norm = scalar(&y.f_square()?.f_sum(Kind::Double)?)? / n;
    let mean = y
        .f_sum_dim_intlist(0, false, Kind::Double)?
        .f_div_scalar(n)?;
    let variance = mean_sq_norm - scalar(&mean.f_square()?.f_sum(Kind::Double)?)?;
    let mse = scalar(&y.f_sub(&recon)?.f_square()?.f_sum(Kind::Double)?)? / n;
    Ok(if variance < 1e-10 {
        if mse < 1e-10 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - mse / variance
    })
}

/// Hooks that replace the activation at an SAE's write site by its reconstruction (optionally
/// with the error term added back), at the positions of a mask.
///
/// For an SAE that is its own site. For a transcoder the read site (visited first in the
/// layer) is kept as it is and remembered, and the write site gets the transcoder's output
/// computed from it: the transcoder stands in for the MLP.
///
/// Usable directly with [`HookedModel::forward_hooked`] and
/// [`HookedModel::generate_hooked`]; with a mask, only full forwards whose length matches it
/// are spliced by mask (decode steps of generation splice every position).
pub struct SpliceHooks<'a> {
    sae: &'a Sae,
    sites: SaeSites,
    keep_error: bool,
    mask: Option<Tensor>,
    /// A transcoder's input, kept from the read site for the write site of the same call.
    read: Option<Tensor>,
}

impl std::fmt::Debug for SpliceHooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpliceHooks")
            .field("sites", &self.sites)
            .field("keep_error", &self.keep_error)
            .field("masked", &self.mask.is_some())
            .finish()
    }
}

impl<'a> SpliceHooks<'a> {
    /// Splice `sae` at `sites` (a [`Site`] for an SAE); `mask` (`[batch, seq]`, `true` =
    /// splice) limits the positions.
    pub fn new(
        sae: &'a Sae,
        sites: impl Into<SaeSites>,
        keep_error: bool,
        mask: Option<&Tensor>,
    ) -> Self {
        SpliceHooks {
            sae,
            sites: sites.into(),
            keep_error,
            mask: mask.map(Tensor::shallow_clone),
            read: None,
        }
    }

    /// What the write site becomes at every position: the reconstruction of `x` (the read
    /// site's activation), with the error against `target` (the write site's) when asked.
    fn replacement(&self, x: &Tensor, target: &Tensor) -> Result<Tensor> {
        if self.keep_error {
            self.sae.reconstruct_with_error_of(x, target)
        } else {
            self.sae.reconstruct(x)
        }
    }

    fn write(&mut self, activation: &mut Tensor) -> Result<(), intervene::Error> {
        let x = if self.sites.is_transcoder() {
            self.read.take().ok_or_else(|| {
                intervene::Error::Invalid(format!(
                    "transcoder splice: {} was not visited before {}",
                    self.sites.read, self.sites.write
                ))
            })?
        } else {
            activation.shallow_clone()
        };
        let new = self
            .replacement(&x, activation)?
            .f_to_kind(activation.kind())?
            .f_to_device(activation.device())?;
        let size = activation.size();
        let new = match &self.mask {
            Some(m) if size.len() == 3 && m.size() == size[..2] => {
                let m = m
                    .f_to_kind(Kind::Bool)?
                    .f_to_device(activation.device())?
                    .f_unsqueeze(-1)?;
                new.f_where_self(&m, activation)?
            }
            _ => new,
        };
        *activation = new;
        Ok(())
    }
}

impl Hooks for SpliceHooks<'_> {
    fn begin_forward(&mut self, _info: &ForwardInfo) -> Result<(), intervene::Error> {
        self.read = None;
        Ok(())
    }

    fn wants(&self, site: Site) -> bool {
        site == self.sites.read || site == self.sites.write
    }

    fn visit(&mut self, site: Site, activation: &mut Tensor) -> Result<(), intervene::Error> {
        if site == self.sites.write {
            self.write(activation)
        } else {
            if site == self.sites.read {
                // Read only: the model's own MLP still runs on it.
                self.read = Some(activation.shallow_clone());
            }
            Ok(())
        }
    }
}

/// Downstream metrics of splicing an SAE into a model.
#[derive(Clone, Debug, PartialEq)]
pub struct SpliceMetrics {
    /// Next-token cross-entropy of the clean model.
    pub ce_clean: f64,
    /// CE with the reconstruction spliced in.
    pub ce_spliced: f64,
    /// CE with reconstruction + error term spliced in.
    pub ce_spliced_with_error: f64,
    /// `ce_spliced − ce_clean`.
    pub delta_ce: f64,
    /// `ce_spliced_with_error − ce_clean`.
    pub delta_ce_with_error: f64,
    /// Mean `KL(clean ‖ spliced)`.
    pub kl: f64,
    /// Mean `KL(clean ‖ spliced with error term)`.
    pub kl_with_error: f64,
}

/// Mean next-token cross-entropy of `logits` `[B, T, V]` against `ids` `[B, T]` over positions
/// `t < T − 1` where `mask[t]` is true.
pub fn next_token_ce(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<f64> {
    let (ce, m) = next_token_ce_per_position(logits, ids, mask)?;
    scalar(&ce.f_index(&[Some(m)])?.f_mean(Kind::Float)?)
}

fn next_token_ce_per_position(
    logits: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let size = logits.size();
    let [b, t, _v] = size.as_slice() else {
        return Err(Error::input(
            "cross-entropy",
            format!("logits {size:?} are not [B, T, V]"),
        ));
    };
    if ids.size() != [*b, *t] || mask.size() != [*b, *t] {
        return Err(Error::input(
            "cross-entropy",
            format!(
                "ids {:?} / mask {:?} do not match logits {size:?}",
                ids.size(),
                mask.size()
            ),
        ));
    }
    let device = logits.device();
    let logp = logits
        .f_narrow(1, 0, t - 1)?
        .f_to_kind(Kind::Float)?
        .f_log_softmax(-1, Kind::Float)?;
    let targets = ids
        .f_narrow(1, 1, t - 1)?
        .f_to_device(device)?
        .f_to_kind(Kind::Int64)?;
    let ce = logp
        .f_gather(-1, &targets.f_unsqueeze(-1)?, false)?
        .f_squeeze_dim(-1)?
        .f_neg()?;
    let m = mask
        .f_to_device(device)?
        .f_to_kind(Kind::Bool)?
        .f_narrow(1, 0, t - 1)?;
    Ok((ce, m))
}

/// Mean `KL(p_clean ‖ p_new)` over positions where `mask` is true.
pub fn mean_kl(clean: &Tensor, new: &Tensor, mask: &Tensor) -> Result<f64> {
    let log_new = new.f_to_kind(Kind::Float)?.f_log_softmax(-1, Kind::Float)?;
    let p_clean = clean.f_to_kind(Kind::Float)?.f_softmax(-1, Kind::Float)?;
    let kl = log_new
        .f_kl_div(&p_clean, Reduction::None, false)?
        .f_sum_dim_intlist(-1, false, Kind::Float)?;
    let m = mask.f_to_device(kl.device())?.f_to_kind(Kind::Bool)?;
    scalar(&kl.f_index(&[Some(m)])?.f_mean(Kind::Float)?)
}

/// ΔCE and KL of splicing `sae` into `model` at `site` (a [`Site`], or an SAE's or
/// transcoder's [`SaeSites`]), with and without the error term.
///
/// `input` is the model's batch and `ids` its token ids `[B, T]`; `attention_mask` (`[B, T]`,
/// 1 = real token) marks padding, `None` meaning none. The SAE is spliced at every real position
/// except each row's first (the `<bos>`, which keeps its clean value); CE counts every position
/// `t < T − 1` whose input and target are real, KL every real position (the `<bos>` position
/// included: its logits are unchanged, so it adds 0). `logits_of` extracts the logits `[B, T, V]`
/// from the model's output (for `gemma-model`: `|o| o.logits`).
pub fn splice_metrics<M, F>(
    sae: &Sae,
    model: &M,
    input: &M::Input,
    ids: &Tensor,
    attention_mask: Option<&Tensor>,
    site: impl Into<SaeSites>,
    logits_of: F,
) -> Result<SpliceMetrics>
where
    M: HookedModel,
    F: Fn(M::Output) -> Option<Tensor>,
{
    let size = ids.size();
    let [b, t] = size.as_slice() else {
        return Err(Error::input(
            "splice metrics",
            format!("ids {size:?} are not [B, T]"),
        ));
    };
    let splice_mask = position_mask(attention_mask, *b, *t)?;
    let real = match attention_mask {
        Some(am) => am.f_gt(0)?,
        None => Tensor::f_ones([*b, *t], (Kind::Bool, tch::Device::Cpu))?,
    };
    let ce_mask = real
        .f_narrow(1, 0, t - 1)?
        .f_logical_and(&real.f_narrow(1, 1, t - 1)?)?;
    let ce_mask = Tensor::f_cat(
        &[
            ce_mask,
            Tensor::f_zeros([*b, 1], (Kind::Bool, real.device()))?,
        ],
        1,
    )?;
    let run = |hooks: &mut dyn Hooks| -> Result<Tensor> {
        let out = model
            .forward_hooked(input, &ForwardOptions::default(), hooks)
            .map_err(|e| Error::Model(Box::new(e)))?;
        logits_of(out).ok_or_else(|| Error::input("splice metrics", "the model returned no logits"))
    };
    let sites = site.into();
    let clean = run(&mut NoHooks)?;
    let spliced = run(&mut SpliceHooks::new(sae, sites, false, Some(&splice_mask)))?;
    let with_error = run(&mut SpliceHooks::new(sae, sites, true, Some(&splice_mask)))?;
    let ce_clean = next_token_ce(&clean, ids, &ce_mask)?;
    let ce_spliced = next_token_ce(&spliced, ids, &ce_mask)?;
    let ce_spliced_with_error = next_token_ce(&with_error, ids, &ce_mask)?;
    Ok(SpliceMetrics {
        ce_clean,
        ce_spliced,
        ce_spliced_with_error,
        delta_ce: ce_spliced - ce_clean,
        delta_ce_with_error: ce_spliced_with_error - ce_clean,
        kl: mean_kl(&clean, &spliced, &real)?,
        kl_with_error: mean_kl(&clean, &with_error, &real)?,
    })
}
