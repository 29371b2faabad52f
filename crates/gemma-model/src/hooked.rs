//! [`intervene::HookedModel`] for [`GemmaModel`]: the graph's calls, each one forward call
//! (or the engine's generation).

use intervene::{
    ForwardInfo, ForwardOptions, HookedModel, Hooks, NoHooks, Paired, SiteCatalog, SiteKind,
    Stacked,
};
use scope_engine::{Batch, Call, Generated, GenerationConfig, ModelOutput};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::{wanted_sites, GemmaModel};

impl HookedModel for GemmaModel {
    type Input = Batch;
    type Output = ModelOutput;
    type GenerateConfig = GenerationConfig;
    type Generated = Generated;
    type Error = Error;

    fn site_catalog(&self) -> SiteCatalog {
        GemmaModel::site_catalog(self)
    }

    fn forward_hooked(
        &self,
        input: &Batch,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput> {
        self.forward(input, Call::with_options(*options), hooks)
    }

    fn generate_hooked(
        &self,
        input: &Batch,
        config: &GenerationConfig,
        hooks: &mut dyn Hooks,
    ) -> Result<Generated> {
        self.generate_with(input, config, hooks, &mut |_| true)
    }

    fn forward_hooked_from(
        &self,
        input: &Batch,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<ModelOutput>> {
        let call = Call {
            start: Some((layer, hidden)),
            ..Call::with_options(*options)
        };
        self.forward(input, call, hooks).map(Some)
    }

    fn forward_hooked_from_paired(
        &self,
        input: &Batch,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<Paired<ModelOutput>>> {
        forward_from_paired(self, input, layer, hidden, options, hooks).map(Some)
    }

    fn stack_inputs(&self, inputs: &[&Batch]) -> Result<Option<Stacked<Batch>>> {
        let (input, parts) = Batch::stacked_end_padded(inputs, self.config().pad_token_id)?;
        Ok(Some(Stacked { input, parts }))
    }
}

/// Two runs resumed at decoder layer `layer` (at least 1) from the same residual stream
/// `hidden`, as one batch of twice the rows: the first visits `hooks` at the block output of
/// layer `layer - 1` (the site a resumed call visits first) and nowhere else, the second runs
/// without hooks. Returns both, each within float rounding of its own resumed call (the
/// products run over twice the rows). Every weight from `layer` on, and the unembedding, is
/// read once for both: an interchange's intervened run and the end of its clean run. A hook
/// that wants a later site is an error.
fn forward_from_paired(
    model: &GemmaModel,
    batch: &Batch,
    layer: usize,
    hidden: &Tensor,
    options: &ForwardOptions,
    hooks: &mut dyn Hooks,
) -> Result<Paired<ModelOutput>> {
    let (b, t) = batch.shape()?;
    let previous = layer.checked_sub(1).ok_or_else(|| {
        Error::Input("a paired run resumes after a layer: `layer` must be at least 1".into())
    })?;
    let last_layer = model.last_layer(options)?;
    let plain = model.check_start(layer, hidden, b, t, last_layer)?;
    hooks.begin_forward(&ForwardInfo {
        batch: b,
        chunk_len: t,
        past_len: 0,
    })?;
    if let Some(site) = wanted_sites(hooks, layer..=last_layer).next() {
        return Err(Error::Input(format!(
            "a paired run visits hooks only at the output of layer {previous}, \
             but a hook wants {site}"
        )));
    }
    // A copy: a hook may write into the activation it is given.
    let mut hooked = plain.f_detach_copy()?;
    let site = intervene::Site::new(previous, SiteKind::BlockOutput);
    if hooks.wants(site) {
        hooks.visit(site, &mut hooked)?;
    }
    let both = Tensor::f_cat(&[&hooked, &plain], 0)?;
    let call = Call {
        start: Some((layer, &both)),
        ..Call::with_options(*options)
    };
    let out = model.forward(&batch.twice()?, call, &mut NoHooks)?;
    let rows = |t: &Tensor, first: i64| t.f_narrow(0, first, b);
    let half = |first: i64| -> Result<ModelOutput> {
        Ok(ModelOutput {
            logits: out.logits.as_ref().map(|l| rows(l, first)).transpose()?,
            hidden: rows(&out.hidden, first)?,
        })
    };
    Ok(Paired {
        hooked: half(0)?,
        plain: half(b)?,
    })
}
