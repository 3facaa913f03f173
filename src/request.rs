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
//! The body is read in one pass by a scanner of its own, which looks at every byte once, skips
//! what no layer needs without decoding it, and counts the message text without copying it. It
//! accepts exactly the bodies a serde_json parse of the same fields would, and reads the same
//! from them (the tests hold it to that parse, kept as their oracle).
//!
//! Bodies that are not JSON objects, are larger than [`MAX_PARSED_BODY`], nest deeper than
//! serde_json's limit (128) where they are read, or cannot be read without consuming them give
//! `None`: "unknown", never a panic and never an allocation beyond the (bounded) body's own
//! size.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Request};
use serde::de;

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
        let raw = Scanner {
            bytes: body,
            pos: 0,
        }
        .top_level(api)
        .ok()?;
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

/// What the parse collects.
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
    /// Counts one character (an escape's).
    fn add_char(&mut self, c: char) {
        if c.is_ascii() {
            self.ascii = self.ascii.saturating_add(1);
            self.digits = self.digits.saturating_add(u64::from(c.is_ascii_digit()));
        } else {
            self.other = self.other.saturating_add(1);
        }
    }

    /// Adds the counts of one run of bytes.
    fn add_run(&mut self, ascii: u64, digits: u64, other: u64) {
        self.ascii = self.ascii.saturating_add(ascii);
        self.digits = self.digits.saturating_add(digits);
        self.other = self.other.saturating_add(other);
    }
}

/// Every byte's high bit.
const HIGH: u64 = 0x8080_8080_8080_8080;
/// Every byte's low seven bits.
const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
/// One in every byte.
const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of every byte of `w` (eight bytes, little-endian) that ends a run of string
/// bytes: `"`, `\` or a control character (below 0x20). Exact for the lowest such byte; the
/// bytes above it may be flagged falsely (a borrow), so only the lowest is used.
#[inline]
fn string_stops(w: u64) -> u64 {
    let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (ctrl | quote | backslash) & HIGH
}

/// The eight bytes at `at`, if there are eight.
#[inline]
fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// The eight bytes of `chunk` (eight long) as a little-endian word.
#[inline]
fn le_word(chunk: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(chunk);
    u64::from_le_bytes(le)
}

/// The digits of `w`, a word of ASCII bytes only, one in the low bit of its lane: a digit is
/// a byte from 0x30 to 0x39, and adding 0x50 sets a byte's high bit from 0x30 up, adding 0x46
/// from 0x3A up, with no carry across bytes.
#[inline]
fn ascii_digits(w: u64) -> u64 {
    let from_0 = w.wrapping_add(ONES * 0x50);
    let past_9 = w.wrapping_add(ONES * 0x46);
    (from_0 & !past_9 & HIGH) >> 7
}

/// The sum of the eight byte lanes of `lanes`.
fn lanes_sum(lanes: u64) -> u64 {
    const EVEN: u64 = 0x00FF_00FF_00FF_00FF;
    let pairs = (lanes & EVEN) + ((lanes >> 8) & EVEN);
    pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48
}

/// Counts of text bytes: per byte lane of eight-byte words (each lane at most 255), or summed.
#[derive(Default)]
struct Lanes {
    /// Bytes of 0x80 and above.
    non_ascii: u64,
    /// ASCII digits.
    digits: u64,
    /// Bytes of 0xC0 and above: the first bytes of non-ASCII characters.
    lead: u64,
}

impl Lanes {
    /// Counts the eight bytes of `w` into their lanes.
    #[inline]
    fn add(&mut self, w: u64) {
        let high = w & HIGH;
        if high == 0 {
            self.digits += ascii_digits(w);
        } else {
            // As in `ascii_digits`, with the high bits cleared first, and not counting the
            // bytes that had one.
            let low = w & LOW7;
            let from_0 = low.wrapping_add(ONES * 0x50);
            let past_9 = low.wrapping_add(ONES * 0x46);
            self.digits += (from_0 & !past_9 & !w & HIGH) >> 7;
            self.non_ascii += high >> 7;
            // A lead byte (0b11xxxxxx): its two high bits set.
            self.lead += (w & (w << 1) & HIGH) >> 7;
        }
    }

    /// Counts the bytes of `w` before the first stop in `stops` ([`string_stops`]); returns
    /// how many there are.
    #[inline]
    fn add_before(&mut self, w: u64, stops: u64) -> usize {
        let before = stops.trailing_zeros() / 8;
        // The bytes from the stop on, zeroed, count as nothing.
        self.add(w & ((1u64 << (before * 8)) - 1));
        before as usize
    }

    /// Adds the sums of `lanes`' lanes.
    #[inline]
    fn add_sums(&mut self, lanes: &Lanes) {
        self.digits += lanes_sum(lanes.digits);
        // Text that is all ASCII has none.
        if lanes.non_ascii != 0 {
            self.non_ascii += lanes_sum(lanes.non_ascii);
            self.lead += lanes_sum(lanes.lead);
        }
    }

    /// Adds these sums, of a run of `len` bytes, to `count`; and whether the run is all
    /// ASCII.
    fn counted(&self, len: usize, count: &mut TextCount) -> bool {
        count.add_run(len as u64 - self.non_ascii, self.digits, self.lead);
        self.non_ascii == 0
    }
}

/// The object keys the parse looks at.
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

/// The longest key [`Key::of`] knows, `max_completion_tokens`.
const LONGEST_KEY: usize = 21;

impl Key {
    /// The key whose unescaped bytes are `key`.
    fn of(key: &[u8]) -> Key {
        match key {
            b"model" => Key::Model,
            b"stream" => Key::Stream,
            b"max_tokens" | b"max_completion_tokens" | b"max_output_tokens" => Key::MaxTokens,
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
        }
    }
}

/// A body that is not a chat request: malformed JSON, not an object, too deep, a number out of
/// range. Why is not kept (the parse's answer is `None` whatever it is).
#[derive(Debug)]
struct Malformed;

type Scan<T> = Result<T, Malformed>;

/// How deep the arrays and objects the parse reads (rather than skips) may nest: serde_json's
/// limit, which the parse keeps so that it accepts and refuses the same bodies as a serde_json
/// parse would. Skipped values nest without limit (but without recursion).
const MAX_DEPTH: u8 = 128;

/// The nesting left inside one more array or object, if any is left.
fn deeper(depth: u8) -> Scan<u8> {
    match depth - 1 {
        0 => Err(Malformed),
        left => Ok(left),
    }
}

/// A number read where its value matters.
enum Number {
    /// A non-negative integer up to `u64::MAX`.
    U64(u64),
    /// A negative number, a fraction, an exponent, or an integer past `u64::MAX`.
    Other,
}

/// A JSON string that was checked (valid UTF-8, no control characters, valid escapes, paired
/// surrogates).
#[derive(Clone, Copy)]
enum JsonStr<'a> {
    /// A string without escapes.
    Plain(&'a str),
    /// The bytes between the quotes of a string with escapes, escapes still in.
    Escaped(&'a [u8]),
}

impl JsonStr<'_> {
    /// The string, unescaped: borrowed when it has no escapes.
    fn unescaped(&self) -> std::borrow::Cow<'_, str> {
        let raw = match *self {
            JsonStr::Plain(text) => return std::borrow::Cow::Borrowed(text),
            JsonStr::Escaped(raw) => raw,
        };
        let mut out = Vec::with_capacity(raw.len());
        let mut scanner = Scanner { bytes: raw, pos: 0 };
        while let Some(&b) = raw.get(scanner.pos) {
            scanner.pos += 1;
            if b == b'\\' {
                // Checked already: every escape is valid.
                let Ok(c) = scanner.escape_checked() else {
                    break;
                };
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            } else {
                out.push(b);
            }
        }
        std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_default())
    }
}

/// A value read leniently (a field that wants one type and takes anything else as its
/// default): its scalar, or `Map` for an object whose `{` was read, its entries not yet.
enum Lenient<'a> {
    Null,
    Bool(bool),
    U64(u64),
    Str(JsonStr<'a>),
    /// A negative number, a fraction, an integer past `u64::MAX`, an array (skipped).
    Other,
    /// An object, with the nesting left inside it.
    Map(u8),
}

/// A single-pass scanner over a JSON body that reads what [`ChatRequest`] needs and skips the
/// rest without decoding it.
///
/// It accepts exactly the bodies serde_json accepted for the parse it replaces (and reads the
/// same from them), which is what the test against that parse checks: strict JSON (RFC 8259),
/// with serde_json's particular leniencies kept: strings that are skipped or are object keys
/// are not checked as UTF-8 (and keys may hold control characters and lone surrogates);
/// nesting is limited (to 128) only where values are read, not where they are skipped; a
/// number that is read must fit an `f64`.
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// The next byte that is not whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Consumes `byte` after whitespace, or fails.
    #[inline]
    fn expect(&mut self, byte: u8) -> Scan<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// Consumes `word` (`true`, `false`, `null`).
    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// The top-level object.
    fn top_level(&mut self, api: Api) -> Scan<Raw> {
        self.expect(b'{')?;
        let depth = MAX_DEPTH - 1;
        let mut raw = Raw::default();
        self.object(|s| {
            let key = s.key()?;
            s.expect(b':')?;
            match key {
                Key::Model => raw.model = s.name(depth)?,
                Key::Stream => raw.stream = s.flag(depth)?,
                Key::MaxTokens => {
                    let limit = s.limit(depth)?;
                    // The first spelling present wins; a later one does not undo it.
                    raw.max_tokens = raw.max_tokens.or(limit);
                }
                Key::Messages | Key::System | Key::Input => s.text(&mut raw.text, depth)?,
                Key::StreamOptions => raw.include_usage = s.stream_options(depth)?,
                Key::Parameters if api == Api::Native => {
                    let p = s.parameters(depth)?;
                    raw.max_tokens = raw.max_tokens.or(p.max_tokens);
                    raw.incremental_output = p.incremental_output;
                    raw.result_format_text = p.result_format_text;
                }
                _ => s.skip()?,
            }
            Ok(())
        })?;
        match self.peek() {
            None => Ok(raw),
            Some(_) => Err(Malformed),
        }
    }

    /// The entries of an object whose `{` was read: `entry` reads each one from just after its
    /// key's opening quote.
    #[inline]
    fn object(&mut self, mut entry: impl FnMut(&mut Self) -> Scan<()>) -> Scan<()> {
        let mut first = true;
        while self.next_entry(&mut first)? {
            entry(self)?;
        }
        Ok(())
    }

    /// Moves on to the next entry of an object whose `{` was read (`first`: none was read
    /// yet): true just after its key's opening quote, false after the object's `}`.
    #[inline]
    fn next_entry(&mut self, first: &mut bool) -> Scan<bool> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(false);
            }
            Some(b'"') if *first => {}
            Some(b',') if !*first => {
                self.pos += 1;
                if self.peek() != Some(b'"') {
                    return Err(Malformed);
                }
            }
            _ => return Err(Malformed),
        }
        *first = false;
        self.pos += 1;
        Ok(true)
    }

    /// The elements of an array whose `[` was read, each read by `element`.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Scan<()>) -> Scan<()> {
        let mut first = true;
        loop {
            match self.peek() {
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b',') if !first => self.pos += 1,
                Some(_) if first => {}
                _ => return Err(Malformed),
            }
            first = false;
            element(self)?;
        }
    }

    /// Message text: every string in arrays, and in the `content`, `text`, `messages` and
    /// `prompt` fields of objects, counted into `count`.
    fn text(&mut self, count: &mut TextCount, depth: u8) -> Scan<()> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.text_str(count)
            }
            Some(b'[') => {
                let depth = deeper(depth)?;
                self.pos += 1;
                self.array(|s| s.text(count, depth))
            }
            Some(b'{') => {
                let depth = deeper(depth)?;
                self.pos += 1;
                let mut first = true;
                while self.next_entry(&mut first)? {
                    let key = self.key()?;
                    self.expect(b':')?;
                    match key {
                        Key::Content | Key::Text | Key::Messages | Key::Prompt => {
                            self.text(count, depth)?;
                        }
                        _ => self.skip()?,
                    }
                }
                Ok(())
            }
            _ => self.lenient_scalar().map(drop),
        }
    }

    /// A value read leniently; for an object, only its `{`.
    fn lenient(&mut self, depth: u8) -> Scan<Lenient<'a>> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(Lenient::Str(self.checked_str()?))
            }
            Some(b'[') => {
                deeper(depth)?;
                self.skip()?;
                Ok(Lenient::Other)
            }
            Some(b'{') => {
                let depth = deeper(depth)?;
                self.pos += 1;
                Ok(Lenient::Map(depth))
            }
            _ => self.lenient_scalar(),
        }
    }

    /// A number, `true`, `false` or `null`, where its value matters.
    fn lenient_scalar(&mut self) -> Scan<Lenient<'a>> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => Ok(match self.number()? {
                Number::U64(n) => Lenient::U64(n),
                Number::Other => Lenient::Other,
            }),
            Some(b't') => self.literal(b"true").map(|()| Lenient::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Lenient::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|()| Lenient::Null),
            _ => Err(Malformed),
        }
    }

    /// The entries of an object read leniently as something else: keys checked as strings,
    /// values skipped.
    fn other_map(&mut self) -> Scan<()> {
        self.object(|s| {
            s.checked_str()?;
            s.expect(b':')?;
            s.skip()
        })
    }

    /// A short string (`model`, `result_format`); longer ones, and anything else, read as
    /// absent.
    fn name(&mut self, depth: u8) -> Scan<Option<Arc<str>>> {
        Ok(match self.lenient(depth)? {
            Lenient::Str(s) => {
                let name = s.unescaped();
                (name.len() <= MAX_MODEL_LEN).then(|| Arc::from(&*name))
            }
            Lenient::Map(_) => {
                self.other_map()?;
                None
            }
            _ => None,
        })
    }

    /// A flag: only `true` is true.
    fn flag(&mut self, depth: u8) -> Scan<bool> {
        Ok(match self.lenient(depth)? {
            Lenient::Bool(b) => b,
            Lenient::Map(_) => {
                self.other_map()?;
                false
            }
            _ => false,
        })
    }

    /// A `max_tokens` value: `None` for `null`, `Malformed` for anything but a non-negative
    /// integer.
    fn limit(&mut self, depth: u8) -> Scan<Option<MaxTokens>> {
        Ok(match self.lenient(depth)? {
            Lenient::Null => None,
            Lenient::U64(n) => Some(MaxTokens::Set(u32::try_from(n).unwrap_or(u32::MAX))),
            Lenient::Map(_) => {
                self.other_map()?;
                Some(MaxTokens::Malformed)
            }
            _ => Some(MaxTokens::Malformed),
        })
    }

    /// `stream_options.include_usage`.
    fn stream_options(&mut self, depth: u8) -> Scan<bool> {
        let Lenient::Map(depth) = self.lenient(depth)? else {
            return Ok(false);
        };
        let mut include_usage = false;
        self.object(|s| {
            let key = s.key()?;
            s.expect(b':')?;
            if key == Key::IncludeUsage {
                include_usage = s.flag(depth)?;
                Ok(())
            } else {
                s.skip()
            }
        })?;
        Ok(include_usage)
    }

    /// Native `parameters`.
    fn parameters(&mut self, depth: u8) -> Scan<Parameters> {
        let mut p = Parameters::default();
        let Lenient::Map(depth) = self.lenient(depth)? else {
            return Ok(p);
        };
        self.object(|s| {
            let key = s.key()?;
            s.expect(b':')?;
            match key {
                // The first spelling present wins (a later one is skipped unread).
                Key::MaxTokens if p.max_tokens.is_none() => p.max_tokens = s.limit(depth)?,
                Key::IncrementalOutput => p.incremental_output = s.flag(depth)?,
                Key::ResultFormat => {
                    p.result_format_text = s.name(depth)?.as_deref() == Some("text");
                }
                _ => s.skip()?,
            }
            Ok(())
        })?;
        Ok(p)
    }

    /// A number where its value matters: the common ones read here, the rest (fractions,
    /// exponents, very long integers) by serde_json from the number's own bytes, so that what
    /// fits an `f64` and what does not is decided as it always was.
    fn number(&mut self) -> Scan<Number> {
        let start = self.pos;
        let negative = self.bytes[start] == b'-';
        let digits_start = start + usize::from(negative);
        let plain = self.skip_number()?;
        let digits = &self.bytes[digits_start..self.pos];
        if plain && digits.len() <= 19 {
            if negative {
                return Ok(Number::Other);
            }
            let n = digits
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            return Ok(Number::U64(n));
        }
        number_by_serde(&self.bytes[start..self.pos])
    }

    /// Skips a number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. True for an integer
    /// (no fraction, no exponent).
    fn skip_number(&mut self) -> Scan<bool> {
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(Malformed),
        }
        let mut plain = true;
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.one_or_more_digits()?;
            plain = false;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            self.one_or_more_digits()?;
            plain = false;
        }
        Ok(plain)
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Scan<()> {
        let start = self.pos;
        self.skip_digits();
        if self.pos == start {
            Err(Malformed)
        } else {
            Ok(())
        }
    }

    /// An object key, from just after its opening quote, as serde_json reads keys as bytes:
    /// unescaped but not checked as UTF-8, control characters allowed, surrogates unpaired
    /// or not.
    #[inline]
    fn key(&mut self) -> Scan<Key> {
        let bytes = self.bytes;
        let start = self.pos;
        let mut at = start;
        while let Some(w) = word(bytes, at) {
            let q = w ^ (ONES * u64::from(b'"'));
            let b = w ^ (ONES * u64::from(b'\\'));
            let stops = ((q.wrapping_sub(ONES) & !q) | (b.wrapping_sub(ONES) & !b)) & HIGH;
            if stops != 0 {
                at += (stops.trailing_zeros() / 8) as usize;
                if bytes[at] == b'"' {
                    self.pos = at + 1;
                    return Ok(Key::of(&bytes[start..at]));
                }
                return self.escaped_key(start);
            }
            at += 8;
        }
        self.key_tail(start, at)
    }

    /// A key from `start` that reaches into the body's last seven bytes, from `at` on.
    #[cold]
    #[inline(never)]
    fn key_tail(&mut self, start: usize, at: usize) -> Scan<Key> {
        match memchr::memchr2(b'"', b'\\', &self.bytes[at..]) {
            Some(i) if self.bytes[at + i] == b'"' => {
                self.pos = at + i + 1;
                Ok(Key::of(&self.bytes[start..at + i]))
            }
            Some(_) => self.escaped_key(start),
            None => Err(Malformed),
        }
    }

    /// A key with escapes in it, from `start`.
    #[cold]
    #[inline(never)]
    fn escaped_key(&mut self, start: usize) -> Scan<Key> {
        let mut key = [0u8; LONGEST_KEY];
        let mut len = 0;
        // Whether the unescaped key still can be one the parse knows.
        let mut known = true;
        self.pos = start;
        loop {
            let b = *self.bytes.get(self.pos).ok_or(Malformed)?;
            self.pos += 1;
            let unescaped = match b {
                b'"' => break,
                b'\\' => match u8::try_from(self.escape()?) {
                    Ok(ascii) if ascii.is_ascii() => ascii,
                    // Not ASCII (or half a surrogate pair): no key the parse knows.
                    _ => {
                        known = false;
                        continue;
                    }
                },
                b => b,
            };
            if let Some(slot) = key.get_mut(len) {
                *slot = unescaped;
                len += 1;
            } else {
                known = false;
            }
        }
        Ok(if known {
            Key::of(&key[..len])
        } else {
            Key::Other
        })
    }

    /// One escape, from just after its backslash, checked as serde_json checks escapes in
    /// strings it skips or reads as bytes: the character, or for `\u` the UTF-16 code unit
    /// (a surrogate too, unpaired or not).
    fn escape(&mut self) -> Scan<u32> {
        let b = *self.bytes.get(self.pos).ok_or(Malformed)?;
        self.pos += 1;
        Ok(match b {
            b'"' | b'\\' | b'/' => u32::from(b),
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => u32::from(b'\n'),
            b'r' => u32::from(b'\r'),
            b't' => u32::from(b'\t'),
            b'u' => u32::from(self.hex4()?),
            _ => return Err(Malformed),
        })
    }

    /// One escape of a string that is read, from just after its backslash: as
    /// [`escape`](Self::escape), and a surrogate must be a leading one followed at once by the
    /// escape of a trailing one.
    fn escape_checked(&mut self) -> Scan<char> {
        let lead = match self.escape()? {
            lead @ 0xD800..=0xDBFF => lead,
            n => return char::from_u32(n).ok_or(Malformed),
        };
        if !self.bytes[self.pos..].starts_with(b"\\u") {
            return Err(Malformed);
        }
        self.pos += 2;
        let trail = u32::from(self.hex4()?);
        if !(0xDC00..=0xDFFF).contains(&trail) {
            return Err(Malformed);
        }
        char::from_u32(0x1_0000 + ((lead - 0xD800) << 10) + (trail - 0xDC00)).ok_or(Malformed)
    }

    /// The four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Scan<u16> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or(Malformed)?;
        let mut n = 0u16;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Malformed),
            };
            n = (n << 4) | u16::from(v);
        }
        self.pos += 4;
        Ok(n)
    }

    /// Where the run of string bytes from `at` ends: the first `"`, `\` or control
    /// character, or the end of the body.
    #[inline]
    fn run_end(&self, mut at: usize) -> usize {
        while let Some(w) = word(self.bytes, at) {
            let stops = string_stops(w);
            if stops != 0 {
                return at + (stops.trailing_zeros() / 8) as usize;
            }
            at += 8;
        }
        while let Some(&b) = self.bytes.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            at += 1;
        }
        at
    }

    /// A string that is skipped, from just after its opening quote: no control characters,
    /// valid escapes; not checked as UTF-8.
    #[inline]
    fn skip_str(&mut self) -> Scan<()> {
        // Most end at their first stop, a quote.
        let mut at = self.pos;
        while let Some(w) = word(self.bytes, at) {
            let stops = string_stops(w);
            if stops != 0 {
                at += (stops.trailing_zeros() / 8) as usize;
                if self.bytes[at] == b'"' {
                    self.pos = at + 1;
                    return Ok(());
                }
                break;
            }
            at += 8;
        }
        self.skip_str_slow()
    }

    /// [`skip_str`](Self::skip_str) for the strings with escapes, and those that reach into
    /// the body's last seven bytes.
    #[inline(never)]
    fn skip_str_slow(&mut self) -> Scan<()> {
        loop {
            let at = self.run_end(self.pos);
            self.pos = at + 1;
            match self.bytes.get(at) {
                Some(b'"') => return Ok(()),
                Some(b'\\') => {
                    self.escape()?;
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// A string that is read, from just after its opening quote: as
    /// [`skip_str`](Self::skip_str), and valid UTF-8 with paired surrogates.
    fn checked_str(&mut self) -> Scan<JsonStr<'a>> {
        let bytes = self.bytes;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let at = self.run_end(self.pos);
            let run = std::str::from_utf8(&bytes[self.pos..at]).map_err(|_| Malformed)?;
            self.pos = at + 1;
            match bytes.get(at) {
                Some(b'"') if escaped => return Ok(JsonStr::Escaped(&bytes[start..at])),
                Some(b'"') => return Ok(JsonStr::Plain(run)),
                Some(b'\\') => {
                    escaped = true;
                    self.escape_checked()?;
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// A string of message text, from just after its opening quote: checked as
    /// [`checked_str`](Self::checked_str) does, and its characters counted into `count`.
    #[inline(never)]
    fn text_str(&mut self, count: &mut TextCount) -> Scan<()> {
        loop {
            let start = self.pos;
            let (at, ascii_only) = self.count_run(start, count);
            if !ascii_only {
                std::str::from_utf8(&self.bytes[start..at]).map_err(|_| Malformed)?;
            }
            self.pos = at + 1;
            match self.bytes.get(at) {
                Some(b'"') => return Ok(()),
                Some(b'\\') => count.add_char(self.escape_checked()?),
                _ => return Err(Malformed),
            }
        }
    }

    /// Counts the characters of the run of string bytes from `start`
    /// ([`run_end`](Self::run_end)) in one pass, sixteen bytes at a time: a byte below 0x80 is an ASCII
    /// character, and every other character starts with a byte of 0xC0 or above (the rest,
    /// 0x80..0xC0, are continuation bytes), so no decoding is needed. Returns where the run
    /// ends and whether it is all ASCII.
    #[inline]
    fn count_run(&self, start: usize, count: &mut TextCount) -> (usize, bool) {
        let bytes = self.bytes;
        let mut at = start;
        // Counts per byte lane of the words seen since the last sum (each lane at most 255).
        let mut lanes = Lanes::default();
        // Words that may still be added to `lanes` before they are summed.
        let mut room = 254u32;
        let mut sums = Lanes::default();
        while let Some(pair) = bytes.get(at..at + 16) {
            let (w0, w1) = (le_word(&pair[..8]), le_word(&pair[8..]));
            let (stops0, stops1) = (string_stops(w0), string_stops(w1));
            if stops0 | stops1 != 0 {
                let (w, stops) = if stops0 != 0 {
                    (w0, stops0)
                } else {
                    lanes.add(w0);
                    at += 8;
                    (w1, stops1)
                };
                at += lanes.add_before(w, stops);
                sums.add_sums(&lanes);
                return (at, sums.counted(at - start, count));
            }
            if (w0 | w1) & HIGH == 0 {
                lanes.digits += ascii_digits(w0) + ascii_digits(w1);
            } else {
                lanes.add(w0);
                lanes.add(w1);
            }
            at += 16;
            room -= 2;
            if room == 0 {
                sums.add_sums(&lanes);
                lanes = Lanes::default();
                room = 254;
            }
        }
        // The body's last fifteen bytes or fewer: a word, then a byte at a time.
        if let Some(w) = word(bytes, at) {
            let stops = string_stops(w);
            if stops != 0 {
                at += lanes.add_before(w, stops);
                sums.add_sums(&lanes);
                return (at, sums.counted(at - start, count));
            }
            lanes.add(w);
            at += 8;
        }
        sums.add_sums(&lanes);
        while let Some(&b) = bytes.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            sums.non_ascii += u64::from(b >> 7);
            sums.digits += u64::from(b.is_ascii_digit());
            sums.lead += u64::from(b >= 0xC0);
            at += 1;
        }
        (at, sums.counted(at - start, count))
    }

    /// Skips one value (any JSON), as serde_json skips it: checked as JSON but not read, its
    /// strings not checked as UTF-8, its numbers of any size, nested to any depth (without
    /// recursion).
    fn skip(&mut self) -> Scan<()> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.skip_str()
            }
            Some(b'[' | b'{') => self.skip_nested(),
            Some(b'-' | b'0'..=b'9') => self.skip_number().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(Malformed),
        }
    }

    /// Skips an array or object, at its `[` or `{`.
    fn skip_nested(&mut self) -> Scan<()> {
        let mut open = Nesting::default();
        loop {
            // A value is due.
            match self.peek() {
                Some(b'[') => {
                    self.pos += 1;
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                Some(b'{') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'}') => self.pos += 1,
                        Some(b'"') => {
                            open.push(true);
                            self.pos += 1;
                            self.skip_str()?;
                            self.expect(b':')?;
                            continue;
                        }
                        _ => return Err(Malformed),
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.skip_str()?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.skip_number()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(Malformed),
            }
            // A value ended: close what it ends, or go on to the next one.
            loop {
                let Some(in_object) = open.top() else {
                    return Ok(());
                };
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if in_object {
                            self.expect(b'"')?;
                            self.skip_str()?;
                            self.expect(b':')?;
                        }
                        break;
                    }
                    Some(b']') if !in_object => {}
                    Some(b'}') if in_object => {}
                    _ => return Err(Malformed),
                }
                self.pos += 1;
                open.pop();
            }
        }
    }
}

/// The arrays and objects a skipped value is inside, innermost last: a bit each, object or
/// array, in a word for the first 64 and on the heap past them.
#[derive(Default)]
struct Nesting {
    depth: usize,
    near: u64,
    far: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if word == 0 {
            self.near = (self.near & !(1 << bit)) | (u64::from(object) << bit);
        } else {
            if self.far.len() < word {
                self.far.push(0);
            }
            let w = &mut self.far[word - 1];
            *w = (*w & !(1 << bit)) | (u64::from(object) << bit);
        }
        self.depth += 1;
    }

    /// Whether the innermost one is an object; `None` when there is none.
    fn top(&self) -> Option<bool> {
        let depth = self.depth.checked_sub(1)?;
        let (word, bit) = (depth / 64, depth % 64);
        let w = if word == 0 {
            self.near
        } else {
            self.far[word - 1]
        };
        Some(w >> bit & 1 == 1)
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }
}

/// Native `parameters`.
#[derive(Default)]
struct Parameters {
    max_tokens: Option<MaxTokens>,
    incremental_output: bool,
    result_format_text: bool,
}

/// A number serde_json reads, from its own bytes (already checked as a JSON number): as the
/// parse it replaced, which failed on a number out of `f64`'s range.
#[cold]
fn number_by_serde(number: &[u8]) -> Scan<Number> {
    struct Visit;
    impl de::Visitor<'_> for Visit {
        type Value = Number;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Number, E> {
            Ok(Number::U64(n))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Number, E> {
            Ok(Number::Other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Number, E> {
            Ok(Number::Other)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(number);
    let n = de::Deserializer::deserialize_any(&mut de, Visit).map_err(|_| Malformed)?;
    de.end().map_err(|_| Malformed)?;
    Ok(n)
}

#[cfg(test)]
mod serde_oracle;

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
            let ascii = text.chars().filter(char::is_ascii).count() as u64;
            let digits = text.chars().filter(char::is_ascii_digit).count() as u64;
            let other = text.chars().count() as u64 - ascii;
            // The string's end in every lane of a word, and at the body's last bytes (read
            // one at a time) or not.
            for shift in 0..8 {
                for after in ["", "}", "}        "] {
                    let body = format!("{}{text}\"{after}", "x".repeat(shift));
                    let mut scanner = Scanner {
                        bytes: body.as_bytes(),
                        pos: shift,
                    };
                    let mut count = TextCount::default();
                    scanner.text_str(&mut count).unwrap();
                    assert_eq!(scanner.pos, shift + text.len() + 1);
                    assert_eq!(
                        (count.ascii, count.digits, count.other),
                        (ascii, digits, other),
                        "{text:?}"
                    );
                }
            }
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

    // ---- The scanner against the serde_json parse it replaced ----

    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    /// The old parse's answer, as a `ChatRequest`.
    fn oracle(api: Api, headers: &HeaderMap, body: &[u8]) -> Option<ChatRequest> {
        if body.len() > MAX_PARSED_BODY {
            return None;
        }
        let seen = serde_oracle::parse(api == Api::Native, body)?;
        let stream = match api {
            Api::Native => crate::classify::asks_for_stream(headers) || seen.stream,
            _ => seen.stream,
        };
        Some(ChatRequest {
            api,
            model: seen.model,
            stream,
            max_tokens: match seen.max_tokens {
                serde_oracle::MaxTokens::Absent => MaxTokens::Absent,
                serde_oracle::MaxTokens::Set(n) => MaxTokens::Set(n),
                serde_oracle::MaxTokens::Malformed => MaxTokens::Malformed,
            },
            ascii_chars: seen.ascii,
            digit_chars: seen.digits,
            other_chars: seen.other,
            include_usage: seen.include_usage,
            incremental_output: seen.incremental_output,
            result_format_text: seen.result_format_text,
        })
    }

    /// The same answer as the old parse, field by field, for every API.
    fn same_as_serde(body: &[u8]) {
        let mut sse = HeaderMap::new();
        sse.insert("x-dashscope-sse", HeaderValue::from_static("enable"));
        for api in [Api::OpenAiCompatible, Api::Native, Api::Anthropic] {
            for headers in [&HeaderMap::new(), &sse] {
                assert_eq!(
                    ChatRequest::parse(api, headers, body),
                    oracle(api, headers, body),
                    "{api:?} {:?}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn the_examples_parse_as_serde_json_parsed_them() {
        let cases: &[&[u8]] = &[
            b"",
            b" ",
            b"{}",
            b" {} ",
            b"{}x",
            b"{} {}",
            b"[]",
            b"null",
            b"\xEF\xBB\xBF{}",
            br#"{"model":"qwen-plus","max_tokens":512,"messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#,
            br#"{"model":"qwen-plus",}"#,
            br#"{,"model":"qwen-plus"}"#,
            br#"{"model" "qwen-plus"}"#,
            br#"{"model":"qwen-plus""stream":true}"#,
            br#"{"model":"q\u0077en","model":"other"}"#,
            br#"{"model":"a","model":1}"#,
            br#"{"model":"\ud83e\udd80"}"#,
            br#"{"model":"\ud83e"}"#,
            br#"{"model":"\udd80"}"#,
            br#"{"model":"\ud83ex"}"#,
            br#"{"model":"\ud83e\n"}"#,
            br#"{"model":"\ud83e\u0041"}"#,
            br#"{"model":{"a":1,"b":[{}]}}"#,
            b"{\"model\":{\"\xFF\":1}}",
            b"{\"model\":{\"a\":\"\xFF\"}}",
            b"{\"other\":\"\xFF\"}",
            b"{\"\xFF\":1}",
            b"{\"\x01\":1}",
            b"{\"other\":\"\x01\"}",
            b"{\"messages\":\"\x7F\"}",
            b"{\"messages\":\"\xC3\"}",
            b"{\"messages\":\"\xED\xA0\x80\"}",
            br#"{"\ud800":1,"model":"qwen-plus"}"#,
            br#"{"\ud800\u006dodel":"x"}"#,
            br#"{"\ud800\n":1}"#,
            br#"{"\ud800\x":1}"#,
            br#"{"\u12":1}"#,
            br#"{"\uD83E\uDD80":1}"#,
            br#"{"mo\u0064el":"m","max_tok\u0065ns":7,"\u006Dessages":"ab\u0031"}"#,
            br#"{"max_tokens":1e400}"#,
            br#"{"max_tokens":-1e400}"#,
            br#"{"max_tokens":1e-400}"#,
            br#"{"max_tokens":0e999}"#,
            br#"{"max_tokens":1.7976931348623157e308}"#,
            br#"{"max_tokens":1.8e308}"#,
            br#"{"max_tokens":18446744073709551615}"#,
            br#"{"max_tokens":18446744073709551616}"#,
            br#"{"max_tokens":-9223372036854775808}"#,
            br#"{"max_tokens":-9223372036854775809}"#,
            br#"{"max_tokens":-0}"#,
            br#"{"max_tokens":0}"#,
            br#"{"max_tokens":01}"#,
            br#"{"max_tokens":1.}"#,
            br#"{"max_tokens":1e}"#,
            br#"{"max_tokens":-}"#,
            br#"{"max_tokens":+1}"#,
            br#"{"max_tokens":.5}"#,
            br#"{"max_tokens":null,"max_completion_tokens":5}"#,
            br#"{"max_tokens":5,"max_completion_tokens":1e999}"#,
            br#"{"other":1e999,"temperature":1e400}"#,
            br#"{"messages":[1e999]}"#,
            br#"{"messages":[{"role":1e999}]}"#,
            br#"{"messages":[{"content":1e999}]}"#,
            br#"{"stream":tru}"#,
            br#"{"stream":true }"#,
            br#"{"stream":[true]}"#,
            br#"{"stream_options":{"include_usage":true},"stream_options":5}"#,
            br#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
            br#"{"stream_options":[{"include_usage":true}]}"#,
            br#"{"parameters":{"max_tokens":5,"max_tokens":1e999,"incremental_output":true,"result_format":"text"}}"#,
            br#"{"parameters":{"result_format":"t\u0065xt"},"parameters":7}"#,
            br#"{"parameters":{"max_tokens":null,"max_output_tokens":"9"}}"#,
            br#"{"input":{"prompt":"abc","messages":[{"content":[{"text":"d"},{"image":"e"}]}]}}"#,
            br#"{"system":[{"type":"text","text":"a\"b\\c\/d\b\f\n\r\t\u0030"}]}"#,
            br#"{"messages":[1,true,null,"x",[["y"]],{"content":{"text":"z"}}]}"#,
            br#"{"messages":[1,]}"#,
            br#"{"messages":[,1]}"#,
            br#"{"messages":{"content":"a",}}"#,
            br#"{"other":[1,]}"#,
            br#"{"other":{"a":1,}}"#,
            br#"{"other":{"a" 1}}"#,
            br#"{"other":[}"#,
            br#"{"other":{]}"#,
            br#"{"other":{1:2}}"#,
            br#"{"other":"\q"}"#,
            br#"{"other":"\u00G0"}"#,
            br#"{"other":"\ud800"}"#,
            br#"{"other":"unterminated}"#,
            br#"{"other":[[[{"a":[{"b":{}}]}]]]}"#,
        ];
        for body in cases {
            same_as_serde(body);
        }
        // The model's length limit is on the unescaped name.
        for (plain, escaped) in [(250, 6), (250, 7), (256, 0), (257, 0), (0, 256), (0, 257)] {
            let model = format!("{}{}", "m".repeat(plain), r"\u0041".repeat(escaped));
            same_as_serde(format!(r#"{{"model":"{model}"}}"#).as_bytes());
            let parameters = format!(r#"{{"parameters":{{"result_format":"{model}"}}}}"#);
            same_as_serde(parameters.as_bytes());
            let chat = parse(Api::OpenAiCompatible, &format!(r#"{{"model":"{model}"}}"#));
            let expected = (plain + escaped <= MAX_MODEL_LEN)
                .then(|| format!("{}{}", "m".repeat(plain), "A".repeat(escaped)));
            assert_eq!(chat.unwrap().model(), expected.as_deref());
        }
    }

    #[test]
    fn nesting_is_limited_where_values_are_read_as_serde_json_limited_it() {
        for depth in 120..=130 {
            let open = "[".repeat(depth);
            let close = "]".repeat(depth);
            for body in [
                format!(r#"{{"messages":{open}"x"{close}}}"#),
                format!(r#"{{"other":{open}"x"{close}}}"#),
                format!(r#"{{"model":{open}"x"{close}}}"#),
                format!(r#"{{"messages":[{{"role":{open}{close}}}]}}"#),
                format!(
                    r#"{{"messages":{}"x"{}}}"#,
                    r#"{"content":"#.repeat(depth),
                    "}".repeat(depth)
                ),
                format!(
                    r#"{{"other":{}"x"{}}}"#,
                    r#"{"a":["#.repeat(depth),
                    "]}".repeat(depth)
                ),
            ] {
                same_as_serde(body.as_bytes());
            }
        }
        // Far deeper than a word of the skipping's nesting.
        let deep = format!(
            r#"{{"other":{}1{}}}"#,
            r#"[{"a":"#.repeat(5_000),
            "}]".repeat(5_000)
        );
        same_as_serde(deep.as_bytes());
        let crossed = format!(r#"{{"other":{}1{}}}"#, "[".repeat(200), "}".repeat(200));
        same_as_serde(crossed.as_bytes());
    }

    /// `cases` cases, or `PROPTEST_CASES` for a longer run, from a fixed seed.
    fn config(cases: u32) -> Config {
        Config {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(cases),
            rng_seed: RngSeed::Fixed(14),
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Bytes of a JSON string's inside: text, escapes good and bad, bytes that are not UTF-8,
    /// control characters.
    fn string_part() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            96 => "[a-z0-9 ]{0,12}".prop_map(String::into_bytes),
            32 => "[^\"\\\\\u{0}-\u{1f}]{0,6}".prop_map(String::into_bytes),
            24 => proptest::sample::select(vec![
                "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u0041",
                "\\u0030", "\\u0039", "\\u00e9", "\\u4F60", "\\ud83e\\udd80", "\\uD83E\\uDD80",
                "\\u006d", "héllo", "你好", "🦀", "0123456789", "\u{7f}",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            // What some readers refuse: lone surrogates, bad escapes, control characters,
            // bytes that are not UTF-8.
            1 => proptest::sample::select(vec![
                &b"\\ud800"[..], b"\\udc00", b"\\ud800\\u0041", b"\\ud800\\ud800", b"\\ud800\\n",
                b"\\ud800x", b"\\x", b"\\u12G4", b"\\u12", b"\\", b"\t", b"\x01", b"\xFF",
                b"\xC3", b"\xE4\xBD", b"\xED\xA0\x80", b"\x80", b"\xF4\x90\x80\x80", b"\xC0\x80",
            ])
            .prop_map(<[u8]>::to_vec),
        ]
    }

    fn string() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(string_part(), 0..6).prop_map(|parts| {
            let mut s = vec![b'"'];
            parts.iter().for_each(|p| s.extend_from_slice(p));
            s.push(b'"');
            s
        })
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => proptest::sample::select(vec![
                "model", "stream", "max_tokens", "max_completion_tokens", "max_output_tokens",
                "messages", "system", "input", "stream_options", "parameters", "content",
                "text", "prompt", "include_usage", "incremental_output", "result_format",
                "role", "type", "temperature", "mo\\u0064el", "max_tok\\u0065ns",
                "\\u0063ontent", "\\u0074ext", "max_completion_tokens_", "Model",
            ])
            .prop_map(|k| format!("\"{k}\"").into_bytes()),
            1 => string(),
        ]
    }

    fn number() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            20 => proptest::sample::select(vec![
                "0", "7", "512", "-1", "-0", "1.5", "-2.5e3", "1e3", "1E+2", "2e-3",
                "4294967295", "4294967296", "99999999999", "9999999999999999999",
                "18446744073709551615", "18446744073709551616", "-9223372036854775809",
                "99999999999999999999999", "1e400", "-1e400", "1e-400", "0e999",
                "1.8e308", "1.7976931348623157e308", "0.0000001e-500", "123456789012345678901e290",
            ])
            .prop_map(|n| n.as_bytes().to_vec()),
            1 => proptest::sample::select(vec!["01", "1.", "-", "1e", "+1", ".5", "1e+", "-01", "0x1"])
                .prop_map(|n| n.as_bytes().to_vec()),
            4 => any::<u64>().prop_map(|n| n.to_string().into_bytes()),
            2 => (any::<i32>(), 0u32..40, -400i32..400)
                .prop_map(|(m, f, e)| format!("{m}.{f}e{e}").into_bytes()),
        ]
    }

    fn scalar() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            30 => string(),
            20 => number(),
            10 => proptest::sample::select(vec!["true", "false", "null"])
                .prop_map(|w| w.as_bytes().to_vec()),
            1 => proptest::sample::select(vec!["tru", "nul", "fals", "True"])
                .prop_map(|w| w.as_bytes().to_vec()),
        ]
    }

    fn space() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![
            48 => Just(&b""[..]),
            12 => proptest::sample::select(vec![&b" "[..], b"\n\t", b"\r "]),
            1 => proptest::sample::select(vec![&b"\x0c"[..], b"\xC2\xA0"]),
        ]
    }

    /// A JSON value, mostly well-formed, with keys that the parse looks at.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        scalar().prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec((space(), inner.clone()), 0..6).prop_map(|items| {
                    let mut v = vec![b'['];
                    for (i, (sp, item)) in items.iter().enumerate() {
                        if i > 0 {
                            v.push(b',');
                        }
                        v.extend_from_slice(sp);
                        v.extend_from_slice(item);
                    }
                    v.push(b']');
                    v
                }),
                proptest::collection::vec((key(), space(), inner), 0..6).prop_map(|entries| {
                    let mut v = vec![b'{'];
                    for (i, (k, sp, item)) in entries.iter().enumerate() {
                        if i > 0 {
                            v.push(b',');
                        }
                        v.extend_from_slice(k);
                        v.extend_from_slice(sp);
                        v.push(b':');
                        v.extend_from_slice(item);
                    }
                    v.push(b'}');
                    v
                }),
            ]
        })
    }

    /// A message, or a part of one: text where the parse reads it, and other fields.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let part = (string(), value()).prop_map(|(text, other)| {
            let mut v = br#"{"type":"text","text":"#.to_vec();
            v.extend_from_slice(&text);
            v.extend_from_slice(br#","extra":"#);
            v.extend_from_slice(&other);
            v.push(b'}');
            v
        });
        let content = prop_oneof![
            3 => string(),
            1 => proptest::collection::vec(part, 0..4).prop_map(|parts| {
                let mut v = vec![b'['];
                v.extend_from_slice(&parts.join(&b","[..]));
                v.push(b']');
                v
            }),
            1 => value(),
        ];
        (string(), content).prop_map(|(role, content)| {
            let mut v = br#"{"role":"#.to_vec();
            v.extend_from_slice(&role);
            v.extend_from_slice(br#","content":"#);
            v.extend_from_slice(&content);
            v.push(b'}');
            v
        })
    }

    /// A chat request's shape: model, messages, limits, with the generated values in them.
    fn chat() -> impl Strategy<Value = Vec<u8>> {
        (
            scalar(),
            proptest::collection::vec(message(), 0..6),
            proptest::sample::select(vec!["messages", "system", "input", "prompt", "other"]),
            (key(), scalar()),
            (key(), value()),
        )
            .prop_map(|(model, messages, field, (k1, v1), (k2, v2))| {
                let mut v = br#"{"model":"#.to_vec();
                v.extend_from_slice(&model);
                v.extend_from_slice(format!(r#","{field}":["#).as_bytes());
                v.extend_from_slice(&messages.join(&b","[..]));
                v.extend_from_slice(b"],");
                for (k, val) in [(k1, v1), (k2, v2)] {
                    v.extend_from_slice(&k);
                    v.push(b':');
                    v.extend_from_slice(&val);
                    v.push(b',');
                }
                v.extend_from_slice(br#""input":{"prompt":"p1","messages":["#);
                v.extend_from_slice(&messages.join(&b","[..]));
                v.extend_from_slice(b"]}}");
                v
            })
    }

    /// A body: an object of the keys the parse looks at, around a value (or, now and then,
    /// just a value).
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            8 => chat(),
            8 => proptest::collection::vec((key(), value()), 0..8).prop_map(|entries| {
                let mut v = vec![b'{'];
                for (i, (k, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        v.push(b',');
                    }
                    v.extend_from_slice(k);
                    v.push(b':');
                    v.extend_from_slice(item);
                }
                v.push(b'}');
                v
            }),
            1 => value(),
        ]
    }

    /// Small edits: a byte replaced, removed or inserted, a cut.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            body(),
            proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
        )
            .prop_map(|(mut b, edits)| {
                const PICK: &[u8] = b"\"\\,:[]{}0-e. \x01\xFF\xC3tnu";
                for (at, op, byte) in edits {
                    let byte = if byte < 128 {
                        PICK[usize::from(byte) % PICK.len()]
                    } else {
                        byte
                    };
                    if b.is_empty() {
                        b.push(byte);
                        continue;
                    }
                    let i = at.index(b.len());
                    match op {
                        0 => b[i] = byte,
                        1 => {
                            b.remove(i);
                        }
                        2 => b.insert(i, byte),
                        _ => b.truncate(i),
                    }
                }
                b
            })
    }

    proptest! {
        #![proptest_config(config(4_000))]

        #[test]
        fn generated_bodies_parse_as_serde_json_parsed_them(body in body()) {
            same_as_serde(&body);
        }

        #[test]
        fn mutated_bodies_parse_as_serde_json_parsed_them(body in mutated()) {
            same_as_serde(&body);
        }

        #[test]
        fn any_bytes_parse_as_serde_json_parsed_them(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            same_as_serde(&body);
        }
    }
}
