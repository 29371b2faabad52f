//! Runs fuzz inputs through a target and says how each went, for a finding under study:
//! `cargo run --release -p scope-fuzz-targets --example replay -- TARGET FILE...`
//! (the address space capped as in the corpus test).

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((name, files)) = args.split_first() else {
        eprintln!("usage: replay TARGET FILE...");
        std::process::exit(2);
    };
    let Some(target) = scope_fuzz_targets::target(name) else {
        eprintln!("no target `{name}`");
        std::process::exit(2);
    };
    scope_fuzz_targets::cap_address_space();
    for file in files {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("{file}: {e}");
                std::process::exit(2);
            }
        };
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| (target.run)(&bytes));
        let verdict = if outcome.is_ok() {
            "returned"
        } else {
            "PANICKED"
        };
        println!(
            "{file}: {verdict} in {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }
}
