//! The serde_json parse of a chat request that `ChatRequest::parse` used before its own scanner:
//! kept, unchanged in what it accepts and what it reads, as the oracle the scanner is tested
//! against (`request::tests`, and the `request_parse` fuzz target, which includes this file by
//! path). Self-contained: std, serde and serde_json only.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The longest `model` kept.
const MAX_MODEL_LEN: usize = 256;

/// The output limit a request sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxTokens {
    Absent,
    Set(u32),
    Malformed,
}

/// What the parse reads from a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub model: Option<Arc<str>>,
    /// The body's own `stream` (the native header is not looked at here).
    pub stream: bool,
    pub max_tokens: MaxTokens,
    pub ascii: u64,
    pub digits: u64,
    pub other: u64,
    pub include_usage: bool,
    pub incremental_output: bool,
    pub result_format_text: bool,
}

/// The old `ChatRequest::parse`, for a body of the native API (`native`) or another.
pub fn parse(native: bool, body: &[u8]) -> Option<Observed> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = (TopLevel { native }).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Observed {
        model: raw.model,
        stream: raw.stream,
        max_tokens: raw.max_tokens.unwrap_or(MaxTokens::Absent),
        ascii: raw.text.ascii,
        digits: raw.text.digits,
        other: raw.text.other,
        include_usage: raw.include_usage,
        incremental_output: raw.incremental_output,
        result_format_text: raw.result_format_text,
    })
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
    native: bool,
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
                Key::Parameters if self.native => {
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
