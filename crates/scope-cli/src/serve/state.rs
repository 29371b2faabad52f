//! What every handler shares: the way to the worker, its counts, the key and the body limit.

use std::sync::{mpsc, Arc};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;

use super::api::ApiError;
use super::worker::{Info, Job};

/// What every handler shares.
#[derive(Clone)]
pub struct State {
    pub jobs: mpsc::Sender<Job>,
    pub info: Arc<Info>,
    pub key: Option<String>,
    pub max_body: usize,
}

/// A request's body, or why axum could not read it.
pub type Body = Result<Bytes, BytesRejection>;

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

/// 429: `--max-queue` requests are in flight.
pub fn queue_full(info: &Info) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "the server is busy: {} requests are in flight (--max-queue); retry after a second",
            info.max_queue
        ),
    )
}

/// 503: the server is shutting down.
pub fn stopping() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")
}
