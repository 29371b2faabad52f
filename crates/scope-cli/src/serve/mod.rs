//! `scope serve`: the workflows over HTTP.
//!
//! One thread, the worker, owns the model, its SAEs and the engine: it runs every
//! generation request in the engine's shared steps and the inspection requests (latents,
//! patch, explain) between two steps. The HTTP side (tokio + axum) parses and checks the
//! JSON, hands the worker a job over a channel and turns what comes back into a response,
//! an SSE stream or an OpenAI-style object. A client that goes away drops its end of the
//! channel, and the worker frees its row before the next step.

mod api;
mod generation;
mod openai;
mod routes;
mod state;
mod worker;

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::args::ServeArgs;

/// Starts the server and runs until SIGTERM or Ctrl-C, then finishes the requests in flight
/// and returns.
pub fn run(args: &ServeArgs) -> Result<()> {
    let key = args.api_key.clone().filter(|k| !k.is_empty());
    let host: IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host `{}` is not an IP address", args.host))?;
    if !host.is_loopback() && key.is_none() {
        eprintln!(
            "warning: listening on {host} without --api-key: anyone who can reach this \
             machine can use the model"
        );
    }
    // Before loading: a bad flag should not wait for the model.
    crate::session::check_cache_gib(args.cache_gib)?;
    let (jobs, ready, worker) = worker::start(args)?;
    let state = state::State {
        jobs,
        info: Arc::new(ready),
        key,
        max_body: usize::try_from(args.max_body_kib * 1024).unwrap_or(usize::MAX),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((host, args.port))
            .await
            .with_context(|| format!("cannot listen on {host}:{}", args.port))?;
        let address = listener.local_addr()?;
        eprintln!("listening on http://{address}");
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server failed")
    });
    // The router and every handler are gone: the worker finishes what it holds and stops.
    let finished = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the model worker stopped unexpectedly"))?;
    served.and(finished)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("stopping: no new requests; finishing those in flight");
}
