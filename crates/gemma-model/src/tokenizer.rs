//! The Gemma tokenizer (`tokenizer.json` through the `tokenizers` crate) and the Gemma chat
//! template.
//!
//! `<bos>` comes from the tokenizer's post-processor when special tokens are added, as in
//! transformers. The chat template already writes `<bos>`, so a rendered conversation is
//! tokenised without special tokens (otherwise the prompt would start with two).

use std::path::Path;

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
}

impl GemmaTokenizer {
    /// Reads `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
            });
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(GemmaTokenizer { inner })
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
