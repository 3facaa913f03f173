//! The SSE scanner behind `ClassifyDashScopeError`, fed arbitrary bytes in arbitrary chunks:
//! never a panic, the bytes delivered are a prefix of those sent (all of them unless an error
//! event ended the body), and the verdict and usage do not depend on the chunking.
//!
//! Input: byte 0 picks the set-up (bit 0: no content type, the request asks for a stream;
//! bit 1: a usage slot; bit 2: a 256-byte event limit; bit 3: a 512-byte first-event limit),
//! byte 1 the largest chunk (1 to 256 bytes), bytes 2..4 the chunking's seed; the rest is the
//! body.
#![no_main]

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower_dashscope::ClassifyDashScopeError;
use tower_dashscope::ErrorClass;
use tower_dashscope::classify::UsageSlot;
use tower_dashscope_fuzz::{chunks, send};

fn request(setup: u8) -> Request<Full<Bytes>> {
    let mut request = Request::post("http://localhost/compatible-mode/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","stream":true}"#,
        )))
        .unwrap();
    if setup & 1 == 1 {
        request
            .headers_mut()
            .insert("x-dashscope-sse", http::HeaderValue::from_static("enable"));
    }
    if setup & 2 == 2 {
        request.extensions_mut().insert(UsageSlot::new());
    }
    request
}

fn layer(setup: u8) -> ClassifyDashScopeError {
    let mut layer = ClassifyDashScopeError::new();
    if setup & 4 == 4 {
        layer = layer.max_event_size(256);
    }
    if setup & 8 == 8 {
        layer = layer.first_event_limit(512);
    }
    layer
}

fuzz_target!(|data: &[u8]| {
    let [setup, max_len, s0, s1, body @ ..] = data else {
        return;
    };
    let content_type = (setup & 1 == 0).then_some("text/event-stream");
    let seed = u64::from(u16::from_le_bytes([*s0, *s1])) + 1;
    let whole = send(
        layer(*setup),
        request(*setup),
        content_type,
        vec![Bytes::copy_from_slice(body)],
    );
    // At most 512 pieces: the first-event wait counts frames too (FIRST_EVENT_FRAME_LIMIT).
    let pieces = chunks(body, seed, usize::from(*max_len) + 1, 512);
    let cut = send(layer(*setup), request(*setup), content_type, pieces);

    for seen in [&whole, &cut] {
        assert!(
            body.starts_with(&seen.bytes),
            "delivered bytes are a prefix of the sent ones"
        );
        if seen.call_error.is_none()
            && seen
                .body_error
                .as_ref()
                .is_none_or(|e| e.class() == ErrorClass::StreamInterrupted)
        {
            assert_eq!(seen.bytes.len(), body.len(), "bytes lost");
        }
    }
    assert_eq!(
        whole.verdict(),
        cut.verdict(),
        "the verdict depends on the chunking"
    );
    assert_eq!(whole.usage, cut.usage, "the usage depends on the chunking");
});
