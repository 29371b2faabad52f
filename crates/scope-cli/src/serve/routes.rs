//! The endpoints: parse and check the JSON, hand the worker a job, answer with what it
//! sends back (an object or an SSE stream).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use super::api::{self, ApiError, ExplainBody, GenerateBody, LatentsBody, PatchBody};
use super::openai;
use super::worker::{Completion, Event, Generation, Info, InspectFn, Job, Prompt, Ticket};
use crate::reports;

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    pub jobs: mpsc::Sender<Job>,
    pub info: Arc<Info>,
    pub key: Option<String>,
    pub max_body: usize,
}

type Body = Result<Bytes, BytesRejection>;
type Shared = axum::extract::State<State>;

/// Every endpoint, the key check in front of `/v1`, and JSON 404s and 405s.
pub fn router(state: State) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(openai::models))
        .route("/v1/generate", post(generate))
        .route("/v1/steer", post(steer))
        .route("/v1/latents", post(latents))
        .route("/v1/patch", post(patch))
        .route("/v1/explain", post(explain))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), check_key))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(axum::extract::State(state): Shared) -> Json<Value> {
    let info = &state.info;
    Json(json!({
        "status": "ok",
        "model": info.model,
        "saes": info.saes,
        "running": info.counts.running.load(Ordering::SeqCst),
        "waiting": info.counts.waiting.load(Ordering::SeqCst),
        "in_flight": info.in_flight.load(Ordering::SeqCst),
    }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint at {} (see GET / and the README)",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {}",
            request.uri().path(),
            request.method()
        ),
    )
}

/// With a key set, `/v1/…` needs `Authorization: Bearer KEY`.
async fn check_key(axum::extract::State(state): Shared, request: Request, next: Next) -> Response {
    if let Some(key) = &state.key {
        if request.uri().path().starts_with("/v1/") {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let allowed = given.is_some_and(|given| same_secret(given.trim(), key));
            if !allowed {
                let why = match given {
                    None => "this server needs an API key: send `Authorization: Bearer KEY`",
                    Some(_) => "the API key is wrong",
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, why).into_response();
            }
        }
    }
    next.run(request).await
}

/// Compares every byte, so that the time taken does not tell how much of a guess was right.
fn same_secret(given: &str, key: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The body, or 413 / 400 saying why it could not be read.
pub fn read_body(body: Body, state: &State) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than this server's limit of {} KiB (--max-body-kib)",
                    state.max_body / 1024
                ),
            )
        } else {
            ApiError::bad_request(format!("the body could not be read: {rejection}"))
        }
    })
}

async fn generate(axum::extract::State(state): Shared, body: Body) -> Response {
    scope_generation(state, body, false).await
}

async fn steer(axum::extract::State(state): Shared, body: Body) -> Response {
    scope_generation(state, body, true).await
}

/// `/v1/generate` (no `steer` field) and `/v1/steer` (a `steer` list, not empty).
async fn scope_generation(state: State, body: Body, steered: bool) -> Response {
    let parsed = read_body(body, &state).and_then(|b| api::parse::<GenerateBody>(&b));
    let body = match parsed {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let steer = match (steered, body.steer) {
        (false, Some(_)) => {
            return ApiError::bad_request(
                "field `steer`: /v1/generate does not steer; POST to /v1/steer",
            )
            .into_response()
        }
        (true, None) => {
            return ApiError::bad_request("missing field `steer` (a list of {latent, magnitude})")
                .into_response()
        }
        (true, Some(pairs)) if pairs.is_empty() => {
            return ApiError::bad_request("field `steer`: nothing to steer (the list is empty)")
                .into_response()
        }
        (_, pairs) => pairs.unwrap_or_default(),
    };
    let generation = Generation {
        prompt: Prompt::Text {
            text: body.prompt,
            chat: body.chat,
        },
        steer: steer.iter().map(|p| (p.latent, p.magnitude)).collect(),
        sae: body.sae,
        max_new_tokens: body.max_new_tokens,
        sample: body.sample,
        temperature: body.temperature,
        top_k: body.top_k,
        top_p: body.top_p,
        seed: body.seed,
        latents_top_k: body.latents_top_k,
    };
    run_generation(&state, generation, body.stream, Style::Scope).await
}

/// How a generation's events are written.
#[derive(Clone, Debug)]
pub enum Style {
    /// scope's objects: one per token, then the result with `"done": true`.
    Scope,
    /// OpenAI's `text_completion` objects.
    Completions(openai::Meta),
    /// OpenAI's `chat.completion` objects.
    Chat(openai::Meta),
}

impl Style {
    /// The answer when not streamed.
    fn object(&self, completion: &Completion) -> Value {
        match self {
            Style::Scope => serde_json::to_value(completion).unwrap_or(Value::Null),
            Style::Completions(meta) => openai::completion_object(meta, completion),
            Style::Chat(meta) => openai::chat_object(meta, completion),
        }
    }

    /// The SSE events before the first token (the chat's role).
    fn opening(&self) -> Vec<Value> {
        match self {
            Style::Chat(meta) => vec![openai::chat_chunk(
                meta,
                json!({"role": "assistant", "content": ""}),
                None,
            )],
            _ => Vec::new(),
        }
    }

    /// The SSE events of one worker event, and whether the stream ends with them.
    fn events(&self, event: Event) -> (Vec<SseEvent>, bool) {
        let data = |v: Value| SseEvent::default().data(v.to_string());
        match (self, event) {
            (Style::Scope, Event::Token(token)) => (vec![data(json!(token))], false),
            (Style::Scope, Event::Done(Ok(completion))) => {
                let mut object = self.object(&completion);
                if let Some(map) = object.as_object_mut() {
                    map.insert("done".into(), Value::Bool(true));
                }
                (vec![data(object)], true)
            }
            (Style::Completions(meta), Event::Token(token)) => (
                vec![data(openai::completion_chunk(meta, &token.text, None))],
                false,
            ),
            (Style::Completions(meta), Event::Done(Ok(completion))) => {
                let last = openai::completion_chunk(meta, "", Some(completion.finish_reason));
                (vec![data(last), SseEvent::default().data("[DONE]")], true)
            }
            (Style::Chat(meta), Event::Token(token)) => {
                let delta = json!({"content": token.text});
                (vec![data(openai::chat_chunk(meta, delta, None))], false)
            }
            (Style::Chat(meta), Event::Done(Ok(completion))) => {
                let last = openai::chat_chunk(meta, json!({}), Some(completion.finish_reason));
                (vec![data(last), SseEvent::default().data("[DONE]")], true)
            }
            (_, Event::Done(Err(error))) => (vec![data(error.body())], true),
        }
    }
}

/// Queues `generation` and answers with its result, or streams it.
pub async fn run_generation(
    state: &State,
    generation: Generation,
    stream: bool,
    style: Style,
) -> Response {
    let Some(ticket) = Ticket::take(&state.info) else {
        return queue_full(&state.info).into_response();
    };
    let (events, mut rx) = tokio_mpsc::unbounded_channel();
    if state
        .jobs
        .send(Job::Generate(Box::new(generation), events))
        .is_err()
    {
        return stopping().into_response();
    }
    // The first event tells a refused request (400) from one that runs.
    let first = match rx.recv().await {
        Some(Event::Done(Err(error))) => return error.into_response(),
        Some(event) => event,
        None => return stopping().into_response(),
    };
    if !stream {
        let mut event = first;
        loop {
            match event {
                Event::Done(Ok(completion)) => {
                    return Json(style.object(&completion)).into_response()
                }
                Event::Done(Err(error)) => return error.into_response(),
                Event::Token(_) => {}
            }
            event = match rx.recv().await {
                Some(event) => event,
                None => return stopping().into_response(),
            };
        }
    }
    let opening = style
        .opening()
        .into_iter()
        .map(|v| SseEvent::default().data(v.to_string()))
        .collect();
    let state = SseState {
        rx,
        first: Some(first),
        queued: opening,
        done: false,
        style,
        _ticket: ticket,
    };
    let stream = futures_util::stream::unfold(state, next_sse);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream being written: the worker's events, turned into SSE events as they come. It
/// holds the request's ticket, and dropping it (the client went away) drops the channel,
/// which frees the request's row.
struct SseState {
    rx: tokio_mpsc::UnboundedReceiver<Event>,
    first: Option<Event>,
    queued: VecDeque<SseEvent>,
    done: bool,
    style: Style,
    _ticket: Ticket,
}

async fn next_sse(mut state: SseState) -> Option<(Result<SseEvent, Infallible>, SseState)> {
    loop {
        if let Some(event) = state.queued.pop_front() {
            return Some((Ok(event), state));
        }
        if state.done {
            return None;
        }
        let event = match state.first.take() {
            Some(event) => Some(event),
            None => state.rx.recv().await,
        };
        match event {
            Some(event) => {
                let (events, last) = state.style.events(event);
                state.queued.extend(events);
                state.done = last;
            }
            None => state.done = true,
        }
    }
}

fn queue_full(info: &Info) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "the server is busy: {} requests are in flight (--max-queue); retry after a second",
            info.max_queue
        ),
    )
}

fn stopping() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")
}

/// Runs `inspect` on the worker (between two steps) and answers with its object.
async fn run_inspect(state: &State, inspect: Box<InspectFn>) -> Response {
    let Some(_ticket) = Ticket::take(&state.info) else {
        return queue_full(&state.info).into_response();
    };
    let (reply, answer) = oneshot::channel();
    if state.jobs.send(Job::Inspect(inspect, reply)).is_err() {
        return stopping().into_response();
    }
    match answer.await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(error)) => error.into_response(),
        Err(_) => stopping().into_response(),
    }
}

/// A report as JSON, or a 500 when it does not serialise.
fn to_json<T: serde::Serialize>(report: &T) -> Result<Value, ApiError> {
    serde_json::to_value(report)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn latents(axum::extract::State(state): Shared, body: Body) -> Response {
    let body = match read_body(body, &state).and_then(|b| api::parse::<LatentsBody>(&b)) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let inspect = move |loaded: &super::worker::Loaded| {
        let sae = loaded.sae(body.sae.as_deref())?;
        let query = reports::LatentsQuery {
            prompt: &body.prompt,
            top_k: body.top_k,
            threshold: body.threshold,
            focus: body.latent,
        };
        let report =
            reports::latents(&loaded.session, sae, &query).map_err(|e| ApiError::refused(&e))?;
        to_json(&report)
    };
    run_inspect(&state, Box::new(inspect)).await
}

async fn patch(axum::extract::State(state): Shared, body: Body) -> Response {
    let body = match read_body(body, &state).and_then(|b| api::parse::<PatchBody>(&b)) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let inspect = move |loaded: &super::worker::Loaded| {
        let sae = loaded.sae(body.sae.as_deref())?;
        let query = reports::PatchQuery {
            base: &body.base,
            source: &body.source,
            base_pos: body.base_pos,
            source_pos: body.source_pos,
            latent: body.latent,
            keep_error: body.keep_error,
            top_k: body.top_k,
        };
        let report =
            reports::patch(&loaded.session, sae, &query).map_err(|e| ApiError::refused(&e))?;
        to_json(&report)
    };
    run_inspect(&state, Box::new(inspect)).await
}

async fn explain(axum::extract::State(state): Shared, body: Body) -> Response {
    let body = match read_body(body, &state).and_then(|b| api::parse::<ExplainBody>(&b)) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let inspect = move |loaded: &super::worker::Loaded| {
        let sae = loaded.sae(body.sae.as_deref())?;
        let report = reports::explain(&loaded.session, sae, body.latent, body.top_k)
            .map_err(|e| ApiError::refused(&e))?;
        to_json(&report)
    };
    run_inspect(&state, Box::new(inspect)).await
}
