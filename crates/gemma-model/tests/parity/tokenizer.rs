//! Tokenizer and chat-template parity with transformers (fixtures/expected/tokenizer.json).

use gemma_model::{render_chat, ChatMessage, GemmaTokenizer};

use crate::common::*;

fn tokenizer() -> GemmaTokenizer {
    GemmaTokenizer::from_file(model_dir("tiny-f32").join("tokenizer.json")).expect("tokenizer")
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

#[test]
fn encode_and_decode_match_hf() {
    let tok = tokenizer();
    let exp = expected_json("tokenizer.json");
    for case in exp["encode_cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let with = ids(&case["ids_with_special"]);
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            with,
            "with special: {text:?}"
        );
        assert_eq!(
            tok.encode(text, false).expect("encode"),
            ids(&case["ids_no_special"]),
            "no special: {text:?}"
        );
        assert_eq!(
            tok.decode(&with, false).expect("decode"),
            case["decoded_keep_special"].as_str().expect("s"),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).expect("decode"),
            case["decoded_skip_special"].as_str().expect("s"),
            "{text:?}"
        );
    }
    for (token, id) in exp["special_ids"].as_object().expect("special") {
        assert_eq!(tok.token_to_id(token), id.as_i64(), "{token}");
    }
}

#[test]
fn chat_template_matches_hf() {
    let tok = tokenizer();
    let exp = expected_json("tokenizer.json");
    for case in exp["chat_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                ChatMessage::new(
                    m["role"].as_str().expect("role"),
                    m["content"].as_str().expect("content"),
                )
            })
            .collect();
        let gen = case["add_generation_prompt"].as_bool().expect("flag");
        match case["error"].as_str() {
            Some(message) => {
                let err = render_chat(&messages, gen).expect_err(name);
                assert!(err.to_string().contains(message), "{name}: {err}");
            }
            None => {
                assert_eq!(
                    render_chat(&messages, gen).expect(name),
                    case["rendered"].as_str().expect("r"),
                    "{name}"
                );
                let got = tok.encode_chat(&messages, gen).expect(name);
                assert_eq!(got, ids(&case["ids"]), "{name}");
                assert_eq!(
                    got.iter().filter(|&&i| i == 2).count(),
                    1,
                    "{name}: exactly one <bos>"
                );
            }
        }
    }
}

/// `tokenizer.json` of the fixture with `edit` applied, written to `dir`.
fn edited_tokenizer(
    dir: &tempfile::TempDir,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let text = std::fs::read_to_string(model_dir("tiny-f32").join("tokenizer.json")).expect("read");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    edit(&mut json);
    let path = dir.path().join(name);
    std::fs::write(&path, json.to_string()).expect("write");
    path
}

/// Found by tests/mutated_files.rs (scope-cli) and the probes beside it: tokenizer files the
/// `tokenizers` crate reads but then panics on (an index out of bounds, a missing map key, an
/// integer underflow, an assertion), or pads to a length from the file (an abort).
#[test]
fn hostile_tokenizer_files_are_errors_or_harmless() {
    use serde_json::json;
    let dir = tempfile::tempdir().expect("tmp");
    let prompt = "Would you be able to travel through time?";
    let want = tokenizer().encode(prompt, true).expect("encode");

    // Truncation and padding are switched off, as transformers does per call: these encoded
    // the prompt to garbage or panicked (`max_length: 0` underflows, `stride >= max_length`
    // asserts) or aborted (padding to 10^12 tokens).
    let truncation = |max_length: u64, stride: u64| {
        move |t: &mut serde_json::Value| {
            t["truncation"] = json!({"direction": "Right", "max_length": max_length,
                "strategy": "LongestFirst", "stride": stride});
        }
    };
    let padding = |t: &mut serde_json::Value| {
        t["padding"] = json!({"strategy": {"Fixed": 1_000_000_000_000u64}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
    };
    for (name, path) in [
        (
            "max_length 0",
            edited_tokenizer(&dir, "t0.json", truncation(0, 0)),
        ),
        (
            "stride 5 of 2",
            edited_tokenizer(&dir, "t1.json", truncation(2, 5)),
        ),
        ("pad to 10^12", edited_tokenizer(&dir, "p.json", padding)),
    ] {
        let tok = GemmaTokenizer::from_file(&path).expect(name);
        assert_eq!(tok.encode(prompt, true).expect(name), want, "{name}");
    }

    // Template post-processors the crate indexes into without checking: refused on reading.
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 3] = [
        (
            "special token not defined",
            |t| t["post_processor"]["special_tokens"] = json!({}),
            "`<bos>`",
        ),
        (
            "single template reads B",
            |t| t["post_processor"]["single"] = json!([{"Sequence": {"id": "B", "type_id": 0}}]),
            "second sequence",
        ),
        (
            "ids and tokens differ in length",
            |t| t["post_processor"]["special_tokens"]["<bos>"]["ids"] = json!([]),
            "0 ids for 1 tokens",
        ),
    ];
    for (name, edit, needle) in cases {
        let path = edited_tokenizer(&dir, "template.json", edit);
        let err = GemmaTokenizer::from_file(&path)
            .expect_err(name)
            .to_string();
        assert!(
            err.contains("template.json") && err.contains(needle),
            "{name}: {err}"
        );
    }

    // Ids beyond the model's embedding: refused by name, not by the embedding lookup.
    let tok = tokenizer();
    tok.check_ids_fit(512).expect("the fixture fits its model");
    let err = tok
        .check_ids_fit(300)
        .expect_err("512 ids in 300 rows")
        .to_string();
    assert!(
        err.contains("300") && err.contains("tokenizer.json"),
        "{err}"
    );
    let path = edited_tokenizer(&dir, "bos.json", |t| {
        t["post_processor"]["special_tokens"]["<bos>"]["ids"] = json!([100_000]);
    });
    let tok = GemmaTokenizer::from_file(&path).expect("reads");
    let err = tok.check_ids_fit(512).expect_err("bos 100000").to_string();
    assert!(err.contains("`<bos>` has id 100000"), "{err}");
}
