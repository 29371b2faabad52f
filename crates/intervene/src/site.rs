//! Hook sites: the named points inside a model where activations can be read or written.
//!
//! A model describes the sites it exposes with a [`SiteCatalog`]; the intervention graph
//! resolves user-facing component names (pyvene's raw module paths such as
//! `model.layers[20].output`, or representation-type names such as `block_output` with a layer)
//! against that catalog. This module knows no particular model.

use std::fmt;

/// The kind of activation at a hook site, named after pyvene's representation types.
///
/// Every site delivers a `[batch, chunk_len, width]` tensor to hooks (heads not split); the
/// head-split components (`head_*`) are views the intervention graph builds from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKind {
    /// The residual stream entering decoder layer `l` (pyvene `block_input`).
    BlockInput,
    /// The residual stream after decoder layer `l` (pyvene `block_output`, `resid_post`).
    BlockOutput,
    /// The normed hidden states entering self-attention (pyvene `attention_input`).
    AttentionInput,
    /// Self-attention output after `o_proj`, before the post-attention norm (`attention_output`).
    AttentionOutput,
    /// The input of `o_proj`: heads concatenated, `heads * head_dim` wide (`attention_value_output`,
    /// Gemma Scope's attention SAE site `hook_z`).
    AttentionValueOutput,
    /// `q_proj` output (`query_output`), `heads * head_dim` wide.
    QueryOutput,
    /// `k_proj` output (`key_output`), `kv_heads * head_dim` wide.
    KeyOutput,
    /// `v_proj` output (`value_output`), `kv_heads * head_dim` wide.
    ValueOutput,
    /// The queries after the per-head RMSNorm `q_norm` (`query_norm_output`; Gemma 3 only),
    /// before the rotation, `heads * head_dim` wide with the heads concatenated (HF's
    /// `q_norm` returns them split, `[batch, heads, len, head_dim]`).
    QueryNormOutput,
    /// The keys after `k_norm` (`key_norm_output`; Gemma 3 only), `kv_heads * head_dim`
    /// wide, heads concatenated.
    KeyNormOutput,
    /// The normed hidden states entering the MLP (`mlp_input`).
    MlpInput,
    /// MLP output before the post-feedforward norm (`mlp_output`).
    MlpOutput,
    /// The activation `act_fn(gate_proj(x))`, `intermediate` wide (`mlp_activation`).
    MlpActivation,
    /// Output of the post-feedforward norm: Gemma Scope's MLP SAE site (`hook_mlp_out`).
    PostFeedforwardNormOutput,
}

impl SiteKind {
    /// Every kind, in model execution order within one decoder layer.
    pub const ALL: [SiteKind; 14] = [
        SiteKind::BlockInput,
        SiteKind::AttentionInput,
        SiteKind::QueryOutput,
        SiteKind::KeyOutput,
        SiteKind::ValueOutput,
        SiteKind::QueryNormOutput,
        SiteKind::KeyNormOutput,
        SiteKind::AttentionValueOutput,
        SiteKind::AttentionOutput,
        SiteKind::MlpInput,
        SiteKind::MlpActivation,
        SiteKind::MlpOutput,
        SiteKind::PostFeedforwardNormOutput,
        SiteKind::BlockOutput,
    ];

    /// pyvene's representation-type name for this kind.
    pub fn type_name(self) -> &'static str {
        match self {
            SiteKind::BlockInput => "block_input",
            SiteKind::BlockOutput => "block_output",
            SiteKind::AttentionInput => "attention_input",
            SiteKind::AttentionOutput => "attention_output",
            SiteKind::AttentionValueOutput => "attention_value_output",
            SiteKind::QueryOutput => "query_output",
            SiteKind::KeyOutput => "key_output",
            SiteKind::ValueOutput => "value_output",
            SiteKind::QueryNormOutput => "query_norm_output",
            SiteKind::KeyNormOutput => "key_norm_output",
            SiteKind::MlpInput => "mlp_input",
            SiteKind::MlpOutput => "mlp_output",
            SiteKind::MlpActivation => "mlp_activation",
            SiteKind::PostFeedforwardNormOutput => "post_feedforward_norm_output",
        }
    }

    /// The kind whose [`type_name`](Self::type_name) is `name`.
    pub fn from_type_name(name: &str) -> Option<SiteKind> {
        SiteKind::ALL.into_iter().find(|k| k.type_name() == name)
    }

    /// Position of this kind in execution order within a layer (for ordering hooks).
    pub fn execution_rank(self) -> usize {
        SiteKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(usize::MAX)
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// One hook site: a kind at a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    /// 0-based decoder layer.
    pub layer: usize,
    /// What the activation is.
    pub kind: SiteKind,
}

impl Site {
    /// A site at `layer` of `kind`.
    pub fn new(layer: usize, kind: SiteKind) -> Self {
        Site { layer, kind }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at layer {}", self.kind, self.layer)
    }
}

/// Whether a raw module path reads the module's input (a pre-hook) or its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookPoint {
    /// `module.input`: the first positional argument of the module.
    Input,
    /// `module.output`: the module's return value (element 0 of a tuple).
    Output,
}

/// What a model says about one of its sites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteInfo {
    /// The site.
    pub site: Site,
    /// The module path as pyvene writes it, without the hook point, e.g. `model.layers[3].mlp`.
    pub module_path: String,
    /// Whether the site is that module's input or output.
    pub hook: HookPoint,
    /// Width of the last dimension of the activation.
    pub width: i64,
    /// Number of heads the activation splits into for `head_*` components, if it has heads.
    pub heads: Option<i64>,
}

/// Every site a model exposes, with the model's depth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteCatalog {
    /// Number of decoder layers.
    pub num_layers: usize,
    /// All sites, any order.
    pub sites: Vec<SiteInfo>,
}

impl SiteCatalog {
    /// The description of `site`, if the model exposes it.
    pub fn get(&self, site: Site) -> Option<&SiteInfo> {
        self.sites.iter().find(|s| s.site == site)
    }

    /// The site a raw module path with a hook point names, if any.
    pub fn by_path(&self, module_path: &str, hook: HookPoint) -> Option<&SiteInfo> {
        self.sites
            .iter()
            .find(|s| s.hook == hook && s.module_path == module_path)
    }
}
