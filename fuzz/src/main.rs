//! AFL++ drives one of scope's readers (`scope_fuzz_targets::TARGETS`), named by the
//! environment variable `SCOPE_FUZZ_TARGET`, in persistent mode. Run it through
//! `cargo xtask fuzz TARGET --time SECONDS`.

fn main() {
    let name = std::env::var("SCOPE_FUZZ_TARGET").unwrap_or_default();
    let Some(target) = scope_fuzz_targets::target(&name) else {
        let names: Vec<&str> = scope_fuzz_targets::TARGETS.iter().map(|t| t.name).collect();
        eprintln!("SCOPE_FUZZ_TARGET must be one of: {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
}
