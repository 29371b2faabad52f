//! The endpoints: parse and check the JSON, hand the worker a job, answer with what it
//! sends back (an object or an SSE stream).

use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::api::{self, ApiError, ExplainBody, GenerateBody, LatentsBody, PatchBody};
use super::generation::{run_generation, ScopeAnswer};
use super::openai;
use super::state::{queue_full, read_body, stopping, Body, State};
use super::worker::{Generation, InspectFn, Job, Loaded, Prompt, Ticket};
use crate::reports;

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
    run_generation(&state, generation, body.stream, Box::new(ScopeAnswer)).await
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
    let inspect = move |loaded: &Loaded| {
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
    let inspect = move |loaded: &Loaded| {
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
    let inspect = move |loaded: &Loaded| {
        let sae = loaded.sae(body.sae.as_deref())?;
        let report = reports::explain(&loaded.session, sae, body.latent, body.top_k)
            .map_err(|e| ApiError::refused(&e))?;
        to_json(&report)
    };
    run_inspect(&state, Box::new(inspect)).await
}
