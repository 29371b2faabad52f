//! The GeGLU MLP: `down(act(gate(h)) * up(h))`, no biases, all in the model dtype.

use intervene::{Hooks, Site, SiteKind};
use tch::Tensor;

use crate::config::Activation;
use crate::error::Result;

/// One layer's MLP weights (`nn.Linear` layout: `[out, in]`).
#[derive(Debug)]
pub struct Mlp {
    /// `[intermediate, hidden]`.
    pub gate_proj: Tensor,
    /// `[intermediate, hidden]`.
    pub up_proj: Tensor,
    /// `[hidden, intermediate]`.
    pub down_proj: Tensor,
    /// The activation on the gate branch.
    pub activation: Activation,
}

impl Mlp {
    /// The MLP on normed hidden states `h` (`[B, T, hidden]`), visiting the activation site.
    pub fn forward(&self, h: &Tensor, layer: usize, hooks: &mut dyn Hooks) -> Result<Tensor> {
        let gate = h.f_linear::<&Tensor>(&self.gate_proj, None)?;
        let mut act = match self.activation {
            Activation::GeluTanh => gate.f_gelu("tanh")?,
            Activation::Gelu => gate.f_gelu("none")?,
        };
        let site = Site::new(layer, SiteKind::MlpActivation);
        if hooks.wants(site) {
            hooks.visit(site, &mut act)?;
        }
        let up = h.f_linear::<&Tensor>(&self.up_proj, None)?;
        Ok(act.f_mul(&up)?.f_linear::<&Tensor>(&self.down_proj, None)?)
    }
}
