//! `cargo xtask device-bundle`: what a session lent a GPU machine carries there.
//!
//! That machine has libtorch (python3's torch) but no cargo, so the binaries are built here in
//! release, stripped of debug info (the carried tree is limited to 64 MiB) and copied to
//! `.device/bin` (ignored by git). `xtask/device/check.sh` then runs there in one call: the
//! workflows on the fixtures on CPU and GPU with a comparison, and the race on gemma-2-2b's
//! shapes. The same script runs here with `DEVICE=cpu SIZES=small`.

use std::path::Path;
use std::process::Command;

use crate::{cargo, project_root, run_checked, setup, Failure, Result};

/// The binaries the check runs, with their packages.
const BINARIES: [(&str, &str); 2] = [("scope-cli", "scope"), ("scope-benches", "race")];

pub fn run() -> Result {
    setup::ensure()?;
    let root = project_root();
    let bin_dir = root.join(".device/bin");
    std::fs::create_dir_all(&bin_dir)
        .map_err(|e| Failure::new(format!("could not create {}: {e}", bin_dir.display())))?;
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
        let built = root.join("target/release").join(binary);
        let carried = bin_dir.join(binary);
        strip_into(&built, &carried)?;
        let size = std::fs::metadata(&carried).map(|m| m.len()).unwrap_or(0);
        println!(
            "device-bundle: {} ({:.1} MiB)",
            carried.display(),
            size as f64 / (1 << 20) as f64
        );
    }
    println!(
        "\ndevice-bundle: ready. With the device tool: carry [\".device\"], command \
         `bash xtask/device/check.sh`, timeout about 500 s; the results come back from $OUT \
         (log.txt, cli.jsonl, race-2b.jsonl, race-2b-eager.jsonl, race-small.jsonl).\n\
         Dry run here: DEVICE=cpu SIZES=small OUT=/tmp/scope-check bash xtask/device/check.sh"
    );
    Ok(())
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
    std::fs::copy(from, to).map(|_| ()).map_err(|e| {
        Failure::new(format!(
            "could not copy {} to {}: {e}",
            from.display(),
            to.display()
        ))
    })
}
