//! The Gemma tokenizer (`tokenizer.json` through the `tokenizers` crate) and the Gemma chat
//! templates (Gemma 2's and Gemma 3's, rendered natively, chosen with [`ChatTemplate`]).
//!
//! `<bos>` comes from the tokenizer's post-processor when special tokens are added, as in
//! transformers. The chat template already writes `<bos>`, so a rendered conversation is
//! tokenised without special tokens (otherwise the prompt would start with two).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `user`, `assistant` (rendered as `model`), or another role rendered as written; Gemma
    /// 3 also takes `system` first.
    pub role: String,
    /// The text; whitespace at both ends is trimmed by the template (a Gemma 3 system
    /// message's is kept). The templates' list-of-parts content is not supported: text only.
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

/// Gemma 2's chat template (also Gemma 1's), as `gemma-2-*-it/tokenizer_config.json` ships it.
const GEMMA2_JINJA: &str = concat!(
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}",
    "{{ raise_exception('System role not supported') }}{% endif %}",
    "{% for message in messages %}",
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}",
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}",
    "{% endif %}{% if (message['role'] == 'assistant') %}",
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}",
    "{% endif %}",
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}",
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}",
    "{% endif %}",
);
/// Gemma 3's chat template, as `gemma-3-*-it/tokenizer_config.json` ships it.
const GEMMA3_JINJA: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"#;
/// What transformers raises, before any template runs, for a conversation without messages.
const EMPTY_CONVERSATION: &str =
    "Cannot apply chat template to an empty conversation. Provide at least one message.";

/// The Gemma chat templates this crate renders natively, without a Jinja engine, exactly as
/// transformers renders their Jinja source. Which one a model uses is chosen explicitly, or
/// recognised from its `tokenizer_config.json` ([`ChatTemplate::from_tokenizer_config`]):
/// rendering one model's conversation with the other's template would give a prompt the
/// model was not trained on, without any error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChatTemplate {
    /// Gemma 2's (and Gemma 1's): a `system` first message is an error.
    Gemma2,
    /// Gemma 3's: a `system` first message is written, followed by a blank line, at the start
    /// of the first turn after it.
    Gemma3,
}

impl ChatTemplate {
    /// The template whose Jinja source is `source` (a `chat_template` value), compared exactly
    /// (up to the one trailing newline Jinja drops): a template that is not one of the two
    /// known ones is an error, never rendered as the nearest one. A caller who knows a
    /// modified template behaves as a known one names that variant instead.
    pub fn from_jinja(source: &str) -> Result<Self> {
        ChatTemplate::recognise(source).ok_or_else(|| Error::ChatTemplate(unknown_template(source)))
    }

    /// The template of a `tokenizer_config.json` (its `chat_template`), as [`from_jinja`]
    /// recognises it.
    ///
    /// [`from_jinja`]: ChatTemplate::from_jinja
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| Error::InvalidConfig {
            path: path.to_path_buf(),
            key: "chat_template".into(),
            reason,
        };
        match config.get("chat_template") {
            None => Err(Error::MissingConfigKey {
                path: path.to_path_buf(),
                key: "chat_template".into(),
            }),
            Some(Value::String(source)) => {
                ChatTemplate::recognise(source).ok_or_else(|| invalid(unknown_template(source)))
            }
            Some(_) => Err(invalid("not a string".into())),
        }
    }

    /// The known template whose source is `source`, if any.
    fn recognise(source: &str) -> Option<Self> {
        let body = |s: &'static str| s.strip_suffix('\n').unwrap_or(s);
        let source = source.strip_suffix('\n').unwrap_or(source);
        [
            (ChatTemplate::Gemma2, GEMMA2_JINJA),
            (ChatTemplate::Gemma3, GEMMA3_JINJA),
        ]
        .into_iter()
        .find(|(_, known)| body(known) == source)
        .map(|(template, _)| template)
    }

    /// The Jinja source this variant renders like.
    pub fn jinja(self) -> &'static str {
        match self {
            ChatTemplate::Gemma2 => GEMMA2_JINJA,
            ChatTemplate::Gemma3 => GEMMA3_JINJA,
        }
    }

    /// Renders `messages` as transformers' `apply_chat_template(..., tokenize=False)` does
    /// with this template: a leading `<bos>`; each turn
    /// `<start_of_turn>{role}\n{content.strip()}<end_of_turn>\n` with `assistant` written as
    /// `model`; roles checked to alternate starting with `user` (as
    /// `(role == "user") != (index is even)`, so any non-user role passes at odd indices);
    /// then `<start_of_turn>model\n` when `add_generation_prompt`. The variants differ on a
    /// `system` first message only (see [`ChatTemplate`]). An empty conversation is an error,
    /// as transformers checks before rendering.
    pub fn render(self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some((first, rest)) = messages.split_first() else {
            return Err(Error::ChatTemplate(EMPTY_CONVERSATION.into()));
        };
        let (first_prefix, turns) = match self {
            ChatTemplate::Gemma2 if first.role == "system" => {
                return Err(Error::ChatTemplate("System role not supported".into()));
            }
            ChatTemplate::Gemma2 => (String::new(), messages),
            // Gemma 3 keeps the system text as written (no trim) and drops it from the turns,
            // so the turn after it must be `user`; a system message alone renders `<bos>`.
            ChatTemplate::Gemma3 if first.role == "system" => {
                (format!("{}\n\n", first.content), rest)
            }
            ChatTemplate::Gemma3 => (String::new(), messages),
        };
        render_turns(&first_prefix, turns, add_generation_prompt)
    }
}

/// The error message for a template that is not a known one (its length and first line, to
/// recognise it without printing kilobytes).
fn unknown_template(source: &str) -> String {
    let first_line = source.lines().next().unwrap_or("");
    let shown: String = first_line.chars().take(80).collect();
    format!(
        "unknown chat template ({} bytes, starting `{shown}`): scope renders Gemma 2's and \
         Gemma 3's templates only; name ChatTemplate::Gemma2 or ChatTemplate::Gemma3 \
         explicitly if this model's template behaves as one of them",
        source.len()
    )
}

/// The turns of both templates: `first_prefix` goes at the start of the first turn's text
/// (Gemma 3's system message), before the trimmed content.
fn render_turns(
    first_prefix: &str,
    turns: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String> {
    let mut out = String::from("<bos>");
    for (i, message) in turns.iter().enumerate() {
        if (message.role == "user") != (i % 2 == 0) {
            return Err(Error::ChatTemplate(
                "Conversation roles must alternate user/assistant/user/assistant/...".into(),
            ));
        }
        out.push_str("<start_of_turn>");
        out.push_str(turn_role(&message.role));
        out.push('\n');
        if i == 0 {
            out.push_str(first_prefix);
        }
        out.push_str(strip_like_python(&message.content));
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    Ok(out)
}

/// The role a turn header names: Gemma calls the assistant `model`.
fn turn_role(role: &str) -> &str {
    if role == "assistant" {
        "model"
    } else {
        role
    }
}

/// `text` without whitespace at both ends as Jinja's `trim` (Python's `str.strip()`) removes
/// it: Python's whitespace is Unicode's White_Space (what [`str::trim`] removes) plus the
/// four ASCII separators U+001C..U+001F, which `str::trim` would keep.
fn strip_like_python(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Renders Gemma 2's chat template ([`ChatTemplate::Gemma2`]); kept for the callers written
/// before Gemma 3. A Gemma 3 conversation goes through [`ChatTemplate::render`].
pub fn render_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
    ChatTemplate::Gemma2.render(messages, add_generation_prompt)
}

/// The tokens transformers' `GemmaTokenizer` registers as special on loading, whatever
/// `tokenizer.json` says: its named tokens at their class defaults (pad, eos, bos, unk, mask).
/// Gemma 3's `tokenizer.json` marks `<mask>` as not special, so without this `decode` with
/// `skip_special_tokens` would keep a `<mask>` that transformers drops.
const NAMED_SPECIAL_TOKENS: [&str; 5] = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"];

/// A Gemma tokenizer.
#[derive(Clone, Debug)]
pub struct GemmaTokenizer {
    inner: Tokenizer,
    /// The `tokenizer.json` it was read from (named in errors).
    path: PathBuf,
    /// The template [`GemmaTokenizer::encode_chat`] renders with.
    chat_template: ChatTemplate,
    /// Ids from here on have no row in the model's embedding (added tokens past it, such as
    /// `<image_soft_token>` beside gemma-3-1b's 262144 rows): [`GemmaTokenizer::encode`]
    /// refuses text that produces one. Set by [`GemmaTokenizer::fit_to`].
    id_limit: Option<i64>,
    /// Why the checkpoint's own template cannot be rendered (one scope does not know), in
    /// which case [`GemmaTokenizer::encode_chat`] is that error rather than another template.
    unknown_template: Option<String>,
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
        let mut inner = parse_tokenizer(path).map_err(fail)?;
        if let Some(processor) = inner.get_post_processor() {
            let json = serde_json::to_value(processor).map_err(|e| fail(e.to_string()))?;
            check_post_processor(&json).map_err(|e| fail(format!("post_processor: {e}")))?;
        }
        inner
            .with_truncation(None)
            .map_err(|e| fail(e.to_string()))?;
        inner.with_padding(None);
        mark_named_specials(&mut inner);
        Ok(GemmaTokenizer {
            inner,
            path: path.to_path_buf(),
            chat_template: ChatTemplate::Gemma2,
            unknown_template: None,
            id_limit: None,
        })
    }

    /// This tokenizer with `template` as the one [`GemmaTokenizer::encode_chat`] renders
    /// (Gemma 3 models need [`ChatTemplate::Gemma3`]; see
    /// [`ChatTemplate::from_tokenizer_config`]).
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.chat_template = template;
        self.unknown_template = None;
        self
    }

    /// This tokenizer with the chat template of the `tokenizer_config.json` at `path`:
    /// `default` (the architecture's) when the file or its `chat_template` is absent, and
    /// when the template is one scope does not know, [`GemmaTokenizer::encode_chat`] fails
    /// with that error (the tokenizer still encodes plain text).
    pub fn with_template_of(self, path: &Path, default: ChatTemplate) -> Self {
        let configured = path
            .is_file()
            .then(|| ChatTemplate::from_tokenizer_config(path));
        match configured {
            None | Some(Err(Error::MissingConfigKey { .. })) => self.with_chat_template(default),
            Some(Ok(template)) => self.with_chat_template(template),
            Some(Err(e)) => GemmaTokenizer {
                unknown_template: Some(e.to_string()),
                ..self.with_chat_template(default)
            },
        }
    }

    /// The template [`GemmaTokenizer::encode_chat`] renders with: Gemma 2's unless
    /// [`GemmaTokenizer::with_chat_template`] chose another (what every caller written
    /// before Gemma 3 expects).
    pub fn chat_template(&self) -> ChatTemplate {
        self.chat_template
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
        self.refuse_ids_past(ids, vocab_size)
    }

    /// This tokenizer for a model of `vocab_size` rows: [`GemmaTokenizer::check_ids_fit`]
    /// for the vocabulary proper and the post-processor's ids, while added tokens past the
    /// embedding are allowed and refused only when a text produces one (the Gemma 3
    /// tokenizer's `<image_soft_token>` is id 262144, one past the text-only models' rows).
    pub fn fit_to(self, vocab_size: i64) -> Result<Self> {
        let beyond = self
            .inner
            .get_added_vocabulary()
            .get_vocab()
            .values()
            .any(|&id| i64::from(id) >= vocab_size);
        if !beyond {
            self.check_ids_fit(vocab_size)?;
            return Ok(self);
        }
        let added = self.inner.get_added_vocabulary().get_vocab().clone();
        let mut ids: Vec<(String, u32)> = self
            .inner
            .get_vocab(false)
            .into_iter()
            .filter(|(token, _)| !added.contains_key(token))
            .collect();
        if let Some(processor) = self.inner.get_post_processor() {
            let json = serde_json::to_value(processor).map_err(|e| {
                Error::Tokenizer(format!("{}: post_processor: {e}", self.path.display()))
            })?;
            special_ids(&json, &mut ids);
        }
        self.refuse_ids_past(ids, vocab_size)?;
        Ok(GemmaTokenizer {
            id_limit: Some(vocab_size),
            ..self
        })
    }

    /// An error naming the largest of `ids` when it is past `vocab_size` rows.
    fn refuse_ids_past(&self, ids: Vec<(String, u32)>, vocab_size: i64) -> Result<()> {
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
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
        if let Some(limit) = self.id_limit {
            if let Some(&id) = ids.iter().find(|&&id| id >= limit) {
                let token = u32::try_from(id)
                    .ok()
                    .and_then(|id| self.inner.id_to_token(id));
                return Err(Error::Tokenizer(format!(
                    "the text holds token `{}` (id {id}), which the model's vocabulary of \
                     {limit} does not have",
                    token.unwrap_or_default()
                )));
            }
        }
        Ok(ids)
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

    /// Renders `messages` with this tokenizer's chat template
    /// ([`GemmaTokenizer::chat_template`]) and tokenises the result without special tokens
    /// (the template's `<bos>` is the only one).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<i64>> {
        if let Some(problem) = &self.unknown_template {
            return Err(Error::ChatTemplate(problem.clone()));
        }
        let text = self.chat_template.render(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

/// The `tokenizers` tokenizer of the file at `path`, or why it cannot be read.
///
/// The file's JSON syntax is checked first: `tokenizers` 0.22 panics (`expect("Helper")`)
/// when a syntax error falls inside the `decoder` object, where its untagged deserializer
/// reads the raw stream (the fuzzer found 33 such files). A panic anywhere else inside it is
/// turned into an error here too, so that a damaged download is a message naming the file.
fn parse_tokenizer(path: &Path) -> std::result::Result<Tokenizer, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice::<WellFormed>(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match crate::guard::catching_panics(|| Tokenizer::from_bytes(&bytes)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "the tokenizers library could not read it ({panic})"
        )),
    }
}

/// A JSON document read only to check it: every string is decoded, so that an escape no
/// string may hold (`"\ud800"`) is caught here too (serde's `IgnoredAny` skips strings
/// undecoded), and nothing is kept.
struct WellFormed;

impl<'de> serde::Deserialize<'de> for WellFormed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(WellFormed)
    }
}

impl<'de> serde::de::Visitor<'de> for WellFormed {
    type Value = WellFormed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }

    fn visit_unit<E>(self) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<WellFormed, A::Error> {
        while seq.next_element::<WellFormed>()?.is_some() {}
        Ok(WellFormed)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<WellFormed, A::Error> {
        while map.next_entry::<WellFormed, WellFormed>()?.is_some() {}
        Ok(WellFormed)
    }
}

/// Marks the added tokens named in [`NAMED_SPECIAL_TOKENS`] as special where the file does
/// not, as transformers does; the tokens keep their ids and matching options, so encoding is
/// unchanged and only `decode(.., skip_special_tokens)` drops them. Tokens the file lacks are
/// not added (transformers would give them new ids past the model's vocabulary).
fn mark_named_specials(inner: &mut Tokenizer) {
    let unmarked: Vec<AddedToken> = inner
        .get_added_vocabulary()
        .get_added_tokens_decoder()
        .values()
        .filter(|token| !token.special && NAMED_SPECIAL_TOKENS.contains(&token.content.as_str()))
        .map(|token| AddedToken {
            special: true,
            ..token.clone()
        })
        .collect();
    if !unmarked.is_empty() {
        inner.add_special_tokens(&unmarked);
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
