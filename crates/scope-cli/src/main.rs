//! `scope`: Gemma 2 + Gemma Scope workflows from the command line.
//!
//! Exit codes: 0 success, 2 bad usage (from the argument parser), 1 anything else. Errors are
//! one line on stderr naming the problem; progress bars go to stderr, results to stdout.

mod args;
mod commands;
mod output;
mod reports;
mod requests;
mod serve;
mod session;
mod sweep;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap exits 2 for usage errors and 0 for --help / --version.
        Err(err) => err.exit(),
    };
    if !matches!(cli.command, Command::Serve(_)) {
        restore_default_sigpipe();
    }
    let outcome = match cli.command {
        Command::Generate(a) => commands::generate(&a),
        Command::Latents(a) => commands::latents(&a),
        Command::Steer(a) => commands::steer(&a),
        Command::Patch(a) => commands::patch(&a),
        Command::Explain(a) => commands::explain(&a),
        Command::Eval(a) => commands::eval(&a),
        Command::Top(a) => commands::top(&a),
        Command::Sweep(a) => sweep::sweep(&a),
        Command::Dashboard(a) => sweep::dashboard(&a),
        Command::Download(a) => commands::download(&a),
        Command::Serve(a) => serve::run(&a),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", output::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// A closed pipe ends the command quietly, as it does any Unix tool (`scope … | head`):
/// Rust ignores SIGPIPE, and printing to a closed stdout would then panic. The server keeps
/// ignoring it, so that a client that goes away is an error on its socket, not the end.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
