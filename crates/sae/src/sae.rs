//! The JumpReLU SAE: weights on one device, encode, decode, top-k, steering vectors.

use std::path::{Path, PathBuf};

use intervene::Site;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::hub::{resolve, HubOptions, ResolvedSae, SaeFormat};
use crate::load::{hook_family, read_npz, read_saelens, rescale_embedding, SaeWeights};
use crate::name::{site_from_hook_name, SaeFamily, SiteHint};

/// What is known about a loaded SAE besides its weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaeInfo {
    /// The name it was loaded by (a path, hub path or canonical shorthand).
    pub name: String,
    /// The weights file.
    pub path: PathBuf,
    /// Its layout.
    pub format: SaeFormat,
    /// Input width.
    pub d_in: i64,
    /// Number of latents.
    pub d_sae: i64,
    /// The family, from the file's hook name or the SAE's name.
    pub family: Option<SaeFamily>,
    /// The layer, from the file's hook name or the SAE's name.
    pub layer: Option<usize>,
    /// The hook site, when family and layer are known (and the family is one site).
    pub site: Option<Site>,
    /// The SAELens hook name, when the file gives one.
    pub hook_name: Option<String>,
}

/// A Gemma Scope JumpReLU sparse autoencoder, resident on one device, in float32 as loaded
/// (the Gemma Scope tutorial's precision) or in another float dtype after
/// [`to_dtype`](Self::to_dtype) (what SAELens' `dtype=` and pyvene with bf16 parameters do).
///
/// Inputs of any float dtype are cast to the SAE's dtype (the weights are never cast), and every
/// result is in that dtype on the SAE's device; callers that write results back into a model of
/// another dtype cast them there (the intervention graph does this).
///
/// Cloning is cheap: clones share the weight storage ([`Tensor::shallow_clone`]).
pub struct Sae {
    w_enc: Tensor,
    w_dec: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    threshold: Tensor,
    info: SaeInfo,
}

impl std::fmt::Debug for Sae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sae")
            .field("info", &self.info)
            .field("device", &self.w_enc.device())
            .finish()
    }
}

impl Clone for Sae {
    fn clone(&self) -> Self {
        Sae {
            w_enc: self.w_enc.shallow_clone(),
            w_dec: self.w_dec.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
            threshold: self.threshold.shallow_clone(),
            info: self.info.clone(),
        }
    }
}

/// Sparse top-k activations: for each token, the `k` largest latents (indices and values),
/// largest first. Tokens with fewer than `k` active latents carry zero values at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// Latents per token.
    pub k: usize,
    /// The leading dimensions of the input (e.g. `[batch, seq]`); tokens are flattened
    /// row-major.
    pub shape: Vec<i64>,
    /// `[tokens * k]` latent indices.
    pub indices: Vec<i64>,
    /// `[tokens * k]` activations.
    pub values: Vec<f32>,
}

impl TopK {
    /// Number of tokens.
    pub fn num_tokens(&self) -> usize {
        self.indices.len().checked_div(self.k).unwrap_or(0)
    }

    /// The `(latent, value)` pairs of token `t` (flattened index), largest first, including
    /// zeros where fewer than `k` latents are active.
    pub fn token(&self, t: usize) -> impl Iterator<Item = (i64, f32)> + '_ {
        let lo = (t * self.k).min(self.indices.len());
        let hi = ((t + 1) * self.k).min(self.indices.len());
        self.indices[lo..hi]
            .iter()
            .copied()
            .zip(self.values[lo..hi].iter().copied())
    }

    /// Like [`token`](Self::token) but only the active (`> 0`) latents.
    pub fn active(&self, t: usize) -> impl Iterator<Item = (i64, f32)> + '_ {
        self.token(t).filter(|(_, v)| *v > 0.0)
    }
}

impl Sae {
    /// Resolve `name` (local path, hub path or canonical shorthand) with the environment's hub
    /// settings ([`HubOptions::from_env`]) and load it onto `device`.
    pub fn from_pretrained(name: &str, device: Device) -> Result<Sae> {
        Sae::load(&resolve(name, &HubOptions::from_env())?, device)
    }

    /// Load a resolved SAE onto `device`.
    pub fn load(resolved: &ResolvedSae, device: Device) -> Result<Sae> {
        let weights = match resolved.format {
            SaeFormat::GemmaScopeNpz => read_npz(&resolved.path)?,
            SaeFormat::SaeLens => read_saelens(&resolved.path)?,
        };
        Sae::from_weights(
            weights,
            &resolved.name,
            resolved.format,
            resolved.hint,
            device,
        )
    }

    /// Load a Gemma Scope `params.npz` (or a directory holding one, or a SAELens directory)
    /// from a local path; the site comes from the path's parts.
    pub fn from_path(path: impl AsRef<Path>, device: Device) -> Result<Sae> {
        let name = path.as_ref().to_string_lossy().into_owned();
        let parsed = crate::name::SaeName::Local(path.as_ref().to_path_buf());
        let resolved = crate::hub::resolve_parsed(&name, parsed, &HubOptions::offline_in(""))?;
        Sae::load(&resolved, device)
    }

    /// Build from validated CPU weights.
    pub fn from_weights(
        mut weights: SaeWeights,
        name: &str,
        format: SaeFormat,
        hint: SiteHint,
        device: Device,
    ) -> Result<Sae> {
        // The file's own hook name is authoritative; the name fills in otherwise.
        let (family, layer, site) = match weights.hook_name.as_deref() {
            Some(hook) => {
                let fl = hook_family(hook);
                (
                    fl.map(|(f, _)| f),
                    fl.map(|(_, l)| l)
                        .or_else(|| site_from_hook_name(hook).map(|s| s.layer)),
                    site_from_hook_name(hook),
                )
            }
            None => (hint.family, hint.layer, hint.site()),
        };
        if format == SaeFormat::GemmaScopeNpz && family == Some(SaeFamily::Embedding) {
            rescale_embedding(&mut weights)?;
        }
        let info = SaeInfo {
            name: name.to_string(),
            path: weights.path.clone(),
            format,
            d_in: weights.d_in(),
            d_sae: weights.d_sae(),
            family,
            layer,
            site,
            hook_name: weights.hook_name.clone(),
        };
        let to = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_to_device(device)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?)
        };
        Ok(Sae {
            w_enc: to(&weights.w_enc)?,
            w_dec: to(&weights.w_dec)?,
            b_enc: to(&weights.b_enc)?,
            b_dec: to(&weights.b_dec)?,
            threshold: to(&weights.threshold)?,
            info,
        })
    }

    /// Everything known about this SAE.
    pub fn info(&self) -> &SaeInfo {
        &self.info
    }

    /// Input width `d_in`.
    pub fn d_in(&self) -> i64 {
        self.info.d_in
    }

    /// Number of latents `d_sae`.
    pub fn d_sae(&self) -> i64 {
        self.info.d_sae
    }

    /// The hook site this SAE reads, when its name or file says it.
    pub fn site(&self) -> Option<Site> {
        self.info.site
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.w_enc.device()
    }

    /// The dtype of the weights, and of every computation and result.
    pub fn dtype(&self) -> Kind {
        self.w_enc.kind()
    }

    /// A copy with every weight in `dtype` (a float kind), e.g. bf16 to halve the memory of a
    /// wide SAE on a bf16 model. The same SAE when it already is in `dtype`.
    pub fn to_dtype(&self, dtype: Kind) -> Result<Sae> {
        if !matches!(
            dtype,
            Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half
        ) {
            return Err(Error::input(
                "SAE dtype",
                format!("expected a float dtype, got {dtype:?}"),
            ));
        }
        let to = |t: &Tensor| -> Result<Tensor> { Ok(t.f_to_kind(dtype)?) };
        Ok(Sae {
            w_enc: to(&self.w_enc)?,
            w_dec: to(&self.w_dec)?,
            b_enc: to(&self.b_enc)?,
            b_dec: to(&self.b_dec)?,
            threshold: to(&self.threshold)?,
            info: self.info.clone(),
        })
    }

    /// `W_enc` `[d_in, d_sae]`.
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// `W_dec` `[d_sae, d_in]`; row `i` is latent `i`'s decoder direction.
    pub fn w_dec(&self) -> &Tensor {
        &self.w_dec
    }

    /// `b_enc` `[d_sae]`.
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// `b_dec` `[d_in]`.
    pub fn b_dec(&self) -> &Tensor {
        &self.b_dec
    }

    /// `threshold` `[d_sae]`.
    pub fn threshold(&self) -> &Tensor {
        &self.threshold
    }

    /// Check that the model's activation width at the SAE's site is `d_in`.
    pub fn check_d_in(&self, model_d: i64) -> Result<()> {
        if model_d == self.info.d_in {
            Ok(())
        } else {
            Err(Error::DInMismatch {
                path: self.info.path.clone(),
                d_in: self.info.d_in,
                model_d,
            })
        }
    }

    fn check_latent(&self, latent: i64) -> Result<()> {
        if (0..self.info.d_sae).contains(&latent) {
            Ok(())
        } else {
            Err(Error::LatentOutOfRange {
                latent,
                d_sae: self.info.d_sae,
            })
        }
    }

    /// `x` (`[..., width]`) as an `[n, width]` matrix in the SAE's dtype on its device.
    fn as_rows(&self, x: &Tensor, width: i64, what: &str) -> Result<(Tensor, Vec<i64>)> {
        let size = x.size();
        let Some((&last, lead)) = size.split_last() else {
            return Err(Error::input(what, "a scalar has no feature dimension"));
        };
        if last != width {
            return Err(Error::input(
                what,
                format!("expected [..., {width}], got {size:?}"),
            ));
        }
        if !x.is_floating_point() {
            return Err(Error::input(
                what,
                format!("expected floats, got {:?}", x.kind()),
            ));
        }
        let x = x.f_to_device(self.device())?.f_to_kind(self.dtype())?;
        Ok((x.f_reshape([-1, width])?, lead.to_vec()))
    }

    fn unrows(t: Tensor, lead: &[i64]) -> Result<Tensor> {
        let mut shape = lead.to_vec();
        shape.push(-1);
        Ok(t.f_reshape(&shape)?)
    }

    /// Pre-activations and JumpReLU activations, both `[..., d_sae]` in the SAE's dtype:
    /// `pre = x·W_enc + b_enc` (one `addmm`), `acts = (pre > threshold) * relu(pre)`.
    pub fn encode_with_pre(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x2, lead) = self.as_rows(x, self.info.d_in, "SAE encode")?;
        let pre = self.b_enc.f_addmm(&x2, &self.w_enc)?;
        let mask = pre.f_gt_tensor(&self.threshold)?;
        let acts = pre.f_relu()?.f_mul(&mask)?;
        Ok((Self::unrows(pre, &lead)?, Self::unrows(acts, &lead)?))
    }

    /// JumpReLU activations, `[..., d_sae]` in the SAE's dtype: `(pre > threshold) * relu(pre)` with
    /// `pre = x·W_enc + b_enc` (strict `>`; one `addmm` and one mask, in place).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (x2, lead) = self.as_rows(x, self.info.d_in, "SAE encode")?;
        let mut pre = self.b_enc.f_addmm(&x2, &self.w_enc)?;
        let mask = pre.f_gt_tensor(&self.threshold)?;
        let _ = pre.f_relu_()?;
        let _ = pre.f_mul_(&mask)?;
        Self::unrows(pre, &lead)
    }

    /// Reconstruction `a·W_dec + b_dec`, `[..., d_in]` in the SAE's dtype.
    pub fn decode(&self, acts: &Tensor) -> Result<Tensor> {
        let (a2, lead) = self.as_rows(acts, self.info.d_sae, "SAE decode")?;
        Self::unrows(self.b_dec.f_addmm(&a2, &self.w_dec)?, &lead)
    }

    /// `decode(encode(x))`, in the SAE's dtype.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(x)?)
    }

    /// `decode(encode(x)) + (x − decode(encode(x)))` computed in the SAE's dtype, as SAELens'
    /// `use_error_term` does: the model sees its own activation up to that dtype's rounding.
    pub fn reconstruct_with_error(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.f_to_device(self.device())?.f_to_kind(self.dtype())?;
        let recon = self.reconstruct(&x)?;
        let error = x.f_sub(&recon)?;
        Ok(recon.f_add(&error)?)
    }

    /// The `k` largest activations of each token of `acts` (`[..., d_sae]`), computed on the
    /// device and copied to the host in one transfer.
    pub fn top_k_of(&self, acts: &Tensor, k: usize) -> Result<TopK> {
        let size = acts.size();
        let Some((&last, lead)) = size.split_last() else {
            return Err(Error::input("top-k", "a scalar has no latent dimension"));
        };
        if last != self.info.d_sae {
            return Err(Error::input(
                "top-k",
                format!("expected [..., {}], got {size:?}", self.info.d_sae),
            ));
        }
        let k = k.min(last.max(0) as usize);
        let (values, indices) = acts
            .f_to_kind(Kind::Float)?
            .f_reshape([-1, last])?
            .f_topk(k as i64, -1, true, true)?;
        // One transfer: indices (< 2^53) and f32 values are both exact in f64.
        let packed = Tensor::f_cat(
            &[
                values.f_to_kind(Kind::Double)?,
                indices.f_to_kind(Kind::Double)?,
            ],
            1,
        )?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
        let host = Vec::<f64>::try_from(packed.f_flatten(0, -1)?)?;
        let rows = host.len().checked_div(2 * k).unwrap_or(0);
        let mut out_values = Vec::with_capacity(rows * k);
        let mut out_indices = Vec::with_capacity(rows * k);
        for row in host.chunks_exact(2 * k.max(1)).take(rows) {
            out_values.extend(row[..k].iter().map(|&v| v as f32));
            out_indices.extend(row[k..].iter().map(|&i| i as i64));
        }
        Ok(TopK {
            k,
            shape: lead.to_vec(),
            indices: out_indices,
            values: out_values,
        })
    }

    /// Encode `x` and return its top-`k` latents per token.
    pub fn top_k(&self, x: &Tensor, k: usize) -> Result<TopK> {
        self.top_k_of(&self.encode(x)?, k)
    }

    /// `magnitude * W_dec[latent]`, `[d_in]` in the SAE's dtype on its device (the magnitude
    /// rounded to that dtype first, as `torch.tensor(mag, dtype=...)` is).
    pub fn steering_vector(&self, latent: i64, magnitude: f64) -> Result<Tensor> {
        self.check_latent(latent)?;
        let mag = Tensor::f_from_slice(&[magnitude as f32])?
            .f_to_device(self.device())?
            .f_to_kind(self.dtype())?;
        Ok(mag.f_mul(&self.w_dec.f_get(latent)?)?)
    }

    /// `Σ magnitude_i * W_dec[latent_i]` in the SAE's dtype, summed in the order given.
    pub fn steering_sum(&self, pairs: &[(i64, f64)]) -> Result<Tensor> {
        let mut total = Tensor::f_zeros([self.info.d_in], (self.dtype(), self.device()))?;
        for (i, &(latent, magnitude)) in pairs.iter().enumerate() {
            let v = self.steering_vector(latent, magnitude)?;
            total = if i == 0 { v } else { total.f_add(&v)? };
        }
        Ok(total)
    }
}
