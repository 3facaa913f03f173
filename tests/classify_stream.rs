//! `ClassifyDashScopeError` on event streams: errors inside HTTP 200 streams, truncation, usage,
//! idle timeouts, pass-through fidelity.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::ChunkedBody;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_dashscope::classify::{Usage, UsageSlot};
use tower_dashscope::{
    BoxError, ClassifyDashScopeError, DashScopeError, ErrorClass, RateLimitKind,
};

const NATIVE_OK: &str = include_str!("fixtures/streams/native_ok.sse");
const NATIVE_TRUNCATED: &str = include_str!("fixtures/streams/native_truncated.sse");
const NATIVE_429_FIRST: &str = include_str!("fixtures/streams/native_429_first.sse");
const NATIVE_400_FIRST: &str = include_str!("fixtures/streams/native_400_first.sse");
const NATIVE_500_FIRST: &str = include_str!("fixtures/streams/native_500_first.sse");
const NATIVE_500_MIDWAY: &str = include_str!("fixtures/streams/native_500_midway.sse");
const COMPAT_OK: &str = include_str!("fixtures/streams/compat_ok.sse");
const COMPAT_TRUNCATED: &str = include_str!("fixtures/streams/compat_truncated.sse");
const COMPAT_MODERATION: &str = include_str!("fixtures/streams/compat_moderation_midway.sse");
const ANTHROPIC_OK: &str = include_str!("fixtures/streams/anthropic_ok.sse");

const SSE: &str = "text/event-stream;charset=UTF-8";

/// What the caller saw: the call's error, or the frames of the body and how it ended.
#[derive(Debug)]
enum Seen {
    CallFailed(DashScopeError),
    Body {
        frames: Vec<Bytes>,
        end: Option<DashScopeError>,
    },
}

impl Seen {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Seen::CallFailed(_) => Vec::new(),
            Seen::Body { frames, .. } => frames.concat(),
        }
    }

    fn error(&self) -> Option<&DashScopeError> {
        match self {
            Seen::CallFailed(err) => Some(err),
            Seen::Body { end, .. } => end.as_ref(),
        }
    }

    fn call_error(&self) -> &DashScopeError {
        match self {
            Seen::CallFailed(err) => err,
            Seen::Body { .. } => panic!("expected the call to fail, got {self:?}"),
        }
    }
}

fn split(body: &str, cuts: &[usize]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut last = 0;
    for &cut in cuts {
        let cut = cut.clamp(last, body.len());
        chunks.push(Bytes::copy_from_slice(&body.as_bytes()[last..cut]));
        last = cut;
    }
    chunks.push(Bytes::copy_from_slice(&body.as_bytes()[last..]));
    chunks
}

async fn send_with(
    layer: ClassifyDashScopeError,
    content_type: &str,
    request: Request<Full<Bytes>>,
    body: impl Body<Data = Bytes, Error = std::io::Error> + Send + Unpin + 'static,
) -> Seen {
    let content_type = content_type.to_owned();
    let body = std::sync::Mutex::new(Some(body));
    let client = service_fn(move |_req: Request<Full<Bytes>>| {
        let body = body.lock().unwrap().take().unwrap();
        let content_type = content_type.clone();
        async move {
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            response
                .headers_mut()
                .insert("x-request-id", "hdr-request-id".parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    });
    let response = match layer.layer(client).oneshot(request).await {
        Ok(response) => response,
        Err(err) => return Seen::CallFailed(err),
    };
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut frames = Vec::new();
    let mut end = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => frames.push(frame.into_data().unwrap()),
            Err(err) => {
                end = Some(err);
                break;
            }
        }
    }
    if end.is_some() {
        assert!(body.frame().await.is_none(), "nothing after the error");
    }
    Seen::Body { frames, end }
}

async fn send(body: &str, cuts: &[usize]) -> Seen {
    send_with(
        ClassifyDashScopeError::new(),
        SSE,
        Request::new(Full::default()),
        ChunkedBody::new(split(body, cuts)),
    )
    .await
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

#[tokio::test]
async fn a_429_inside_an_http_200_stream_is_the_calls_error() {
    for (body, status, class, code) in [
        (
            NATIVE_429_FIRST,
            429,
            ErrorClass::RateLimited(RateLimitKind::Tokens),
            "Throttling.AllocationQuota",
        ),
        (
            NATIVE_400_FIRST,
            400,
            ErrorClass::ContextLengthExceeded,
            "InvalidParameter",
        ),
        (
            NATIVE_500_FIRST,
            500,
            ErrorClass::ServerError,
            "InternalError.Algo",
        ),
    ] {
        let seen = send(body, &[]).await;
        let err = seen.call_error();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{body}");
        assert_eq!(err.class(), class, "{body}");
        assert_eq!(err.code(), Some(code));
        assert_eq!(
            err.request_id(),
            Some("a5b1c2d3-0000-4000-8000-00000000abcd")
        );
    }
}

#[test]
fn every_fixture_stream_split_at_every_byte_classifies_the_same() {
    block_on(async {
        for body in [
            NATIVE_OK,
            NATIVE_TRUNCATED,
            NATIVE_429_FIRST,
            NATIVE_400_FIRST,
            NATIVE_500_FIRST,
            NATIVE_500_MIDWAY,
            COMPAT_OK,
            COMPAT_TRUNCATED,
            COMPAT_MODERATION,
            ANTHROPIC_OK,
        ] {
            let whole = send(body, &[]).await;
            let expect = whole
                .error()
                .map(|e| (e.class(), e.status(), e.code().map(str::to_owned)));
            for cut in 0..=body.len() {
                let seen = send(body, &[cut]).await;
                let got = seen
                    .error()
                    .map(|e| (e.class(), e.status(), e.code().map(str::to_owned)));
                assert_eq!(got, expect, "cut at {cut} of {body:.40}");
                assert_eq!(seen.bytes(), whole.bytes(), "cut at {cut}");
                assert_eq!(
                    matches!(seen, Seen::CallFailed(_)),
                    matches!(whole, Seen::CallFailed(_)),
                    "cut at {cut}"
                );
            }
            // One byte at a time.
            let cuts: Vec<usize> = (1..body.len()).collect();
            let seen = send(body, &cuts).await;
            let got = seen
                .error()
                .map(|e| (e.class(), e.status(), e.code().map(str::to_owned)));
            assert_eq!(got, expect, "byte by byte");
            assert_eq!(seen.bytes(), whole.bytes());
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_splits_with_crlf_classify_the_same(
        which in 0usize..6,
        crlf in any::<bool>(),
        mut cuts in proptest::collection::vec(0usize..8_000, 0..12),
    ) {
        let body = [NATIVE_OK, NATIVE_429_FIRST, NATIVE_500_MIDWAY, COMPAT_OK, COMPAT_MODERATION, COMPAT_TRUNCATED][which];
        let body = if crlf { body.replace('\n', "\r\n") } else { body.to_owned() };
        cuts.sort_unstable();
        let (whole, seen) = block_on(async { (send(&body, &[]).await, send(&body, &cuts).await) });
        prop_assert_eq!(
            whole.error().map(|e| (e.class(), e.status())),
            seen.error().map(|e| (e.class(), e.status()))
        );
        prop_assert_eq!(whole.bytes(), seen.bytes());
    }
}

#[tokio::test]
async fn good_streams_pass_through_byte_identical_in_the_same_chunks() {
    for body in [NATIVE_OK, COMPAT_OK, ANTHROPIC_OK] {
        let chunks = split(body, &[1, 17, 300, 301, 2000]);
        let seen = send(body, &[1, 17, 300, 301, 2000]).await;
        match seen {
            Seen::Body { frames, end } => {
                assert!(end.is_none(), "{end:?}");
                assert_eq!(frames, chunks, "same chunks, same bytes");
            }
            Seen::CallFailed(err) => panic!("{err}"),
        }
    }
}

#[tokio::test]
async fn errors_after_the_first_event_come_through_the_body_after_the_bytes_before_them() {
    let seen = send(COMPAT_MODERATION, &[100, 900]).await;
    let Seen::Body { frames, end } = &seen else {
        panic!("{seen:?}")
    };
    let err = end.as_ref().expect("an error at the end");
    assert_eq!(err.class(), ErrorClass::ContentFiltered);
    assert_eq!(err.code(), Some("data_inspection_failed"));
    assert!(err.status().is_none(), "no status was sent for it");
    assert_eq!(
        err.request_id(),
        Some("hdr-request-id"),
        "from the x-request-id header"
    );
    // Every byte up to and including the error event was delivered.
    assert_eq!(frames.concat(), COMPAT_MODERATION.as_bytes());

    let seen = send(NATIVE_500_MIDWAY, &[]).await;
    let err = seen.error().unwrap();
    assert_eq!(err.class(), ErrorClass::ServerError);
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    let before_error = &NATIVE_500_MIDWAY[..NATIVE_500_MIDWAY.find("event:error").unwrap()];
    assert!(seen.bytes().starts_with(before_error.as_bytes()));
}

#[tokio::test]
async fn truncated_streams_end_with_stream_interrupted() {
    for body in [NATIVE_TRUNCATED, COMPAT_TRUNCATED] {
        let seen = send(body, &[50]).await;
        let Seen::Body { frames, end } = &seen else {
            panic!("{seen:?}")
        };
        assert_eq!(frames.concat(), body.as_bytes(), "all bytes first");
        let err = end.as_ref().expect("truncation reported");
        assert_eq!(err.class(), ErrorClass::StreamInterrupted);
        assert!(!err.is_retryable());
        assert!(err.message().unwrap().contains("finish_reason"));
    }
    // Off: the stream just ends.
    let seen = send_with(
        ClassifyDashScopeError::new().detect_truncation(false),
        SSE,
        Request::new(Full::default()),
        ChunkedBody::new([NATIVE_TRUNCATED]),
    )
    .await;
    assert!(seen.error().is_none());
    // The native string "null" is not a final finish_reason, but "stop" is.
    assert!(NATIVE_TRUNCATED.contains(r#""finish_reason":"null""#));
    assert!(send(NATIVE_OK, &[]).await.error().is_none());
}

#[tokio::test]
async fn a_stream_with_no_event_at_all_fails_the_call() {
    let seen = send("", &[]).await;
    assert_eq!(seen.call_error().class(), ErrorClass::StreamInterrupted);
    let seen = send(": keep-alive\n\n", &[]).await;
    assert_eq!(seen.call_error().class(), ErrorClass::StreamInterrupted);
}

#[tokio::test]
async fn transport_failures_before_and_after_the_first_event() {
    let before = ChunkedBody::new([": ping\n\n"]).then_fail(std::io::ErrorKind::ConnectionReset);
    let seen = send_with(
        ClassifyDashScopeError::new(),
        SSE,
        Request::new(Full::default()),
        before,
    )
    .await;
    let err = seen.call_error();
    assert_eq!(
        err.class(),
        ErrorClass::Connection,
        "nothing was delivered: retryable"
    );
    assert!(err.is_retryable());

    let first_event = &NATIVE_OK[..NATIVE_OK.find("id:2").unwrap()];
    let after = ChunkedBody::new([first_event]).then_fail(std::io::ErrorKind::ConnectionReset);
    let seen = send_with(
        ClassifyDashScopeError::new(),
        SSE,
        Request::new(Full::default()),
        after,
    )
    .await;
    assert_eq!(seen.bytes(), first_event.as_bytes());
    assert_eq!(seen.error().unwrap().class(), ErrorClass::StreamInterrupted);
}

#[tokio::test]
async fn usage_from_both_stream_shapes_and_json_bodies() {
    async fn usage_of(content_type: &str, body: &str) -> (Option<Usage>, bool) {
        let slot = UsageSlot::new();
        let mut request = Request::new(Full::default());
        request.extensions_mut().insert(slot.clone());
        let seen = send_with(
            ClassifyDashScopeError::new(),
            content_type,
            request,
            ChunkedBody::new(split(body, &[body.len() / 3, body.len() / 2])),
        )
        .await;
        assert!(seen.error().is_none(), "{seen:?}");
        (slot.get(), slot.is_complete())
    }
    // Native: cumulative usage on every event, the last one wins.
    assert_eq!(
        usage_of(SSE, NATIVE_OK).await,
        (Some(Usage::new(20, 24)), true)
    );
    // Compatible: the final chunk with `"choices":[]`.
    assert_eq!(
        usage_of(SSE, COMPAT_OK).await,
        (Some(Usage::new(20, 24)), true)
    );
    // Non-streaming JSON, both shapes.
    let native = r#"{"output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant","content":"hi"}}]},"usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12},"request_id":"r"}"#;
    assert_eq!(
        usage_of("application/json", native).await,
        (Some(Usage::new(9, 3)), true)
    );
    let compat = r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop","index":0}],"object":"chat.completion","usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13},"model":"qwen-plus","id":"chatcmpl-1"}"#;
    assert_eq!(
        usage_of("application/json", compat).await,
        (Some(Usage::new(11, 2)), true)
    );
}

#[tokio::test]
async fn a_request_that_asked_to_stream_is_inspected_whatever_the_content_type() {
    let request = || {
        Request::builder()
            .header("X-DashScope-SSE", "enable")
            .body(Full::default())
            .unwrap()
    };
    let seen = send_with(
        ClassifyDashScopeError::new(),
        "application/json",
        request(),
        ChunkedBody::new([NATIVE_429_FIRST]),
    )
    .await;
    assert_eq!(
        seen.call_error().status(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );

    // The server answered with plain JSON after all: not a truncated stream.
    let json = r#"{"output":{"text":"hi","finish_reason":"stop"},"request_id":"r"}"#;
    let seen = send_with(
        ClassifyDashScopeError::new(),
        "application/json",
        request(),
        ChunkedBody::new(["  ", json]),
    )
    .await;
    assert!(seen.error().is_none(), "{seen:?}");
    assert_eq!(seen.bytes(), format!("  {json}").as_bytes());

    // Without asking, an application/json body is never scanned.
    let seen = send_with(
        ClassifyDashScopeError::new(),
        "application/json",
        Request::new(Full::default()),
        ChunkedBody::new([NATIVE_429_FIRST]),
    )
    .await;
    assert!(seen.error().is_none());
}

/// A body that yields its chunks, then never anything again.
struct ThenPending(ChunkedBody);

impl Body for ThenPending {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(None) => Poll::Pending,
            other => other,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_between_chunks() {
    let first_event = &NATIVE_OK[..NATIVE_OK.find("id:2").unwrap()];
    let layer = ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(5));
    let start = tokio::time::Instant::now();
    let seen = send_with(
        layer.clone(),
        SSE,
        Request::new(Full::default()),
        ThenPending(ChunkedBody::new([first_event])),
    )
    .await;
    assert_eq!(seen.bytes(), first_event.as_bytes());
    let err = seen.error().unwrap();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "paused time: exactly the idle timeout"
    );

    // Nothing at all: the call itself times out, retryably.
    let seen = send_with(
        layer,
        SSE,
        Request::new(Full::default()),
        ThenPending(ChunkedBody::new(Vec::<Bytes>::new())),
    )
    .await;
    assert_eq!(seen.call_error().class(), ErrorClass::Timeout);
    assert!(seen.call_error().is_retryable());
}

#[tokio::test]
async fn non_streams_are_not_delayed() {
    // A JSON body that has not produced a byte yet: the response is still handed out at once.
    let client = service_fn(|_req: Request<Full<Bytes>>| async {
        let mut response = Response::new(ThenPending(ChunkedBody::new(Vec::<Bytes>::new())));
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok::<_, BoxError>(response)
    });
    let future = ClassifyDashScopeError::new()
        .layer(client)
        .oneshot(Request::new(Full::default()));
    let response = tokio::time::timeout(Duration::from_secs(3600), future).await;
    assert!(
        response
            .expect("handed out without waiting for the body")
            .is_ok()
    );
}

#[tokio::test]
async fn a_first_event_bigger_than_the_limit_is_handed_out_not_held() {
    // 100 chunks of comment padding before any event; limit 1 KiB.
    let padding: Vec<Bytes> = (0..100)
        .map(|_| Bytes::from(format!(": {}\n", "p".repeat(60))))
        .collect();
    let total: usize = padding.iter().map(Bytes::len).sum();
    let mut chunks = padding.clone();
    chunks.push(Bytes::from(format!("\n{NATIVE_OK}")));
    let layer = ClassifyDashScopeError::new().first_event_limit(1024);
    let seen = send_with(
        layer,
        SSE,
        Request::new(Full::default()),
        ChunkedBody::new(chunks),
    )
    .await;
    assert!(seen.error().is_none(), "{seen:?}");
    assert_eq!(seen.bytes().len(), total + 1 + NATIVE_OK.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_streams_never_panic_and_never_lose_bytes(
        body in proptest::collection::vec(prop_oneof![
            Just(b"data: ".to_vec()), Just(b"event:error\n".to_vec()), Just(b":HTTP_STATUS/429\n".to_vec()),
            Just(b"\n".to_vec()), Just(b"\r\n".to_vec()), Just(b"{\"error\":{\"code\":\"x\"}}".to_vec()),
            Just(b"\"finish_reason\":\"stop\"".to_vec()), Just(b"[DONE]".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..16),
        ], 0..40).prop_map(|parts| parts.concat()),
        mut cuts in proptest::collection::vec(0usize..600, 0..8),
    ) {
        cuts.sort_unstable();
        let chunks: Vec<Bytes> = {
            let mut out = Vec::new();
            let mut last = 0;
            for cut in cuts {
                let cut = cut.clamp(last, body.len());
                out.push(Bytes::copy_from_slice(&body[last..cut]));
                last = cut;
            }
            out.push(Bytes::copy_from_slice(&body[last..]));
            out
        };
        let seen = block_on(send_with(
            ClassifyDashScopeError::new(),
            SSE,
            Request::new(Full::default()),
            ChunkedBody::new(chunks),
        ));
        let got = seen.bytes();
        prop_assert!(body.starts_with(&got), "delivered bytes are a prefix of the sent ones");
        match &seen {
            Seen::Body { end: None, .. } => prop_assert_eq!(&got, &body),
            Seen::Body { end: Some(err), .. } if err.class() == ErrorClass::StreamInterrupted => {
                prop_assert_eq!(&got, &body)
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_gateways_retry_after_reaches_errors_found_in_streams() {
    let client = service_fn(|_req: Request<Full<Bytes>>| async {
        let mut response = Response::new(ChunkedBody::new([NATIVE_429_FIRST]));
        let headers = response.headers_mut();
        headers.insert("content-type", SSE.parse().unwrap());
        headers.insert("retry-after", "1.5".parse().unwrap());
        Ok::<_, BoxError>(response)
    });
    let err = ClassifyDashScopeError::new()
        .layer(client)
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
}

// ---- Regression tests: the review's D5, D6, D7, D9, D12 ----

const RESPONSES_OK: &str = include_str!("fixtures/streams/responses_ok.sse");
const RESPONSES_FAILED: &str = include_str!("fixtures/streams/responses_failed.sse");
const BOM: &str = "\u{feff}";

/// Sends one request through the layer to a client that answers with `response`.
async fn send_response<B>(
    layer: ClassifyDashScopeError,
    request: Request<Full<Bytes>>,
    response: Response<B>,
) -> Seen
where
    B: Body<Data = Bytes, Error = std::io::Error> + Send + Unpin + 'static,
{
    let response = std::sync::Mutex::new(Some(response));
    let client = service_fn(move |_req: Request<Full<Bytes>>| {
        let response = response.lock().unwrap().take().unwrap();
        async move { Ok::<_, BoxError>(response) }
    });
    let response = match layer.layer(client).oneshot(request).await {
        Ok(response) => response,
        Err(err) => return Seen::CallFailed(err),
    };
    let mut body = response.into_body();
    let mut frames = Vec::new();
    let mut end = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => frames.push(frame.into_data().unwrap()),
            Err(err) => {
                end = Some(err);
                break;
            }
        }
    }
    Seen::Body { frames, end }
}

/// D5: a huge idle timeout saturates instead of overflowing `Instant + Duration`.
#[tokio::test(start_paused = true)]
async fn a_huge_idle_timeout_does_not_panic() {
    for timeout in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let layer = ClassifyDashScopeError::new().idle_timeout(timeout);
        let seen = send_with(
            layer,
            SSE,
            Request::new(Full::default()),
            ChunkedBody::new(split(NATIVE_OK, &[10, 400, 3000])),
        )
        .await;
        assert!(seen.error().is_none(), "{seen:?}");
        assert_eq!(seen.bytes(), NATIVE_OK.as_bytes());
    }
}

/// D6: one leading UTF-8 byte-order mark is stripped, as the SSE specification says, also when
/// it is split across chunks.
#[tokio::test]
async fn a_byte_order_mark_does_not_hide_the_first_event() {
    let compat_429 = "data: {\"error\":{\"message\":\"Requests rate limit exceeded, please try again later.\",\"type\":\"limit_requests\",\"code\":\"limit_requests\"},\"request_id\":\"r-bom\"}\n\n";
    for body in [NATIVE_429_FIRST, compat_429] {
        let body = format!("{BOM}{body}");
        for cut in 0..=4 {
            let seen = send(&body, &[cut]).await;
            let err = seen.call_error();
            assert!(
                matches!(err.class(), ErrorClass::RateLimited(_)),
                "cut {cut}: {err:?}"
            );
        }
        let cuts: Vec<usize> = (1..body.len()).collect();
        let seen = send(&body, &cuts).await;
        assert!(matches!(
            seen.call_error().class(),
            ErrorClass::RateLimited(_)
        ));
    }
    // A good stream with a BOM passes byte-identical, BOM included.
    let body = format!("{BOM}{COMPAT_OK}");
    let seen = send(&body, &[1, 2]).await;
    assert!(seen.error().is_none(), "{seen:?}");
    assert_eq!(seen.bytes(), body.as_bytes());
    // Only one BOM is stripped: a second one is part of the first line.
    let body = format!("{BOM}{BOM}{NATIVE_OK}");
    assert!(send(&body, &[]).await.error().is_none());
}

/// D7: a complete OpenAI Responses-API stream is not "truncated"; its own terminal and failure
/// events are understood.
#[tokio::test]
async fn responses_api_streams_end_with_their_own_terminal_events() {
    let seen = send(RESPONSES_OK, &[100, 101, 2000]).await;
    assert!(seen.error().is_none(), "{seen:?}");
    assert_eq!(seen.bytes(), RESPONSES_OK.as_bytes());
    // `response.incomplete` is a terminal event too.
    let incomplete = RESPONSES_OK.replace("response.completed\n", "response.incomplete\n");
    assert!(send(&incomplete, &[]).await.error().is_none());

    // Cut before `response.completed`: truncated.
    let truncated = &RESPONSES_OK[..RESPONSES_OK.find("event: response.completed").unwrap()];
    let seen = send(truncated, &[]).await;
    let err = seen.error().expect("truncation reported");
    assert_eq!(err.class(), ErrorClass::StreamInterrupted);
    assert_eq!(seen.bytes(), truncated.as_bytes());

    // `response.failed` is an error, with the code and message of `response.error`.
    let seen = send(RESPONSES_FAILED, &[]).await;
    let Seen::Body { frames, end } = &seen else {
        panic!("{seen:?}")
    };
    let err = end.as_ref().expect("response.failed is an error");
    assert_eq!(err.code(), Some("server_error"));
    assert_eq!(
        err.message(),
        Some("The model failed to generate a response.")
    );
    assert_eq!(err.class(), ErrorClass::ServerError);
    assert_eq!(frames.concat(), RESPONSES_FAILED.as_bytes());

    // The Responses API's `error` event before any output is the call's error.
    let error_first = "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Rate limit reached, please try again later.\",\"param\":null,\"sequence_number\":0}\n\n";
    let seen = send(error_first, &[]).await;
    assert_eq!(seen.call_error().code(), Some("rate_limit_exceeded"));

    // Split anywhere: the same answer.
    for body in [RESPONSES_OK, RESPONSES_FAILED] {
        let whole = send(body, &[]).await.error().map(DashScopeError::class);
        for cut in (0..=body.len()).step_by(7) {
            let seen = send(body, &[cut]).await;
            assert_eq!(seen.error().map(DashScopeError::class), whole, "cut {cut}");
        }
    }
}

/// D7: a stream of a kind the scanner does not know, that ends cleanly, passes.
#[tokio::test]
async fn streams_of_unknown_apis_that_end_cleanly_pass() {
    for body in [
        "data: hello\n\ndata: world\n\n",
        "event: progress\ndata: {\"percent\":50}\n\nevent: progress\ndata: {\"percent\":100}\n\n",
    ] {
        let seen = send(body, &[5]).await;
        assert!(seen.error().is_none(), "{body}: {seen:?}");
        assert_eq!(seen.bytes(), body.as_bytes());
    }
    // Chat streams are still checked (see truncated_streams_end_with_stream_interrupted), and
    // so is an Anthropic stream without `message_stop`.
    let cut = &ANTHROPIC_OK[..ANTHROPIC_OK.find("event: message_stop").unwrap()];
    let err = send(cut, &[]).await;
    assert_eq!(err.error().unwrap().class(), ErrorClass::StreamInterrupted);
}

/// A body of `empty` empty data frames, then `tail`'s chunks; counts the frames polled.
struct EmptyFramesThen {
    empty: usize,
    tail: ChunkedBody,
    polled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Body for EmptyFramesThen {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.polled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.empty > 0 {
            self.empty -= 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::new()))));
        }
        Pin::new(&mut self.tail).poll_frame(cx)
    }
}

fn sse_response<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", SSE.parse().unwrap());
    response
}

/// D9: empty frames count against the first-event hold, and the response future yields to the
/// executor instead of reading an endless run of ready frames in one poll.
#[test]
fn empty_frames_do_not_hold_the_response_or_monopolise_the_task() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let polled = Arc::new(AtomicUsize::new(0));
    let body = EmptyFramesThen {
        empty: 200_000,
        tail: ChunkedBody::new([NATIVE_429_FIRST]),
        polled: polled.clone(),
    };
    let response = std::sync::Mutex::new(Some(sse_response(body)));
    let client = service_fn(move |_req: Request<Full<Bytes>>| {
        let response = response.lock().unwrap().take().unwrap();
        async move { Ok::<_, BoxError>(response) }
    });
    let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(
        ClassifyDashScopeError::new()
            .layer(client)
            .oneshot(Request::new(Full::default()))
    );
    let mut polls = 0;
    let result = loop {
        polls += 1;
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(result) => break result,
            Poll::Pending => assert!(
                wakes.0.load(Ordering::SeqCst) >= polls,
                "a yield wakes the task itself"
            ),
        }
        assert!(polls < 1_000_000);
    };
    assert!(polls > 1, "the future yielded to the executor");
    // The 429 came after 200 000 empty frames: far past the frame limit, so the response was
    // handed out without reading them all.
    let response = result.expect("handed out at the frame limit");
    let at_hand_out = polled.load(Ordering::SeqCst);
    assert!(at_hand_out <= 10_000, "polled {at_hand_out} frames");
    // The error still arrives, through the body; the empty frames are not lost either.
    let mut body = response.into_body();
    let mut empty = 0;
    let err = block_on(async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => empty += 1,
                Some(Ok(_)) => {}
                Some(Err(err)) => break err,
                None => panic!("expected the 429"),
            }
        }
    });
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(empty > 190_000, "{empty}");
}

/// D12: a request that merely accepts event streams gets a response with no body, or one that
/// is not an event stream, untouched.
#[tokio::test]
async fn bodiless_and_non_sse_answers_to_stream_requests_pass_through() {
    let accept = || {
        Request::builder()
            .header("accept", "text/event-stream")
            .body(Full::default())
            .unwrap()
    };
    let sse_header = || {
        Request::builder()
            .header("X-DashScope-SSE", "enable")
            .body(Full::default())
            .unwrap()
    };
    for request in [accept(), sse_header()] {
        let mut response = Response::new(ChunkedBody::new(Vec::<Bytes>::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let seen = send_response(ClassifyDashScopeError::new(), request, response).await;
        assert!(seen.error().is_none(), "204: {seen:?}");
    }
    // A body that says it is empty.
    let empty = Response::new(Full::<Bytes>::default().map_err(|never| match never {}));
    let seen = send_response(ClassifyDashScopeError::new(), accept(), empty).await;
    assert!(seen.error().is_none(), "empty: {seen:?}");
    // Short non-SSE answers.
    for (content_type, body) in [
        ("application/json", "{\"ok\":true}"),
        ("application/json", "[1,2]"),
        ("text/plain", "OK"),
        ("text/plain", "  \n"),
        ("text/plain", ""),
    ] {
        for request in [accept(), sse_header()] {
            let seen = send_with(
                ClassifyDashScopeError::new(),
                content_type,
                request,
                ChunkedBody::new([body]),
            )
            .await;
            assert!(seen.error().is_none(), "{body:?}: {seen:?}");
            assert_eq!(seen.bytes(), body.as_bytes());
        }
    }
    // With a usage slot, the usage of a JSON answer is still read.
    let slot = UsageSlot::new();
    let mut request = accept();
    request.extensions_mut().insert(slot.clone());
    let json =
        r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
    let seen = send_with(
        ClassifyDashScopeError::new(),
        "application/json",
        request,
        ChunkedBody::new([json]),
    )
    .await;
    assert!(seen.error().is_none());
    assert_eq!(slot.get(), Some(Usage::new(5, 2)));
    // A response that *says* it is an event stream and sends no event is still interrupted.
    assert_eq!(
        send("", &[]).await.call_error().class(),
        ErrorClass::StreamInterrupted
    );
}

#[tokio::test]
async fn a_stream_error_takes_its_request_id_from_the_request_id_header_too() {
    // Anthropic's SDKs read `request-id`; an endpoint that sends only that header gives a
    // streamed error the same request id as an error response.
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"qwen-plus\"}}\n\n\
                  event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let client = service_fn(move |_req: Request<Full<Bytes>>| async move {
        let response = Response::builder()
            .header("content-type", SSE)
            .header("request-id", "anthropic-request-id")
            .body(Full::new(Bytes::from_static(stream.as_bytes())))
            .unwrap();
        Ok::<_, BoxError>(response)
    });
    let response = ClassifyDashScopeError::new()
        .layer(client)
        .oneshot(Request::new(Full::default()))
        .await
        .expect("the first event is no error");
    let mut body = response.into_body();
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(err)) => break err,
            None => panic!("the error event must end the body with an error"),
        }
    };
    assert_eq!(err.request_id(), Some("anthropic-request-id"));
}

/// A JSON answer read for its usage fails part-way the same way with and without an idle
/// timeout (the first is read in the body itself, the second with a timer): the bytes before,
/// then a typed error; the slot is complete and holds no usage.
#[tokio::test]
async fn a_json_body_read_for_usage_that_fails_part_way_ends_with_a_typed_error() {
    let json =
        r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
    let (head, _) = json.split_at(json.find("\"usage\"").unwrap());
    for layer in [
        ClassifyDashScopeError::new(),
        ClassifyDashScopeError::new().idle_timeout(std::time::Duration::from_secs(60)),
    ] {
        let slot = UsageSlot::new();
        let mut request = Request::new(Full::default());
        request.extensions_mut().insert(slot.clone());
        let body = ChunkedBody::new([head]).then_fail(std::io::ErrorKind::ConnectionReset);
        let seen = send_with(layer.clone(), "application/json", request, body).await;
        assert_eq!(seen.bytes(), head.as_bytes());
        assert_eq!(
            seen.error().unwrap().class(),
            ErrorClass::StreamInterrupted,
            "{layer:?}"
        );
        assert_eq!(slot.get(), None);
        assert!(slot.is_complete());

        // Read to its end, the same answer reports its usage.
        let slot = UsageSlot::new();
        let mut request = Request::new(Full::default());
        request.extensions_mut().insert(slot.clone());
        let seen = send_with(
            layer,
            "application/json",
            request,
            ChunkedBody::new(split(json, &[3, 40])),
        )
        .await;
        assert!(seen.error().is_none(), "{seen:?}");
        assert_eq!(seen.bytes(), json.as_bytes());
        assert_eq!(slot.get(), Some(Usage::new(5, 2)));
        assert!(slot.is_complete());
    }
}
