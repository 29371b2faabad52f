//! A generation's answer: one object when it ends, or an SSE stream of its tokens, in the
//! shape of the endpoint that asked (scope's own, or OpenAI's through [`Answer`]).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc as tokio_mpsc;

use super::state::{queue_full, stopping, State};
use super::worker::{Completion, Event, Generation, Job, Ticket, TokenEvent};

/// How an endpoint writes a generation: its object, and its stream's events.
pub trait Answer: Send + 'static {
    /// The answer when not streamed.
    fn object(&self, completion: &Completion) -> Value;
    /// The events before the first token.
    fn opening(&self) -> Vec<Value> {
        Vec::new()
    }
    /// The event of one token.
    fn token(&self, token: &TokenEvent) -> Value;
    /// The events that end the stream (their `data:` text).
    fn closing(&self, completion: &Completion) -> Vec<String>;
}

/// scope's own objects: each token's event, then the whole result with `"done": true`.
#[derive(Debug)]
pub struct ScopeAnswer;

impl Answer for ScopeAnswer {
    fn object(&self, completion: &Completion) -> Value {
        serde_json::to_value(completion).unwrap_or(Value::Null)
    }

    fn token(&self, token: &TokenEvent) -> Value {
        json!(token)
    }

    fn closing(&self, completion: &Completion) -> Vec<String> {
        let mut object = self.object(completion);
        if let Some(map) = object.as_object_mut() {
            map.insert("done".into(), Value::Bool(true));
        }
        vec![object.to_string()]
    }
}

/// Queues `generation` and answers with its result, or streams it.
pub async fn run_generation(
    state: &State,
    generation: Generation,
    stream: bool,
    answer: Box<dyn Answer>,
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
                    return Json(answer.object(&completion)).into_response()
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
    let queued = answer
        .opening()
        .into_iter()
        .map(|v| SseEvent::default().data(v.to_string()))
        .collect();
    let state = SseState {
        rx,
        first: Some(first),
        queued,
        done: false,
        answer,
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
    answer: Box<dyn Answer>,
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
        let data = |text: String| SseEvent::default().data(text);
        match event {
            Some(Event::Token(token)) => {
                let event = data(state.answer.token(&token).to_string());
                state.queued.push_back(event);
            }
            Some(Event::Done(Ok(completion))) => {
                let closing = state.answer.closing(&completion);
                state.queued.extend(closing.into_iter().map(data));
                state.done = true;
            }
            // A failure after the stream began: its error is the last event.
            Some(Event::Done(Err(error))) => {
                state.queued.push_back(data(error.body().to_string()));
                state.done = true;
            }
            None => state.done = true,
        }
    }
}
