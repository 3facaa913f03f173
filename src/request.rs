//! A typed view of a chat request, parsed at most once and shared through the request's
//! extensions.
//!
//! Several layers need to know what a request asks for: the token budget estimates its tokens,
//! fallback rewrites its `model`, the router picks the endpoint by its API, the simulator answers
//! it. [`ChatRequest::of`] parses the body the first time any of them asks, stores the result in
//! the request's extensions, and hands every later caller the same [`Arc`], so no body is parsed
//! twice on its way down a stack.
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use tower_dashscope::Api;
//! use tower_dashscope::request::ChatRequest;
//!
//! let mut request = Request::post("https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(
//!         br#"{"model":"qwen-plus","max_tokens":256,"stream":true,
//!             "messages":[{"role":"user","content":"Say hello in five words."}]}"#,
//!     )))
//!     .unwrap();
//!
//! let chat = ChatRequest::of(&mut request).expect("a chat request");
//! assert_eq!(chat.api(), Api::OpenAiCompatible);
//! assert_eq!(chat.model(), Some("qwen-plus"));
//! assert_eq!(chat.max_tokens(), Some(256));
//! assert!(chat.stream());
//! assert_eq!(chat.input_chars(), 24);
//! assert_eq!(chat.estimated_input_tokens(), 8);
//!
//! // The second look is free: the same parse, from the extensions.
//! let again = ChatRequest::of(&mut request).unwrap();
//! assert!(std::sync::Arc::ptr_eq(&chat, &again));
//! ```
//!
//! Bodies that are not JSON objects, are larger than [`MAX_PARSED_BODY`], nest deeper than
//! serde_json's limit, or cannot be read without consuming them give `None`: "unknown", never a
//! panic and never an allocation beyond the (bounded) body's own size.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Request};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::api::Api;
use crate::body::ReplayBody;

/// The largest body [`ChatRequest::of`] parses: DashScope's own request limit, 16 MiB.
pub const MAX_PARSED_BODY: usize = 16 * 1024 * 1024;

/// The longest `model` kept; a longer one is read as no model at all (no real model name is
/// anywhere near it).
const MAX_MODEL_LEN: usize = 256;

/// What the layers need to know about a chat request. Made by [`ChatRequest::of`] or
/// [`ChatRequest::parse`]; see the [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChatRequest {
    api: Api,
    model: Option<Arc<str>>,
    stream: bool,
    max_tokens: MaxTokens,
    ascii_chars: u64,
    digit_chars: u64,
    other_chars: u64,
    include_usage: bool,
    incremental_output: bool,
    result_format_text: bool,
}

/// The output limit a request sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MaxTokens {
    Absent,
    Set(u32),
    /// Present but not a non-negative integer (`-1`, `1.5`, `"10"`).
    Malformed,
}

/// What a request's extensions hold once it was looked at: the parse, or `None` for a body that
/// is not a chat request (so it is not parsed again).
#[derive(Clone)]
struct Parsed(Option<Arc<ChatRequest>>);

impl ChatRequest {
    /// The parsed view of `request`, from its extensions if a layer above already parsed it,
    /// else parsed now from its body and stored there.
    ///
    /// The API comes from the path ([`Api::from_path`]); a path of no known chat API gives
    /// `None`. The body is read without consuming it (see [`ReplayBody::bytes`]); a body that
    /// cannot be read that way (a stream) gives `None`.
    pub fn of<B: ReplayBody>(request: &mut Request<B>) -> Option<Arc<ChatRequest>> {
        if let Some(Parsed(parsed)) = request.extensions().get::<Parsed>() {
            return parsed.clone();
        }
        let parsed = Api::from_path(request.uri().path()).and_then(|api| {
            let bytes = request.body().bytes()?;
            ChatRequest::parse(api, request.headers(), &bytes).map(Arc::new)
        });
        request.extensions_mut().insert(Parsed(parsed.clone()));
        parsed
    }

    /// The model of the parse a layer above left in `request`'s extensions, if any; never
    /// parses. For log fields.
    pub(crate) fn model_of<B>(request: Option<&Request<B>>) -> Option<&str> {
        match request?.extensions().get::<Parsed>()? {
            Parsed(Some(chat)) => chat.model(),
            Parsed(None) => None,
        }
    }

    /// Stores `chat` as the parsed view of `request` (after a layer rewrote the body, say), so
    /// that layers below see it without parsing again.
    pub fn store<B>(request: &mut Request<B>, chat: Arc<ChatRequest>) {
        request.extensions_mut().insert(Parsed(Some(chat)));
    }

    /// Parses a request body of `api`. `headers` are the request's: a native request streams
    /// when it sends `X-DashScope-SSE: enable` or accepts `text/event-stream`.
    ///
    /// `None` when the body is not a JSON object, is over [`MAX_PARSED_BODY`], or is malformed
    /// JSON.
    #[must_use]
    pub fn parse(api: Api, headers: &HeaderMap, body: &[u8]) -> Option<ChatRequest> {
        if body.len() > MAX_PARSED_BODY {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let raw = (TopLevel { api }).deserialize(&mut de).ok()?;
        de.end().ok()?;
        let stream = match api {
            Api::Native => crate::classify::asks_for_stream(headers) || raw.stream,
            _ => raw.stream,
        };
        Some(ChatRequest {
            api,
            model: raw.model,
            stream,
            max_tokens: raw.max_tokens.unwrap_or(MaxTokens::Absent),
            ascii_chars: raw.text.ascii,
            digit_chars: raw.text.digits,
            other_chars: raw.text.other,
            include_usage: raw.include_usage,
            incremental_output: raw.incremental_output,
            result_format_text: raw.result_format_text,
        })
    }

    /// The API the request speaks.
    #[must_use]
    pub fn api(&self) -> Api {
        self.api
    }

    /// The `model` field, if it is a string (of at most 256 bytes).
    #[must_use]
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The `model` field, shared: a layer that keeps the name (a budget's key) takes this
    /// instead of allocating a copy.
    pub(crate) fn model_shared(&self) -> Option<&Arc<str>> {
        self.model.as_ref()
    }

    /// The same request with another `model`, for a layer that rewrote the body's model.
    #[must_use]
    pub fn with_model(&self, model: &str) -> ChatRequest {
        ChatRequest {
            model: Some(Arc::from(model)),
            ..self.clone()
        }
    }

    /// Whether the answer is an event stream: `"stream": true`, or for the native API the
    /// `X-DashScope-SSE: enable` header.
    #[must_use]
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The output limit: `max_tokens` in any of its spellings (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, native `parameters.max_tokens`), if it is
    /// a non-negative integer (above `u32::MAX` it reads as `u32::MAX`).
    #[must_use]
    pub fn max_tokens(&self) -> Option<u32> {
        match self.max_tokens {
            MaxTokens::Set(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the request sets an output limit that is not a non-negative integer (`-1`,
    /// `1.5`, `"10"`): DashScope answers such a request 400.
    #[must_use]
    pub fn max_tokens_is_malformed(&self) -> bool {
        self.max_tokens == MaxTokens::Malformed
    }

    /// Characters of message text: every string under `messages`, `system`, native
    /// `input.messages` / `input.prompt`, and their `content` / `text` parts.
    #[must_use]
    pub fn input_chars(&self) -> u64 {
        self.ascii_chars.saturating_add(self.other_chars)
    }

    /// An estimate of the input tokens, made to err on the high side: one per digit, one per
    /// three other ASCII characters (rounded up), one per non-ASCII character, and at least one.
    /// The response's `usage` has the real count.
    ///
    /// Against Qwen2's tokenizer (Qwen2.5, Qwen3) this is 1.2 to 1.6 times the real count for
    /// English prose, code, Chinese prose and text that mixes them, and 0.9 for a table of
    /// numbers. The figures, and how they were
    /// measured, are in [`CharEstimator`](crate::budget::CharEstimator)'s docs.
    #[must_use]
    pub fn estimated_input_tokens(&self) -> u64 {
        // Three, not four, ASCII characters a token: English prose is about four and a half a
        // Qwen token, but code and JSON (indentation, punctuation, short identifiers) are about
        // three and a half, and four under-counted them. Qwen makes every digit a token.
        let digits = self.digit_chars.min(self.ascii_chars);
        (self.ascii_chars - digits)
            .div_ceil(3)
            .saturating_add(digits)
            .saturating_add(self.other_chars)
            .max(1)
    }

    /// Whether an OpenAI-compatible stream asks for usage in its last chunk
    /// (`stream_options.include_usage`).
    #[must_use]
    pub fn include_usage(&self) -> bool {
        self.include_usage
    }

    /// Native `parameters.incremental_output`: each event carries only the new text.
    #[must_use]
    pub fn incremental_output(&self) -> bool {
        self.incremental_output
    }

    /// Native `parameters.result_format` is `"text"` (answers carry `output.text` instead of
    /// `output.choices`).
    #[must_use]
    pub fn result_format_text(&self) -> bool {
        self.result_format_text
    }
}

impl fmt::Debug for ChatRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text itself is not kept, so it cannot leak into logs.
        f.debug_struct("ChatRequest")
            .field("api", &self.api)
            .field("model", &self.model())
            .field("stream", &self.stream)
            .field("max_tokens", &self.max_tokens)
            .field("input_chars", &self.input_chars())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the top-level visitor collects.
#[derive(Default)]
struct Raw {
    model: Option<Arc<str>>,
    stream: bool,
    max_tokens: Option<MaxTokens>,
    text: TextCount,
    include_usage: bool,
    incremental_output: bool,
    result_format_text: bool,
}

/// Characters of text seen, ASCII and other apart.
#[derive(Default, Clone, Copy)]
struct TextCount {
    ascii: u64,
    /// ASCII digits, counted in `ascii` too.
    digits: u64,
    other: u64,
}

impl TextCount {
    /// Counts `s` in one pass over its bytes: a byte below 0x80 is an ASCII character, and
    /// every other character starts with a byte of 0xC0 or above (the rest, 0x80..0xC0, are
    /// continuation bytes), so no decoding is needed. Eight bytes at a time, as one `u64`
    /// whose bytes count in lanes of their own.
    fn add(&mut self, s: &str) {
        const HIGH: u64 = 0x8080_8080_8080_8080;
        const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
        let bytes = s.as_bytes();
        let (mut ascii, mut digits, mut other) = (0u64, 0u64, 0u64);
        // At most 255 words a block, so that no lane (one byte) overflows.
        let mut blocks = bytes.chunks_exact(8 * 255);
        let mut count_words = |block: &[u8]| {
            let (mut non_ascii, mut digit, mut lead) = (0u64, 0u64, 0u64);
            for word in block.chunks_exact(8) {
                let mut le = [0u8; 8];
                le.copy_from_slice(word);
                let w = u64::from_le_bytes(le);
                // The high bit of each byte: set for a non-ASCII byte.
                let high = w & HIGH;
                // A digit: an ASCII byte from 0x30 to 0x39. With the high bit cleared, adding
                // 0x50 sets it from 0x30 up and adding 0x46 from 0x3A up; no carry crosses
                // bytes.
                let low = w & LOW7;
                let from_0 = low.wrapping_add(0x5050_5050_5050_5050) & HIGH;
                let past_9 = low.wrapping_add(0x4646_4646_4646_4646) & HIGH;
                non_ascii += high >> 7;
                digit += (from_0 & !past_9 & !high) >> 7;
                // A lead byte (0b11xxxxxx): its two high bits set.
                lead += (w & (w << 1) & HIGH) >> 7;
            }
            let words = (block.len() / 8) as u64;
            ascii += 8 * words - lanes_sum(non_ascii);
            digits += lanes_sum(digit);
            other += lanes_sum(lead);
        };
        for block in &mut blocks {
            count_words(block);
        }
        let rest = blocks.remainder();
        let whole = rest.len() / 8 * 8;
        count_words(&rest[..whole]);
        for &b in &rest[whole..] {
            ascii += u64::from(b < 0x80);
            digits += u64::from(b.is_ascii_digit());
            other += u64::from(b >= 0xC0);
        }
        self.ascii = self.ascii.saturating_add(ascii);
        self.digits = self.digits.saturating_add(digits);
        self.other = self.other.saturating_add(other);
    }
}

/// The sum of the eight byte lanes of `lanes`.
fn lanes_sum(lanes: u64) -> u64 {
    const EVEN: u64 = 0x00FF_00FF_00FF_00FF;
    let pairs = (lanes & EVEN) + ((lanes >> 8) & EVEN);
    pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48
}

/// The object keys the parse looks at, recognised without allocating (serde's `Cow<str>` keys
/// are always owned: one allocation per key of every message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Model,
    Stream,
    MaxTokens,
    Messages,
    System,
    Input,
    StreamOptions,
    Parameters,
    Content,
    Text,
    Prompt,
    IncludeUsage,
    IncrementalOutput,
    ResultFormat,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Key, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                self.visit_bytes(key.as_bytes())
            }

            fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Key, E> {
                Ok(match key {
                    b"model" => Key::Model,
                    b"stream" => Key::Stream,
                    b"max_tokens" | b"max_completion_tokens" | b"max_output_tokens" => {
                        Key::MaxTokens
                    }
                    b"messages" => Key::Messages,
                    b"system" => Key::System,
                    b"input" => Key::Input,
                    b"stream_options" => Key::StreamOptions,
                    b"parameters" => Key::Parameters,
                    b"content" => Key::Content,
                    b"text" => Key::Text,
                    b"prompt" => Key::Prompt,
                    b"include_usage" => Key::IncludeUsage,
                    b"incremental_output" => Key::IncrementalOutput,
                    b"result_format" => Key::ResultFormat,
                    _ => Key::Other,
                })
            }
        }
        // As bytes: serde_json unescapes a key read this way but does not validate it as
        // UTF-8 (a key that is not one of the above is skipped whatever it holds), which is
        // most of the cost of reading a short key.
        de.deserialize_bytes(V)
    }
}

struct TopLevel {
    api: Api,
}

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = Raw;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Raw, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut raw = Raw::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Model => raw.model = map.next_value_seed(lenient::<Name>())?.0,
                Key::Stream => raw.stream = map.next_value_seed(lenient::<Flag>())?.0,
                Key::MaxTokens => {
                    let limit = map.next_value_seed(lenient::<Limit>())?.0;
                    // The first spelling present wins; a later one does not undo it.
                    raw.max_tokens = raw.max_tokens.or(limit);
                }
                Key::Messages | Key::System | Key::Input => {
                    map.next_value_seed(Text(&mut raw.text))?;
                }
                Key::StreamOptions => {
                    raw.include_usage = map.next_value_seed(lenient::<StreamOptions>())?.0;
                }
                Key::Parameters if self.api == Api::Native => {
                    let p = map.next_value_seed(lenient::<Parameters>())?;
                    raw.max_tokens = raw.max_tokens.or(p.max_tokens);
                    raw.incremental_output = p.incremental_output;
                    raw.result_format_text = p.result_format_text;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// Sums the characters of every string in a message value: strings anywhere in arrays, and the
/// `content`, `text`, `messages` and `prompt` fields of objects.
struct Text<'a>(&'a mut TextCount);

impl<'de> DeserializeSeed<'de> for Text<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("message text")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.add(s);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Text(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            if matches!(key, Key::Content | Key::Text | Key::Messages | Key::Prompt) {
                map.next_value_seed(Text(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    // Numbers, booleans and nulls carry no text.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// One JSON value read leniently: what the type expects is taken, anything else is skipped
/// without allocating and read as the default, never a failed parse.
trait Lenient<'de>: Default + Sized {
    fn from_str(_: &str) -> Self {
        Self::default()
    }
    fn from_bool(_: bool) -> Self {
        Self::default()
    }
    fn from_u64(_: u64) -> Self {
        Self::default()
    }
    fn from_i64(n: i64) -> Self {
        u64::try_from(n).map_or_else(|_| Self::from_other(), Self::from_u64)
    }
    /// Floats, arrays and (unless [`from_map`](Self::from_map) says otherwise) objects.
    fn from_other() -> Self {
        Self::default()
    }
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::from_other())
    }
}

struct LenientSeed<T>(std::marker::PhantomData<T>);

fn lenient<'de, T: Lenient<'de>>() -> LenientSeed<T> {
    LenientSeed(std::marker::PhantomData)
}

impl<'de, T: Lenient<'de>> DeserializeSeed<'de> for LenientSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de, T: Lenient<'de>> Visitor<'de> for LenientSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        Ok(T::from_str(s))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<T, E> {
        Ok(T::from_bool(b))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        Ok(T::from_u64(n))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        Ok(T::from_i64(n))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Ok(T::from_other())
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::from_other())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }
}

/// A short string (`model`, `result_format`); longer ones read as absent.
#[derive(Default)]
struct Name(Option<Arc<str>>);

impl Lenient<'_> for Name {
    fn from_str(s: &str) -> Self {
        Name((s.len() <= MAX_MODEL_LEN).then(|| Arc::from(s)))
    }
}

/// A flag: only `true` is true.
#[derive(Default)]
struct Flag(bool);

impl Lenient<'_> for Flag {
    fn from_bool(b: bool) -> Self {
        Flag(b)
    }
}

/// A `max_tokens` value: `None` for `null`, `Malformed` for anything but a non-negative integer.
#[derive(Default)]
struct Limit(Option<MaxTokens>);

impl Lenient<'_> for Limit {
    fn from_u64(n: u64) -> Self {
        Limit(Some(MaxTokens::Set(u32::try_from(n).unwrap_or(u32::MAX))))
    }
    fn from_other() -> Self {
        Limit(Some(MaxTokens::Malformed))
    }
    fn from_str(_: &str) -> Self {
        Self::from_other()
    }
    fn from_bool(_: bool) -> Self {
        Self::from_other()
    }
}

/// `stream_options.include_usage`.
#[derive(Default)]
struct StreamOptions(bool);

impl<'de> Lenient<'de> for StreamOptions {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut include_usage = false;
        while let Some(key) = map.next_key::<Key>()? {
            if key == Key::IncludeUsage {
                include_usage = map.next_value_seed(lenient::<Flag>())?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(StreamOptions(include_usage))
    }
}

/// Native `parameters`.
#[derive(Default)]
struct Parameters {
    max_tokens: Option<MaxTokens>,
    incremental_output: bool,
    result_format_text: bool,
}

impl<'de> Lenient<'de> for Parameters {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut p = Parameters::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // The first spelling present wins.
                Key::MaxTokens if p.max_tokens.is_none() => {
                    let limit = map.next_value_seed(lenient::<Limit>())?.0;
                    p.max_tokens = limit;
                }
                Key::IncrementalOutput => {
                    p.incremental_output = map.next_value_seed(lenient::<Flag>())?.0;
                }
                Key::ResultFormat => {
                    let format = map.next_value_seed(lenient::<Name>())?.0;
                    p.result_format_text = format.as_deref() == Some("text");
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(api: Api, body: &str) -> Option<ChatRequest> {
        ChatRequest::parse(api, &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn each_api_shape() {
        let compat = parse(
            Api::OpenAiCompatible,
            r#"{"model":"qwen-plus","messages":[{"role":"system","content":"Be brief."},
               {"role":"user","content":[{"type":"text","text":"héllo"}]}],
               "max_completion_tokens":64,"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(compat.model(), Some("qwen-plus"));
        assert_eq!(compat.max_tokens(), Some(64));
        assert!(compat.stream() && compat.include_usage());
        // "Be brief." (9) + "héllo" (5, one of them not ASCII); roles and types are not text.
        assert_eq!(compat.input_chars(), 14);
        assert_eq!(compat.estimated_input_tokens(), 13_u64.div_ceil(3) + 1);

        let native = r#"{"model":"qwen-max","input":{"messages":[{"role":"user","content":"你好"}]},
            "parameters":{"max_tokens":10,"incremental_output":true,"result_format":"text"}}"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-dashscope-sse", HeaderValue::from_static("enable"));
        let chat = ChatRequest::parse(Api::Native, &headers, native.as_bytes()).unwrap();
        assert!(chat.stream() && chat.incremental_output() && chat.result_format_text());
        assert_eq!(chat.max_tokens(), Some(10));
        assert_eq!(chat.estimated_input_tokens(), 2);
        assert!(!parse(Api::Native, native).unwrap().stream());

        let anthropic = parse(
            Api::Anthropic,
            r#"{"model":"qwen-plus","system":[{"type":"text","text":"abcd"}],"max_tokens":5,
               "messages":[{"role":"user","content":"efgh"}]}"#,
        )
        .unwrap();
        assert_eq!(anthropic.input_chars(), 8);
        assert_eq!(anthropic.max_tokens(), Some(5));
    }

    #[test]
    fn lenient_fields() {
        let chat = parse(
            Api::OpenAiCompatible,
            r#"{"model":7,"stream":"yes","max_tokens":-1,"messages":{"content":null},"extra":[1,{"a":[]}]}"#,
        )
        .unwrap();
        assert_eq!(chat.model(), None);
        assert!(!chat.stream());
        assert!(chat.max_tokens_is_malformed());
        assert_eq!(chat.max_tokens(), None);
        for bad in ["1.5", "\"10\"", "true", "[1]"] {
            let body = format!(r#"{{"max_tokens":{bad}}}"#);
            assert!(
                parse(Api::OpenAiCompatible, &body)
                    .unwrap()
                    .max_tokens_is_malformed(),
                "{bad}"
            );
        }
        let huge = parse(Api::OpenAiCompatible, r#"{"max_tokens":99999999999}"#).unwrap();
        assert_eq!(huge.max_tokens(), Some(u32::MAX));
        let null = parse(Api::OpenAiCompatible, r#"{"max_tokens":null}"#).unwrap();
        assert!(!null.max_tokens_is_malformed() && null.max_tokens().is_none());
        let long_model = format!(r#"{{"model":"{}"}}"#, "m".repeat(300));
        assert_eq!(
            parse(Api::OpenAiCompatible, &long_model).unwrap().model(),
            None
        );
    }

    #[test]
    fn not_chat_requests() {
        for body in ["", "nope", "[1]", "{", "{} x", "null", "\"s\""] {
            assert!(parse(Api::OpenAiCompatible, body).is_none(), "{body:?}");
        }
        // Nesting beyond serde_json's limit is "unknown", not a stack overflow.
        let deep = format!(
            r#"{{"messages":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(Api::OpenAiCompatible, &deep).is_none());
    }

    #[test]
    fn escaped_text_is_counted() {
        let chat = parse(
            Api::OpenAiCompatible,
            r#"{"messages":[{"content":"a\"b\u4f60"}]}"#,
        )
        .unwrap();
        assert_eq!(chat.input_chars(), 4);
    }

    #[test]
    fn text_is_counted_by_characters_in_one_pass() {
        // ASCII, digits, two-, three- and four-byte characters: what `chars()` counts.
        let long = "Turn 12: the quick brown fox, 你好 — 🦀 /:09 ".repeat(7);
        // Past one block of 255 words, and digits only (a lane's count at its largest).
        let longer = "Turn 12: 你好 — 🦀 /:09 ".repeat(200);
        let numbers = "0123456789".repeat(300);
        for text in [
            "",
            "abc 123",
            "héllo",
            "你好，世界",
            "emoji 🦀 ok",
            "é1你2🦀3",
            "9",
            "/0123456789:",
            &long,
            &longer,
            &numbers,
        ] {
            let mut count = TextCount::default();
            count.add(text);
            let ascii = text.chars().filter(char::is_ascii).count() as u64;
            let digits = text.chars().filter(char::is_ascii_digit).count() as u64;
            let other = text.chars().count() as u64 - ascii;
            assert_eq!(
                (count.ascii, count.digits, count.other),
                (ascii, digits, other),
                "{text:?}"
            );
        }
    }

    #[test]
    fn keys_are_read_with_their_escapes() {
        let chat = parse(
            Api::OpenAiCompatible,
            r#"{"mod\u0065l":"qwen-plus","max_tok\u0065ns":7,"messages":[{"c\u006fntent":"abc"}]}"#,
        )
        .unwrap();
        assert_eq!(chat.model(), Some("qwen-plus"));
        assert_eq!(chat.max_tokens(), Some(7));
        assert_eq!(chat.input_chars(), 3);
        // A key that is not UTF-8 once unescaped is skipped, not a failed parse.
        let chat = parse(Api::OpenAiCompatible, r#"{"\ud800":1,"model":"qwen-plus"}"#);
        assert_eq!(
            chat.and_then(|c| c.model().map(str::to_owned)).as_deref(),
            Some("qwen-plus")
        );
    }
}
