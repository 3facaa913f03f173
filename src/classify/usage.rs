//! Token usage reported by a response, and the slot through which the classifier hands it on.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Token counts a response reported in its `usage` object.
///
/// Both API shapes are read: native `usage.{input_tokens, output_tokens, total_tokens}` and
/// OpenAI-compatible `usage.{prompt_tokens, completion_tokens, total_tokens}`. A missing
/// `total_tokens` is the sum of the other two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// All tokens the request is billed and rate-limited for (input + output).
    pub total_tokens: u64,
}

impl Usage {
    /// Usage with these counts; `total_tokens` is their sum.
    #[must_use]
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens.saturating_add(output_tokens),
        }
    }
}

/// A shared slot in which [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) records the
/// last `usage` a successful response reported.
///
/// # The protocol
///
/// A layer (or the caller) that wants real token counts puts a `UsageSlot` into the request's
/// extensions and keeps a clone. When the classifier below sees that slot, it watches the
/// response body as the caller reads it and stores every `usage` object it finds: in a JSON body,
/// in each event of a native stream (cumulative; the last one wins), and in the final chunk of an
/// OpenAI-compatible stream sent with `stream_options.include_usage=true`. Once the body has been
/// read to its end, [`get`](Self::get) holds the final counts; [`is_complete`](Self::is_complete)
/// says whether the body was read to its end.
///
/// Without a slot in the request, success bodies that are not event streams are not inspected at
/// all.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_dashscope::{BoxError, ClassifyDashScopeError};
/// use tower_dashscope::classify::{Usage, UsageSlot};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = service_fn(|_req: Request<Full<Bytes>>| async {
///     let body = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
///     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(body))))
/// });
/// let service = ClassifyDashScopeError::new().layer(client);
///
/// let slot = UsageSlot::new();
/// let mut request = Request::new(Full::default());
/// request.extensions_mut().insert(slot.clone());
///
/// let response = service.oneshot(request).await.unwrap();
/// response.into_body().collect().await.unwrap();
/// assert_eq!(slot.get(), Some(Usage::new(12, 30)));
/// assert!(slot.is_complete());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct UsageSlot {
    shared: Arc<Mutex<SlotState>>,
}

#[derive(Default, Clone, Copy)]
struct SlotState {
    usage: Option<Usage>,
    complete: bool,
}

impl UsageSlot {
    /// An empty slot.
    #[must_use]
    pub fn new() -> Self {
        UsageSlot::default()
    }

    /// The last usage recorded, if any.
    #[must_use]
    pub fn get(&self) -> Option<Usage> {
        self.state().usage
    }

    /// Whether the response body was read to its end (successfully or not).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.state().complete
    }

    /// Records `usage`, replacing what was there.
    pub fn set(&self, usage: Usage) {
        self.with_state(|s| s.usage = Some(usage));
    }

    pub(crate) fn mark_complete(&self) {
        self.with_state(|s| s.complete = true);
    }

    fn state(&self) -> SlotState {
        // The lock is only ever held to copy a few words; a poisoned lock still holds valid data.
        *self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_state(&self, f: impl FnOnce(&mut SlotState)) {
        f(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl fmt::Debug for UsageSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("UsageSlot")
            .field("usage", &state.usage)
            .field("complete", &state.complete)
            .finish()
    }
}

/// Finds `"usage": { … }` objects in JSON text fed in arbitrary pieces, with bounded memory.
///
/// The key `"usage"` cannot occur inside a JSON string (its quotes would be escaped there), so a
/// byte match followed by `:` and `{` is the key. The object is captured (at most
/// [`MAX_USAGE_OBJECT`] bytes) and decoded without building a JSON tree.
#[derive(Debug, Default)]
pub(crate) struct UsageScanner {
    state: ScanState,
    object: Vec<u8>,
    /// Every count seen so far, the latest of each: Anthropic's streams report input tokens in
    /// `message_start` and output tokens in `message_delta`, each without the other.
    seen: Counts,
    found: Option<Usage>,
}

/// The counts one `usage` object declared.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
}

impl Counts {
    /// `newer`'s counts, and this one's input and output where `newer` has none. A missing
    /// total is the sum of input and output, never an older total.
    fn update(self, newer: Counts) -> Counts {
        Counts {
            input: newer.input.or(self.input),
            output: newer.output.or(self.output),
            total: newer.total,
        }
    }

    fn usage(self) -> Usage {
        let (input, output) = (self.input.unwrap_or(0), self.output.unwrap_or(0));
        Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: self.total.unwrap_or_else(|| input.saturating_add(output)),
        }
    }
}

/// A `usage` object longer than this is ignored.
const MAX_USAGE_OBJECT: usize = 4 * 1024;

const KEY: &[u8] = b"\"usage\"";

#[derive(Debug, Default, Clone, Copy)]
enum ScanState {
    /// `matched` bytes of the key seen.
    #[default]
    Searching,
    Matching(usize),
    /// The key was seen; expecting `:`.
    Colon,
    /// Expecting `{`.
    Open,
    Capturing {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
}

impl UsageScanner {
    /// Feeds the next piece of JSON text.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                ScanState::Searching => match memchr::memchr(b'"', bytes) {
                    Some(at) => {
                        self.state = ScanState::Matching(1);
                        bytes = &bytes[at + 1..];
                    }
                    None => return,
                },
                ScanState::Matching(matched) => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.state = if b == KEY[matched] {
                        if matched + 1 == KEY.len() {
                            ScanState::Colon
                        } else {
                            ScanState::Matching(matched + 1)
                        }
                    } else if b == b'"' {
                        ScanState::Matching(1)
                    } else {
                        ScanState::Searching
                    };
                }
                ScanState::Colon | ScanState::Open => {
                    let b = bytes[0];
                    if b.is_ascii_whitespace() {
                        bytes = &bytes[1..];
                        continue;
                    }
                    self.state = match (self.state, b) {
                        (ScanState::Colon, b':') => ScanState::Open,
                        (ScanState::Open, b'{') => {
                            self.object.clear();
                            self.object.push(b'{');
                            ScanState::Capturing {
                                depth: 1,
                                in_string: false,
                                escaped: false,
                            }
                        }
                        // Not the key after all (e.g. the string value "usage"): look again
                        // from this byte.
                        _ => {
                            self.state = ScanState::Searching;
                            continue;
                        }
                    };
                    bytes = &bytes[1..];
                }
                ScanState::Capturing {
                    mut depth,
                    mut in_string,
                    mut escaped,
                } => {
                    let mut consumed = 0;
                    let mut closed = false;
                    for &b in bytes {
                        consumed += 1;
                        if in_string {
                            if escaped {
                                escaped = false;
                            } else if b == b'\\' {
                                escaped = true;
                            } else if b == b'"' {
                                in_string = false;
                            }
                        } else if b == b'"' {
                            in_string = true;
                        } else if b == b'{' {
                            depth += 1;
                        } else if b == b'}' {
                            depth -= 1;
                            if depth == 0 {
                                closed = true;
                                break;
                            }
                        }
                    }
                    let piece = &bytes[..consumed];
                    bytes = &bytes[consumed..];
                    if self.object.len() + piece.len() > MAX_USAGE_OBJECT {
                        // Too big to be a usage object: give up on this one.
                        self.object.clear();
                        self.state = ScanState::Searching;
                        continue;
                    }
                    self.object.extend_from_slice(piece);
                    if closed {
                        if let Some(counts) = decode_usage(&self.object) {
                            self.seen = self.seen.update(counts);
                            self.found = Some(self.seen.usage());
                        }
                        self.object.clear();
                        self.state = ScanState::Searching;
                    } else {
                        self.state = ScanState::Capturing {
                            depth,
                            in_string,
                            escaped,
                        };
                    }
                }
            }
        }
    }

    /// Forgets any partial match, keeping the last usage found (for the next SSE event).
    pub(crate) fn reset_partial(&mut self) {
        self.state = ScanState::Searching;
        self.object.clear();
    }

    /// The usage found since the last call, if any.
    pub(crate) fn take(&mut self) -> Option<Usage> {
        self.found.take()
    }
}

/// Decodes a `usage` object of any shape without allocating.
fn decode_usage(object: &[u8]) -> Option<Counts> {
    let mut de = serde_json::Deserializer::from_slice(object);
    de.deserialize_map(UsageVisitor).ok().flatten()
}

struct UsageVisitor;

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = Option<Counts>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a usage object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut input, mut output, mut total) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Input => &mut input,
                Key::Output => &mut output,
                Key::Total => &mut total,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            // Counts are non-negative integers; anything else is ignored.
            if let Count(Some(n)) = map.next_value::<Count>()? {
                *slot = Some(n);
            }
        }
        let counts = Counts {
            input,
            output,
            total,
        };
        Ok((counts != Counts::default()).then_some(counts))
    }
}

enum Key {
    Input,
    Output,
    Total,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "input_tokens" | "prompt_tokens" => Key::Input,
                    "output_tokens" | "completion_tokens" => Key::Output,
                    "total_tokens" => Key::Total,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// A count: a non-negative integer; any other JSON value is skipped.
struct Count(Option<u64>);

impl<'de> de::Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl<'de> Visitor<'de> for NumberVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Count(Some(n)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Count(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Count(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Count(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Count(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(NumberVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Option<Usage> {
        let mut scanner = UsageScanner::default();
        for piece in pieces {
            scanner.feed(piece);
        }
        scanner.take()
    }

    #[test]
    fn both_shapes() {
        let native = br#"{"output":{"text":"hi"},"usage":{"input_tokens":5,"output_tokens":7,"total_tokens":12},"request_id":"r"}"#;
        assert_eq!(scan(&[native]), Some(Usage::new(5, 7)));
        let compat = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1}}}"#;
        assert_eq!(scan(&[compat]), Some(Usage::new(3, 4)));
    }

    #[test]
    fn split_at_every_byte() {
        let body = br#"{"id":"x","usage" : {"prompt_tokens":3,"completion_tokens":4}}"#;
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(scan(&[a, b]), Some(Usage::new(3, 4)), "cut at {cut}");
        }
        let singles: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&singles), Some(Usage::new(3, 4)));
    }

    #[test]
    fn the_word_in_strings_is_not_the_key() {
        let body = br#"{"text":"say \"usage\": {\"input_tokens\":99}","type":"usage","x":1}"#;
        assert_eq!(scan(&[body]), None);
        let body = br#"{"type":"usage","usage":{"input_tokens":1,"output_tokens":2}}"#;
        assert_eq!(scan(&[body]), Some(Usage::new(1, 2)));
    }

    #[test]
    fn garbage_and_odd_values_are_ignored() {
        // No valid count at all: not usage.
        assert_eq!(
            scan(&[br#"{"usage":{"input_tokens":-1,"output_tokens":"x"}}"#]),
            None
        );
        // Valid counts are kept, invalid ones read as zero.
        assert_eq!(
            scan(&[br#"{"usage":{"input_tokens":-1,"output_tokens":5,"total_tokens":null}}"#]),
            Some(Usage::new(0, 5))
        );
        assert_eq!(scan(&[br#"{"usage":{}}"#]), None);
        assert_eq!(scan(&[br#"{"usage":{"input_tokens":1"#]), None);
        let huge = format!(
            r#"{{"usage":{{"pad":"{}","input_tokens":1}}}}"#,
            "x".repeat(10_000)
        );
        assert_eq!(scan(&[huge.as_bytes()]), None);
    }

    #[test]
    fn anthropic_streams_report_input_and_output_in_different_events() {
        let start = br#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":20,"output_tokens":0}}}"#;
        let delta = br#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#;
        let mut scanner = UsageScanner::default();
        scanner.feed(start);
        assert_eq!(scanner.take(), Some(Usage::new(20, 0)));
        scanner.reset_partial();
        scanner.feed(delta);
        assert_eq!(scanner.take(), Some(Usage::new(20, 15)));
        // A later total replaces an earlier one; a missing total is recomputed, not kept.
        scanner.feed(br#"{"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":9}}"#);
        assert_eq!(scanner.take().map(|u| u.total_tokens), Some(9));
        scanner.feed(br#"{"usage":{"output_tokens":5}}"#);
        assert_eq!(scanner.take(), Some(Usage::new(1, 5)));
    }

    #[test]
    fn slot_protocol() {
        let slot = UsageSlot::new();
        let other = slot.clone();
        assert_eq!(slot.get(), None);
        other.set(Usage::new(1, 2));
        assert_eq!(slot.get(), Some(Usage::new(1, 2)));
        assert!(!slot.is_complete());
        other.mark_complete();
        assert!(slot.is_complete());
    }
}
