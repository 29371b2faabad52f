//! A generic intervention graph for language models on libtorch, in the spirit of pyvene.
//!
//! This crate knows no model. A model implements [`HookedModel`] and calls [`Hooks`] at the
//! [`Site`]s it exposes; interventions (collect, add, zero, interchange, user closures) are
//! attached to components resolved against the model's [`SiteCatalog`].

pub mod error;
pub mod hooks;
pub mod intervention;
pub mod site;

pub use error::Error;
pub use hooks::{ForwardInfo, ForwardOptions, HookedModel, Hooks, NoHooks};
pub use intervention::{Intervention, InterventionRole, Subspaces};
pub use site::{HookPoint, Site, SiteCatalog, SiteInfo, SiteKind};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
