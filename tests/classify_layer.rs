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
