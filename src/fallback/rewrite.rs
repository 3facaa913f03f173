//! The byte-exact rewrite of a JSON body's top-level `"model"` string.
//!
//! A small scanner walks the top-level object once, skipping every other value without
//! decoding it (strings with `memchr`, nested containers by counting brackets, never by
//! recursion), and records where each top-level `"model"` string token starts and ends. The
//! rewrite copies the bytes before and after those spans as they are and writes the new name,
//! JSON-escaped, in between: whitespace, key order, escapes, numbers and nested `"model"` keys
//! are untouched, and nothing is parsed into a tree or serialised again.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Where the top-level `"model"` string values of a JSON object are: the spans of their string
/// tokens, quotes included. A document with the key twice has both rewritten (parsers differ on
/// which duplicate wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelSpans {
    first: Range<usize>,
    /// Further `"model"` keys of the top-level object, rare; empty (and unallocated) usually.
    more: Vec<Range<usize>>,
}

impl ModelSpans {
    fn iter(&self) -> impl Iterator<Item = &Range<usize>> {
        std::iter::once(&self.first).chain(self.more.iter())
    }
}

/// Finds the top-level `"model"` string values of `json`.
///
/// `None` when `json` is not one JSON object (leading and trailing whitespace allowed), has
/// no top-level `"model"` key, or has one whose value is not a string. Keys written with escapes
/// (`"mod\u0065l"`) are recognised. Never panics, whatever the input, and allocates nothing
/// unless a key contains an escape or `"model"` appears more than once.
pub(crate) fn find_model(json: &[u8]) -> Option<ModelSpans> {
    let mut i = skip_ws(json, 0);
    if *json.get(i)? != b'{' {
        return None;
    }
    i = skip_ws(json, i + 1);
    let mut found: Option<ModelSpans> = None;
    if *json.get(i)? == b'}' {
        i += 1;
    } else {
        loop {
            if *json.get(i)? != b'"' {
                return None;
            }
            let (key_end, escaped) = string_end(json, i)?;
            let is_model = key_is_model(&json[i..key_end], escaped);
            i = skip_ws(json, key_end);
            if *json.get(i)? != b':' {
                return None;
            }
            i = skip_ws(json, i + 1);
            if is_model {
                if *json.get(i)? != b'"' {
                    return None;
                }
                let (end, _) = string_end(json, i)?;
                match &mut found {
                    None => {
                        found = Some(ModelSpans {
                            first: i..end,
                            more: Vec::new(),
                        })
                    }
                    Some(spans) => spans.more.push(i..end),
                }
                i = end;
            } else {
                i = skip_value(json, i)?;
            }
            i = skip_ws(json, i);
            match *json.get(i)? {
                b',' => i = skip_ws(json, i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if skip_ws(json, i) != json.len() {
        return None;
    }
    found
}

/// `json` with every span replaced by `token` (an already escaped JSON string, quotes
/// included).
pub(crate) fn rewrite(json: &[u8], spans: &ModelSpans, token: &[u8]) -> Bytes {
    let removed: usize = spans.iter().map(|s| s.len()).sum();
    let count = 1 + spans.more.len();
    let mut out = BytesMut::with_capacity(json.len() - removed + token.len() * count);
    let mut at = 0;
    for span in spans.iter() {
        out.put_slice(&json[at..span.start]);
        out.put_slice(token);
        at = span.end;
    }
    out.put_slice(&json[at..]);
    out.freeze()
}

/// `name` as a JSON string token, quotes included.
pub(crate) fn json_string(name: &str) -> Bytes {
    // A `&str` always serialises.
    Bytes::from(serde_json::to_vec(name).unwrap_or_else(|_| b"\"\"".to_vec()))
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = json.get(i) {
        i += 1;
    }
    i
}

/// The index just after the string token starting at `start` (a `"`), and whether it holds
/// an escape.
fn string_end(json: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut i = start + 1;
    let mut escaped = false;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        if json[at] == b'"' {
            return Some((at + 1, escaped));
        }
        escaped = true;
        // The escaped character (a `"` or `\` included) is skipped with its backslash.
        i = at + 2;
    }
}

fn key_is_model(token: &[u8], escaped: bool) -> bool {
    if !escaped {
        return token == b"\"model\"";
    }
    // Rare: decode the key to compare it. Keys longer than any spelling of "model" are not it.
    token.len() <= 64 && serde_json::from_slice::<String>(token).is_ok_and(|key| key == "model")
}

/// The index just after the value starting at `i`.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match *json.get(i)? {
        b'"' => string_end(json, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = i;
            loop {
                match *json.get(i)? {
                    b'"' => {
                        i = string_end(json, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            // A number or a literal: up to the next delimiter.
            let rest = json.get(i..)?;
            let len = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn swap(json: &str, name: &str) -> Option<String> {
        let spans = find_model(json.as_bytes())?;
        let out = rewrite(json.as_bytes(), &spans, &json_string(name));
        Some(String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn only_the_top_level_model_changes() {
        let body = "{ \"messages\" : [{\"model\":\"x\",\"content\":\"say \\\"model\\\": \\\"y\\\"\"}],\n\t\"model\":\"qwen-max\" , \"n\":1.5e3}  ";
        assert_eq!(
            swap(body, "qwen-flash").unwrap(),
            "{ \"messages\" : [{\"model\":\"x\",\"content\":\"say \\\"model\\\": \\\"y\\\"\"}],\n\t\"model\":\"qwen-flash\" , \"n\":1.5e3}  "
        );
    }

    #[test]
    fn escaped_keys_and_values() {
        assert_eq!(
            swap(r#"{"mod\u0065l":"q\u0077en","a":"\\"}"#, "qwen-plus").unwrap(),
            r#"{"mod\u0065l":"qwen-plus","a":"\\"}"#
        );
        assert_eq!(
            swap(r#"{"model":"a"}"#, "we\"ird\\").unwrap(),
            r#"{"model":"we\"ird\\"}"#
        );
        // Duplicates: both, as parsers disagree on which wins.
        assert_eq!(
            swap(r#"{"model":"a","x":{},"model":"b"}"#, "c").unwrap(),
            r#"{"model":"c","x":{},"model":"c"}"#
        );
    }

    #[test]
    fn not_rewritten() {
        for body in [
            "",
            "[]",
            "{}",
            "{\"model\":7}",
            "{\"model\":null}",
            "{\"model\":\"a\"",
            "{\"model\":\"a\"} x",
            "{\"x\":\"model\"}",
            "{\"messages\":[{\"model\":\"a\"}]}",
            "{\"model\" \"a\"}",
            "{\"model\":\"a\",}x",
            "{\"a\":[1,2}",
            "{\"model\":\"unterminated",
            "{\"a\":tr",
            "{\"model\":\"a\" \"b\":1}",
            "\"model\"",
        ] {
            assert!(find_model(body.as_bytes()).is_none(), "{body:?}");
        }
        // Deep nesting is counted, not recursed into.
        let deep = format!(
            r#"{{"a":{}{},"model":"m"}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert!(find_model(deep.as_bytes()).is_some());
        let unbalanced = format!(r#"{{"a":{},"model":"m"}}"#, "[".repeat(1000));
        assert!(find_model(unbalanced.as_bytes()).is_none());
    }

    // Random JSON text, generated as text so that whitespace, escapes and key order vary.

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "\n", "\t", " \r\n  "])
    }

    fn json_str() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            any::<char>()
                .prop_filter("plain", |c| *c >= ' ' && *c != '"' && *c != '\\')
                .prop_map(String::from),
            prop::sample::select(vec![
                "\\\"",
                "\\\\",
                "\\/",
                "\\n",
                "\\t",
                "\\u00e9",
                "\\ud83d\\ude00",
                "model",
                "\\\"model\\\":\\\"x\\\"",
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "é",
                "通义千问",
                "😀",
            ])
            .prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..6).prop_map(|p| format!("\"{}\"", p.concat()))
    }

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            json_str(),
            prop::sample::select(vec!["0", "-1.5e3", "12", "true", "false", "null", "1E-2"])
                .prop_map(String::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            let key = prop_oneof![json_str(), Just("\"model\"".to_string())];
            prop_oneof![
                prop::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec((ws(), key, ws(), ws(), inner, ws()), 0..5).prop_map(
                    |entries| {
                        let entries: Vec<String> = entries
                            .into_iter()
                            .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                            .collect();
                        format!("{{{}}}", entries.join(","))
                    }
                ),
            ]
        })
    }

    #[allow(clippy::ptr_arg)] // proptest's filter hands a `&String`
    fn not_model(key: &String) -> bool {
        serde_json::from_str::<String>(key.as_str()).map_or(true, |k| k != "model")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(12), ..ProptestConfig::default() })]

        #[test]
        fn byte_exact_rewrite(
            entries in prop::collection::vec(
                (ws(), json_str().prop_filter("not model", not_model), ws(), ws(), value(), ws()),
                0..6,
            ),
            at in any::<prop::sample::Index>(),
            old in json_str(),
            new in "[a-z0-9.\\-]{1,16}|通义|a\"b\\\\c",
            (w1, w2, w3, w4, lead, trail) in (ws(), ws(), ws(), ws(), ws(), ws()),
        ) {
            let mut parts: Vec<String> = entries
                .iter()
                .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                .collect();
            let at = at.index(parts.len() + 1);
            let model_key = if at % 2 == 0 { "\"model\"" } else { "\"mod\\u0065l\"" };
            let before = parts[..at].join(",");
            let after = parts[at..].join(",");
            let sep_before = if at > 0 { "," } else { "" };
            let sep_after = if at < parts.len() { "," } else { "" };
            let head = format!("{lead}{{{before}{sep_before}{w1}{model_key}{w2}:{w3}");
            let tail = format!("{w4}{sep_after}{after}}}{trail}");
            let doc = format!("{head}{old}{tail}");
            parts.clear();

            let spans = find_model(doc.as_bytes());
            prop_assert!(spans.is_some(), "{}", doc);
            let spans = spans.unwrap();
            prop_assert_eq!(spans.first.clone(), head.len()..head.len() + old.len());
            let token = json_string(&new);
            let out = rewrite(doc.as_bytes(), &spans, &token);
            let expected = format!("{head}{}{tail}", std::str::from_utf8(&token).unwrap());
            prop_assert_eq!(&out[..], expected.as_bytes());

            // And it means what it should: the same document with another model.
            let mut want: serde_json::Value = serde_json::from_str(&doc).unwrap();
            want["model"] = serde_json::Value::String(new.clone());
            let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(got, want);
        }
    }
}
