//! Project automation in the cargo-xtask style (<https://github.com/matklad/cargo-xtask>):
//! `cargo xtask <command>`, plain Rust, no dependencies, runnable before libtorch exists.
//!
//! Commands:
//! - `setup [--cuda]`   make `.venv`, install torch==2.11.0 from PyPI, point `.libtorch` at it
//! - `test`             setup if needed, then every test of the workspace
//! - `demo`             setup if needed, then the main workflows on the fixture model
//! - `fixtures`         regenerate `fixtures/` with HF transformers + pyvene (installs them)
//! - `verify`           the golden parity suite with a summary; the tutorial on real weights
//! - `bench-compare`    scope's benchmarks and the Python peer, alternating, as ratios
//! - `device-bundle`    stripped release binaries in `.device/` for a GPU session's check script
//! - `fuzz TARGET [--time S]`  AFL++ on one reader of outside data, seeded from `fuzz/corpus/`
//! - `load [--clients N] [--requests N] [--max-new-tokens N]`  `scope serve` under concurrent
//!   clients: latencies, tokens/s, statuses, and checks that nothing leaks or breaks

mod bench;
mod demo;
mod device;
mod fuzz;
mod load;
mod setup;
mod verify;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// An error that ends the task with a message (no backtrace).
#[derive(Debug)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// A failure with a chosen exit code.
    pub fn with_code(message: impl Into<String>, code: u8) -> Self {
        Failure {
            message: message.into(),
            code,
        }
    }
}

/// The result of an xtask step.
pub type Result<T = ()> = std::result::Result<T, Failure>;

const USAGE: &str = "usage: cargo xtask <setup [--cuda] | test | demo | fixtures | verify | bench-compare [--quick] [--rounds N] [--only GROUPS] [--size S] [--dtype D] [--decode MODE] [--model-family gemma2|gemma3] [--race PATH] [--python PATH] [--peer PATH] | device-bundle | fuzz TARGET [--time SECONDS] | load [--clients 64] [--requests 4] [--max-new-tokens 16]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("setup") => setup::run(&rest).map(|_| ()),
        Some("test") => test(&rest),
        Some("demo") => demo::run(),
        Some("fixtures") => fixtures(),
        Some("verify") => verify::run(),
        Some("bench-compare") => bench::run(&rest),
        Some("device-bundle") => device::run(),
        Some("load") => load::run(&rest),
        Some("fuzz") => fuzz::run(&rest),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Failure::with_code(USAGE, 2)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("xtask: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// The repository root: the parent of this crate's directory, or, for a copy of this binary
/// carried to a machine where that directory does not exist (`device-bundle`), the directory
/// it is run from.
pub fn project_root() -> PathBuf {
    match Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        Some(root) if root.is_dir() => root.to_path_buf(),
        _ => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    }
}

/// The cargo that runs this xtask.
pub fn cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root());
    cmd
}

/// Run a command to completion, failing with its description when it fails.
pub fn run_checked(cmd: &mut Command, what: &str) -> Result {
    let status = cmd
        .status()
        .map_err(|e| Failure::new(format!("could not start {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::new(format!("{what} failed ({status})")))
    }
}

fn test(args: &[&str]) -> Result {
    let venv = setup::ensure()?;
    setup::ensure_test_tools(&venv)?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]).args(args);
    run_checked(&mut cmd, "cargo test --workspace")
}

fn fixtures() -> Result {
    let venv = setup::ensure()?;
    setup::install_reference_stack(&venv)?;
    let root = project_root();
    let mut cmd = Command::new(venv.python());
    cmd.current_dir(&root)
        .arg("xtask/fixtures/generate.py")
        .arg("fixtures");
    run_checked(&mut cmd, "the fixture generator")?;
    println!(
        "fixtures regenerated under {}",
        root.join("fixtures").display()
    );
    Ok(())
}
