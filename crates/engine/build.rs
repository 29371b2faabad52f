//! Compiles `csrc/cuda_shim.cpp`, a C interface to libtorch's `at::cuda::CUDAGraph` and CUDA
//! memory statistics, into a shared library that `src/cuda.rs` embeds and loads at run time on
//! CUDA machines only.
//!
//! It needs libtorch's headers (`LIBTORCH`, as for tch) and the CUDA runtime headers, which
//! `cargo xtask setup` installs next to torch (`nvidia/cu13/include`, or `$CUDA_HOME/include`).
//! Without them the crate still builds: it embeds an empty file, and asking for CUDA graphs then
//! (or CUDA memory statistics) fails with a message that says why.

use std::env;
use std::path::{Path, PathBuf};

const SHIM: &str = "csrc/cuda_shim.cpp";
const LIBRARY: &str = "libscope_cuda_shim.so";

fn main() {
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    link_libtorch_for_doctests(&out_dir);
    let out = out_dir.join(LIBRARY);
    if let Err(why) = compile(&out) {
        println!("cargo:warning=CUDA graphs and memory statistics disabled: {why}");
        // An empty library: `cuda.rs` reports the build had no CUDA headers.
        if let Err(e) = std::fs::write(&out, []) {
            panic!("cannot write {}: {e}", out.display());
        }
    }
}

/// Doctests run from a temporary directory, where the binaries' rpath (`.cargo/config.toml`)
/// finds no libtorch. Cargo puts the link-search paths that build scripts give inside the
/// target directory on the library path of the processes it starts, doctests included: a link
/// to libtorch's `lib/` there lets them load it. Nothing else changes (the linker already
/// searches libtorch's `lib/`).
fn link_libtorch_for_doctests(out_dir: &Path) {
    let Some(libtorch) = env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let lib = libtorch.canonicalize().unwrap_or(libtorch).join("lib");
    let link = out_dir.join("libtorch-lib");
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(&lib, &link).is_ok() {
        println!("cargo:rustc-link-search=native={}", link.display());
    }
}

fn compile(out: &Path) -> Result<(), String> {
    let libtorch = env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .ok_or("LIBTORCH is not set")?;
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let candidates = include_candidates(&libtorch);
    // Rebuilt when the headers arrive later (`cargo xtask setup` installs them beside torch).
    for dir in candidates.iter().filter(|dir| dir.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let cuda_include = cuda_include(&candidates).ok_or(
        "no CUDA headers (crt/host_config.h) next to libtorch or in $CUDA_HOME/include; \
         `cargo xtask setup` installs them",
    )?;
    if !libtorch.join("lib").join("libtorch_cuda.so").exists() {
        return Err(format!(
            "{} has no lib/libtorch_cuda.so",
            libtorch.display()
        ));
    }
    let include = libtorch.join("include");
    // cc configures the compiler (`CXX`, `CXXFLAGS`, the target's flags) but only builds static
    // archives: run the compiler it configured ourselves to compile and link a shared object.
    let compiler = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .pic(true)
        .warnings(false)
        .extra_warnings(false)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&cuda_include)
        .try_get_compiler()
        .map_err(|e| format!("no C++ compiler: {e}"))?;
    let name = compiler.path().display().to_string();
    let output = compiler
        .to_command()
        .arg("-shared")
        .arg(SHIM)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", libtorch.join("lib").display()))
        .args(["-ltorch_cuda", "-lc10_cuda", "-lc10"])
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{name} failed on {SHIM}: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or("(no message)")
        ))
    }
}

/// Where CUDA headers may be: beside the torch wheel, and under `$CUDA_HOME`.
fn include_candidates(libtorch: &Path) -> Vec<PathBuf> {
    let beside_torch = libtorch
        .parent()
        .map(|site| site.join("nvidia/cu13/include"));
    let cuda_home = env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include"));
    [beside_torch, cuda_home].into_iter().flatten().collect()
}

/// The candidate holding `cuda_runtime.h` and the `crt/` headers it includes.
fn cuda_include(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|dir| dir.join("crt/host_config.h").exists() && dir.join("cuda_runtime.h").exists())
        .cloned()
}
