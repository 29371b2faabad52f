//! Steering generation along SAE decoder directions: one prompt through the intervention
//! graph, as the tutorial runs pyvene, or many requests at once through the engine.

use gemma_model::{Batch, GemmaModel, Generated, GenerationConfig, Sampling};
use intervene::{CallOptions, IntervenableModel, RepresentationConfig, Sources};
use scope_engine::{Engine, Finished, Request};

use crate::error::{Error, Result};
use crate::sae_at::{check_steering, SaeAt, TopLatents};

/// Generates from `prompt` (token ids, `<bos>` included) with `magnitude * W_dec[latent]`
/// of every pair added at the SAE's write site (its site; a transcoder's MLP output), at every
/// prompt position and every generated token (pyvene's `intervene_on_prompt=True`,
/// `unit_locations=None`).
pub fn steer(
    model: &GemmaModel,
    sae: &SaeAt,
    prompt: &[i64],
    pairs: &[(i64, f64)],
    config: &GenerationConfig,
) -> Result<Generated> {
    check_steering(sae, pairs)?;
    let graph = IntervenableModel::new(
        model,
        vec![RepresentationConfig::new(
            sae.write_component(),
            sae::Steer::new(&sae.sae, pairs)?,
        )],
    )?;
    let options = CallOptions::new().intervene_on_prompt(true);
    let out = graph.generate(&Batch::from_ids(prompt), Sources::None, &options, config)?;
    Ok(out.intervened)
}

/// One request of [`steer_many`].
#[derive(Clone, Debug, PartialEq)]
pub struct SteerRequest {
    /// Echoed back.
    pub id: String,
    /// Token ids, `<bos>` included.
    pub prompt: Vec<i64>,
    /// `(latent, magnitude)` pairs; empty for an unsteered request.
    pub steer: Vec<(i64, f64)>,
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Greedy, or sampling with the request's own seed.
    pub sampling: Sampling,
    /// Also read the SAE's `k` most active latents at each generated token
    /// ([`TopLatents`]); they come back in [`Finished::readouts`]`[0]`.
    pub top_latents: Option<usize>,
}

impl SteerRequest {
    /// The engine request, steering at `sae`'s site; an error when it steers without an SAE.
    pub fn to_engine(&self, sae: Option<&SaeAt>) -> Result<Request> {
        let mut request =
            Request::greedy(self.id.clone(), self.prompt.clone(), self.max_new_tokens)
                .with_sampling(self.sampling);
        let needs_sae =
            |what: &str| Error::Input(format!("`{what}` needs an SAE (scope steer --sae ...)"));
        if !self.steer.is_empty() {
            let sae = sae.ok_or_else(|| needs_sae("steer"))?;
            request = request.with_edit(sae.steering_edit(&self.steer)?);
        }
        if let Some(k) = self.top_latents {
            let sae = sae.ok_or_else(|| needs_sae("top_latents"))?;
            request.readouts.push(Box::new(TopLatents::new(sae, k)?));
        }
        Ok(request)
    }
}

/// Runs every request through `engine` (continuous batching; each request's tokens are
/// those it gets alone; [`Engine::new`] picks how its steps run, [`Engine::with_mode`] takes
/// a mode), handing each result to `on_done` as it finishes: the finished request, or its
/// refusal (a latent out of range, steering without an SAE, too many positions, ...), which
/// leaves the others running.
pub fn steer_many(
    engine: &mut Engine<'_>,
    sae: Option<&SaeAt>,
    requests: &[SteerRequest],
    on_done: &mut dyn FnMut(&SteerRequest, Result<Finished>),
) -> Result<()> {
    // The engine knows each request by its index: ids need not be unique.
    for (index, request) in requests.iter().enumerate() {
        let submitted = request.to_engine(sae).and_then(|mut r| {
            r.id = index.to_string();
            Ok(engine.submit(r)?)
        });
        if let Err(refused) = submitted {
            on_done(request, Err(refused));
        }
    }
    while !engine.is_idle() {
        for mut finished in engine.step()? {
            let request = finished
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| requests.get(i));
            if let Some(request) = request {
                finished.id = request.id.clone();
                on_done(request, Ok(finished));
            }
        }
    }
    Ok(())
}
