//! Token usage reported by a response, and the slot through which the classifier hands it on.

use std::fmt;
use std::sync::LazyLock;

use memchr::memmem;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

pub use crate::extensions::{Usage, UsageSlot};

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

/// Finds [`KEY`] in a piece at once, rather than byte by byte from every quote.
static KEY_FINDER: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(KEY));

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
        // An object whose `{` is in this piece: from the `{` to the end of the piece. It is
        // decoded from here when it also ends in this piece, and copied only when it does not.
        let mut here: Option<&[u8]> = None;
        while !bytes.is_empty() {
            match self.state {
                ScanState::Searching => match KEY_FINDER.find(bytes) {
                    Some(at) => {
                        self.state = ScanState::Colon;
                        bytes = &bytes[at + KEY.len()..];
                    }
                    None => {
                        // The piece may end inside the key: how much of it, the longest end of
                        // the piece that begins the key.
                        let matched = (1..KEY.len())
                            .rev()
                            .find(|&n| bytes.ends_with(&KEY[..n]))
                            .unwrap_or(0);
                        if matched > 0 {
                            self.state = ScanState::Matching(matched);
                        }
                        return;
                    }
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
                            here = Some(bytes);
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
                    let captured = match here {
                        Some(start) => start.len() - bytes.len(),
                        None => self.object.len() + piece.len(),
                    };
                    if captured > MAX_USAGE_OBJECT {
                        // Too big to be a usage object: give up on this one.
                        self.object.clear();
                        here = None;
                        self.state = ScanState::Searching;
                        continue;
                    }
                    if closed {
                        let counts = match here.take() {
                            Some(start) => decode_usage(&start[..captured]),
                            None => {
                                self.object.extend_from_slice(piece);
                                decode_usage(&self.object)
                            }
                        };
                        if let Some(counts) = counts {
                            self.seen = self.seen.update(counts);
                            self.found = Some(self.seen.usage());
                        }
                        self.object.clear();
                        self.state = ScanState::Searching;
                    } else {
                        // The piece ends inside the object (kept below when it began here).
                        if here.is_none() {
                            self.object.extend_from_slice(piece);
                        }
                        self.state = ScanState::Capturing {
                            depth,
                            in_string,
                            escaped,
                        };
                    }
                }
            }
        }
        // The piece ended inside an object that began in it: keep what it holds of it.
        if let Some(start) = here {
            self.object.extend_from_slice(start);
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
    fn a_piece_ending_in_part_of_the_key_is_continued_or_dropped() {
        let body = br#"{"usage_x":{"input_tokens":9},"a":"","usage":{"input_tokens":1,"output_tokens":2}}"#;
        // Every pair of cuts, so that each piece may end anywhere inside either key.
        for first in 0..body.len() {
            for second in first..body.len().min(first + 12) {
                let pieces = [&body[..first], &body[first..second], &body[second..]];
                assert_eq!(
                    scan(&pieces),
                    Some(Usage::new(1, 2)),
                    "cuts at {first}, {second}"
                );
            }
        }
        assert_eq!(scan(&[b"{\"usa", b"ge_x\":{\"input_tokens\":9}}"]), None);
        assert_eq!(
            scan(&[b"\"\"\"usa", b"ge\"", b" : {\"input_tokens\":4}"]),
            Some(Usage::new(4, 0))
        );
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
