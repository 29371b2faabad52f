//! The readers of outside data as fuzz targets: each [`Target`] takes arbitrary bytes as the
//! contents of one file a user might download (a `config.json`, a `tokenizer.json`, a
//! safetensors file, a shard index, an SAE's `params.npz`, SAELens' `cfg.json`, Gemma Scope
//! 2's `params.safetensors` and `config.json`, a `tokenizer_config.json`, a corpus file, a
//! sweep's state and output tables), puts it where scope
//! looks for it and reads it the way scope does. A target's only contract is that it
//! returns: an error is the expected answer to bad bytes, while a panic, an abort, a hang or
//! a runaway allocation is a bug.
//!
//! `fuzz/` drives these with AFL++ (`cargo xtask fuzz TARGET --time S`); the corpus it keeps
//! in `fuzz/corpus/TARGET/` (seeds and every input that once crashed) runs through the same
//! functions in this crate's tests, so `cargo xtask test` replays it without the fuzzer.
//!
//! ```
//! let config = scope_fuzz_targets::target("config").expect("a target");
//! (config.run)(br#"{"model_type": "gemma3_text", "num_hidden_layers": -1}"#);
//! ```

pub mod structural;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use gemma_model::{ChatTemplate, GemmaConfig, GemmaTokenizer, Kind, ModelFiles, WeightStore};

/// One reader under test.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its name: `cargo xtask fuzz NAME`, and the corpus folder `fuzz/corpus/NAME`.
    pub name: &'static str,
    /// The file the bytes stand for.
    pub file: &'static str,
    /// Reads the bytes as scope reads that file.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: [Target; 13] = [
    Target {
        name: "config",
        file: "config.json",
        run: config,
    },
    Target {
        name: "generation_config",
        file: "generation_config.json",
        run: generation_config,
    },
    Target {
        name: "tokenizer",
        file: "tokenizer.json",
        run: tokenizer,
    },
    Target {
        name: "chat_template",
        file: "tokenizer_config.json",
        run: chat_template,
    },
    Target {
        name: "safetensors",
        file: "model.safetensors",
        run: safetensors,
    },
    Target {
        name: "shard_index",
        file: "model.safetensors.index.json",
        run: shard_index,
    },
    Target {
        name: "npz",
        file: "params.npz",
        run: npz,
    },
    Target {
        name: "saelens_cfg",
        file: "cfg.json",
        run: saelens_cfg,
    },
    Target {
        name: "gemma_scope_2",
        file: "params.safetensors",
        run: gemma_scope_2,
    },
    Target {
        name: "corpus_jsonl",
        file: "corpus.jsonl",
        run: corpus_jsonl,
    },
    Target {
        name: "corpus_parquet",
        file: "corpus.parquet",
        run: corpus_parquet,
    },
    Target {
        name: "sweep_state",
        file: "sweep-state.npz",
        run: sweep_state,
    },
    Target {
        name: "sweep_tables",
        file: "examples.parquet",
        run: sweep_tables,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.into_iter().find(|t| t.name == name)
}

thread_local! {
    /// One scratch folder per thread for the files the targets write (a fuzzer runs millions
    /// of inputs: no folder per input).
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Runs `read` on a fresh scratch folder holding `files` (name, bytes); earlier files are
/// removed first, so that no input sees another's.
fn with_files(files: &[(&str, &[u8])], read: impl FnOnce(&Path)) {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.is_none() {
            *scratch = tempfile::tempdir().ok();
        }
        let Some(dir) = scratch.as_ref().map(|d| d.path().to_path_buf()) else {
            return;
        };
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for (name, bytes) in files {
            if std::fs::write(dir.join(name), bytes).is_err() {
                return;
            }
        }
        read(&dir);
    });
}

/// A minimal config whose model the other files belong to.
const SMALL_CONFIG: &[u8] = br#"{"model_type": "gemma2", "vocab_size": 512, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 4, "query_pre_attn_scalar": 4}"#;

fn config(data: &[u8]) {
    let _ = GemmaConfig::from_json_str(&String::from_utf8_lossy(data), "config.json");
}

fn generation_config(data: &[u8]) {
    with_files(
        &[
            ("config.json", SMALL_CONFIG),
            ("generation_config.json", data),
        ],
        |dir| {
            let _ = GemmaConfig::from_file(dir.join("config.json"));
        },
    );
}

fn tokenizer(data: &[u8]) {
    with_files(&[("tokenizer.json", data)], |dir| {
        if let Ok(tokenizer) = GemmaTokenizer::from_file(dir.join("tokenizer.json")) {
            if let Ok(tokenizer) = tokenizer.fit_to(1 << 20) {
                let _ =
                    tokenizer.encode("Would you <bos> travel through time? \u{1F600} 12345", true);
                let _ = tokenizer.decode(&[0, 1, 2, 3, 1 << 30], false);
            }
        }
    });
}

fn chat_template(data: &[u8]) {
    with_files(&[("tokenizer_config.json", data)], |dir| {
        let _ = ChatTemplate::from_tokenizer_config(dir.join("tokenizer_config.json"));
    });
}

/// Every tensor of a safetensors file loaded as f32 on the CPU (a lying header must be an
/// error before anything of its claimed size is allocated).
fn safetensors(data: &[u8]) {
    with_files(&[("model.safetensors", data)], |dir| {
        let Ok(store) = WeightStore::open(&[dir.join("model.safetensors")]) else {
            return;
        };
        for (name, shape) in store.tensors() {
            let _ = store.load(&name, &shape, Kind::Float, gemma_model::Device::Cpu);
        }
    });
}

fn shard_index(data: &[u8]) {
    with_files(
        &[
            ("config.json", SMALL_CONFIG),
            ("model.safetensors.index.json", data),
        ],
        |dir| {
            let _ = ModelFiles::from_dir(dir);
        },
    );
}

fn npz(data: &[u8]) {
    with_files(&[("params.npz", data)], |dir| {
        let _ = sae::load::read_npz(&dir.join("params.npz"));
    });
}

fn saelens_cfg(data: &[u8]) {
    with_files(&[("cfg.json", data)], |dir| {
        let _ = sae::load::read_saelens_config(&dir.join("cfg.json"));
    });
}

/// Gemma Scope 2's `params.safetensors`, with the first bytes up to a NUL taken as its
/// `config.json` when there is one (so that one input can vary both files).
fn gemma_scope_2(data: &[u8]) {
    let (config, params) = split_gemma_scope_2(data);
    let mut files = vec![("params.safetensors", params)];
    if let Some(config) = config {
        files.push(("config.json", config));
    }
    with_files(&files, |dir| {
        let _ = sae::load::read_gemma_scope_2(&dir.join("params.safetensors"));
    });
}

/// A `gemma_scope_2` input as its `config.json` (the bytes before the first NUL, when the
/// input starts as JSON does) and its `params.safetensors` (the rest, or all of it).
fn split_gemma_scope_2(data: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) if data.starts_with(b"{") => (Some(&data[..at]), &data[at + 1..]),
        _ => (None, data),
    }
}

/// Every document of a JSON-lines corpus file (the text in `text`).
fn corpus_jsonl(data: &[u8]) {
    read_corpus("corpus.jsonl", data);
}

/// Every document of a Parquet corpus file (the text in the column `text`).
fn corpus_parquet(data: &[u8]) {
    read_corpus("corpus.parquet", data);
}

fn read_corpus(name: &str, data: &[u8]) {
    with_files(&[(name, data)], |dir| {
        if let Ok(corpus) = scope_sweep::Corpus::open(&[dir.join(name)], "text") {
            let _ = corpus.count();
            for document in corpus.documents() {
                if document.is_err() {
                    break;
                }
            }
        }
    });
}

/// A sweep's state file, as `--resume` and `scope sweep merge` read it.
fn sweep_state(data: &[u8]) {
    with_files(&[(scope_sweep::state::STATE_FILE, data)], |dir| {
        let _ = scope_sweep::SweepState::load(dir);
    });
}

/// A sweep's output table, read as the dashboard and `merge` read both tables.
fn sweep_tables(data: &[u8]) {
    with_files(&[("table.parquet", data)], |dir| {
        let _ = scope_sweep::tables::read_examples(&dir.join("table.parquet"));
        let _ = scope_sweep::tables::read_latents(&dir.join("table.parquet"));
    });
}

/// The corpus folder of `target` in a checkout at `root`.
pub fn corpus_dir(root: &Path, target: &str) -> PathBuf {
    root.join("fuzz").join("corpus").join(target)
}

/// What [`cap_address_space`] leaves above what the process maps: room for libtorch's and
/// the readers' honest allocations, not for a lying size.
const HEADROOM: u64 = 4 << 30;

/// Caps this process's address space at what it maps now plus 4 GiB, so that an allocation
/// of a size read from a lying file fails here as it would on a small machine, instead of
/// being granted untouched by the kernel's overcommit (which hides it). Errors are ignored:
/// the cap is a sharper test, not a condition of one.
pub fn cap_address_space() {
    let mapped = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    let Some(mapped) = mapped else {
        return;
    };
    let limit = libc::rlimit {
        rlim_cur: mapped.saturating_add(HEADROOM),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given and nothing else.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
}
