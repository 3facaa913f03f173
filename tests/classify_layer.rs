//! `ClassifyDashScopeError` as a layer: readiness, pass-through, transport errors, bounded reads.

mod common;

use std::io;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{ChunkedBody, CountingBody};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_dashscope::classify::{ResponseBody, classify_response};
use tower_dashscope::{
    BoxError, ClassifyDashScopeError, ClassifyDashScopeErrorService, ErrorClass,
};
use tower_test::mock;

type Req = Request<Full<Bytes>>;

fn assert_send_sync_static<T: Send + Sync + 'static>() {}

#[test]
fn services_and_futures_are_send_sync_static() {
    type Inner = tower::util::BoxCloneSyncService<Req, Response<Full<Bytes>>, BoxError>;
    assert_send_sync_static::<ClassifyDashScopeError>();
    assert_send_sync_static::<ClassifyDashScopeErrorService<Inner>>();
    assert_send_sync_static::<
        <ClassifyDashScopeErrorService<mock::Mock<Req, Response<Full<Bytes>>>> as Service<Req>>::Future,
    >();
    assert_send_sync_static::<ResponseBody<Full<Bytes>>>();
}

#[tokio::test]
async fn forwards_readiness_and_requests_unchanged() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(ClassifyDashScopeError::new());

    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());

    let request = Request::post("/compatible-mode/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"qwen-plus\"}")))
        .unwrap();
    let response = service.call(request);
    let (received, send) = handle.next_request().await.unwrap();
    assert_eq!(
        received.uri().path(),
        "/compatible-mode/v1/chat/completions"
    );
    assert_eq!(received.headers()["authorization"], "Bearer sk-test");
    let body = received.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"model\":\"qwen-plus\"}");
    send.send_response(common::response(
        200,
        &[("x-request-id", "r-1")],
        "{\"ok\":true}",
    ));

    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "r-1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{\"ok\":true}");
}

#[tokio::test]
async fn readiness_errors_are_classified() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(ClassifyDashScopeError::new());
    handle.send_error(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
    let err = service.poll_ready().map(|r| r.unwrap_err());
    let std::task::Poll::Ready(err) = err else {
        panic!("expected ready");
    };
    assert_eq!(err.class(), ErrorClass::Connection);
}

#[tokio::test]
async fn transport_errors_are_classified() {
    for (kind, class) in [
        (io::ErrorKind::ConnectionRefused, ErrorClass::Connection),
        (io::ErrorKind::ConnectionReset, ErrorClass::Connection),
        (io::ErrorKind::TimedOut, ErrorClass::Timeout),
    ] {
        let (mut service, mut handle) =
            mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(ClassifyDashScopeError::new());
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let response = service.call(Request::new(Full::default()));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(io::Error::new(kind, "transport"));
        let err = response.await.unwrap_err();
        assert_eq!(err.class(), class, "{kind:?}");
        assert!(err.status().is_none());
        assert!(std::error::Error::source(&err).is_some());
    }
}

#[tokio::test]
async fn tower_timeout_below_is_a_timeout() {
    tokio::time::pause();
    let slow = service_fn(|_req: Req| async {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
    });
    let service = tower::ServiceBuilder::new()
        .layer(ClassifyDashScopeError::new())
        .timeout(std::time::Duration::from_secs(1))
        .service(slow);
    let err = service
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn success_bodies_pass_through_frame_by_frame() {
    let chunks = ["data: {\"a\"", ":1}\n\n", "", "data: [DONE]\n\n"];
    let client = service_fn(move |_req: Req| async move {
        let mut response = Response::new(ChunkedBody::new(
            chunks.map(|c| Bytes::from_static(c.as_bytes())),
        ));
        response
            .headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        Ok::<_, BoxError>(response)
    });
    let response = ClassifyDashScopeError::new()
        .layer(client)
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        frames.push(frame.unwrap().into_data().unwrap());
    }
    let expected: Vec<Bytes> = chunks
        .iter()
        .map(|c| Bytes::from_static(c.as_bytes()))
        .collect();
    assert_eq!(frames, expected);
}

#[tokio::test]
async fn a_body_that_fails_midway_is_stream_interrupted() {
    for (kind, class) in [
        (
            io::ErrorKind::ConnectionReset,
            ErrorClass::StreamInterrupted,
        ),
        (io::ErrorKind::TimedOut, ErrorClass::Timeout),
    ] {
        let client = service_fn(move |_req: Req| async move {
            let body = ChunkedBody::new(["partial output"]).then_fail(kind);
            Ok::<_, BoxError>(Response::new(body))
        });
        let response = ClassifyDashScopeError::new()
            .layer(client)
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"partial output");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.class(), class, "{kind:?}");
    }
}

#[tokio::test]
async fn an_error_body_that_fails_is_classified_from_what_arrived() {
    let client = service_fn(|_req: Req| async {
        let body = ChunkedBody::new([
            r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}"#,
        ])
        .then_fail(io::ErrorKind::ConnectionReset);
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        Ok::<_, BoxError>(response)
    });
    let err = ClassifyDashScopeError::new()
        .layer(client)
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("Throttling.RateQuota"));
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "body failed"
    );
}

/// Sends one error response whose body is a `CountingBody`, returning how many bytes were polled.
async fn bytes_polled(
    status: u16,
    total: usize,
    chunk: usize,
    limit: usize,
) -> (usize, tower_dashscope::DashScopeError) {
    let (body, polled) = CountingBody::new(total, chunk);
    let body = std::sync::Mutex::new(Some(body));
    let client = service_fn(move |_req: Req| {
        let body = body.lock().unwrap().take().unwrap();
        async move {
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, BoxError>(response)
        }
    });
    let err = ClassifyDashScopeError::new()
        .error_body_limit(limit)
        .layer(client)
        .oneshot(Request::new(Full::default()))
        .await
        .unwrap_err();
    (polled.load(Ordering::SeqCst), err)
}

#[tokio::test]
async fn a_100_mib_error_body_costs_at_most_the_bound() {
    let (polled, err) = bytes_polled(503, 100 * 1024 * 1024, 8 * 1024, 64 * 1024).await;
    assert_eq!(polled, 64 * 1024);
    assert_eq!(err.class(), ErrorClass::Unavailable);

    let (polled, err) = bytes_polled(500, 100 * 1024 * 1024, 8 * 1024, 0).await;
    assert_eq!(polled, 0, "a zero limit reads nothing");
    assert_eq!(err.class(), ErrorClass::ServerError);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]

    #[test]
    fn error_bodies_are_never_read_past_the_bound(
        total in 0usize..200_000,
        chunk in 1usize..20_000,
        limit in 0usize..100_000,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (polled, _) = rt.block_on(bytes_polled(500, total, chunk, limit));
        // The frame that crosses the bound is the last one polled.
        let bound = if limit == 0 { 0 } else { limit + chunk - 1 };
        prop_assert!(polled <= bound.min(total), "polled {} of {} (limit {}, chunk {})", polled, total, limit, chunk);
        prop_assert!(polled >= limit.min(total));
    }

    #[test]
    fn arbitrary_error_bodies_never_panic(
        status in 300u16..600,
        body in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let err = classify_response(status, &http::HeaderMap::new(), &body);
        // A body can only name a status through an SSE `:HTTP_STATUS/` line.
        if !body.windows(12).any(|w| w == b"HTTP_STATUS/") {
            prop_assert_eq!(err.status(), Some(status));
        }
        prop_assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn arbitrary_sse_and_json_looking_bodies_never_panic(
        status in 400u16..600,
        prefix in prop_oneof![Just("id:1\nevent:error\n:HTTP_STATUS/"), Just("{\"error\":"), Just("data: "), Just("{\"code\":")],
        rest in "\\PC{0,300}",
    ) {
        let body = format!("{prefix}{rest}");
        let status = StatusCode::from_u16(status).unwrap();
        let _ = classify_response(status, &http::HeaderMap::new(), body.as_bytes());
    }
}

// ---- Regression tests: error bodies bounded in time (D8) and in frames (D9) ----

/// A body that yields each chunk after its delay (paused-time friendly), then, if `stall`, never
/// anything again.
struct TimedBody {
    steps: std::collections::VecDeque<(std::time::Duration, Bytes)>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    stall: bool,
}

impl TimedBody {
    fn new(steps: &[(u64, &'static str)], stall: bool) -> Self {
        TimedBody {
            steps: steps
                .iter()
                .map(|&(secs, chunk)| {
                    (
                        std::time::Duration::from_secs(secs),
                        Bytes::from_static(chunk.as_bytes()),
                    )
                })
                .collect(),
            sleep: None,
            stall,
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        use std::task::Poll;
        let Some(&(delay, _)) = self.steps.front() else {
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        std::task::ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        let (_, chunk) = self.steps.pop_front().unwrap();
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

async fn classify_error_body<B>(
    layer: ClassifyDashScopeError,
    status: u16,
    body: B,
) -> tower_dashscope::DashScopeError
where
    B: http_body::Body<Data = Bytes, Error = io::Error> + Send + 'static,
{
    let body = std::sync::Mutex::new(Some(body));
    let client = service_fn(move |_req: Req| {
        let body = body.lock().unwrap().take().unwrap();
        async move {
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, BoxError>(response)
        }
    });
    let call = layer.layer(client).oneshot(Request::new(Full::default()));
    // Paused time: a call that would hang forever fails here instead.
    tokio::time::timeout(std::time::Duration::from_secs(24 * 3600), call)
        .await
        .expect("the error body read must end")
        .unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_error_body_is_classified_from_what_arrived() {
    use std::time::Duration;
    let json = r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later.","request_id":"r-stall"}"#;

    // The whole JSON arrived, the body never ends: the default 10 s bound.
    let start = tokio::time::Instant::now();
    let err = classify_error_body(
        ClassifyDashScopeError::new(),
        429,
        TimedBody::new(&[(0, json)], true),
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(
        err.class(),
        ErrorClass::RateLimited(tower_dashscope::RateLimitKind::Requests)
    );
    assert_eq!(err.code(), Some("Throttling.RateQuota"));
    assert_eq!(err.request_id(), Some("r-stall"));
    assert!(err.is_retryable());
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("error_body_timeout"), "{source}");

    // Half a JSON, then a stall: classified from the status, after the configured bound.
    let start = tokio::time::Instant::now();
    let err = classify_error_body(
        ClassifyDashScopeError::new().error_body_timeout(Duration::from_secs(2)),
        503,
        TimedBody::new(&[(0, &json[..20])], true),
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));

    // Nothing at all after the headers.
    let err = classify_error_body(
        ClassifyDashScopeError::new(),
        500,
        TimedBody::new(&[], true),
    )
    .await;
    assert_eq!(err.class(), ErrorClass::ServerError);
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_bounds_the_wait_between_error_body_frames() {
    use std::time::Duration;
    let layer = ClassifyDashScopeError::new()
        .idle_timeout(Duration::from_secs(5))
        .error_body_timeout(Duration::from_secs(60));
    let start = tokio::time::Instant::now();
    let err = classify_error_body(
        layer.clone(),
        429,
        TimedBody::new(
            &[
                (1, r#"{"code":"Throttling.RateQuota","#),
                (3, r#""message":"Requests rate limit exceeded"}"#),
            ],
            true,
        ),
    )
    .await;
    // 1 s + 3 s of frames, then 5 s idle.
    assert_eq!(start.elapsed(), Duration::from_secs(9));
    assert_eq!(err.code(), Some("Throttling.RateQuota"));

    // A slow body that does end is read whole.
    let start = tokio::time::Instant::now();
    let err = classify_error_body(
        layer,
        429,
        TimedBody::new(
            &[
                (4, r#"{"code":"Throttling.RateQuota","#),
                (4, r#""message":"Requests rate limit exceeded"}"#),
            ],
            false,
        ),
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_secs(8));
    assert_eq!(err.message(), Some("Requests rate limit exceeded"));

    // Timeouts too long to add to an instant never fire, and never panic.
    let err = classify_error_body(
        ClassifyDashScopeError::new()
            .idle_timeout(Duration::MAX)
            .error_body_timeout(Duration::MAX),
        429,
        TimedBody::new(&[(1, r#"{"code":"Throttling.RateQuota"}"#)], false),
    )
    .await;
    assert_eq!(err.code(), Some("Throttling.RateQuota"));
}

/// A body of `empty` empty frames, then one JSON chunk; counts the frames polled.
struct EmptyFramesThenJson {
    empty: usize,
    json: Option<Bytes>,
    polled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl http_body::Body for EmptyFramesThenJson {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        if self.empty > 0 {
            self.empty -= 1;
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::new()))));
        }
        std::task::Poll::Ready(
            self.json
                .take()
                .map(|json| Ok(http_body::Frame::data(json))),
        )
    }
}

#[test]
fn an_error_body_of_endless_empty_frames_is_bounded_and_yields() {
    let polled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = EmptyFramesThenJson {
        empty: 1_000_000,
        json: Some(Bytes::from_static(
            br#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}"#,
        )),
        polled: polled.clone(),
    };
    let body = std::sync::Mutex::new(Some(body));
    let client = service_fn(move |_req: Req| {
        let body = body.lock().unwrap().take().unwrap();
        async move {
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            Ok::<_, BoxError>(response)
        }
    });
    let mut task = tokio_test::task::spawn(
        ClassifyDashScopeError::new()
            .layer(client)
            .oneshot(Request::new(Full::default())),
    );
    let mut polls = 0;
    let err = loop {
        polls += 1;
        match task.poll() {
            std::task::Poll::Ready(result) => break result.unwrap_err(),
            std::task::Poll::Pending => assert!(task.is_woken(), "a yield wakes the task"),
        }
        assert!(polls < 1_000_000);
    };
    assert!(polls > 1, "the future yielded to the executor");
    // Classified from the status alone, without reading a million frames.
    assert_eq!(
        err.class(),
        ErrorClass::from_status(StatusCode::TOO_MANY_REQUESTS)
    );
    assert!(err.code().is_none());
    let polled = polled.load(Ordering::SeqCst);
    assert!(polled <= 10_000, "polled {polled} frames");
}
