//! Which activations an SAE reads and writes: its Gemma Scope family ([`SaeFamily`]), the
//! names SAELens and Gemma Scope 2 give the families, and the two sites of an SAE or a
//! transcoder ([`SaeSites`]). Below both [`crate::name`] and [`crate::gemma_scope_2`], which
//! read families out of names.

use intervene::{Site, SiteKind};

/// Which Gemma Scope family an SAE belongs to, i.e. which activation it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaeFamily {
    /// Residual stream after decoder layer `L` (`-res`, SAELens `blocks.L.hook_resid_post`).
    Residual,
    /// Output of the post-feedforward norm of layer `L` (`-mlp`, SAELens `blocks.L.hook_mlp_out`).
    Mlp,
    /// Input of `o_proj` of layer `L`, heads concatenated (`-att`, SAELens `blocks.L.attn.hook_z`).
    Attention,
    /// The token embedding (`-res/embedding/...`, SAELens `hook_embed`).
    ///
    /// Gemma Scope trained these on the *unscaled* embedding. As SAELens does, the loader divides
    /// `W_enc` and multiplies `W_dec` by `sqrt(d_in)` so that the SAE reads the *scaled*
    /// embedding, which is what enters decoder layer 0: the site is
    /// [`SiteKind::BlockInput`] at layer 0.
    Embedding,
    /// MLP transcoders (Gemma Scope `-transcoders`, Gemma Scope 2 `transcoder/`): they read the
    /// MLP input (the output of `pre_feedforward_layernorm`, SAELens `blocks.L.hook_mlp_in` /
    /// `blocks.L.ln2.hook_normalized`) and predict the MLP's contribution (the output of
    /// `post_feedforward_layernorm`, `blocks.L.hook_mlp_out`): two sites, see
    /// [`SaeFamily::sites`]; no one [`Site`].
    Transcoder,
}

impl SaeFamily {
    /// The family a release or directory name ends with (`…-res`, `…-mlp`, `…-att`,
    /// `…-transcoders`), if any.
    pub fn from_release(name: &str) -> Option<SaeFamily> {
        let name = name.strip_suffix("-canonical").unwrap_or(name);
        // Gemma Scope 2's `…-all` releases hold the same kinds at every layer.
        let name = name.strip_suffix("-all").unwrap_or(name);
        if name.ends_with("-res") || name.contains("-res-") {
            Some(SaeFamily::Residual)
        } else if name.ends_with("-mlp") || name.contains("-mlp-") {
            Some(SaeFamily::Mlp)
        } else if name.ends_with("-att") || name.contains("-att-") {
            Some(SaeFamily::Attention)
        } else if name.ends_with("-transcoders") {
            Some(SaeFamily::Transcoder)
        } else {
            None
        }
    }

    /// The family of a SAELens hook name, with its layer: `blocks.L.hook_resid_post`,
    /// `blocks.L.hook_mlp_out`, `blocks.L.attn.hook_z`, `hook_embed`. Other hooks (e.g.
    /// `blocks.L.hook_resid_pre`) are no Gemma Scope family: `None` here; see
    /// [`site_from_hook_name`] for their sites.
    pub fn from_hook_name(hook: &str) -> Option<(SaeFamily, usize)> {
        if hook == "hook_embed" {
            return Some((SaeFamily::Embedding, 0));
        }
        let rest = hook.strip_prefix("blocks.")?;
        let (layer, tail) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let family = match tail {
            "hook_resid_post" => SaeFamily::Residual,
            "hook_mlp_out" => SaeFamily::Mlp,
            "attn.hook_z" => SaeFamily::Attention,
            _ => return None,
        };
        Some((family, layer))
    }

    /// The family a Gemma Scope 2 folder holds: `resid_post`, `attn_out`, `mlp_out`,
    /// `transcoder`, each also with `_all`. These are also the names `--site` takes.
    pub fn from_gemma_scope_2_folder(part: &str) -> Option<SaeFamily> {
        match part.strip_suffix("_all").unwrap_or(part) {
            "resid_post" => Some(SaeFamily::Residual),
            "attn_out" => Some(SaeFamily::Attention),
            "mlp_out" => Some(SaeFamily::Mlp),
            "transcoder" => Some(SaeFamily::Transcoder),
            _ => None,
        }
    }

    /// The Gemma Scope 2 folder of this family (`None` for embedding SAEs, which Gemma Scope 2
    /// does not have).
    pub fn gemma_scope_2_folder(self) -> Option<&'static str> {
        match self {
            SaeFamily::Residual => Some("resid_post"),
            SaeFamily::Attention => Some("attn_out"),
            SaeFamily::Mlp => Some("mlp_out"),
            SaeFamily::Transcoder => Some("transcoder"),
            SaeFamily::Embedding => None,
        }
    }

    /// Where this family reads and writes at `layer`: one site for the SAEs, the MLP input and
    /// the post-feedforward norm's output for transcoders.
    pub fn sites(self, layer: usize) -> SaeSites {
        match self {
            SaeFamily::Transcoder => SaeSites {
                read: Site::new(layer, SiteKind::MlpInput),
                write: Site::new(layer, SiteKind::PostFeedforwardNormOutput),
            },
            SaeFamily::Residual => SaeSites::at(Site::new(layer, SiteKind::BlockOutput)),
            SaeFamily::Mlp => SaeSites::at(Site::new(layer, SiteKind::PostFeedforwardNormOutput)),
            SaeFamily::Attention => SaeSites::at(Site::new(layer, SiteKind::AttentionValueOutput)),
            SaeFamily::Embedding => SaeSites::at(Site::new(0, SiteKind::BlockInput)),
        }
    }

    /// The family whose sites these are, if any.
    pub fn of_sites(sites: SaeSites) -> Option<SaeFamily> {
        [
            SaeFamily::Residual,
            SaeFamily::Mlp,
            SaeFamily::Attention,
            SaeFamily::Transcoder,
        ]
        .into_iter()
        .find(|f| f.sites(sites.read.layer) == sites)
    }

    /// The hook site of this family at `layer`, if it is one site (an SAE that reads and writes
    /// there; `None` for transcoders, see [`sites`](Self::sites)).
    pub fn site(self, layer: usize) -> Option<Site> {
        match self {
            SaeFamily::Residual => Some(Site::new(layer, SiteKind::BlockOutput)),
            SaeFamily::Mlp => Some(Site::new(layer, SiteKind::PostFeedforwardNormOutput)),
            SaeFamily::Attention => Some(Site::new(layer, SiteKind::AttentionValueOutput)),
            SaeFamily::Embedding => Some(Site::new(0, SiteKind::BlockInput)),
            SaeFamily::Transcoder => None,
        }
    }
}

/// The site a SAELens hook name denotes: the families of [`SaeFamily::from_hook_name`] plus
/// `blocks.L.hook_resid_pre` ([`SiteKind::BlockInput`]).
pub fn site_from_hook_name(hook: &str) -> Option<Site> {
    if let Some((family, layer)) = SaeFamily::from_hook_name(hook) {
        return family.site(layer);
    }
    let rest = hook.strip_prefix("blocks.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    (tail == "hook_resid_pre").then(|| Site::new(layer, SiteKind::BlockInput))
}

/// Where an SAE reads the model, and where what it computes belongs.
///
/// For an SAE both are the same site: it reconstructs the activation it reads, and steering adds
/// its decoder directions there. A transcoder reads one site (the MLP input) and predicts
/// another (the MLP's contribution after the post-feedforward norm): its latents are read at
/// [`read`](Self::read), while its output, its steering directions and its reconstruction
/// metrics belong to [`write`](Self::write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SaeSites {
    /// The site whose activation is encoded.
    pub read: Site,
    /// The site the decoder writes: `read` for an SAE.
    pub write: Site,
}

impl SaeSites {
    /// An SAE that reads and writes `site`.
    pub fn at(site: Site) -> SaeSites {
        SaeSites {
            read: site,
            write: site,
        }
    }

    /// Whether the decoder writes another site than the encoder reads.
    pub fn is_transcoder(&self) -> bool {
        self.read != self.write
    }

    /// The same kinds at `layer` (both sites of a transcoder are in one layer).
    pub fn with_layer(self, layer: usize) -> SaeSites {
        SaeSites {
            read: Site::new(layer, self.read.kind),
            write: Site::new(layer, self.write.kind),
        }
    }
}

impl From<Site> for SaeSites {
    fn from(site: Site) -> SaeSites {
        SaeSites::at(site)
    }
}

impl std::fmt::Display for SaeSites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_transcoder() {
            write!(f, "{} → {}", self.read, self.write)
        } else {
            write!(f, "{}", self.read)
        }
    }
}
