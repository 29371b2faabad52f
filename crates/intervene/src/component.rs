//! Components: where an intervention attaches, as the user names it and as the model resolves it.
//!
//! pyvene addresses a component two ways, and so does this crate:
//! - a raw module path with a hook point, `model.layers[20].output` or `model.layers[3].input`
//!   ([`Component::path`]); the module path is looked up in the model's [`SiteCatalog`];
//! - a representation-type name with a layer, `block_output` at layer 20
//!   ([`Component::typed`]). The `head_*` names (`head_attention_value_output`,
//!   `head_query_output`, `head_key_output`, `head_value_output`) name the same site as their
//!   plain counterpart, split into the heads the catalog gives it.
//!
//! A [`Site`] converts into a component too, so a site known from the model (an SAE's, say)
//! goes wherever a component does (`RepresentationConfig::new(site, intervention)`):
//!
//! ```
//! use intervene::{Component, Site, SiteKind};
//!
//! let site = Site::new(20, SiteKind::BlockOutput); // the residual stream after layer 20
//! let component: Component = site.into();
//! assert_eq!(component, Component::Site(site));
//! ```
//!
//! Resolution happens once, when the graph is built: an unknown component, a layer out of range
//! or a path that ends in neither `.input` nor `.output` is an error that names it.

use std::fmt;

use crate::error::{Error, Result};
use crate::site::{HookPoint, Site, SiteCatalog, SiteKind};

/// A component as the user names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    /// A raw module path ending in `.input` or `.output`, e.g. `model.layers[20].output`.
    /// pyvene ignores the `layer` field for raw paths; so does this crate.
    Path(String),
    /// A representation-type name (`block_output`, `mlp_activation`, `head_query_output`, ...)
    /// at a decoder layer.
    Typed {
        /// pyvene's type name.
        name: String,
        /// 0-based decoder layer.
        layer: usize,
    },
    /// A site given directly.
    Site(Site),
}

impl Component {
    /// A raw module path such as `model.layers[20].output`.
    pub fn path(path: impl Into<String>) -> Self {
        Component::Path(path.into())
    }

    /// A representation-type name at a layer, such as `("block_output", 20)`.
    pub fn typed(name: impl Into<String>, layer: usize) -> Self {
        Component::Typed {
            name: name.into(),
            layer,
        }
    }

    /// Resolve against the model's catalog.
    pub fn resolve(&self, catalog: &SiteCatalog) -> Result<ResolvedComponent> {
        match self {
            Component::Path(path) => resolve_path(path, catalog),
            Component::Typed { name, layer } => resolve_typed(name, *layer, catalog),
            Component::Site(site) => {
                check_layer(site.layer, catalog)?;
                let info = catalog.get(*site).ok_or_else(|| Error::UnknownComponent {
                    component: site.to_string(),
                    reason: "the model does not expose this site".into(),
                })?;
                Ok(ResolvedComponent {
                    site: *site,
                    width: info.width,
                    heads: None,
                })
            }
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Path(p) => f.write_str(p),
            Component::Typed { name, layer } => write!(f, "{name} at layer {layer}"),
            Component::Site(s) => write!(f, "{s}"),
        }
    }
}

impl From<&str> for Component {
    /// A raw module path.
    fn from(path: &str) -> Self {
        Component::Path(path.to_string())
    }
}

impl From<String> for Component {
    /// A raw module path.
    fn from(path: String) -> Self {
        Component::Path(path)
    }
}

impl From<Site> for Component {
    fn from(site: Site) -> Self {
        Component::Site(site)
    }
}

/// A component resolved against a model: the site it reads and writes, and how the activation
/// is viewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedComponent {
    /// The hook site.
    pub site: Site,
    /// Width of the activation's last dimension at the site (heads not split).
    pub width: i64,
    /// For `head_*` components: the number of heads the width splits into. The intervention then
    /// sees `[batch, heads, positions, head_dim]` slices.
    pub heads: Option<i64>,
}

impl ResolvedComponent {
    /// The width of the last dimension of the slices an intervention sees (`head_dim` for head
    /// components).
    pub fn unit_width(&self) -> i64 {
        match self.heads {
            Some(h) if h > 0 => self.width / h,
            _ => self.width,
        }
    }
}

fn check_layer(layer: usize, catalog: &SiteCatalog) -> Result<()> {
    if layer >= catalog.num_layers {
        return Err(Error::LayerOutOfRange {
            layer,
            num_layers: catalog.num_layers,
        });
    }
    Ok(())
}

/// The layer index named by a path such as `model.layers[20].mlp`, if any.
fn layer_in_path(module_path: &str) -> Option<Result<usize, String>> {
    let start = module_path.find("layers[")? + "layers[".len();
    let rest = &module_path[start..];
    let end = rest.find(']')?;
    Some(
        rest[..end]
            .trim()
            .parse::<usize>()
            .map_err(|e| e.to_string()),
    )
}

fn resolve_path(path: &str, catalog: &SiteCatalog) -> Result<ResolvedComponent> {
    let unknown = |reason: String| Error::UnknownComponent {
        component: path.to_string(),
        reason,
    };
    let (module, point) = path.rsplit_once('.').ok_or_else(|| {
        unknown("a raw module path must end in `.input` or `.output`".to_string())
    })?;
    let hook = match point {
        "output" => HookPoint::Output,
        "input" => HookPoint::Input,
        other => {
            return Err(unknown(format!(
                "a raw module path must end in `.input` or `.output`, not `.{other}` \
                 (pyvene fails here with UnboundLocalError 'hook_type')"
            )))
        }
    };
    match layer_in_path(module) {
        Some(Ok(layer)) => check_layer(layer, catalog)?,
        Some(Err(e)) => return Err(unknown(format!("bad layer index: {e}"))),
        None => {}
    }
    let info = catalog.by_path(module, hook).ok_or_else(|| {
        let mut known: Vec<String> = catalog
            .sites
            .iter()
            .filter(|s| s.site.layer == 0)
            .map(|s| {
                let p = match s.hook {
                    HookPoint::Input => "input",
                    HookPoint::Output => "output",
                };
                format!("{}.{p}", s.module_path)
            })
            .collect();
        known.sort();
        unknown(format!(
            "no module `{module}` with hook `.{point}` in the model's site catalog \
             (paths at layer 0: {})",
            known.join(", ")
        ))
    })?;
    Ok(ResolvedComponent {
        site: info.site,
        width: info.width,
        heads: None,
    })
}

fn resolve_typed(name: &str, layer: usize, catalog: &SiteCatalog) -> Result<ResolvedComponent> {
    let unknown = |reason: String| Error::UnknownComponent {
        component: format!("{name} at layer {layer}"),
        reason,
    };
    let (base_name, split) = match name.strip_prefix("head_") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let kind = SiteKind::from_type_name(base_name).ok_or_else(|| {
        let names: Vec<&str> = SiteKind::ALL.iter().map(|k| k.type_name()).collect();
        unknown(format!(
            "not a representation type; known: {} (and head_ variants of the attention \
             projections), or a raw path such as `model.layers[{layer}].output`",
            names.join(", ")
        ))
    })?;
    if split
        && !matches!(
            kind,
            SiteKind::AttentionValueOutput
                | SiteKind::QueryOutput
                | SiteKind::KeyOutput
                | SiteKind::ValueOutput
                | SiteKind::QueryNormOutput
                | SiteKind::KeyNormOutput
        )
    {
        return Err(unknown(format!("`{base_name}` has no head_ variant")));
    }
    check_layer(layer, catalog)?;
    let site = Site::new(layer, kind);
    let info = catalog
        .get(site)
        .ok_or_else(|| unknown("the model does not expose this site".into()))?;
    let heads = if split {
        let h = info
            .heads
            .ok_or_else(|| unknown("the model gives this site no head count".into()))?;
        if h <= 0 || info.width % h != 0 {
            return Err(unknown(format!(
                "width {} does not split into {h} heads",
                info.width
            )));
        }
        Some(h)
    } else {
        None
    };
    Ok(ResolvedComponent {
        site,
        width: info.width,
        heads,
    })
}

/// pyvene's key for an intervention: `comp_model_layers[20]_output_unit_pos_nunit_1#0` for raw
/// paths, `layer_20_comp_block_output_unit_pos_nunit_1#0` for type names.
pub(crate) fn pyvene_key(component: &Component, duplicate: usize) -> String {
    match component {
        Component::Path(p) => {
            format!("comp_{}_unit_pos_nunit_1#{duplicate}", p.replace('.', "_"))
        }
        Component::Typed { name, layer } => {
            format!("layer_{layer}_comp_{name}_unit_pos_nunit_1#{duplicate}")
        }
        Component::Site(s) => format!(
            "layer_{}_comp_{}_unit_pos_nunit_1#{duplicate}",
            s.layer, s.kind
        ),
    }
}
