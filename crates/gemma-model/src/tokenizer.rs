//! The Gemma tokenizer (`tokenizer.json` through the `tokenizers` crate) and the Gemma chat
//! template.
//!
//! `<bos>` comes from the tokenizer's post-processor when special tokens are added, as in
//! transformers. The chat template already writes `<bos>`, so a rendered conversation is
//! tokenised without special tokens (otherwise the prompt would start with two).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `user`, `assistant` (rendered as `model`), or another role rendered as written.
    pub role: String,
    /// The text; whitespace at both ends is trimmed by the template.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders Gemma's chat template exactly as its Jinja source does:
/// a leading `<bos>`; a `system` first message is an error; roles must alternate starting with
/// `user` (checked as `(role == "user") != (index is even)`); `assistant` becomes `model`;
/// each turn is `<start_of_turn>{role}\n{content.strip()}<end_of_turn>\n`; then
/// `<start_of_turn>model\n` when `add_generation_prompt`.
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
    let mut out = String::from("<bos>");
    if messages.first().is_some_and(|m| m.role == "system") {
        return Err(Error::ChatTemplate("System role not supported".into()));
    }
    for (i, message) in messages.iter().enumerate() {
        if (message.role == "user") != (i % 2 == 0) {
            return Err(Error::ChatTemplate(
                "Conversation roles must alternate user/assistant/user/assistant/...".into(),
            ));
        }
        let role = if message.role == "assistant" {
            "model"
        } else {
            message.role.as_str()
        };
        out.push_str("<start_of_turn>");
        out.push_str(role);
        out.push('\n');
        out.push_str(message.content.trim());
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    Ok(out)
}

/// A Gemma tokenizer.
#[derive(Clone, Debug)]
pub struct GemmaTokenizer {
    inner: Tokenizer,
    /// The `tokenizer.json` it was read from (named in errors).
    path: PathBuf,
}

impl GemmaTokenizer {
    /// Reads `tokenizer.json`.
    ///
    /// The file is checked for what would make the `tokenizers` crate panic later, while
    /// encoding: a template post-processor naming special tokens it does not define, or
    /// reading a second sequence in its single-sequence template. A `truncation` or `padding`
    /// the file sets is switched off, as transformers does on every call that does not ask
    /// for them: a prompt is never cut or padded behind the caller's back (and a hostile
    /// padding length is never allocated).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let fail = |reason: String| Error::Tokenizer(format!("{}: {reason}", path.display()));
        let mut inner = Tokenizer::from_file(path).map_err(|e| fail(e.to_string()))?;
        if let Some(processor) = inner.get_post_processor() {
            let json = serde_json::to_value(processor).map_err(|e| fail(e.to_string()))?;
            check_post_processor(&json).map_err(|e| fail(format!("post_processor: {e}")))?;
        }
        inner
            .with_truncation(None)
            .map_err(|e| fail(e.to_string()))?;
        inner.with_padding(None);
        Ok(GemmaTokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Checks that every id this tokenizer can produce (its vocabulary, added tokens and the
    /// post-processor's special tokens) is a row of a `vocab_size`-row embedding, so that a
    /// tokenizer from another model fails here, naming the token, and not inside the
    /// embedding lookup.
    pub fn check_ids_fit(&self, vocab_size: i64) -> Result<()> {
        let vocab = self.inner.get_vocab(true);
        let mut ids: Vec<(String, u32)> = vocab.into_iter().collect();
        if let Some(processor) = self.inner.get_post_processor() {
            let json = serde_json::to_value(processor).map_err(|e| {
                Error::Tokenizer(format!("{}: post_processor: {e}", self.path.display()))
            })?;
            special_ids(&json, &mut ids);
        }
        match ids.into_iter().max_by_key(|(_, id)| *id) {
            Some((token, id)) if i64::from(id) >= vocab_size => Err(Error::Tokenizer(format!(
                "{}: token `{token}` has id {id}, outside the model's vocabulary of {vocab_size}",
                self.path.display()
            ))),
            _ => Ok(()),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Ids of `text`; with `add_special_tokens` the post-processor adds `<bos>`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| Error::Tokenizer(format!("invalid id {id}"))))
            .collect::<Result<Vec<_>>>()?;
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// `text` encoded with `<bos>`, as a batch of one row (`[1, T]`): what the model's
    /// calls take.
    pub fn batch(&self, text: &str) -> Result<scope_engine::Batch> {
        Ok(scope_engine::Batch::from_ids(&self.encode(text, true)?))
    }

    /// The id of a token string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Renders `messages` with the chat template and tokenises the result without special
    /// tokens (the template's `<bos>` is the only one).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<i64>> {
        self.encode(&render_chat(messages, add_generation_prompt)?, false)
    }
}

/// The checks the `tokenizers` crate skips when it reads a post-processor and that it relies
/// on while encoding (it indexes without checking): every special token a template names is
/// defined, with as many ids as tokens, and the single-sequence template reads sequence `A`
/// only. `processor` is the post-processor as the crate serialises what it read.
fn check_post_processor(processor: &Value) -> std::result::Result<(), String> {
    match processor.get("type").and_then(Value::as_str) {
        Some("Sequence") => processor
            .get("processors")
            .and_then(Value::as_array)
            .map_or(Ok(()), |all| all.iter().try_for_each(check_post_processor)),
        Some("TemplateProcessing") => {
            let empty = serde_json::Map::new();
            let specials = processor
                .get("special_tokens")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            for (name, token) in specials {
                let len = |key| token.get(key).and_then(Value::as_array).map_or(0, Vec::len);
                if len("ids") != len("tokens") {
                    return Err(format!(
                        "special token `{name}` has {} ids for {} tokens",
                        len("ids"),
                        len("tokens")
                    ));
                }
            }
            for template in ["single", "pair"] {
                let pieces = processor.get(template).and_then(Value::as_array);
                for piece in pieces.into_iter().flatten() {
                    if let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) {
                        if !specials.contains_key(id) {
                            return Err(format!(
                                "the {template} template names special token `{id}`, which \
                                 special_tokens does not define"
                            ));
                        }
                    }
                    let sequence = piece.pointer("/Sequence/id").and_then(Value::as_str);
                    if template == "single" && sequence.is_some_and(|id| id != "A") {
                        return Err("the single template reads a second sequence (B)".to_string());
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The ids a post-processor inserts (template special tokens, BERT / RoBERTa `cls` and
/// `sep`), with their tokens, appended to `out`.
fn special_ids(processor: &Value, out: &mut Vec<(String, u32)>) {
    let as_id = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match processor.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            let all = processor.get("processors").and_then(Value::as_array);
            for p in all.into_iter().flatten() {
                special_ids(p, out);
            }
        }
        Some("TemplateProcessing") => {
            let specials = processor.get("special_tokens").and_then(Value::as_object);
            for (name, token) in specials.into_iter().flatten() {
                let ids = token.get("ids").and_then(Value::as_array);
                out.extend(
                    ids.into_iter()
                        .flatten()
                        .filter_map(as_id)
                        .map(|id| (name.clone(), id)),
                );
            }
        }
        _ => {
            for key in ["cls", "sep"] {
                if let Some([token, id]) = processor
                    .get(key)
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                {
                    if let Some(id) = as_id(id) {
                        out.push((token.as_str().unwrap_or(key).to_string(), id));
                    }
                }
            }
        }
    }
}
