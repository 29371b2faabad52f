//! `cargo xtask device-bundle`: what a session lent a GPU machine carries there.
//!
//! That machine has libtorch and transformers 5.17.0 (python3's) but no cargo, no pyvene and no
//! `../shared`, so this prepares `.device/` (ignored by git, carried with `carry: [".device"]`):
//! - `bin/`: `scope`, `race` and `xtask` built here in release, stripped of debug info (the
//!   carried tree is limited to 64 MiB);
//! - `peer/`: the peer's scripts from `../shared/bench`, and `benches/peer_steer_batch.py` and
//!   `benches/peer_sweep.py`;
//! - `whl/`: the pyvene wheel (pure Python), which the check installs into a scratch folder.
//!
//! `xtask/device/check.sh` then runs there in one call: `xtask bench-compare` on gemma-2-2b's
//! shapes (scope and the peer in the same run), the workflows on the fixtures on CPU and GPU
//! with a comparison, and HF's compiled static-cache decode if time is left. The same script
//! runs here with `DEVICE=cpu SIZE=small`.

use std::path::Path;
use std::process::Command;

use crate::{cargo, project_root, run_checked, setup, Failure, Result};

/// The binaries the check runs, with their packages.
const BINARIES: [(&str, &str); 3] = [
    ("scope-cli", "scope"),
    ("scope-benches", "race"),
    ("xtask", "xtask"),
];

/// The peer's scripts, from `../shared/bench`.
const PEER_SCRIPTS: [&str; 2] = ["pyvene_baseline.py", "hf_static_generate.py"];

/// The peers that live in this repository (`benches/`): the `steer_batch` and `sweep` rows'.
const REPO_PEERS: [&str; 2] = ["peer_steer_batch.py", "peer_sweep.py"];

pub fn run() -> Result {
    let venv = setup::ensure()?;
    let root = project_root();
    let bundle = root.join(".device");
    let bin_dir = bundle.join("bin");
    create_dir(&bin_dir)?;
    for (package, binary) in BINARIES {
        println!("device-bundle: building {binary} (release) ...");
        run_checked(
            cargo().args([
                "build",
                "--quiet",
                "--release",
                "-p",
                package,
                "--bin",
                binary,
            ]),
            &format!("cargo build -p {package} --bin {binary}"),
        )?;
        let carried = bin_dir.join(binary);
        strip_into(&root.join("target/release").join(binary), &carried)?;
        report(&carried);
    }

    let peer_dir = bundle.join("peer");
    create_dir(&peer_dir)?;
    for script in PEER_SCRIPTS {
        let from = root.join("../shared/bench").join(script);
        let to = peer_dir.join(script);
        copy(&from, &to)?;
        report(&to);
    }
    // These peers live in this repository; beside the baseline the first imports.
    for name in REPO_PEERS {
        let to = peer_dir.join(name);
        copy(&root.join("benches").join(name), &to)?;
        report(&to);
    }

    let wheel_dir = bundle.join("whl");
    create_dir(&wheel_dir)?;
    println!("device-bundle: downloading the {} wheel ...", setup::PYVENE);
    venv.pip_download(setup::PYVENE, &wheel_dir).map_err(|_| {
        Failure::new(format!(
            "pip could not download {} into {} (is PyPI reachable?); without it the check \
             runs no peer",
            setup::PYVENE,
            wheel_dir.display()
        ))
    })?;

    println!(
        "\ndevice-bundle: ready. With the device tool: carry [\".device\"], command \
         `bash xtask/device/check.sh`, timeout about 540 s; the results come back from $OUT \
         (log.txt, compare-2b.txt, race-2b.jsonl, race-2b-eager.jsonl, cli.jsonl, \
         hf-static.jsonl).\n\
         Dry run here: DEVICE=cpu SIZE=small PEER_PYTHON=.venv/bin/python OUT=/tmp/scope-check \
         bash xtask/device/check.sh"
    );
    Ok(())
}

fn create_dir(dir: &Path) -> Result {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("could not create {}: {e}", dir.display())))
}

fn copy(from: &Path, to: &Path) -> Result {
    // A copy from an earlier bundle may be read-only (as the shared scripts are).
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).map(|_| ()).map_err(|e| {
        Failure::new(format!(
            "could not copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}

fn report(carried: &Path) {
    let size = std::fs::metadata(carried).map(|m| m.len()).unwrap_or(0);
    println!(
        "device-bundle: {} ({:.1} MiB)",
        carried.display(),
        size as f64 / (1 << 20) as f64
    );
}

/// A copy of `from` at `to` without debug info (`strip`, else a plain copy).
fn strip_into(from: &Path, to: &Path) -> Result {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        return Ok(());
    }
    copy(from, to)
}
