//! A boundary around dependencies that panic on some damaged files instead of returning an
//! error: the tokenizers library (the fuzzer found dozens of `tokenizer.json` files that make
//! it panic) and the Parquet reader (negative column ranges, a missing dictionary page, a
//! truncated bit-packed page). Inside [`catching_panics`] a panic becomes the caller's error,
//! and its message is not printed: a damaged download is one line naming the file, as any
//! other bad input.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`catching_panics`] (the hook stays silent for it).
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

static QUIET_HOOK: Once = Once::new();

/// `f()`, or the message of the panic it raised. Panics on other threads, and outside such a
/// call, are reported by the hook that was installed before.
pub fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = CATCHING.with(|c| c.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    outcome.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        message.to_string()
    })
}
