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
