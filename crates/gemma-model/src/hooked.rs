//! [`intervene::HookedModel`] for [`Gemma2Model`].

use intervene::{ForwardOptions, HookedModel, Hooks, Paired, SiteCatalog, Stacked};
use tch::Tensor;

use crate::error::Error;
use crate::generate::{Generated, GenerationConfig};
use crate::model::{Batch, Gemma2Model, ModelOutput};

impl HookedModel for Gemma2Model {
    type Input = Batch;
    type Output = ModelOutput;
    type GenerateConfig = GenerationConfig;
    type Generated = Generated;
    type Error = Error;

    fn site_catalog(&self) -> SiteCatalog {
        Gemma2Model::site_catalog(self)
    }

    fn forward_hooked(
        &self,
        input: &Batch,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<ModelOutput, Error> {
        self.forward_with(input, options, hooks)
    }

    fn generate_hooked(
        &self,
        input: &Batch,
        config: &GenerationConfig,
        hooks: &mut dyn Hooks,
    ) -> Result<Generated, Error> {
        self.generate_with(input, config, hooks, &mut |_| true)
    }

    fn forward_hooked_from(
        &self,
        input: &Batch,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<ModelOutput>, Error> {
        self.forward_from(input, layer, hidden, options, hooks)
            .map(Some)
    }

    fn forward_hooked_from_paired(
        &self,
        input: &Batch,
        layer: usize,
        hidden: &Tensor,
        options: &ForwardOptions,
        hooks: &mut dyn Hooks,
    ) -> Result<Option<Paired<ModelOutput>>, Error> {
        self.forward_from_paired(input, layer, hidden, options, hooks)
            .map(Some)
    }

    fn stack_inputs(&self, inputs: &[&Batch]) -> Result<Option<Stacked<Batch>>, Error> {
        let (input, parts) = Batch::stacked_end_padded(inputs, self.config.pad_token_id)?;
        Ok(Some(Stacked { input, parts }))
    }
}
