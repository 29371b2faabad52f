//! A tiny position-wise model implementing `HookedModel`, for the graph tests.
//!
//! Embedding lookup, then per layer `h = h @ W_l + b_l` (no mixing across positions, so a
//! one-token decode step equals a KV-cached step), then `logits = h @ U`. Sites per layer:
//! `block_input` (`model.layers[l].input`), `attention_value_output`
//! (`model.layers[l].self_attn.o_proj.input`, 2 heads; it is the layer input itself) and
//! `block_output` (`model.layers[l].output`).

#![allow(dead_code)]

use std::cell::RefCell;

use intervene::{
    ForwardInfo, ForwardOptions, HookPoint, HookedModel, Hooks, Site, SiteCatalog, SiteInfo,
    SiteKind, Stacked, StackedPart,
};
use tch::{Device, Kind, Tensor};

pub const V: i64 = 16;
pub const D: i64 = 4;
pub const L: usize = 2;

#[derive(Debug)]
pub struct MockError(pub String);

impl std::fmt::Display for MockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mock: {}", self.0)
    }
}

impl std::error::Error for MockError {}

impl From<intervene::Error> for MockError {
    fn from(e: intervene::Error) -> Self {
        MockError(e.to_string())
    }
}

/// What one forward call looked like (for tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub batch: i64,
    pub chunk_len: i64,
    pub past_len: i64,
    pub stop_after_layer: Option<usize>,
}

pub struct Mock {
    pub kind: Kind,
    pub emb: Tensor,
    pub w: Vec<Tensor>,
    pub b: Vec<Tensor>,
    pub unembed: Tensor,
    pub calls: RefCell<Vec<CallRecord>>,
    /// What each generation's hooks answered to `decode_steps_replayable`.
    pub replayable: RefCell<Vec<bool>>,
    /// Whether `stack_inputs` stacks (end-padded with token 0) or declines.
    pub stacks: bool,
}

/// Token ids `[B, S]`.
pub struct Input(pub Tensor);

impl Input {
    pub fn new(rows: &[&[i64]]) -> Self {
        let s = rows[0].len() as i64;
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Input(Tensor::from_slice(&flat).reshape([rows.len() as i64, s]))
    }
}

pub struct GenConfig {
    pub max_new_tokens: usize,
}

impl Mock {
    pub fn new(kind: Kind) -> Self {
        let emb = (Tensor::arange(V * D, (Kind::Float, Device::Cpu)).reshape([V, D]) * 0.37)
            .sin()
            .to_kind(kind);
        let w = (0..L)
            .map(|l| {
                ((Tensor::arange(D * D, (Kind::Float, Device::Cpu)) * (0.7 + l as f64)).cos() * 0.8)
                    .reshape([D, D])
                    .to_kind(kind)
            })
            .collect();
        let b = (0..L)
            .map(|l| (Tensor::arange(D, (Kind::Float, Device::Cpu)) * 0.1 + l as f64).to_kind(kind))
            .collect();
        let unembed = (Tensor::arange(D * V, (Kind::Float, Device::Cpu)).reshape([D, V]) * 0.53)
            .cos()
            .to_kind(kind);
        Mock {
            kind,
            emb,
            w,
            b,
            unembed,
            calls: RefCell::new(Vec::new()),
            replayable: RefCell::new(Vec::new()),
            stacks: false,
        }
    }

    /// The same model, stacking inputs when the graph asks.
    pub fn stacking(kind: Kind) -> Self {
        Mock {
            stacks: true,
            ..Mock::new(kind)
        }
    }

    pub fn embed(&self, ids: &Tensor) -> Tensor {
        self.emb
            .index_select(0, &ids.flatten(0, -1))
            .reshape([ids.size()[0], ids.size()[1], D])
    }

    pub fn layer(&self, l: usize, h: &Tensor) -> Tensor {
        h.matmul(&self.w[l]) + &self.b[l]
    }

    pub fn logits(&self, h: &Tensor) -> Tensor {
        h.matmul(&self.unembed)
    }

    /// The residual stream entering each layer and after the last, no hooks.
    pub fn clean_states(&self, ids: &Tensor) -> Vec<Tensor> {
        let mut h = self.embed(ids);
        let mut out = vec![h.shallow_clone()];
        for l in 0..L {
            h = self.layer(l, &h);
            out.push(h.shallow_clone());
        }
        out
    }

    pub fn n_calls(&self) -> usize {
        self.calls.borrow().len()
    }

    fn run(
        &self,
        ids: &Tensor,
        past_len: i64,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<Tensor>, MockError> {
        let size = ids.size();
        let info = ForwardInfo {
            batch: size[0],
            chunk_len: size[1],
            past_len,
        };
        self.calls.borrow_mut().push(CallRecord {
            batch: size[0],
            chunk_len: size[1],
            past_len,
            stop_after_layer: options.stop_after_layer,
        });
        hooks.begin_forward(&info)?;
        let mut h = self.embed(ids);
        for l in 0..L {
            let s = Site::new(l, SiteKind::BlockInput);
            if hooks.wants(s) {
                hooks.visit(s, &mut h)?;
            }
            let mut a = h.shallow_clone();
            let s = Site::new(l, SiteKind::AttentionValueOutput);
            if hooks.wants(s) {
                hooks.visit(s, &mut a)?;
            }
            h = self.layer(l, &a);
            let s = Site::new(l, SiteKind::BlockOutput);
            if hooks.wants(s) {
                hooks.visit(s, &mut h)?;
            }
            if options.stop_after_layer == Some(l) {
                return Ok(None);
            }
        }
        Ok(Some(self.logits(&h)))
    }
}

impl HookedModel for Mock {
    type Input = Input;
    type Output = Option<Tensor>;
    type GenerateConfig = GenConfig;
    type Generated = Tensor;
    type Error = MockError;

    fn site_catalog(&self) -> SiteCatalog {
        let mut sites = Vec::new();
        for l in 0..L {
            sites.push(SiteInfo {
                site: Site::new(l, SiteKind::BlockInput),
                module_path: format!("model.layers[{l}]"),
                hook: HookPoint::Input,
                width: D,
                heads: None,
            });
            sites.push(SiteInfo {
                site: Site::new(l, SiteKind::BlockOutput),
                module_path: format!("model.layers[{l}]"),
                hook: HookPoint::Output,
                width: D,
                heads: None,
            });
            sites.push(SiteInfo {
                site: Site::new(l, SiteKind::AttentionValueOutput),
                module_path: format!("model.layers[{l}].self_attn.o_proj"),
                hook: HookPoint::Input,
                width: D,
                heads: Some(2),
            });
        }
        SiteCatalog {
            num_layers: L,
            sites,
        }
    }

    fn forward_hooked(
        &self,
        input: &Input,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<Tensor>, MockError> {
        self.run(&input.0, 0, options, hooks)
    }

    fn stack_inputs(&self, inputs: &[&Input]) -> Result<Option<Stacked<Input>>, MockError> {
        if !self.stacks {
            return Ok(None);
        }
        let width = inputs.iter().map(|i| i.0.size()[1]).max().unwrap_or(0);
        let mut parts = Vec::new();
        let mut first_row = 0;
        let padded: Vec<Tensor> = inputs
            .iter()
            .map(|i| {
                let [rows, len] = i.0.size()[..] else {
                    unreachable!("inputs are [B, S]")
                };
                parts.push(StackedPart {
                    first_row,
                    rows,
                    len,
                });
                first_row += rows;
                i.0.pad([0, width - len], "constant", Some(0.0))
            })
            .collect();
        Ok(Some(Stacked {
            input: Input(Tensor::cat(&padded, 0)),
            parts,
        }))
    }

    /// Greedy; the prompt call, then one call per new token over that token only (the last
    /// sampled token never passes through the model).
    fn generate_hooked(
        &self,
        input: &Input,
        config: &GenConfig,
        hooks: &mut dyn Hooks,
    ) -> Result<Tensor, MockError> {
        self.replayable
            .borrow_mut()
            .push(hooks.decode_steps_replayable());
        let mut ids = input.0.shallow_clone();
        let mut chunk = input.0.shallow_clone();
        let mut past = 0;
        for _ in 0..config.max_new_tokens {
            let logits = self
                .run(&chunk, past, &ForwardOptions::default(), hooks)?
                .ok_or_else(|| MockError("no logits".into()))?;
            past += chunk.size()[1];
            let next = logits.select(1, -1).argmax(-1, true);
            ids = Tensor::cat(&[ids, next.shallow_clone()], 1);
            chunk = next;
        }
        Ok(ids)
    }
}

/// Greedy generation by hand with a position-wise edit `f(layer_output_of_layer_l, call)`.
pub fn generate_by_hand(
    m: &Mock,
    ids: &Tensor,
    n: usize,
    l_edit: usize,
    f: &dyn Fn(&Tensor, usize) -> Tensor,
) -> Tensor {
    let mut all = ids.shallow_clone();
    let mut chunk = ids.shallow_clone();
    for call in 0..n {
        let mut h = m.embed(&chunk);
        for l in 0..L {
            h = m.layer(l, &h);
            if l == l_edit {
                h = f(&h, call);
            }
        }
        let next = m.logits(&h).select(1, -1).argmax(-1, true);
        all = Tensor::cat(&[all, next.shallow_clone()], 1);
        chunk = next;
    }
    all
}
