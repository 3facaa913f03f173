//! Reading DashScope's error body shapes into [`ErrorFields`].
//!
//! The shapes: native flat `{"code","message","request_id"}`; nested `{"error":{…}}` (native and
//! OpenAI-compatible, `error` possibly a bare string); Anthropic's
//! `{"type":"error","error":{…}}`; SSE-framed error events; short plain text. This module knows
//! shapes only — which class a body is, is [`rules`](super::rules)' business — and it does not
//! depend on the event-stream scanner: an SSE-framed body is handed back as
//! [`Body::Sse`] for the caller to scan (the scanner, in `sse.rs`, depends on this module, not
//! the other way round).
//!
//! Everything here runs on the failure path only, over a body already cut to the configured
//! bound; nothing here panics on any input. JSON is read into a tree of the few keys an error
//! is read from ([`parse_error_object`]), never into a tree of the whole document, so reading a
//! body costs about its own size whatever it holds.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Plain-text bodies longer than this are not kept as the message (they are HTML error pages
/// and the like, not a message a person wants in a log line).
const MAX_PLAIN_TEXT_MESSAGE: usize = 256;

/// What an error body said, in whichever shape it came.
#[derive(Debug, Default)]
pub(crate) struct ErrorFields {
    /// The status from an SSE `:HTTP_STATUS/NNN` comment line.
    pub(crate) status: Option<u16>,
    /// The status the body states in a `status_code` field of its own (seen on `SystemError`
    /// bodies). Used only when the transport gave no failure status.
    pub(crate) body_status: Option<u16>,
    pub(crate) code: Option<String>,
    pub(crate) error_type: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) request_id: Option<String>,
    /// An `id` (top-level or inside `error`), with a `chatcmpl-` prefix removed: the request id
    /// when no `request_id` was sent.
    pub(crate) id: Option<String>,
    pub(crate) trace_id: Option<String>,
    /// The body was short plain text (not JSON, not SSE), kept only as the message.
    pub(crate) plain_text: bool,
    /// An event stream's error object that is not valid JSON: its fields could not be read.
    pub(crate) malformed: bool,
}

/// A failed response's body, by shape.
#[derive(Debug)]
pub(crate) enum Body<'a> {
    /// A JSON, plain-text or empty body, already read.
    Fields(ErrorFields),
    /// An SSE-framed body (`id:` / `event:` / `:HTTP_STATUS/NNN` / `data:` lines), to be read
    /// with the event-stream scanner.
    Sse(&'a [u8]),
}

/// Reads a failed response's body in whichever shape it came.
pub(crate) fn parse_body(body: &[u8]) -> Body<'_> {
    let trimmed = trim_start(body);
    Body::Fields(match trimmed.first() {
        None => ErrorFields::default(),
        Some(b'{') => parse_json(trimmed).unwrap_or_default(),
        Some(_) if looks_like_sse(trimmed) => return Body::Sse(trimmed),
        Some(_) => parse_plain(trimmed),
    })
}

fn trim_start(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(body)
        .trim_ascii_start()
}

fn looks_like_sse(body: &[u8]) -> bool {
    [&b"id:"[..], b"event:", b"data:", b":", b"retry:"]
        .iter()
        .any(|p| body.starts_with(p))
}

fn parse_plain(body: &[u8]) -> ErrorFields {
    let message = std::str::from_utf8(body)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_PLAIN_TEXT_MESSAGE && !t.starts_with('<'))
        .map(sanitize);
    ErrorFields {
        message,
        plain_text: true,
        ..ErrorFields::default()
    }
}

/// Parses one JSON error object in any of the JSON shapes. `None` when it is not a JSON object.
fn parse_json(json: &[u8]) -> Option<ErrorFields> {
    let top = parse_error_object(json)?;
    Some(fields_from_object(&top))
}

/// The keys [`fields_from_object`] and [`object_is_error`] read, at any of the levels they
/// look at (the top, `error`, and `response` / `response.error` of a Responses-API failure).
const ERROR_KEYS: [&str; 10] = [
    "error",
    "code",
    "type",
    "message",
    "status_code",
    "id",
    "request_id",
    "traceId",
    "output",
    "response",
];

/// How many objects deep the keys are looked for: the top, `response`, `error`.
const ERROR_DEPTH: u8 = 3;

/// Parses a JSON object keeping only what an error can be read from: the [`ERROR_KEYS`] of the
/// top object and of the objects under them, up to [`ERROR_DEPTH`] levels. Every other value
/// is skipped without being built, and a container that is kept but not looked into becomes an
/// empty one of its kind (still non-null, still not text), so [`fields_from_object`] and
/// [`object_is_error`] read the same as from the full tree. `None` when `json` is not one JSON
/// object (or nests deeper than serde_json's limit).
///
/// A tree of the whole document would cost many times its size for one of tiny values
/// (`[0,0,0,…]`: about 17 bytes per 2 bytes of input).
pub(crate) fn parse_error_object(json: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = Pick { depth: ERROR_DEPTH }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A JSON value with objects kept `depth` levels deep, and only their [`ERROR_KEYS`].
struct Pick {
    depth: u8,
}

impl<'de> DeserializeSeed<'de> for Pick {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pick {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // No error field is read from an array: skip its elements, keep that it was one.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(Vec::new()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key_seed(ErrorKey)? {
            match key {
                Some(key) if self.depth > 0 => {
                    let value = map.next_value_seed(Pick {
                        depth: self.depth - 1,
                    })?;
                    kept.insert(key.to_owned(), value);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }
}

/// An object key: which of the [`ERROR_KEYS`] it is, if any, recognised without allocating.
struct ErrorKey;

impl<'de> DeserializeSeed<'de> for ErrorKey {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ErrorKey {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(ERROR_KEYS.iter().copied().find(|k| *k == key))
    }
}

/// Reads the fields of one JSON error object: native flat, nested `error` (an object or a bare
/// string), or Anthropic's envelope.
pub(crate) fn fields_from_object(top: &Map<String, Value>) -> ErrorFields {
    let error = top.get("error");
    let nested = error.and_then(Value::as_object);
    let get = |key: &str| nested.and_then(|e| e.get(key)).and_then(as_text);
    let get_top = |key: &str| top.get(key).and_then(as_text);

    // The Anthropic envelope's top-level `type` is always "error": not a code.
    let code = get("code").or_else(|| get_top("code"));
    let error_type = get("type");
    let message = get("message")
        .or_else(|| get_top("message"))
        .or_else(|| error.and_then(Value::as_str).map(str::to_owned));
    let body_status = nested
        .and_then(|e| e.get("status_code"))
        .or_else(|| top.get("status_code"))
        .and_then(as_status);
    let id = get("id")
        .or_else(|| get_top("id"))
        .map(|id| match id.strip_prefix("chatcmpl-") {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => id,
        });
    ErrorFields {
        status: None,
        body_status,
        code,
        error_type,
        message: message.map(|m| sanitize(&m)),
        request_id: get_top("request_id").or_else(|| get("request_id")),
        id,
        trace_id: get("traceId").or_else(|| get_top("traceId")),
        plain_text: false,
        malformed: false,
    }
}

/// Whether a JSON object from an event stream reports an error rather than output.
pub(crate) fn object_is_error(top: &Map<String, Value>) -> bool {
    top.get("error").is_some_and(|e| !e.is_null())
        || (top.get("code").and_then(as_text).is_some() && !top.contains_key("output"))
}

/// A non-empty string, or a number written out; anything else is `None`.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An HTTP status written as a number or a string of three digits, 100 to 599.
fn as_status(value: &Value) -> Option<u16> {
    let status = match value {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        Value::String(s) if s.len() == 3 => s.parse().ok()?,
        _ => return None,
    };
    (100..=599).contains(&status).then_some(status)
}

/// Replaces control characters so that a message stays one log line.
fn sanitize(message: &str) -> String {
    if message.chars().any(char::is_control) {
        message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        message.to_owned()
    }
}

/// The longest number DashScope puts in a `<NNN>` message prefix: seven digits
/// (`<5000202> InternalError.Algo.ModelServingError: …`).
const MAX_PREFIX_DIGITS: usize = 7;

/// Splits DashScope's `<400> InternalError.Algo.InvalidParameter: ` prefix (three to seven
/// digits) off a message, returning the code it names (if any) and the rest.
pub(crate) fn split_message_prefix(message: &str) -> (Option<&str>, &str) {
    let trimmed = message.trim_start();
    let Some(rest) = trimmed.strip_prefix('<') else {
        return (None, message);
    };
    let Some(close) = rest.find('>') else {
        return (None, message);
    };
    let digits = &rest[..close];
    if digits.is_empty()
        || digits.len() > MAX_PREFIX_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return (None, message);
    }
    let after = rest[close + 1..].trim_start();
    if let Some(colon) = after.find(": ") {
        let code = &after[..colon];
        if !code.is_empty() && !code.contains(char::is_whitespace) {
            return (Some(code), after[colon + 2..].trim_start());
        }
    }
    (None, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> ErrorFields {
        match parse_body(body.as_bytes()) {
            Body::Fields(fields) => fields,
            Body::Sse(_) => panic!("not SSE: {body}"),
        }
    }

    #[test]
    fn prefix_is_split() {
        assert_eq!(
            split_message_prefix(
                "<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 129024]"
            ),
            (
                Some("InternalError.Algo.InvalidParameter"),
                "Range of input length should be [1, 129024]"
            )
        );
        assert_eq!(split_message_prefix("<500> boom"), (None, "boom"));
        assert_eq!(split_message_prefix("plain: text"), (None, "plain: text"));
        assert_eq!(split_message_prefix("<abc> x: y"), (None, "<abc> x: y"));
        assert_eq!(split_message_prefix("<4"), (None, "<4"));
        assert_eq!(
            split_message_prefix("<12345678> X: y"),
            (None, "<12345678> X: y")
        );
    }

    #[test]
    fn seven_digit_prefix_is_split() {
        assert_eq!(
            split_message_prefix(
                "<5000202> InternalError.Algo.ModelServingError: [{\"message\":\"busy\"}]"
            ),
            (
                Some("InternalError.Algo.ModelServingError"),
                "[{\"message\":\"busy\"}]"
            )
        );
    }

    #[test]
    fn prefix_split_is_safe_on_multibyte_text() {
        for message in [
            "<400> 参数: 错误",
            "<４００> x: y",
            "<400>参数",
            "<>：",
            "<",
        ] {
            let _ = split_message_prefix(message);
        }
        assert_eq!(
            split_message_prefix("<400> InvalidParameter: 参数错误"),
            (Some("InvalidParameter"), "参数错误")
        );
    }

    #[test]
    fn bare_string_error_is_the_message() {
        let f = fields(r#"{"error":"Coding Plan is currently only available for Coding Agents"}"#);
        assert_eq!(
            f.message.as_deref(),
            Some("Coding Plan is currently only available for Coding Agents")
        );
        assert_eq!(f.code, None);
    }

    #[test]
    fn ids_inside_error_and_chatcmpl_ids() {
        let f = fields(r#"{"error":{"message":"m","request_id":"in-error","id":"x"}}"#);
        assert_eq!(f.request_id.as_deref(), Some("in-error"));
        let f = fields(r#"{"error":{"message":"m","id":"chatcmpl-abc"}}"#);
        assert_eq!(f.id.as_deref(), Some("abc"));
        let f = fields(r#"{"error":{"message":"m"},"id":"chatcmpl-"}"#);
        assert_eq!(f.id.as_deref(), Some("chatcmpl-"));
    }

    #[test]
    fn status_code_field() {
        let f = fields(r#"{"status_code":500,"code":"SystemError","message":"m"}"#);
        assert_eq!(f.body_status, Some(500));
        let f = fields(r#"{"error":{"status_code":"503"}}"#);
        assert_eq!(f.body_status, Some(503));
        for bad in [
            r#"{"status_code":70000}"#,
            r#"{"status_code":-1}"#,
            r#"{"status_code":"5xx"}"#,
            r#"{"status_code":99}"#,
            r#"{"status_code":1.5}"#,
        ] {
            assert_eq!(fields(bad).body_status, None, "{bad}");
        }
    }

    /// Arbitrary JSON whose objects use the keys errors are read from (and one other).
    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            (0u16..700).prop_map(|n| Value::Number(n.into())),
            "[ a-z<>0-9:-]{0,12}".prop_map(Value::String),
            "(5|50|503|4x9)".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            let key = prop::sample::select(
                ERROR_KEYS
                    .iter()
                    .copied()
                    .chain(["other", "chatcmpl"])
                    .collect::<Vec<_>>(),
            );
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..6).prop_map(|entries| {
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..proptest::prelude::ProptestConfig::default() })]

        /// The picked tree reads exactly as the full one: same fields, same verdict, at the top
        /// and under `response`.
        #[test]
        fn the_picked_tree_reads_as_the_full_tree(value in json()) {
            let text = serde_json::to_vec(&value).unwrap();
            let full: Value = serde_json::from_slice(&text).unwrap();
            let picked = parse_error_object(&text);
            proptest::prop_assert_eq!(picked.is_some(), full.is_object());
            if let (Some(picked), Some(full)) = (picked, full.as_object()) {
                proptest::prop_assert_eq!(
                    format!("{:?}", fields_from_object(&picked)),
                    format!("{:?}", fields_from_object(full))
                );
                proptest::prop_assert_eq!(object_is_error(&picked), object_is_error(full));
                let inner = |top: &Map<String, Value>| {
                    top.get("response").and_then(Value::as_object).map(|r| {
                        (format!("{:?}", fields_from_object(r)), object_is_error(r))
                    })
                };
                proptest::prop_assert_eq!(inner(&picked), inner(full));
            }
        }
    }

    #[test]
    fn sse_bodies_are_handed_back() {
        assert!(matches!(
            parse_body(b"\xEF\xBB\xBF id:1\nevent:error\n"),
            Body::Sse(b"id:1\nevent:error\n")
        ));
    }
}
