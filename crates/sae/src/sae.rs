//! The JumpReLU SAE (and transcoder): weights on one device, encode, decode, top-k, steering
//! vectors.

use std::path::{Path, PathBuf};

use intervene::Site;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::hub::{resolve, HubOptions, ResolvedSae, SaeFormat};
use crate::load::{
    hook_family, read_gemma_scope_2, read_npz, read_saelens, rescale_embedding, SaeWeights,
    SKIP_KEY,
};
use crate::name::{site_from_hook_name, SaeFamily, SaeSites, SiteHint};

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
    /// Output width: `d_in` for an SAE, the written site's width for a transcoder.
    pub d_out: i64,
    /// The family, from the file's hook name or the SAE's name (or where it was placed).
    pub family: Option<SaeFamily>,
    /// The layer, from the file's hook name or the SAE's name (or where it was placed).
    pub layer: Option<usize>,
    /// The hook site the SAE reads, when family and layer are known.
    pub site: Option<Site>,
    /// The hook site the decoder writes: [`site`](Self::site) for an SAE, the MLP output for a
    /// transcoder.
    pub write_site: Option<Site>,
    /// Whether it has an affine skip (`affine_skip_connection`, Gemma Scope 2 transcoders).
    pub affine_skip: bool,
    /// The SAELens hook name, when the file gives one.
    pub hook_name: Option<String>,
}

/// A Gemma Scope JumpReLU sparse autoencoder, resident on one device, in float32 as loaded
/// (the Gemma Scope tutorial's precision) or in another float dtype after
/// [`to_dtype`](Self::to_dtype) (what SAELens' `dtype=` and pyvene with bf16 parameters do).
///
/// The same type is a **transcoder** when its decoder writes another site than its encoder
/// reads ([`sites`](Self::sites), [`is_transcoder`](Self::is_transcoder)): the encoder is the
/// same JumpReLU, `W_dec` is `[d_sae, d_out]`, and an affine transcoder adds `x · W_skip`
/// (`W_skip` `[d_in, d_out]`) to its output ([`reconstruct`](Self::reconstruct)). Latents are
/// read at the read site; steering directions, outputs and reconstruction errors belong to the
/// write site.
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
    /// A transcoder's affine skip `W_skip`, `[d_in, d_out]`.
    skip: Option<Tensor>,
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
            skip: self.skip.as_ref().map(Tensor::shallow_clone),
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
            SaeFormat::GemmaScope2 => return Sae::load_gemma_scope_2(resolved, device),
        };
        Sae::from_weights(
            weights,
            &resolved.name,
            resolved.format,
            resolved.hint,
            device,
        )
    }

    /// A Gemma Scope 2 folder: the sites come from the name as SAELens takes them (the folder
    /// names the kind and the layer), else from `config.json`'s hook points; a config that
    /// names other sites than the folder is an error.
    fn load_gemma_scope_2(resolved: &ResolvedSae, device: Device) -> Result<Sae> {
        let read = read_gemma_scope_2(&resolved.path)?;
        let by_config = read.config.as_ref().and_then(|c| c.sites);
        let by_name = resolved.hint.sites();
        if let (Some(config), Some(name), Some(cfg)) = (by_config, by_name, &read.config) {
            if config != name {
                return Err(Error::Config {
                    path: cfg.path.clone(),
                    reason: format!(
                        "its hook points name {config}, but the folder name says {name}"
                    ),
                });
            }
        }
        let sae = Sae::build(
            read.weights,
            read.skip,
            &resolved.name,
            SaeFormat::GemmaScope2,
            resolved.hint,
            device,
        )?;
        match (by_name, by_config) {
            (None, Some(sites)) => sae.placed(sites),
            _ => Ok(sae),
        }
    }

    /// Load a Gemma Scope `params.npz` (or a directory holding one, a Gemma Scope 2 folder, or
    /// a SAELens directory) from a local path; the site comes from the path's parts.
    pub fn from_path(path: impl AsRef<Path>, device: Device) -> Result<Sae> {
        let name = path.as_ref().to_string_lossy().into_owned();
        let parsed = crate::name::SaeName::Local(path.as_ref().to_path_buf());
        let resolved = crate::hub::resolve_parsed(&name, parsed, &HubOptions::offline_in(""))?;
        Sae::load(&resolved, device)
    }

    /// Build from validated CPU weights.
    pub fn from_weights(
        weights: SaeWeights,
        name: &str,
        format: SaeFormat,
        hint: SiteHint,
        device: Device,
    ) -> Result<Sae> {
        Sae::build(weights, None, name, format, hint, device)
    }

    /// Build from validated CPU weights and an optional affine skip `[d_in, d_out]`; the sites
    /// (from the file's hook name, else the name) are checked against the shapes.
    pub fn build(
        mut weights: SaeWeights,
        skip: Option<Tensor>,
        name: &str,
        format: SaeFormat,
        hint: SiteHint,
        device: Device,
    ) -> Result<Sae> {
        // The file's own hook name is authoritative; the name fills in otherwise.
        let (family, layer, sites) = match weights.hook_name.as_deref() {
            Some(hook) => {
                let fl = hook_family(hook);
                (
                    fl.map(|(f, _)| f),
                    fl.map(|(_, l)| l)
                        .or_else(|| site_from_hook_name(hook).map(|s| s.layer)),
                    site_from_hook_name(hook).map(SaeSites::at),
                )
            }
            None => (hint.family, hint.layer, hint.sites()),
        };
        if format == SaeFormat::GemmaScopeNpz && family == Some(SaeFamily::Embedding) {
            rescale_embedding(&mut weights)?;
        }
        if let Some(skip) = &skip {
            let want = [weights.d_in(), weights.d_out()];
            if skip.size() != want {
                return Err(Error::Shape {
                    path: weights.path.clone(),
                    key: SKIP_KEY.to_string(),
                    got: skip.size(),
                    expected: format!("{want:?} ([d_in, d_out])"),
                });
            }
        }
        let info = SaeInfo {
            name: name.to_string(),
            path: weights.path.clone(),
            format,
            d_in: weights.d_in(),
            d_sae: weights.d_sae(),
            d_out: weights.d_out(),
            family,
            layer,
            site: sites.map(|s| s.read),
            write_site: sites.map(|s| s.write),
            affine_skip: skip.is_some(),
            hook_name: weights.hook_name.clone(),
        };
        let to = |t: &Tensor| -> Result<Tensor> {
            Ok(t.f_to_device(device)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?)
        };
        let sae = Sae {
            w_enc: to(&weights.w_enc)?,
            w_dec: to(&weights.w_dec)?,
            b_enc: to(&weights.b_enc)?,
            b_dec: to(&weights.b_dec)?,
            threshold: to(&weights.threshold)?,
            skip: skip.as_ref().map(to).transpose()?,
            info,
        };
        if let Some(sites) = sites {
            sae.check_sites(sites)?;
        }
        Ok(sae)
    }

    /// The stored name of a key in this SAE's file (Gemma Scope 2 writes them lowercase).
    fn stored_key(&self, key: &str) -> String {
        if self.info.format == SaeFormat::GemmaScope2 {
            key.to_lowercase()
        } else {
            key.to_string()
        }
    }

    /// Whether these weights can sit at `sites`: an SAE that writes where it reads has
    /// `d_out = d_in` and no affine skip.
    fn check_sites(&self, sites: SaeSites) -> Result<()> {
        if sites.is_transcoder() {
            return Ok(());
        }
        if self.info.d_out != self.info.d_in {
            return Err(Error::Shape {
                path: self.info.path.clone(),
                key: self.stored_key("W_dec"),
                got: self.w_dec.size(),
                expected: format!(
                    "[{}, {}] ([d_sae, d_in]): an SAE at {} writes what it reads; only a \
                     transcoder's decoder may have another width",
                    self.info.d_sae, self.info.d_in, sites.read
                ),
            });
        }
        if self.skip.is_some() {
            return Err(Error::UnexpectedKey {
                path: self.info.path.clone(),
                key: SKIP_KEY.to_string(),
                reason: format!(
                    "is a transcoder's affine skip, but this SAE reads and writes {}",
                    sites.read
                ),
            });
        }
        Ok(())
    }

    /// The same SAE placed at `sites` (an explicit site or layer where the name says none, or
    /// another than it says): an error when the weights cannot sit there (see
    /// [`sites`](Self::sites)). The family follows the sites.
    pub fn placed(&self, sites: SaeSites) -> Result<Sae> {
        self.check_sites(sites)?;
        let mut sae = self.clone();
        sae.info.site = Some(sites.read);
        sae.info.write_site = Some(sites.write);
        sae.info.layer = Some(sites.read.layer);
        // An embedding SAE keeps its family only at its own site.
        let embedding = self.info.family == Some(SaeFamily::Embedding)
            && sites == SaeFamily::Embedding.sites(0);
        sae.info.family = SaeFamily::of_sites(sites).or(embedding.then_some(SaeFamily::Embedding));
        Ok(sae)
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

    /// Output width `d_out`: `d_in` for an SAE, the written site's width for a transcoder.
    pub fn d_out(&self) -> i64 {
        self.info.d_out
    }

    /// The hook site this SAE reads, when its name or file says it (a transcoder's MLP input).
    pub fn site(&self) -> Option<Site> {
        self.info.site
    }

    /// The hook site the decoder writes, when known: [`site`](Self::site) for an SAE, the
    /// output of the post-feedforward norm for a transcoder.
    pub fn write_site(&self) -> Option<Site> {
        self.info.write_site
    }

    /// Where this SAE reads and writes, when known.
    pub fn sites(&self) -> Option<SaeSites> {
        Some(SaeSites {
            read: self.info.site?,
            write: self.info.write_site?,
        })
    }

    /// Whether the decoder writes another site than the encoder reads. Where the sites are
    /// not known yet: whether the family, an affine skip or a decoder of another width says so.
    pub fn is_transcoder(&self) -> bool {
        match self.sites() {
            Some(sites) => sites.is_transcoder(),
            None => {
                self.info.family == Some(SaeFamily::Transcoder)
                    || self.skip.is_some()
                    || self.info.d_out != self.info.d_in
            }
        }
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
            skip: self.skip.as_ref().map(to).transpose()?,
            info: self.info.clone(),
        })
    }

    /// `W_enc` `[d_in, d_sae]`.
    pub fn w_enc(&self) -> &Tensor {
        &self.w_enc
    }

    /// `W_dec` `[d_sae, d_out]`; row `i` is latent `i`'s decoder direction.
    pub fn w_dec(&self) -> &Tensor {
        &self.w_dec
    }

    /// A transcoder's affine skip `W_skip` `[d_in, d_out]` (`affine_skip_connection`).
    pub fn skip(&self) -> Option<&Tensor> {
        self.skip.as_ref()
    }

    /// `b_enc` `[d_sae]`.
    pub fn b_enc(&self) -> &Tensor {
        &self.b_enc
    }

    /// `b_dec` `[d_out]`.
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

    /// Check that the model's activation width at the SAE's write site is `d_out`.
    pub fn check_d_out(&self, model_d: i64) -> Result<()> {
        if model_d == self.info.d_out {
            Ok(())
        } else {
            Err(Error::DOutMismatch {
                path: self.info.path.clone(),
                d_out: self.info.d_out,
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

    /// `a·W_dec + b_dec`, `[..., d_out]` in the SAE's dtype (SAELens' `decode`: no skip).
    pub fn decode(&self, acts: &Tensor) -> Result<Tensor> {
        let (a2, lead) = self.as_rows(acts, self.info.d_sae, "SAE decode")?;
        Self::unrows(self.b_dec.f_addmm(&a2, &self.w_dec)?, &lead)
    }

    /// What the SAE writes for latents `acts` of the input `x`: `decode(acts) + x·W_skip`, the
    /// skip only for an affine transcoder (added after the decoder, as SAELens' `forward`).
    /// `[..., d_out]` in the SAE's dtype.
    pub fn output(&self, acts: &Tensor, x: &Tensor) -> Result<Tensor> {
        let out = self.decode(acts)?;
        let Some(skip) = &self.skip else {
            return Ok(out);
        };
        let (x2, lead) = self.as_rows(x, self.info.d_in, "transcoder skip")?;
        Ok(out.f_add(&Self::unrows(x2.f_matmul(skip)?, &lead)?)?)
    }

    /// `decode(encode(x))` plus, for an affine transcoder, `x·W_skip`: the SAE's estimate of
    /// its write site (SAELens' `forward`), in the SAE's dtype.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.output(&self.encode(x)?, x)
    }

    /// `decode(encode(x)) + (x − decode(encode(x)))` computed in the SAE's dtype, as SAELens'
    /// `use_error_term` does: the model sees its own activation up to that dtype's rounding.
    /// A transcoder's error is measured at its write site: see
    /// [`reconstruct_with_error_of`](Self::reconstruct_with_error_of).
    pub fn reconstruct_with_error(&self, x: &Tensor) -> Result<Tensor> {
        if self.is_transcoder() {
            return Err(Error::input(
                "reconstruct with error",
                "a transcoder's error is measured at its write site: use \
                 reconstruct_with_error_of(x, target)",
            ));
        }
        self.reconstruct_with_error_of(x, x)
    }

    /// `reconstruct(x) + (target − reconstruct(x))` in the SAE's dtype, with `target` the
    /// write site's own activation (`x` itself for an SAE).
    pub fn reconstruct_with_error_of(&self, x: &Tensor, target: &Tensor) -> Result<Tensor> {
        let x = x.f_to_device(self.device())?.f_to_kind(self.dtype())?;
        let target = target.f_to_device(self.device())?.f_to_kind(self.dtype())?;
        let recon = self.reconstruct(&x)?;
        if recon.size() != target.size() {
            return Err(Error::input(
                "reconstruct with error",
                format!(
                    "the target {:?} is not the shape of the output {:?}",
                    target.size(),
                    recon.size()
                ),
            ));
        }
        let error = target.f_sub(&recon)?;
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

    /// `magnitude * W_dec[latent]`, `[d_out]` in the SAE's dtype on its device (the magnitude
    /// rounded to that dtype first, as `torch.tensor(mag, dtype=...)` is); it belongs at the
    /// write site.
    pub fn steering_vector(&self, latent: i64, magnitude: f64) -> Result<Tensor> {
        self.check_latent(latent)?;
        let mag = Tensor::f_from_slice(&[magnitude as f32])?
            .f_to_device(self.device())?
            .f_to_kind(self.dtype())?;
        Ok(mag.f_mul(&self.w_dec.f_get(latent)?)?)
    }

    /// `Σ magnitude_i * W_dec[latent_i]` in the SAE's dtype, summed in the order given.
    pub fn steering_sum(&self, pairs: &[(i64, f64)]) -> Result<Tensor> {
        let mut total = Tensor::f_zeros([self.info.d_out], (self.dtype(), self.device()))?;
        for (i, &(latent, magnitude)) in pairs.iter().enumerate() {
            let v = self.steering_vector(latent, magnitude)?;
            total = if i == 0 { v } else { total.f_add(&v)? };
        }
        Ok(total)
    }
}
