//! The fuzz targets' properties (fuzz/), as seeded proptests that run with the suite: never a
//! panic, bounded output, and each part's own invariant.
//!
//! - the error-body classifier: any status and body give a typed error whose fields are no
//!   longer than the body could make;
//! - the SSE scanner behind `ClassifyDashScopeError`: the bytes delivered are the bytes sent
//!   (up to an error event), and the verdict and usage do not depend on the chunking;
//! - `parse_retry_after`: bounded by `MAX_RETRY_AFTER`, monotone in the value and in time;
//! - `ChatRequest::parse` and `rewrite_model`: the rewrite changes the model and nothing else;
//! - the token estimator: at least one token, at most one per byte of body, and more text never
//!   gives fewer tokens.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::ChunkedBody;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};
use tower_dashscope::budget::{CharEstimator, TokenEstimator};
use tower_dashscope::classify::{Usage, UsageSlot, classify_response_at};
use tower_dashscope::fallback::rewrite_model;
use tower_dashscope::request::ChatRequest;
use tower_dashscope::{
    Api, BoxError, ClassifyDashScopeError, ErrorClass, MAX_RETRY_AFTER, RETRY_AFTER_MS,
    parse_retry_after_at,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(2026),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

const APIS: [Api; 3] = [Api::OpenAiCompatible, Api::Native, Api::Anthropic];

// ---- The error-body classifier ----

/// Bodies in and around DashScope's error shapes.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(
            prop_oneof![
                Just(br#"{"code":"Throttling.RateQuota","#.to_vec()),
                Just(br#""message":"<400> InternalError.Algo.InvalidParameter: x","#.to_vec()),
                Just(br#"{"error":{"type":"limit_requests","code":"#.to_vec()),
                Just(br#""request_id":"r-1"}"#.to_vec()),
                Just(b"id:1\nevent:error\n:HTTP_STATUS/429\ndata:".to_vec()),
                Just(br#"{"type":"error","error":{"type":"overloaded_error"}}"#.to_vec()),
                Just(b"\xEF\xBB\xBF".to_vec()),
                "[a-zA-Z0-9 .:,{}\"\\[\\]\\\\]{0,24}".prop_map(String::into_bytes),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_error_body_gives_a_bounded_typed_error(
        status in 100u16..600,
        content_type in prop_oneof![Just(None), Just(Some("application/json")), Just(Some("text/event-stream")), Just(Some("text/plain"))],
        body in error_body(),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert("content-type", HeaderValue::from_static(ct));
        }
        let err = classify_response_at(status, &headers, &body, now());
        let shown = format!("{err} {err:?}");
        prop_assert!(!shown.is_empty());
        // Escapes (`\u0041`) only shrink text, and replacement characters for invalid UTF-8
        // grow it at most threefold.
        for text in [err.message(), err.code(), err.request_id()].into_iter().flatten() {
            prop_assert!(text.len() <= body.len() * 3, "{text:?} from {} bytes", body.len());
        }
        // (The status may be the body's own: an SSE-framed error body's `:HTTP_STATUS/429`.)
        prop_assert!(err.status().is_some());
    }
}

// ---- The SSE scanner, through the layer ----

/// Event-stream-like bytes: fields, comments, error and terminal events, line ends of both
/// kinds, long lines around the 64-byte event limit used below, and noise.
fn event_stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"data:".to_vec()),
            Just(b"event:error\n".to_vec()),
            Just(b":HTTP_STATUS/429\n".to_vec()),
            Just(b":HTTP_STATUS/200\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(br#"{"error":{"code":"x","message":"m"}}"#.to_vec()),
            Just(br#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#.to_vec()),
            Just(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#.to_vec()),
            Just(br#""finish_reason":"stop""#.to_vec()),
            Just(b"[DONE]".to_vec()),
            Just(b"\xEF\xBB\xBF".to_vec()),
            (50usize..80).prop_map(|n| {
                let mut line = b": ".to_vec();
                line.resize(n, b'p');
                line.push(b'\n');
                line
            }),
            (50usize..80).prop_map(|n| format!("data: {{\"pad\":\"{}\"}}\n", "q".repeat(n - 14)).into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ],
        0..30,
    )
    .prop_map(|parts| parts.concat())
}

fn cut(body: &[u8], cuts: &mut [usize]) -> Vec<Bytes> {
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for &cut in cuts.iter() {
        let cut = cut.clamp(last, body.len());
        out.push(Bytes::copy_from_slice(&body[last..cut]));
        last = cut;
    }
    out.push(Bytes::copy_from_slice(&body[last..]));
    out
}

/// The call's verdict (class and status of the call's or the body's error), the bytes read
/// (`None` when the call failed), and the usage recorded.
type Seen = (
    Option<(ErrorClass, Option<StatusCode>)>,
    Option<Vec<u8>>,
    Option<Usage>,
);

fn send_stream(small: bool, sse_header: bool, chunks: Vec<Bytes>) -> Seen {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let body = std::sync::Mutex::new(Some(ChunkedBody::new(chunks)));
        let client = service_fn(move |_req: Request<Full<Bytes>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move {
                let mut response = Response::new(body);
                if sse_header {
                    response.headers_mut().insert(
                        "content-type",
                        HeaderValue::from_static("text/event-stream"),
                    );
                }
                Ok::<_, BoxError>(response)
            }
        });
        let layer = if small {
            ClassifyDashScopeError::new()
                .max_event_size(64)
                .first_event_limit(256)
        } else {
            ClassifyDashScopeError::new()
        };
        let slot = UsageSlot::new();
        let mut request = Request::new(Full::default());
        request
            .headers_mut()
            .insert("accept", HeaderValue::from_static("text/event-stream"));
        request.extensions_mut().insert(slot.clone());
        let response = match layer.layer(client).oneshot(request).await {
            Ok(response) => response,
            Err(err) => return (Some((err.class(), err.status())), None, slot.get()),
        };
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes.extend_from_slice(&frame.into_data().unwrap()),
                Err(err) => return (Some((err.class(), err.status())), Some(bytes), slot.get()),
            }
        }
        (None, Some(bytes), slot.get())
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_stream_verdict_does_not_depend_on_the_chunking(
        body in event_stream(),
        mut cuts in proptest::collection::vec(0usize..1_500, 0..16),
        small in any::<bool>(),
        sse_header in any::<bool>(),
    ) {
        let whole = send_stream(small, sse_header, vec![Bytes::copy_from_slice(&body)]);
        let split = send_stream(small, sse_header, cut(&body, &mut cuts));
        for seen in [&whole, &split] {
            // A call that failed (an error before the first event) delivers nothing; a body
            // delivers the bytes sent, all of them unless an error event ended it.
            let Some(bytes) = &seen.1 else { continue };
            prop_assert!(body.starts_with(bytes), "delivered bytes are a prefix of the sent ones");
            if seen.0.is_none() || seen.0.is_some_and(|(c, _)| c == ErrorClass::StreamInterrupted) {
                prop_assert_eq!(bytes.len(), body.len(), "bytes lost");
            }
        }
        prop_assert_eq!(whole.0, split.0);
        prop_assert_eq!(whole.2, split.2);
    }
}

/// The fuzz target `sse_chunks`' first finding: a line over the event limit was inspected
/// when it arrived in one piece and not when it was split, so this stream (a comment longer
/// than the limit, and no event) was truncated or not depending on the network.
#[test]
fn a_long_line_is_judged_the_same_whole_or_split() {
    let body = format!(":{}\n\n", "c".repeat(100));
    let whole = send_stream(true, true, vec![Bytes::from(body.clone())]);
    for at in [1, 50, 100] {
        let split = send_stream(true, true, cut(body.as_bytes(), &mut [at]));
        assert_eq!(whole, split, "split at {at}");
    }
}

// ---- Retry-After ----

fn headers(name: &http::HeaderName, values: &[&str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for value in values {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.append(name.clone(), value);
        }
    }
    map
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn retry_after_is_bounded_for_any_values(
        ms in proptest::collection::vec("[ -~]{0,48}", 0..3),
        secs in proptest::collection::vec(prop_oneof![
            "[ -~]{0,48}",
            "[0-9]{1,25}(\\.[0-9]{0,6})?",
            "(Mon|Tue|Sun), [0-3][0-9] (Jan|Nov|Dec) (1994|2026|2031|9999) [0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT",
        ], 0..3),
    ) {
        let mut map = headers(&RETRY_AFTER_MS, &ms.iter().map(String::as_str).collect::<Vec<_>>());
        for (name, value) in headers(&http::header::RETRY_AFTER, &secs.iter().map(String::as_str).collect::<Vec<_>>()) {
            map.append(name.unwrap_or(http::header::RETRY_AFTER), value);
        }
        let at = parse_retry_after_at(&map, now());
        if let Some(delay) = at {
            prop_assert!(delay <= MAX_RETRY_AFTER);
        }
        let later = parse_retry_after_at(&map, now() + Duration::from_secs(3_600));
        prop_assert_eq!(at.is_some(), later.is_some());
        if let (Some(at), Some(later)) = (at, later) {
            prop_assert!(later <= at, "the wait grew with time: {:?} then {:?}", at, later);
        }
    }

    #[test]
    fn retry_after_seconds_are_monotone(a in 0u64..200_000, b in 0u64..200_000, frac in 0u32..1000) {
        let (lo, hi) = (a.min(b), a.max(b));
        let parse = |text: String| parse_retry_after_at(&headers(&http::header::RETRY_AFTER, &[&text]), now());
        let lo_d = parse(format!("{lo}.{frac:03}")).unwrap();
        let hi_d = parse(format!("{hi}.{frac:03}")).unwrap();
        prop_assert!(lo_d <= hi_d);
        prop_assert_eq!(lo_d, (Duration::from_secs(lo) + Duration::from_millis(frac.into())).min(MAX_RETRY_AFTER));
        let parse_ms = |text: String| parse_retry_after_at(&headers(&RETRY_AFTER_MS, &[&text]), now());
        prop_assert!(parse_ms(lo.to_string()).unwrap() <= parse_ms(hi.to_string()).unwrap());
    }

    #[test]
    fn retry_after_dates_count_down(offset in 0u64..200_000, passed in 0u64..200_000) {
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(offset));
        let map = headers(&http::header::RETRY_AFTER, &[&date]);
        let at = parse_retry_after_at(&map, now()).unwrap();
        prop_assert_eq!(at, Duration::from_secs(offset).min(MAX_RETRY_AFTER));
        let later = parse_retry_after_at(&map, now() + Duration::from_secs(passed)).unwrap();
        prop_assert_eq!(later, Duration::from_secs(offset.saturating_sub(passed)).min(MAX_RETRY_AFTER));
    }
}

// ---- The request view and the model rewrite ----

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("model".to_owned()),
                    Just("content".to_owned()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A chat request of any API, with a top-level model and arbitrary other members (nested
/// `model` keys included), serialised compactly or pretty.
fn chat_body() -> impl Strategy<Value = (Value, Vec<u8>)> {
    (
        "\\PC{0,20}",
        proptest::collection::vec("\\PC{0,30}", 0..4),
        proptest::collection::btree_map("[a-z_]{1,10}", json_value(), 0..4),
        any::<bool>(),
        prop_oneof![Just(None), (0u64..100_000).prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(|(model, texts, extra, stream, max_tokens, pretty)| {
            let mut value = json!({
                "model": model,
                "messages": texts.iter().map(|t| json!({"role": "user", "content": t})).collect::<Vec<_>>(),
                "stream": stream,
            });
            let object = value.as_object_mut().unwrap();
            for (key, v) in extra {
                object.entry(key).or_insert(v);
            }
            if let Some(n) = max_tokens {
                object.insert("max_tokens".to_owned(), json!(n));
            }
            let bytes = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            (value, bytes)
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_rewrite_changes_the_model_and_nothing_else(
        (_, body) in chat_body(),
        api in 0usize..3,
        model in "\\PC{0,40}",
    ) {
        let api = APIS[api];
        let headers = HeaderMap::new();
        let rewritten = rewrite_model(&body, &model).expect("a top-level string model");
        // (Compared with the body as serde_json reads it back: its float parsing is not exact.)
        let value: Value = serde_json::from_slice(&body).unwrap();
        let mut expect = value.clone();
        expect["model"] = Value::from(model.clone());
        let got: Value = serde_json::from_slice(&rewritten).unwrap();
        prop_assert_eq!(got, expect);
        let before = ChatRequest::parse(api, &headers, &body).expect("a chat request");
        let after = ChatRequest::parse(api, &headers, &rewritten).expect("still a chat request");
        prop_assert_eq!(after, before.with_model(&model));
        // And back again: the original model gives back the original bytes' meaning.
        let back = rewrite_model(&rewritten, value["model"].as_str().unwrap()).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Value>(&back).unwrap(), value);
    }

    #[test]
    fn any_bytes_are_a_view_or_none_never_a_panic(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            chat_body().prop_map(|(_, b)| b).prop_flat_map(|b| {
                let len = b.len();
                (Just(b), 0..=len, any::<u8>())
            }).prop_map(|(mut b, at, byte)| { if at < b.len() { b[at] = byte; } else { b.push(byte); } b }),
        ],
        api in 0usize..3,
    ) {
        let api = APIS[api];
        let headers = HeaderMap::new();
        let before = ChatRequest::parse(api, &headers, &body);
        if let Some(chat) = &before {
            prop_assert!(chat.input_chars() <= body.len() as u64);
            let _ = format!("{chat:?}");
        }
        match rewrite_model(&body, "qwen-flash") {
            Some(rewritten) => {
                // Only the model's value changed: the bytes before it and after it are kept.
                let after = ChatRequest::parse(api, &headers, &rewritten);
                if let Some(before) = &before {
                    prop_assert_eq!(after, Some(before.with_model("qwen-flash")));
                }
            }
            None => {
                if let Some(chat) = &before {
                    prop_assert!(chat.model().is_none());
                }
            }
        }
    }
}

// ---- The token estimator ----

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_estimate_is_bounded_by_the_input(
        (_, body) in chat_body(),
        api in 0usize..3,
    ) {
        let chat = ChatRequest::parse(APIS[api], &HeaderMap::new(), &body).unwrap();
        let tokens = CharEstimator.input_tokens(&chat, &Bytes::copy_from_slice(&body));
        prop_assert!(tokens >= 1);
        prop_assert!(tokens <= body.len() as u64);
        prop_assert!(tokens <= chat.input_chars().max(1));
    }

    #[test]
    fn more_text_never_gives_fewer_tokens(
        texts in proptest::collection::vec("\\PC{0,40}", 1..4),
        more in "\\PC{1,40}",
    ) {
        let estimate = |texts: &[String]| {
            let body = serde_json::to_vec(&json!({
                "model": "qwen-plus",
                "messages": texts.iter().map(|t| json!({"role": "user", "content": t})).collect::<Vec<_>>(),
            })).unwrap();
            let chat = ChatRequest::parse(Api::OpenAiCompatible, &HeaderMap::new(), &body).unwrap();
            CharEstimator.input_tokens(&chat, &Bytes::from(body))
        };
        let base = estimate(&texts);
        let mut longer = texts.clone();
        longer[0].push_str(&more);
        prop_assert!(estimate(&longer) >= base);
        let mut extra = texts.clone();
        extra.push(more);
        prop_assert!(estimate(&extra) >= base);
    }
}
