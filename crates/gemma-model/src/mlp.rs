//! The GeGLU MLP: `down(act(gate(h)) * up(h))`, no biases, all in the model dtype.

use intervene::{Hooks, Site, SiteKind};
use tch::{Device, Tensor};

use crate::config::Activation;
use crate::error::Result;

/// Below this many rows (and above one) the CPU computes `gate` and `up` as two products.
const FEW_ROWS: i64 = 32;

/// One layer's MLP weights.
#[derive(Debug)]
pub struct Mlp {
    /// `gate_proj` and `up_proj` stacked, `[2 * intermediate, hidden]`: one product instead of
    /// two, each output column computed exactly as by its own projection.
    gate_up_proj: Tensor,
    /// `[intermediate, hidden]`, a view of the first half of `gate_up_proj`.
    gate_proj: Tensor,
    /// `[intermediate, hidden]`, a view of the second half.
    up_proj: Tensor,
    /// `[hidden, intermediate]`.
    pub down_proj: Tensor,
    /// The gate's activation (GELU, tanh-approximated in every released Gemma 2).
    pub activation: Activation,
}

impl Mlp {
    /// One layer's MLP from its checkpoint weights: `gate_proj` and `up_proj`
    /// (`[intermediate, hidden]`, stacked here once) and `down_proj` (`[hidden, intermediate]`).
    pub fn new(
        gate_proj: &Tensor,
        up_proj: &Tensor,
        down_proj: Tensor,
        activation: Activation,
    ) -> Result<Self> {
        let intermediate = gate_proj.size().first().copied().unwrap_or(0);
        let gate_up_proj = Tensor::f_cat(&[gate_proj, up_proj], 0)?;
        Ok(Mlp {
            gate_proj: gate_up_proj.f_narrow(0, 0, intermediate)?,
            up_proj: gate_up_proj.f_narrow(0, intermediate, intermediate)?,
            gate_up_proj,
            down_proj,
            activation,
        })
    }

    /// `gate_proj`'s weight, `[intermediate, hidden]`.
    pub fn gate_proj(&self) -> &Tensor {
        &self.gate_proj
    }

    /// `gate_proj` and `up_proj` stacked, `[2 * intermediate, hidden]`.
    pub(crate) fn stacked_gate_up(&self) -> &Tensor {
        &self.gate_up_proj
    }

    /// `up_proj`'s weight, `[intermediate, hidden]`.
    pub fn up_proj(&self) -> &Tensor {
        &self.up_proj
    }

    /// The MLP over normed hidden states `h` (`[B, T, hidden]`), visiting the activation site
    /// of `layer`.
    pub fn forward(&self, h: &Tensor, layer: usize, hooks: &mut dyn Hooks) -> Result<Tensor> {
        let (gate, up) = self.gate_and_up(h)?;
        let mut act = match self.activation {
            Activation::GeluTanh => gate.f_gelu("tanh")?,
            Activation::Gelu => gate.f_gelu("none")?,
        };
        let site = Site::new(layer, SiteKind::MlpActivation);
        if hooks.wants(site) {
            hooks.visit(site, &mut act)?;
        }
        Ok(act.f_mul(&up)?.f_linear::<&Tensor>(&self.down_proj, None)?)
    }

    /// `gate_proj(h)` and `up_proj(h)`: one product over the stacked matrix, except for a few
    /// rows on the CPU, where MKL picks a slow kernel for the wide matrix. Measured on the
    /// `small` shapes (2 · 2048 × 512, f32, 2 threads), stacked vs two products: 1 row 151 vs
    /// 155 µs, 15 rows 726 vs 480 µs, 128 rows 1496 vs 2135 µs, 512 rows 5389 vs 7418 µs.
    fn gate_and_up(&self, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let hidden = h.size().last().copied().unwrap_or(1).max(1);
        let rows = h.numel() as i64 / hidden;
        if h.device() == Device::Cpu && (2..FEW_ROWS).contains(&rows) {
            return Ok((
                h.f_linear::<&Tensor>(&self.gate_proj, None)?,
                h.f_linear::<&Tensor>(&self.up_proj, None)?,
            ));
        }
        let both = h.f_linear::<&Tensor>(&self.gate_up_proj, None)?;
        let intermediate = self.gate_proj.size()[0];
        Ok((
            both.f_narrow(-1, 0, intermediate)?,
            both.f_narrow(-1, intermediate, intermediate)?,
        ))
    }
}
