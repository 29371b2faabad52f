//! The thread that owns the model: it loads it, then runs every job the HTTP side hands it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use gemma_model::guard::catching_panics;
use gemma_model::ChatMessage;
use scope_engine::{Engine, EngineMode, Finished, Limits, Progress};
use serde::Serialize;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::api::ApiError;
use crate::args::{SaeArgs, ServeArgs};
use crate::output::{GenerateReport, LatentValue, SteeringReport};
use crate::session::{open_sae, sampling, Session};

/// The model and its SAEs, by name (the first is the default).
pub struct Loaded {
    pub session: Session,
    saes: Vec<(String, scope::SaeAt)>,
}

impl Loaded {
    /// The SAE called `name`, or the default one.
    pub fn sae(&self, name: Option<&str>) -> Result<&scope::SaeAt, ApiError> {
        let found = match name {
            None => self.saes.first(),
            Some(name) => self.saes.iter().find(|(n, _)| n == name),
        };
        found.map(|(_, sae)| sae).ok_or_else(|| {
            let names: Vec<&str> = self.saes.iter().map(|(n, _)| n.as_str()).collect();
            ApiError::bad_request(format!(
                "field `sae`: no SAE called `{}` (this server has {})",
                name.unwrap_or_default(),
                names.join(", ")
            ))
        })
    }
}

/// What the HTTP side knows of the worker: names, limits and live counts.
#[derive(Debug)]
pub struct Info {
    pub model: String,
    pub saes: Vec<String>,
    /// Requests accepted and not yet answered (a handler holds a [`Ticket`] for each).
    pub in_flight: AtomicUsize,
    /// What the engine holds.
    pub counts: Arc<Counts>,
    /// More than this many in flight get 429.
    pub max_queue: usize,
}

/// Requests in the engine's slots, and waiting for one (after the last step).
#[derive(Debug, Default)]
pub struct Counts {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
}

/// One accepted request: counted in [`Info::in_flight`] until dropped.
#[derive(Debug)]
pub struct Ticket(Arc<Info>);

impl Ticket {
    /// A ticket, or `None` when `max_queue` requests are already in flight.
    pub fn take(info: &Arc<Info>) -> Option<Ticket> {
        let before = info.in_flight.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket(Arc::clone(info));
        (before < info.max_queue).then_some(ticket)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a job's prompt is.
#[derive(Debug)]
pub enum Prompt {
    /// Text, encoded with `<bos>` (or through the chat template when `chat`).
    Text { text: String, chat: bool },
    /// Chat messages through the template, with the model's turn opened.
    Chat(Vec<ChatMessage>),
}

/// A generation request, as the endpoints parsed it.
#[derive(Debug)]
pub struct Generation {
    pub prompt: Prompt,
    pub steer: Vec<(i64, f64)>,
    pub sae: Option<String>,
    pub max_new_tokens: usize,
    pub sample: bool,
    pub temperature: f64,
    pub top_k: i64,
    pub top_p: f64,
    pub seed: u64,
    pub latents_top_k: Option<usize>,
}

/// A job for the worker.
pub enum Job {
    /// Generate, sending each token and then the result on the channel.
    Generate(Box<Generation>, tokio_mpsc::UnboundedSender<Event>),
    /// Run a function of the model between two engine steps and send back its answer.
    Inspect(
        Box<InspectFn>,
        oneshot::Sender<Result<serde_json::Value, ApiError>>,
    ),
}

/// An inspection: latents, patch or explain over the loaded model.
pub type InspectFn = dyn FnOnce(&Loaded) -> Result<serde_json::Value, ApiError> + Send;

/// What a generation sends back.
#[derive(Debug)]
pub enum Event {
    /// One new token.
    Token(TokenEvent),
    /// The end: the whole result, or why it could not run.
    Done(Result<Box<Completion>, ApiError>),
}

/// One streamed token.
#[derive(Debug, Serialize)]
pub struct TokenEvent {
    pub token_id: i64,
    /// The token alone, decoded.
    pub token: String,
    /// What it adds to the completion's text (special tokens skipped; empty while a
    /// character is incomplete).
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latents: Option<Vec<LatentValue>>,
}

/// A finished generation: `scope steer --json`'s object and what the OpenAI API adds.
#[derive(Debug, Serialize)]
pub struct Completion {
    #[serde(flatten)]
    pub report: GenerateReport,
    pub finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latents: Option<Vec<Vec<LatentValue>>>,
}

/// Loads the model and SAEs on a new thread and starts running jobs there: the job
/// channel, what the HTTP side needs to know, and the thread (which returns once every
/// sender is dropped and its requests are done). Loading errors come back here.
pub fn start(args: &ServeArgs) -> Result<(mpsc::Sender<Job>, Info, JoinHandle<Result<()>>)> {
    let (jobs_tx, jobs) = mpsc::channel::<Job>();
    let (ready_tx, ready) = mpsc::channel();
    let model_args = args.model.clone();
    let sae_specs = args.saes.clone();
    let (layer, site, sae_dtype) = (args.layer, args.site.clone(), args.sae_dtype.clone());
    let (max_batch, context, cache_gib) = (args.max_batch, args.context, args.cache_gib);
    let decode = args.decode.clone();
    let counts = Arc::new(Counts::default());
    let worker_counts = Arc::clone(&counts);
    let worker = std::thread::Builder::new()
        .name("scope-model".into())
        .spawn(move || -> Result<()> {
            let loaded = match load(&model_args, &sae_specs, layer, site.as_deref(), &sae_dtype) {
                Ok(loaded) => loaded,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let worker = limits(&loaded, max_batch, context, cache_gib).and_then(|limits| {
                let mode = crate::session::engine_mode(&loaded.session.model, &decode)?;
                Worker::new(&loaded, limits, mode, worker_counts)
            });
            let worker = match worker {
                Ok(worker) => worker,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let names = loaded.saes.iter().map(|(n, _)| n.clone()).collect();
            if ready_tx.send(Ok(names)).is_err() {
                return Ok(());
            }
            worker.run(jobs)
        })
        .context("cannot start the model thread")?;
    let saes = match ready.recv() {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => return Err(e),
        Err(_) => anyhow::bail!("the model thread stopped while loading"),
    };
    let info = Info {
        model: model_name(&args.model.model),
        saes,
        in_flight: AtomicUsize::new(0),
        counts,
        max_queue: usize::try_from(args.max_queue).unwrap_or(usize::MAX),
    };
    Ok((jobs_tx, info, worker))
}

/// The model's name as clients see it: the hub id, or a directory's last component.
fn model_name(model: &str) -> String {
    let path = std::path::Path::new(model);
    if path.is_dir() {
        if let Some(name) = path.file_name() {
            return name.to_string_lossy().into_owned();
        }
    }
    model.to_string()
}

fn load(
    model: &crate::args::LoadArgs,
    specs: &[String],
    layer: Option<usize>,
    site: Option<&str>,
    sae_dtype: &str,
) -> Result<Loaded> {
    let session = Session::open(model)?;
    let mut saes: Vec<(String, scope::SaeAt)> = Vec::new();
    for spec in specs {
        let (name, sae) = match spec.split_once('=') {
            Some((name, sae)) if !name.is_empty() && !name.contains('/') => {
                (name.to_string(), sae.to_string())
            }
            _ => (default_sae_name(spec), spec.clone()),
        };
        if saes.iter().any(|(n, _)| *n == name) {
            anyhow::bail!("two SAEs are called `{name}`: name them with --sae NAME=SAE");
        }
        let args = SaeArgs {
            sae,
            layer,
            site: site.map(str::to_string),
            sae_dtype: sae_dtype.to_string(),
        };
        saes.push((name, open_sae(&args, &session)?));
    }
    Ok(Loaded { session, saes })
}

/// The name of an SAE given without one: from the release on (`gemma-scope-2b-pt-res/
/// layer_20/width_16k/average_l0_71` of a hub path or a local copy of its layout), else the
/// last part of its path.
fn default_sae_name(spec: &str) -> String {
    let parts: Vec<&str> = spec.trim_end_matches('/').split('/').collect();
    match parts.iter().position(|p| p.starts_with("layer_")) {
        Some(at) => parts[at.saturating_sub(1)..].join("/"),
        None => parts.last().copied().unwrap_or(spec).to_string(),
    }
}

/// The engine's rows and slot length: `--max-batch` rows of `--context` positions (at most
/// the model's), as many as fit `--cache-gib`.
fn limits(loaded: &Loaded, max_batch: u64, context: u64, cache_gib: f64) -> Result<Limits> {
    let model_context =
        u64::try_from(loaded.session.model.config().max_position_embeddings).unwrap_or(u64::MAX);
    let context = usize::try_from(context.min(model_context)).unwrap_or(usize::MAX);
    let rows = usize::try_from(max_batch).unwrap_or(1);
    crate::session::engine_limits(&loaded.session.model, rows, context, cache_gib)
}

/// A 500 for a request that hit a bug (a panic, caught so that the model thread and every
/// other request survive it), logged on stderr in one line.
fn internal_error(panic: &str) -> ApiError {
    eprintln!("error: a request hit a bug in scope: {panic}");
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("a bug in scope ({panic}); the server carries on"),
    )
}

/// A generation in the engine: where its events go and what was sent.
struct Stream {
    events: tokio_mpsc::UnboundedSender<Event>,
    steer: Vec<(i64, f64)>,
    wants_latents: bool,
    /// Tokens sent so far.
    sent: usize,
    /// Tokens whose text was sent.
    settled: usize,
}

struct Worker<'m> {
    loaded: &'m Loaded,
    limits: Limits,
    engine: Engine<'m>,
    streams: HashMap<String, Stream>,
    next_id: u64,
    decode: &'static str,
    counts: Arc<Counts>,
}

impl<'m> Worker<'m> {
    fn new(
        loaded: &'m Loaded,
        limits: Limits,
        mode: EngineMode,
        counts: Arc<Counts>,
    ) -> Result<Self> {
        Ok(Worker {
            counts,
            engine: Engine::with_mode(&loaded.session.model, limits, mode).context("--decode")?,
            decode: mode.decode_name(),
            loaded,
            limits,
            streams: HashMap::new(),
            next_id: 0,
        })
    }

    /// Runs jobs until every sender is gone and the engine is idle.
    fn run(mut self, jobs: mpsc::Receiver<Job>) -> Result<()> {
        loop {
            if self.engine.is_idle() {
                match jobs.recv() {
                    Ok(job) => self.accept(job),
                    Err(_) => return Ok(()),
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.accept(job);
            }
            self.drop_abandoned();
            if !self.engine.is_idle() {
                self.step();
            }
            self.publish_counts();
        }
    }

    fn accept(&mut self, job: Job) {
        match job {
            Job::Inspect(inspect, reply) => {
                let _guard = tch::no_grad_guard();
                let answer = catching_panics(|| inspect(self.loaded))
                    .unwrap_or_else(|panic| Err(internal_error(&panic)));
                let _ = reply.send(answer);
            }
            Job::Generate(generation, events) => {
                let id = format!("req-{}", self.next_id);
                self.next_id += 1;
                let submitted = catching_panics(|| self.submit(&id, &generation))
                    .unwrap_or_else(|panic| Err(internal_error(&panic)));
                match submitted {
                    Ok(()) => {
                        let stream = Stream {
                            events,
                            steer: generation.steer.clone(),
                            wants_latents: generation.latents_top_k.is_some(),
                            sent: 0,
                            settled: 0,
                        };
                        self.streams.insert(id, stream);
                    }
                    Err(e) => {
                        let _ = events.send(Event::Done(Err(e)));
                    }
                }
            }
        }
    }

    /// Encodes and checks `generation`, and queues it in the engine as `id`.
    fn submit(&mut self, id: &str, generation: &Generation) -> Result<(), ApiError> {
        let session = &self.loaded.session;
        let prompt = match &generation.prompt {
            Prompt::Text { text, chat } => session.encode_prompt(text, *chat),
            Prompt::Chat(messages) => session
                .tokenizer
                .encode_chat(messages, true)
                .map_err(anyhow::Error::from),
        }
        .map_err(|e| ApiError::refused(&e))?;
        let positions = prompt.len().saturating_add(generation.max_new_tokens);
        if positions > self.limits.context {
            return Err(ApiError::bad_request(format!(
                "the prompt ({} tokens) plus max_new_tokens ({}) needs {positions} positions; \
                 this server holds {} per request (--context)",
                prompt.len(),
                generation.max_new_tokens,
                self.limits.context
            )));
        }
        let needs_sae = !generation.steer.is_empty() || generation.latents_top_k.is_some();
        let sae = if needs_sae {
            Some(self.loaded.sae(generation.sae.as_deref())?)
        } else {
            None
        };
        let request = scope::SteerRequest {
            id: id.to_string(),
            prompt,
            steer: generation.steer.clone(),
            max_new_tokens: generation.max_new_tokens,
            sampling: sampling(
                generation.sample,
                generation.temperature,
                generation.top_k,
                generation.top_p,
                generation.seed,
            )
            .map_err(|e| ApiError::refused(&e))?,
            top_latents: generation.latents_top_k,
        };
        let request = request
            .to_engine(sae)
            .map_err(|e| ApiError::refused(&e.into()))?;
        self.engine
            .submit(request)
            .map_err(|e| ApiError::refused(&e.into()))
    }

    /// Cancels the requests whose client has gone.
    fn drop_abandoned(&mut self) {
        let gone: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| s.events.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let sent = self.streams.remove(&id).map_or(0, |s| s.sent);
            match self.engine.cancel(&id) {
                Ok(_) => {
                    eprintln!("{id}: the client went away after {sent} tokens; its row is free")
                }
                Err(e) => eprintln!("error: cancelling {id}: {e}"),
            }
        }
    }

    /// One engine step; sends every new token and every finished result.
    fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        let finished = match catching_panics(|| self.engine.step()) {
            Ok(Ok(finished)) => finished,
            Ok(Err(e)) => return self.fail_all(&e.to_string()),
            Err(panic) => return self.fail_all(&format!("a bug in scope ({panic})")),
        };
        let session = &self.loaded.session;
        for progress in self.engine.progress() {
            if let Some(stream) = self.streams.get_mut(progress.id) {
                stream.send_new(session, &progress);
            }
        }
        for done in finished {
            if let Some(mut stream) = self.streams.remove(&done.id) {
                stream.finish(session, done, self.decode);
            }
        }
        self.publish_counts();
    }

    /// A failed step: every request in it gets a 500, and a fresh engine takes over.
    fn fail_all(&mut self, error: &str) {
        eprintln!("error: a decode step failed: {error}");
        for (_, stream) in self.streams.drain() {
            let message = format!("the model failed: {error}");
            let failure = ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, message);
            let _ = stream.events.send(Event::Done(Err(failure)));
        }
        let mode = self.engine.mode();
        match Engine::with_mode(&self.loaded.session.model, self.limits, mode) {
            Ok(engine) => self.engine = engine,
            Err(e) => eprintln!("error: cannot restart the engine: {e}"),
        }
    }

    /// Publishes what the engine holds (for `/health`).
    fn publish_counts(&self) {
        let counts = &self.counts;
        counts
            .running
            .store(self.engine.running(), Ordering::SeqCst);
        counts
            .waiting
            .store(self.engine.waiting(), Ordering::SeqCst);
    }
}

impl Stream {
    /// Sends the tokens of `progress` past those already sent.
    fn send_new(&mut self, session: &Session, progress: &Progress<'_>) {
        self.send_upto(session, progress.tokens, progress.readouts.first(), false);
    }

    /// Sends `tokens[self.sent..]`, each with the text it settles: the tokens up to the
    /// last one that is not a byte token (`<0xNN>`), decoded from where the text sent so far
    /// ends. A run of byte tokens decodes as a whole (a character, or U+FFFD for bytes that
    /// are not UTF-8), so its text waits for the token after it, or for the request's
    /// `last_tokens`. Cut at those places, the pieces add up to the decoded completion.
    fn send_upto(
        &mut self,
        session: &Session,
        tokens: &[i64],
        readings: Option<&Vec<scope_engine::Reading>>,
        last_tokens: bool,
    ) {
        for i in self.sent..tokens.len() {
            let upto = if last_tokens && i + 1 == tokens.len() {
                tokens.len()
            } else {
                settled_len(session, &tokens[..=i])
            };
            let text = match tokens.get(self.settled..upto) {
                Some(piece) if !piece.is_empty() => {
                    self.settled = upto;
                    session.tokenizer.decode(piece, true).unwrap_or_default()
                }
                _ => String::new(),
            };
            let event = TokenEvent {
                token_id: tokens[i],
                token: session
                    .tokenizer
                    .decode(&tokens[i..=i], false)
                    .unwrap_or_default(),
                text,
                latents: self
                    .wants_latents
                    .then(|| readings.and_then(|r| r.get(i)).map(latent_values))
                    .flatten(),
            };
            if self.events.send(Event::Token(event)).is_err() {
                return;
            }
            self.sent = i + 1;
        }
    }

    /// Sends the last tokens and the result.
    fn finish(&mut self, session: &Session, done: Finished, decode: &'static str) {
        self.send_upto(session, &done.tokens, done.readouts.first(), true);
        let latents = self
            .wants_latents
            .then(|| {
                done.readouts
                    .first()
                    .map(|r| r.iter().map(latent_values).collect())
            })
            .flatten();
        let result = GenerateReport::new(session, done.prompt, done.tokens, decode)
            .map(|mut report| {
                report.steering = SteeringReport::of(&self.steer);
                Box::new(Completion {
                    report,
                    finish_reason: done.reason.name(),
                    latents,
                })
            })
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    crate::output::one_line(&e),
                )
            });
        let _ = self.events.send(Event::Done(result));
    }
}

/// How many of `tokens` come before their trailing run of byte tokens: the part whose text
/// is settled (the byte-fallback decoder turns a run of bytes into characters, or into
/// U+FFFD where they are not UTF-8, as a whole).
fn settled_len(session: &Session, tokens: &[i64]) -> usize {
    let is_byte = |id: i64| {
        u32::try_from(id)
            .ok()
            .and_then(|id| session.tokenizer.inner().id_to_token(id))
            .is_some_and(|piece| {
                piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>')
            })
    };
    tokens.len() - tokens.iter().rev().take_while(|&&id| is_byte(id)).count()
}

fn latent_values(reading: &scope_engine::Reading) -> Vec<LatentValue> {
    reading
        .iter()
        .map(|&(latent, value)| LatentValue {
            latent,
            value: f64::from(value),
        })
        .collect()
}
