//! What a request asks for and what it gets back.

use crate::generate::Sampling;
use intervene::Site;
use tch::Tensor;

/// One generation request: a prompt, how to choose tokens, when to stop, and the
/// interventions that apply to this request alone.
#[derive(Debug)]
pub struct Request {
    /// Echoed back in [`Finished::id`].
    pub id: String,
    /// Token ids, `<bos>` included; at least one.
    pub prompt: Vec<i64>,
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Greedy, or sampling with a seed of the request's own.
    pub sampling: Sampling,
    /// Ids that end the request (included in its tokens); `None` = the model's eos ids.
    pub stop_tokens: Option<Vec<i64>>,
    /// Added to the activations at their sites at every position the request runs: every
    /// prompt position, `<bos>` included, and every generated token (the tutorial's
    /// steering: `intervene_on_prompt=True`, `unit_locations=None`).
    pub edits: Vec<Edit>,
    /// Read at the position that predicts each generated token, after the edits.
    pub readouts: Vec<Box<dyn Readout>>,
    /// Keep each generated token's scores (`[vocab]`, f32) in [`Finished::scores`].
    pub keep_scores: bool,
}

impl Request {
    /// A greedy request for up to `max_new_tokens` after `prompt`, with no interventions.
    pub fn greedy(id: impl Into<String>, prompt: Vec<i64>, max_new_tokens: usize) -> Self {
        Request {
            id: id.into(),
            prompt,
            max_new_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: None,
            edits: Vec::new(),
            readouts: Vec::new(),
            keep_scores: false,
        }
    }

    /// The same request with `edit` added.
    pub fn with_edit(mut self, edit: Edit) -> Self {
        self.edits.push(edit);
        self
    }

    /// The same request choosing tokens by `sampling`.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }
}

/// A vector added at one site: `activation += vector` (`[width]`, moved to the model's
/// device when the request is submitted). The sum is computed in the vector's dtype and
/// rounded to the model's, as pyvene writes an intervention's result back (a float32 SAE's
/// direction on a bfloat16 model adds in float32). A steering set from one or more SAEs is a
/// list of these, one per site.
#[derive(Debug)]
pub struct Edit {
    /// Where it applies.
    pub site: Site,
    /// What is added at every position.
    pub vector: Tensor,
}

/// Something a request reads at one site at the position that predicts each of its
/// generated tokens, such as the top latents of an SAE there.
pub trait Readout: std::fmt::Debug {
    /// The site it reads.
    fn site(&self) -> Site;
    /// What it keeps of `activation` (`[width]`, the model's dtype, after the request's
    /// edits): one [`Reading`] per generated token, in [`Finished::readouts`]. It sees one
    /// row alone, so a reading never depends on the other requests.
    fn read(&self, activation: &Tensor) -> Result<Reading, String>;
}

/// `(index, value)` pairs, such as latents and their activations, strongest first.
pub type Reading = Vec<(i64, f32)>;

/// Why a request stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced one of its stop tokens (the last of its tokens).
    Stop,
    /// It produced `max_new_tokens` tokens.
    Length,
}

impl FinishReason {
    /// `stop` or `length`, as OpenAI-style APIs name them.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Finished {
    /// The request's id.
    pub id: String,
    /// Its prompt.
    pub prompt: Vec<i64>,
    /// Its new tokens, up to and including a stop token.
    pub tokens: Vec<i64>,
    /// Why it stopped.
    pub reason: FinishReason,
    /// Each new token's scores (`[vocab]`, f32: the soft-capped logits it was chosen from),
    /// when the request kept them.
    pub scores: Vec<Tensor>,
    /// For each readout of the request, one reading per new token.
    pub readouts: Vec<Vec<Reading>>,
}

/// A running request's output so far (see [`Engine::progress`](crate::Engine::progress)).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// The request's id.
    pub id: &'a str,
    /// Its new tokens so far.
    pub tokens: &'a [i64],
    /// For each readout of the request, one reading per token so far.
    pub readouts: &'a [Vec<Reading>],
}
