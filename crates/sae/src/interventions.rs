//! SAE interventions for the `intervene` graph: pyvene's JumpReLU interchange, the tutorial's
//! collect-with-encoder, and steering along decoder directions.
//!
//! All of them compute in the SAE's dtype (float32 unless converted with
//! [`Sae::to_dtype`](crate::Sae::to_dtype)) on its device and return that dtype; the graph casts
//! the result back to the model's dtype when it writes it into the model.
//!
//! For a transcoder, [`EncodeCollect`] belongs at its read site and [`Steer`] at its write site
//! ([`Sae::sites`](crate::Sae::sites)); [`JumpReluInterchange`] refuses it (its swap spans both
//! sites).

use intervene::{Intervention, InterventionRole, Subspaces};
use tch::Tensor;

use crate::sae::Sae;

type IResult<T> = std::result::Result<T, intervene::Error>;

/// pyvene's `JumpReLUAutoencoderIntervention` (tutorial step 3), exactly:
///
/// ```text
/// z_b = enc(base), z_s = enc(source), z' = z_b with z'[j] = z_s[j] for j in subspaces
/// base ← dec(z')                      (no error term: the base becomes its reconstruction)
/// ```
///
/// With [`keep_error`](Self::keep_error) the result is `dec(z') + (base − dec(z_b))`, so a swap
/// that changes nothing leaves the base (up to the SAE dtype's rounding) unchanged.
///
/// With no subspaces, pyvene 0.1.8 swaps the latents `0..embed_dim` (its `interchange_dim` is
/// the model width, not the SAE width); this is reproduced: latents `0..min(d_in, d_sae)`.
/// Role: [`InterventionRole::NeedsSource`].
#[derive(Clone, Debug)]
pub struct JumpReluInterchange {
    sae: Sae,
    keep_error: bool,
}

impl JumpReluInterchange {
    /// Interchange through `sae` (shares its weights).
    pub fn new(sae: &Sae) -> Self {
        JumpReluInterchange {
            sae: sae.clone(),
            keep_error: false,
        }
    }

    /// Add the base's reconstruction error back (not pyvene's behaviour; off by default).
    pub fn keep_error(mut self, keep: bool) -> Self {
        self.keep_error = keep;
        self
    }
}

impl Intervention for JumpReluInterchange {
    fn name(&self) -> String {
        "jumprelu_interchange".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::NeedsSource
    }

    fn apply(
        &self,
        base: &Tensor,
        source: Option<&Tensor>,
        subspaces: Option<&Subspaces>,
    ) -> IResult<Tensor> {
        if self.sae.is_transcoder() {
            // Its latents come from one site and its reconstruction belongs to another: one
            // intervention at one site cannot do both (scope's patch workflow does).
            return Err(intervene::Error::Invalid(
                "jumprelu interchange: a transcoder reads one site and writes another; swap its \
                 latents with two hooks (scope::patch) instead"
                    .into(),
            ));
        }
        let source = self.required_source(source)?;
        if source.size() != base.size() {
            return Err(intervene::Error::Shape {
                context: "jumprelu interchange: source slice vs base slice".into(),
                expected: base.size(),
                got: source.size(),
            });
        }
        let size = base.size();
        let batch = size.first().copied().unwrap_or(1);
        let d_sae = self.sae.d_sae();
        let device = self.sae.device();
        let z_b = self.sae.encode(base)?;
        let z_s = self.sae.encode(source)?;
        let mask = match subspaces {
            Some(s) => intervene::builtin::subspace_mask(s, batch, d_sae, size.len(), device)?,
            None => {
                let n = self.sae.d_in().min(d_sae);
                intervene::builtin::subspace_mask(
                    &Subspaces::Shared((0..n).collect()),
                    batch,
                    d_sae,
                    size.len(),
                    device,
                )?
            }
        };
        let z = z_s.f_where_self(&mask, &z_b)?;
        let mut out = self.sae.decode(&z)?;
        if self.keep_error {
            let base = base.f_to_device(device)?.f_to_kind(self.sae.dtype())?;
            let error = base.f_sub(&self.sae.decode(&z_b)?)?;
            out = out.f_add(&error)?;
        }
        Ok(out.f_to_device(base.device())?)
    }
}

/// The tutorial's `JumpReLUSAECollectIntervention`: collects `enc(slice)` in the SAE's dtype
/// (`[batch, k, d_sae]`); never changes the model. Role: [`InterventionRole::Collect`].
#[derive(Clone, Debug)]
pub struct EncodeCollect {
    sae: Sae,
}

impl EncodeCollect {
    /// Collect latents of `sae` (shares its weights).
    pub fn new(sae: &Sae) -> Self {
        EncodeCollect { sae: sae.clone() }
    }
}

impl Intervention for EncodeCollect {
    fn name(&self) -> String {
        "jumprelu_collect".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Collect
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        _subspaces: Option<&Subspaces>,
    ) -> IResult<Tensor> {
        Ok(self.sae.encode(base)?)
    }
}

/// Steering: `base + Σ magnitude_i · W_dec[latent_i]`, the tutorial's
/// `JumpReLUSAESteeringIntervention` generalised to several latents. For one latent the result
/// is bit-identical to pyvene's `base + tensor(mag) * W_dec[idx]`: the sum follows torch's type
/// promotion (an f32 SAE on a bf16 model adds in f32, and the graph rounds the result to the
/// model's dtype). Subspaces are ignored: the latents are fixed
/// at construction. Role: [`InterventionRole::Sourceless`].
pub struct Steer {
    vector: Tensor,
    pairs: Vec<(i64, f64)>,
    add: intervene::Add,
}

impl std::fmt::Debug for Steer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steer").field("pairs", &self.pairs).finish()
    }
}

impl Steer {
    /// Steer along `pairs` of (latent, magnitude) of `sae`.
    pub fn new(sae: &Sae, pairs: &[(i64, f64)]) -> crate::error::Result<Steer> {
        let vector = sae.steering_sum(pairs)?;
        Ok(Steer {
            add: intervene::Add::new(vector.shallow_clone()),
            vector,
            pairs: pairs.to_vec(),
        })
    }

    /// The vector added, `[d_in]`, in the SAE's dtype.
    pub fn vector(&self) -> &Tensor {
        &self.vector
    }
}

/// Steering as intervene's built-in [`intervene::Add`] of `Σ magnitude_i · W_dec[latent_i]`
/// (in the SAE's dtype, on its device). Unlike [`Steer`], `Add` honours subspaces (it then adds only on
/// those dimensions of the model width).
pub fn steering_add(sae: &Sae, pairs: &[(i64, f64)]) -> crate::error::Result<intervene::Add> {
    Ok(intervene::Add::new(sae.steering_sum(pairs)?))
}

impl Intervention for Steer {
    fn name(&self) -> String {
        "sae_steer".into()
    }

    fn role(&self) -> InterventionRole {
        InterventionRole::Sourceless
    }

    fn apply(
        &self,
        base: &Tensor,
        _source: Option<&Tensor>,
        _subspaces: Option<&Subspaces>,
    ) -> IResult<Tensor> {
        // The latents are fixed at construction, so subspaces do not apply here.
        self.add.apply(base, None, None)
    }

    /// [`intervene::Add`] of a fixed vector.
    fn replayable(&self) -> bool {
        true
    }
}
