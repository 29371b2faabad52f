//! The JSON the endpoints take, and the errors they answer with.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An error answer: `{"error": {"message", "type"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    /// 400: the request is wrong; `message` says where.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400 from an error of the workflows: a request they refused.
    pub fn refused(error: &anyhow::Error) -> Self {
        ApiError::bad_request(crate::output::one_line(error))
    }

    /// The `type` OpenAI's clients read.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "invalid_request_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            _ => "server_error",
        }
    }

    /// The body as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `body` as a `T`, or a 400 naming the field and what is wrong with it.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("the body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// One steered latent.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteerPair {
    pub latent: i64,
    pub magnitude: f64,
}

/// `POST /v1/generate` and `/v1/steer` (which adds `steer`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    pub prompt: String,
    #[serde(default)]
    pub steer: Option<Vec<SteerPair>>,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub sample: bool,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: i64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub chat: bool,
    #[serde(default)]
    pub stream: bool,
    pub latents_top_k: Option<usize>,
    pub sae: Option<String>,
}

fn default_max_new_tokens() -> usize {
    50
}

fn one() -> f64 {
    1.0
}

/// `POST /v1/latents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentsBody {
    pub prompt: String,
    #[serde(default = "five")]
    pub top_k: i64,
    #[serde(default = "one")]
    pub threshold: f64,
    pub latent: Option<i64>,
    pub sae: Option<String>,
}

fn five() -> i64 {
    5
}

fn ten() -> i64 {
    10
}

fn last() -> i64 {
    -1
}

/// `POST /v1/explain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    pub latent: i64,
    #[serde(default = "ten")]
    pub top_k: i64,
    pub sae: Option<String>,
}

/// `POST /v1/patch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    pub base: String,
    pub source: String,
    pub latent: i64,
    #[serde(default = "last")]
    pub base_pos: i64,
    #[serde(default = "last")]
    pub source_pos: i64,
    #[serde(default)]
    pub keep_error: bool,
    #[serde(default = "ten")]
    pub top_k: i64,
    pub sae: Option<String>,
}
