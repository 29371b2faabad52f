//! `cargo xtask fuzz TARGET [--time SECONDS]`: AFL++ (through cargo-afl, on the stable
//! toolchain) against one of scope's readers of outside data (`crates/fuzz-targets`),
//! seeded from `fuzz/corpus/TARGET/`, or against the `scope` binary itself for the targets of
//! [`PROCESS_TARGETS`] (`requests_lines`: the lines of `scope steer --requests FILE`, read,
//! encoded, checked and generated on the tiny model).
//!
//! It installs cargo-afl when missing, builds the instrumented harness (`fuzz/`, or the
//! `scope` binary) in release,
//! runs `afl-fuzz` for the time given (default 60 s) with the JSON dictionary
//! `fuzz/dict/json.dict`, a memory limit and a per-input timeout, and prints the run's
//! executions, coverage (edges found, bitmap share) and findings. Every crash or hang found is
//! copied into `fuzz/corpus/TARGET/` as `crash-*` / `hang-*`, where the corpus test of
//! `cargo xtask test` replays it from then on: fix the reader, and commit the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{cargo, project_root, run_checked, setup, Failure, Result};

/// The cargo-afl release the harness's `afl` dependency is pinned to.
const CARGO_AFL: &str = "0.18.2";
/// Memory limit of the target process, MiB: a reader that allocates what a lying header
/// claims is a crash.
const MEMORY_MIB: &str = "8192";
/// Per-input timeout, ms.
const TIMEOUT_MS: &str = "5000";

/// A target that runs the instrumented `scope` binary once per input, the input given as a
/// file in place of `@@`. A panic exits with 101, which AFL++ is told to count as a crash.
struct ProcessTarget {
    name: &'static str,
    args: &'static [&'static str],
}

const PROCESS_TARGETS: [ProcessTarget; 1] = [ProcessTarget {
    name: "requests_lines",
    args: &[
        "steer",
        "--model",
        "fixtures/models/tiny-f32",
        "--sae",
        "fixtures/saes/tiny-f32-res/layer_2/width_256/average_l0_20",
        "--requests",
        "@@",
    ],
}];

pub fn run(args: &[&str]) -> Result {
    let (target, seconds) = parse(args)?;
    setup::ensure()?;
    ensure_cargo_afl()?;
    let root = project_root();
    let process = PROCESS_TARGETS.iter().find(|p| p.name == target);
    let command: Vec<std::ffi::OsString> = match process {
        Some(process) => std::iter::once(build_scope(&root)?.into_os_string())
            .chain(process.args.iter().map(Into::into))
            .collect(),
        None => vec![build(&root)?.into_os_string()],
    };
    let out = root.join("target/fuzz").join(&target);
    std::fs::create_dir_all(root.join("target/fuzz"))
        .map_err(|e| Failure::new(format!("target/fuzz: {e}")))?;
    println!(
        "fuzz: {target} for {seconds} s (findings in {})",
        out.display()
    );
    let status = cargo()
        .current_dir(&root)
        .args([
            "afl", "fuzz", "-V", &seconds, "-m", MEMORY_MIB, "-t", TIMEOUT_MS,
        ])
        .arg("-x")
        .arg(root.join("fuzz/dict/json.dict"))
        .arg("-i")
        .arg(corpus(&root, &target))
        .arg("-o")
        .arg(&out)
        .arg("--")
        .args(&command)
        .env("SCOPE_FUZZ_TARGET", &target)
        .env("AFL_CRASH_EXITCODE", "101")
        .env("AFL_NO_UI", "1")
        .env("AFL_SKIP_CPUFREQ", "1")
        .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
        .env("AFL_NO_AFFINITY", "1")
        .env("AFL_AUTORESUME", "1")
        .env("LD_LIBRARY_PATH", root.join(".libtorch/lib"))
        .status()
        .map_err(|e| Failure::new(format!("could not run cargo afl fuzz: {e}")))?;
    if !status.success() {
        return Err(Failure::new(format!("cargo afl fuzz failed ({status})")));
    }
    report(&root, &target, &out)
}

fn parse(args: &[&str]) -> Result<(String, String)> {
    let usage = || Failure::with_code("usage: cargo xtask fuzz TARGET [--time SECONDS]", 2);
    let mut it = args.iter();
    let target = it.next().ok_or_else(usage)?.to_string();
    let mut seconds = "60".to_string();
    while let Some(flag) = it.next() {
        match (*flag, it.next()) {
            ("--time", Some(value)) if value.parse::<u64>().is_ok_and(|s| s > 0) => {
                seconds = value.to_string()
            }
            _ => return Err(usage()),
        }
    }
    let root = project_root();
    if !corpus(&root, &target).is_dir() {
        return Err(Failure::with_code(
            format!("no target `{target}`: the targets are the folders of fuzz/corpus/"),
            2,
        ));
    }
    Ok((target, seconds))
}

fn corpus(root: &Path, target: &str) -> PathBuf {
    root.join("fuzz/corpus").join(target)
}

/// Installs cargo-afl (which builds AFL++ itself) when `cargo afl` is missing.
fn ensure_cargo_afl() -> Result {
    let present = cargo()
        .args(["afl", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("fuzz: installing cargo-afl {CARGO_AFL} (it builds AFL++) ...");
    run_checked(
        cargo().args(["install", "cargo-afl", "--locked", "--version", CARGO_AFL]),
        "cargo install cargo-afl",
    )
}

/// Builds an instrumented binary into `target/fuzz-build` with `cargo afl build --release`
/// and `what` (the package's arguments); returns the path of its `binary`. cargo-afl sets
/// `RUSTFLAGS`, which replaces the workspace's rpath flags, so the binary finds libtorch by
/// `LD_LIBRARY_PATH`.
fn afl_build(root: &Path, what: &[std::ffi::OsString], binary: &str) -> Result<PathBuf> {
    let target_dir = root.join("target/fuzz-build");
    run_checked(
        cargo()
            .current_dir(root)
            .args(["afl", "build", "--release", "--quiet"])
            .args(what)
            .arg("--target-dir")
            .arg(&target_dir),
        &format!("cargo afl build ({binary})"),
    )?;
    Ok(target_dir.join("release").join(binary))
}

/// The instrumented harness (`fuzz/`).
fn build(root: &Path) -> Result<PathBuf> {
    let manifest = root.join("fuzz/Cargo.toml");
    afl_build(
        root,
        &["--manifest-path".into(), manifest.into()],
        "scope-fuzz",
    )
}

/// The instrumented `scope` binary, beside the harness.
fn build_scope(root: &Path) -> Result<PathBuf> {
    let package = ["-p", "scope-cli", "--bin", "scope"];
    afl_build(root, &package.map(Into::into), "scope")
}

/// Prints the run's statistics and copies its crashes and hangs into the corpus.
fn report(root: &Path, target: &str, out: &Path) -> Result {
    let findings = out.join("default");
    let stats = read_stats(&findings.join("fuzzer_stats"));
    let stat = |key: &str| stats.get(key).map_or("?", String::as_str);
    println!(
        "fuzz: {target}: {} executions in {} s ({} per s), {} edges found, bitmap {}, corpus {}, \
         crashes {}, hangs {}",
        stat("execs_done"),
        stat("run_time"),
        stat("execs_per_sec"),
        stat("edges_found"),
        stat("bitmap_cvg"),
        stat("corpus_count"),
        stat("saved_crashes"),
        stat("saved_hangs"),
    );
    // Findings already in the corpus (under any name: a fixed one is renamed for what it
    // shows) are not findings again.
    let known: std::collections::BTreeSet<String> = inputs_named(&corpus(root, target), |_| true)
        .iter()
        .map(|p| short_hash(&std::fs::read(p).unwrap_or_default()))
        .collect();
    let mut kept = Vec::new();
    for (kind, dir) in [("crash", "crashes"), ("hang", "hangs")] {
        for input in inputs(&findings.join(dir)) {
            let hash = short_hash(&std::fs::read(&input).unwrap_or_default());
            if known.contains(&hash) {
                continue;
            }
            let name = format!("{kind}-{hash}");
            let to = corpus(root, target).join(&name);
            std::fs::copy(&input, &to)
                .map_err(|e| Failure::new(format!("{}: {e}", to.display())))?;
            kept.push(to);
        }
    }
    if kept.is_empty() {
        return Ok(());
    }
    for path in &kept {
        println!("fuzz: kept {}", path.display());
    }
    Err(Failure::new(format!(
        "{} input(s) crashed or hung {target}: fix the reader, then commit them (the corpus \
         test replays them)",
        kept.len()
    )))
}

fn read_stats(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The files of AFL++'s `crashes/` or `hangs/` (not its README).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    inputs_named(dir, |name| name.starts_with("id:"))
}

/// The files of `dir` whose names `keep` accepts, sorted.
fn inputs_named(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.file_name().is_some_and(|n| keep(&n.to_string_lossy())));
    found.sort();
    found
}

/// FNV-1a of the input, as a stable file name.
fn short_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}
