//! OpenAI's `/v1/completions`, `/v1/chat/completions` and `/v1/models`, with scope's
//! steering as an extra `steering` field: what the official clients send and read.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use axum::Json;
use gemma_model::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{self, ApiError, SteerPair};
use super::generation::{run_generation, Answer};
use super::state::{read_body, Body, State};
use super::worker::{Completion, Generation, Prompt, TokenEvent};

/// What every object of one response repeats.
#[derive(Clone, Debug)]
struct Meta {
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn new(prefix: &str, model: &str) -> Meta {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Meta {
            id: format!("{prefix}-{:x}", now.as_nanos()),
            created: now.as_secs(),
            model: model.to_string(),
        }
    }
}

/// The fields both endpoints share. Options OpenAI's clients may send with their neutral
/// value are accepted; anything that would change the answer and is not implemented is
/// refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `model`, `user` and `stream_options` are accepted and not used
pub struct CompletionBody {
    #[serde(default)]
    model: Option<String>,
    /// `/v1/completions`: a string, or a list of one.
    #[serde(default)]
    prompt: Option<PromptField>,
    /// `/v1/chat/completions`.
    #[serde(default)]
    messages: Option<Vec<Message>>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
    stop: Option<Value>,
    echo: Option<bool>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stream_options: Option<Value>,
    /// scope's: `[{latent, magnitude}]` added as steering.
    #[serde(default)]
    steering: Vec<SteerPair>,
    /// scope's: which SAE steers (default: the first).
    #[serde(default)]
    sae: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted, as OpenAI does, and not rendered by Gemma's template
    name: Option<String>,
}

impl CompletionBody {
    /// Refuses what is sent but not implemented.
    fn check_unsupported(&self) -> Result<(), ApiError> {
        let refuse =
            |field: &str, why: &str| Err(ApiError::bad_request(format!("field `{field}`: {why}")));
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "only n = 1 is supported");
        }
        if self.stop.as_ref().is_some_and(|v| !v.is_null()) {
            return refuse(
                "stop",
                "stop sequences are not supported (the model's end-of-turn tokens stop it)",
            );
        }
        if self.echo == Some(true) {
            return refuse("echo", "echo is not supported");
        }
        let asks_logprobs = |v: &Option<Value>| {
            v.as_ref()
                .is_some_and(|v| !(v.is_null() || *v == Value::Bool(false)))
        };
        if asks_logprobs(&self.logprobs) || asks_logprobs(&self.top_logprobs) {
            return refuse("logprobs", "log probabilities are not supported");
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return refuse(field, "penalties are not supported");
            }
        }
        Ok(())
    }

    /// The generation it asks for: temperature 0 is greedy, anything else samples (OpenAI's
    /// default temperature is 1).
    fn generation(self, prompt: Prompt, default_max: usize) -> Generation {
        let temperature = self.temperature.unwrap_or(1.0);
        Generation {
            prompt,
            steer: self
                .steering
                .iter()
                .map(|p| (p.latent, p.magnitude))
                .collect(),
            sae: self.sae,
            max_new_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .unwrap_or(default_max),
            sample: temperature != 0.0,
            temperature,
            top_k: 0,
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or(0),
            latents_top_k: None,
        }
    }
}

fn parse(
    state: &State,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<CompletionBody, ApiError> {
    let body: CompletionBody = api::parse(&read_body(body, state)?)?;
    body.check_unsupported()?;
    Ok(body)
}

/// `POST /v1/completions`.
pub async fn completions(
    axum::extract::State(state): axum::extract::State<State>,
    body: Body,
) -> Response {
    let body = match parse(&state, body) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let text = match &body.prompt {
        Some(PromptField::One(text)) => text.clone(),
        Some(PromptField::Many(texts)) if texts.len() == 1 => texts[0].clone(),
        Some(PromptField::Many(_)) => {
            return ApiError::bad_request("field `prompt`: give one prompt per request")
                .into_response()
        }
        None => return ApiError::bad_request("missing field `prompt`").into_response(),
    };
    if body.messages.is_some() {
        return ApiError::bad_request(
            "field `messages`: POST chat messages to /v1/chat/completions",
        )
        .into_response();
    }
    let (stream, meta) = (body.stream, Meta::new("cmpl", &state.info.model));
    let generation = body.generation(Prompt::Text { text, chat: false }, 16);
    run_generation(&state, generation, stream, Box::new(Completions(meta))).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    axum::extract::State(state): axum::extract::State<State>,
    body: Body,
) -> Response {
    let mut body = match parse(&state, body) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let Some(messages) = body.messages.take() else {
        return ApiError::bad_request("missing field `messages`").into_response();
    };
    if body.prompt.is_some() {
        return ApiError::bad_request(
            "field `prompt`: chat takes `messages`; POST a prompt to /v1/completions",
        )
        .into_response();
    }
    if messages.is_empty() {
        return ApiError::bad_request("field `messages`: the list is empty").into_response();
    }
    let messages = messages
        .into_iter()
        .map(|m| ChatMessage::new(m.role, m.content))
        .collect();
    let (stream, meta) = (body.stream, Meta::new("chatcmpl", &state.info.model));
    let generation = body.generation(Prompt::Chat(messages), 256);
    run_generation(&state, generation, stream, Box::new(Chat(meta))).await
}

/// `GET /v1/models`: the one model served.
pub async fn models(axum::extract::State(state): axum::extract::State<State>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.info.model, "object": "model", "created": 0, "owned_by": "scope"}],
    }))
}

fn usage(completion: &Completion) -> Value {
    let prompt = completion.report.prompt_ids.len();
    let generated = completion.report.output_ids.len() - prompt;
    json!({"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated})
}

/// `/v1/completions`' `text_completion` objects.
struct Completions(Meta);

impl Answer for Completions {
    fn object(&self, completion: &Completion) -> Value {
        let Meta { id, created, model } = &self.0;
        json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": completion.report.completion, "logprobs": null,
                         "finish_reason": completion.finish_reason}],
            "usage": usage(completion),
        })
    }

    fn token(&self, token: &TokenEvent) -> Value {
        self.chunk(&token.text, None)
    }

    fn closing(&self, completion: &Completion) -> Vec<String> {
        let last = self.chunk("", Some(completion.finish_reason));
        vec![last.to_string(), "[DONE]".into()]
    }
}

impl Completions {
    fn chunk(&self, text: &str, finish_reason: Option<&str>) -> Value {
        let Meta { id, created, model } = &self.0;
        json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}],
        })
    }
}

/// `/v1/chat/completions`' `chat.completion` objects and chunks.
struct Chat(Meta);

impl Answer for Chat {
    fn object(&self, completion: &Completion) -> Value {
        let Meta { id, created, model } = &self.0;
        let message = json!({"role": "assistant", "content": completion.report.completion});
        json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null,
                         "finish_reason": completion.finish_reason}],
            "usage": usage(completion),
        })
    }

    fn opening(&self) -> Vec<Value> {
        vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
    }

    fn token(&self, token: &TokenEvent) -> Value {
        self.chunk(json!({"content": token.text}), None)
    }

    fn closing(&self, completion: &Completion) -> Vec<String> {
        let last = self.chunk(json!({}), Some(completion.finish_reason));
        vec![last.to_string(), "[DONE]".into()]
    }
}

impl Chat {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let Meta { id, created, model } = &self.0;
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }
}
