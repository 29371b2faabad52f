//! Doctests are linked into a temporary directory, where the workspace's `$ORIGIN`-relative
//! rpath cannot reach libtorch: give this crate's test artefacts libtorch's absolute path too.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
