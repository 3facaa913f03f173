//! The error-body classifier: any status, content type and body gives a typed error, never a
//! panic, and its message is bounded by the body.
//!
//! Then the same response through `ClassifyDashScopeError`, its body cut into pieces, gives the
//! same error.
//!
//! Input: byte 0 picks the status, byte 1 the content type (and the largest piece), byte 2 the
//! `x-request-id` header (and the pieces' seed); the rest is the body.
#![no_main]

use std::time::{Duration, SystemTime};

use http::Request;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower_dashscope::ClassifyDashScopeError;
use tower_dashscope::classify::classify_response_at;
use tower_dashscope_fuzz::{chunks, send_status};

const STATUSES: [u16; 16] = [
    400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 520, 200, 418,
];
const CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/json"),
    Some("text/event-stream;charset=UTF-8"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let [s, c, r, body @ ..] = data else { return };
    let status = match STATUSES[usize::from(*s) % STATUSES.len()] {
        // The high bit asks for any status instead, to reach the odd ones.
        _ if s & 0x80 != 0 => {
            StatusCode::from_u16(100 + u16::from(*s & 0x7f) * 4 + u16::from(*r % 4))
                .unwrap_or(StatusCode::BAD_REQUEST)
        }
        code => StatusCode::from_u16(code).unwrap(),
    };
    let mut headers = HeaderMap::new();
    if let Some(ct) = CONTENT_TYPES[usize::from(*c) % CONTENT_TYPES.len()] {
        headers.insert("content-type", HeaderValue::from_static(ct));
    }
    if r & 1 == 1 {
        headers.insert("x-request-id", HeaderValue::from_static("hdr-id"));
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    let err = classify_response_at(status, &headers, body, now);
    // Everything a caller may look at works, and nothing is made out of thin air.
    let shown = format!("{err} {err:?}");
    assert!(!shown.is_empty());
    let bound = body.len() * 6 + 64;
    for text in [err.message(), err.code(), err.request_id()]
        .into_iter()
        .flatten()
    {
        assert!(
            text.len() <= bound,
            "a field longer than the body could make"
        );
    }
    let _ = err.class();
    let _ = err.is_retryable();
    let _ = err.retry_after();
    let _ = err.status();

    // Through the layer, the body cut into pieces: the same error (for a body within the
    // layer's read limit, and but for a reset time, which is measured from the real clock).
    if status.is_success() {
        return;
    }
    let content_type = CONTENT_TYPES[usize::from(*c) % CONTENT_TYPES.len()];
    let mut plain = headers.clone();
    plain.remove("content-type");
    let pieces = chunks(body, u64::from(*r) + 1, usize::from(*c % 64) + 1, 512);
    let seen = send_status(
        ClassifyDashScopeError::new(),
        Request::new(Full::default()),
        status,
        plain,
        content_type,
        pieces,
    );
    let layered = seen
        .call_error
        .expect("a non-2xx response is the call's error");
    assert_eq!(layered.class(), err.class());
    assert_eq!(layered.status(), err.status());
    assert_eq!(layered.code(), err.code());
    assert_eq!(layered.message(), err.message());
    assert_eq!(layered.request_id(), err.request_id());
});
