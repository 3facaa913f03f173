//! `RetryWithJitter`: what is retried, how long it waits, deadline, budget, readiness, replay.
//! All in paused time with seeded jitter.

mod common;
#[path = "../examples/support/open_loop.rs"]
mod open_loop;
#[path = "../examples/support/tenacity.rs"]
mod tenacity;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_dashscope::retry::Jitter;
use tower_dashscope::{
    Attempts, BoxError, ClassifyDashScopeError, DashScopeError, ErrorClass, RateLimitKind,
    RetryWithJitter, RetryWithJitterService,
};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// One scripted answer: status, headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

/// A scripted server: answers with the script's statuses in order (the last one repeats),
/// recording when each call arrived. Panics when called without a successful `poll_ready` on
/// the same clone, the bug tower's docs warn about.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Answer>>,
    calls: Arc<Mutex<Vec<Instant>>>,
    ready: bool,
}

impl Scripted {
    fn new(script: Vec<Answer>) -> Self {
        Scripted {
            script: Arc::new(script),
            calls: Arc::default(),
            ready: false,
        }
    }

    fn statuses(statuses: &[u16]) -> Self {
        Scripted::new(statuses.iter().map(|&s| (s, vec![], "")).collect())
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls.lock().unwrap();
        calls.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Service<Req> for Scripted {
    type Response = Res;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        assert!(self.ready, "called without poll_ready on this clone");
        self.ready = false;
        // The replayed request is the original.
        assert_eq!(req.headers()["x-test"], "kept");
        let mut calls = self.calls.lock().unwrap();
        calls.push(Instant::now());
        let (status, headers, body) =
            self.script[(calls.len() - 1).min(self.script.len() - 1)].clone();
        std::future::ready(Ok(common::response(status, &headers, body)))
    }
}

fn request() -> Req {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("x-test", "kept")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"qwen-plus\"}")))
        .unwrap()
}

fn seeded() -> RetryWithJitter {
    RetryWithJitter::new().seed(7)
}

#[tokio::test(start_paused = true)]
async fn exact_delays_for_a_seed_within_the_exponential_caps() {
    let run = |seed| async move {
        let server = Scripted::statuses(&[503]);
        let service = RetryWithJitter::new().seed(seed).layer(server.clone());
        let response = service.oneshot(request()).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "the last response, unchanged"
        );
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(6)));
        server.gaps()
    };
    let gaps = run(7).await;
    assert_eq!(gaps.len(), 5, "6 attempts");
    for (n, gap) in gaps.iter().enumerate() {
        let cap = Duration::from_secs(1 << n);
        assert!(*gap <= cap, "retry {n}: {gap:?} > {cap:?}");
    }
    assert_eq!(run(7).await, gaps, "same seed, same delays");
    assert_ne!(run(8).await, gaps, "another seed, other delays");
}

#[tokio::test(start_paused = true)]
async fn retry_after_float_seconds_and_milliseconds_are_respected() {
    for header in [("retry-after", "0.35"), ("retry-after-ms", "350")] {
        let server = Scripted::new(vec![(429, vec![header], ""), (200, vec![], "ok")]);
        // A base delay far larger than the server's request shows which one was used.
        let service = seeded()
            .base_delay(Duration::from_secs(30))
            .layer(server.clone());
        let response = service.oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
        let gap = server.gaps()[0];
        assert!(
            gap >= Duration::from_millis(350) && gap <= Duration::from_millis(385),
            "{header:?}: {gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_maximum_is_returned_at_once() {
    let server = Scripted::new(vec![(429, vec![("retry-after", "600")], "")]);
    let service = seeded().layer(ClassifyDashScopeError::new().layer(server.clone()));
    let err = service.oneshot(request()).await.unwrap_err();
    assert_eq!(server.call_count(), 1);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
    assert_eq!(err.attempts(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn fatal_classes_are_sent_once() {
    for (status, body) in [
        (
            400,
            r#"{"code":"InvalidParameter","message":"Range of input length should be [1, 6000]"}"#,
        ),
        (
            401,
            r#"{"code":"InvalidApiKey","message":"Invalid API-key provided."}"#,
        ),
        (
            400,
            r#"{"code":"DataInspectionFailed","message":"Input data may contain inappropriate content."}"#,
        ),
        (
            429,
            r#"{"code":"Throttling.AllocationQuota","message":"Free allocated quota exceeded."}"#,
        ),
        (
            404,
            r#"{"code":"ModelNotFound","message":"Model can not be found."}"#,
        ),
    ] {
        let server = Scripted::new(vec![(status, vec![], body)]);
        let service = seeded().layer(ClassifyDashScopeError::new().layer(server.clone()));
        let err = service.oneshot(request()).await.unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(server.call_count(), 1, "{body}");
        assert_eq!(err.attempts(), Some(1));
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_classes_are_retried_over_the_classifier() {
    let throttled = r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}"#;
    let server = Scripted::new(vec![
        (429, vec![], throttled),
        (500, vec![], "{}"),
        (200, vec![], "fine"),
    ]);
    let service = ServiceBuilder::new()
        .layer(seeded())
        .layer(ClassifyDashScopeError::new())
        .service(server.clone());
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"fine");

    // Giving up returns the last error with its attempt count.
    let server = Scripted::new(vec![(429, vec![], throttled)]);
    let service = seeded()
        .max_attempts(3)
        .layer(ClassifyDashScopeError::new().layer(server.clone()));
    let err = service.oneshot(request()).await.unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::RateLimited(RateLimitKind::Requests)
    );
    assert_eq!(err.attempts(), Some(3));
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert_eq!(server.call_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn without_a_classifier_statuses_decide() {
    for (status, retried) in [
        (408, true),
        (429, true),
        (500, true),
        (502, true),
        (503, true),
        (504, true),
        (400, false),
        (401, false),
        (404, false),
        (501, false),
    ] {
        let server = Scripted::statuses(&[status, 200]);
        let response = seeded()
            .layer(server.clone())
            .oneshot(request())
            .await
            .unwrap();
        let expected = if retried {
            StatusCode::OK
        } else {
            StatusCode::from_u16(status).unwrap()
        };
        assert_eq!(response.status(), expected, "{status}");
        assert_eq!(server.call_count(), if retried { 2 } else { 1 }, "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = tower::service_fn(move |_req: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err(BoxError::from(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                )))
            } else {
                Ok(Response::new(Full::<Bytes>::default()))
            }
        }
    });
    let response = seeded().layer(flaky).oneshot(request()).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_whole_call() {
    let server = Scripted::statuses(&[503]);
    let start = Instant::now();
    let service = seeded()
        .max_attempts(100)
        .base_delay(Duration::from_secs(2))
        .max_delay(Duration::from_secs(2))
        .jitter(Jitter::Decorrelated)
        .deadline(Duration::from_secs(7))
        .layer(server.clone());
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Decorrelated jitter with base = max = 2 s waits exactly 2 s: attempts at 0, 2, 4, 6.
    assert_eq!(server.call_count(), 4);
    assert!(start.elapsed() <= Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_amplification_during_a_total_outage() {
    async fn attempts_per_request(layer: RetryWithJitter, requests: usize) -> f64 {
        let server = Scripted::statuses(&[503]);
        let service = layer.layer(server.clone());
        let mut tasks = Vec::new();
        for _ in 0..requests {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                service.oneshot(request()).await.unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(
                task.await.unwrap().status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        server.call_count() as f64 / requests as f64
    }
    let with_budget = attempts_per_request(seeded(), 1000).await;
    // 20% of 1000 requests plus the floor's reserve of 100 retries: about 1.3 at most.
    assert!(with_budget <= 1.35, "{with_budget}");
    assert!(
        with_budget > 1.0,
        "some retries still happen: {with_budget}"
    );
    // Without a budget, every request makes all six attempts.
    let unbounded = attempts_per_request(seeded().without_budget(), 200).await;
    assert_eq!(unbounded, 6.0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_mid_wait_stops_all_attempts() {
    let server = Scripted::statuses(&[503]);
    let service = seeded().layer(server.clone());
    let call = tokio::spawn(service.oneshot(request()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(server.call_count(), 1);
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(server.call_count(), 1, "no attempt after the caller left");
}

#[tokio::test(start_paused = true)]
async fn bodies_that_cannot_be_replayed_are_sent_once() {
    type Boxed = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let server = tower::service_fn(move |_req: Request<Boxed>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(common::response(503, &[], "")) }
    });
    let request = Request::new(Full::new(Bytes::from_static(b"stream")).boxed());
    let response = seeded().layer(server).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn foreign_bodies_pass_through_send_once_and_either_replays() {
    use tower_dashscope::retry::SendOnce;

    // The test suite's own body type stands in for another crate's (hyper's `Incoming`): it has
    // no `ReplayBody`.
    use common::ChunkedBody;

    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let server = tower::service_fn(move |req: Request<SendOnce<ChunkedBody>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            // The body arrives whole through the wrapper.
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, Bytes::from_static(b"payload"));
            Ok::<_, BoxError>(common::response(503, &[], ""))
        }
    });
    let request = Request::new(SendOnce::new(ChunkedBody::new(["pay", "load"])));
    let response = seeded().layer(server).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once, not retried");

    type Mixed = http_body_util::Either<Full<Bytes>, String>;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let server = tower::service_fn(move |_req: Request<Mixed>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(common::response(503, &[], "")) }
    });
    let request = Request::new(Mixed::Right("{}".to_owned()));
    let response = seeded()
        .max_attempts(3)
        .layer(server)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "Either of replayable bodies is replayed"
    );
}

/// A service that is ready once, then fails readiness with "connection pool closed"; its one
/// call fails with `answer`.
#[derive(Clone)]
struct BreaksAfterFirst<F>(Arc<AtomicU32>, F);

impl<F, T> Service<Req> for BreaksAfterFirst<F>
where
    F: Fn() -> Result<Response<T>, BoxError>,
{
    type Response = Response<T>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<T>, BoxError>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err("connection pool closed".into()))
        }
    }
    fn call(&mut self, _req: Req) -> Self::Future {
        std::future::ready((self.1)())
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_errors_before_a_retry_return_the_last_failure() {
    // Over a classifier: the typed error, its code and request id kept.
    let typed = || -> Result<Res, BoxError> {
        Err(DashScopeError::new(ErrorClass::Unavailable)
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_code("ModelUnavailable")
            .with_request_id("req-1")
            .into())
    };
    let err = seeded()
        .layer(BreaksAfterFirst(Arc::default(), typed))
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.code(), Some("ModelUnavailable"));
    assert_eq!(err.request_id(), Some("req-1"));
    assert_eq!(err.attempts(), Some(1));
    let mut chain = Vec::new();
    let mut next = std::error::Error::source(&err);
    while let Some(source) = next {
        chain.push(source.to_string());
        next = source.source();
    }
    assert!(
        chain.iter().any(|s| s.contains("connection pool closed")),
        "the readiness error is the source: {chain:?}"
    );

    // Without one: the dropped response's status and request id, as a typed error.
    let bare = || Ok(common::response(503, &[("x-request-id", "req-2")], ""));
    let err = seeded()
        .layer(BreaksAfterFirst(Arc::default(), bare))
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.request_id(), Some("req-2"));
    assert_eq!(err.attempts(), Some(1));
}

/// D1: a caller that leaves while a retry waits (a timeout around the call) gets the retry it
/// withdrew refunded; it sent nothing.
#[tokio::test(start_paused = true)]
async fn the_budget_is_refunded_for_retries_never_sent() {
    let server = Scripted::new(vec![(503, vec![("retry-after", "1")], "")]);
    // Each request adds one retry to the budget (for 10 s), and there is no reserve.
    let service = seeded().budget(0, 1.0).layer(server.clone());
    for _ in 0..5 {
        let call = tokio::time::timeout(
            Duration::from_millis(100),
            service.clone().oneshot(request()),
        );
        assert!(call.await.is_err(), "timed out during the 1 s wait");
    }
    assert_eq!(server.call_count(), 5, "no retry was sent");
    // The five retries withdrawn and never sent are back: this call gets all five of its own.
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(6)));
}

/// D2: `Retry-After: 0`, `retry-after-ms: 0` or a date in the past is no hint: the normal,
/// jittered backoff spreads the attempts out instead of six at once.
#[tokio::test(start_paused = true)]
async fn a_zero_or_past_retry_after_is_no_hint() {
    for header in [
        ("retry-after", "0"),
        ("retry-after-ms", "0"),
        ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ] {
        let server = Scripted::new(vec![(503, vec![header], "")]);
        let response = seeded()
            .layer(server.clone())
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(6)));
        let gaps = server.gaps();
        assert!(
            gaps.iter().all(|gap| !gap.is_zero()),
            "{header:?}: {gaps:?}"
        );
        for (n, gap) in gaps.iter().enumerate() {
            assert!(*gap <= Duration::from_secs(1 << n), "{header:?}: {gaps:?}");
        }
    }
}

/// D3: a retry waiting for the inner service's readiness gives up at the deadline, with the
/// last failure.
#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_retry_waiting_for_readiness() {
    /// Ready once, then never again (and never wakes the task).
    #[derive(Clone)]
    struct Stuck(Arc<AtomicU32>);
    impl Service<Req> for Stuck {
        type Response = Res;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Res, BoxError>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn call(&mut self, _req: Req) -> Self::Future {
            std::future::ready(Ok(common::response(503, &[("x-request-id", "req-3")], "")))
        }
    }
    let start = Instant::now();
    let service = seeded()
        .deadline(Duration::from_secs(10))
        .layer(Stuck(Arc::default()));
    let outcome = tokio::time::timeout(Duration::from_secs(600), service.oneshot(request())).await;
    let err = outcome.expect("the call ends at its deadline").unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.request_id(), Some("req-3"));
    assert_eq!(err.attempts(), Some(1));
    assert!(
        start.elapsed() < Duration::from_secs(11),
        "{:?}",
        start.elapsed()
    );
}

/// D4: a typed retry-after at `Duration::MAX` (allowed by `max_retry_after`) plus jitter does
/// not overflow.
#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_does_not_overflow() {
    let server = tower::service_fn(|_req: Req| async {
        Err::<Res, BoxError>(
            DashScopeError::new(ErrorClass::Unavailable)
                .with_retry_after(Duration::MAX)
                .into(),
        )
    });
    let err = seeded()
        .max_retry_after(Duration::MAX)
        .deadline(Duration::from_secs(10))
        .layer(server)
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::MAX));
    assert_eq!(
        err.attempts(),
        Some(1),
        "the wait would end after the deadline"
    );
}

/// A retryable `Ok` response dropped for a retry is read to its end (up to 64 KiB) while the
/// backoff runs, so that its connection can be reused.
#[tokio::test(start_paused = true)]
async fn responses_dropped_for_a_retry_are_drained() {
    use common::CountingBody;

    for (size, expected) in [(10 * 1024, 10 * 1024), (1024 * 1024, 64 * 1024)] {
        let polled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = Arc::new(AtomicU32::new(0));
        let (counter, seen) = (calls.clone(), polled.clone());
        let server = tower::service_fn(move |_req: Req| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (mut body, _) = CountingBody::new(if n == 0 { size } else { 2 }, 1024);
            body.polled = seen.clone();
            let mut response = Response::new(body);
            if n == 0 {
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            async move { Ok::<_, BoxError>(response) }
        });
        let response = seeded().layer(server).oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            polled.load(Ordering::SeqCst),
            expected,
            "{size}-byte body: drained up to 64 KiB, the answer untouched"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_501_is_not_retried_with_or_without_a_classifier() {
    let server = Scripted::statuses(&[501, 200]);
    let response = seeded()
        .layer(server.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(server.call_count(), 1);

    let server = Scripted::new(vec![
        (
            501,
            vec![],
            r#"{"code":"NotImplemented","message":"Not implemented."}"#,
        ),
        (200, vec![], ""),
    ]);
    let err = seeded()
        .layer(ClassifyDashScopeError::new().layer(server.clone()))
        .oneshot(request())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_IMPLEMENTED));
    assert!(!err.is_retryable());
    assert_eq!(server.call_count(), 1);
}

/// `seed` keeps the budget configured (and shared) before it.
#[tokio::test(start_paused = true)]
async fn seed_keeps_the_budget() {
    let layer = RetryWithJitter::new().budget(0, 1.0);
    let reseeded = layer.clone().seed(9);
    let healthy = Scripted::statuses(&[200]);
    for _ in 0..5 {
        layer
            .layer(healthy.clone())
            .oneshot(request())
            .await
            .unwrap();
    }
    // Five requests through `layer` and this one: six retries' worth in the shared budget.
    let down = Scripted::statuses(&[503]);
    let response = reseeded.layer(down).oneshot(request()).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(6)));
}

/// A total outage of 429s (nothing ever succeeds) is bounded by the budget like one of 503s:
/// only a live server's rate limits go through the throttle instead.
#[tokio::test(start_paused = true)]
async fn an_outage_of_429s_is_bounded_by_the_budget() {
    let server = Scripted::statuses(&[429]);
    let service = seeded().layer(server.clone());
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(service.clone().oneshot(request())))
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let per_request = server.call_count() as f64 / 1000.0;
    assert!(per_request <= 1.35, "{per_request}");
}

#[test]
fn layer_service_and_future_are_send_sync_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<RetryWithJitter>();
    assert_send_sync_static::<RetryWithJitterService<Scripted>>();
    assert_send_sync_static::<<RetryWithJitterService<Scripted> as Service<Req>>::Future>();
}

#[test]
fn zero_attempts_means_one() {
    let debug = format!(
        "{:?}",
        RetryWithJitter::new().max_attempts(0).budget(1, f32::NAN)
    );
    assert!(debug.contains("max_attempts: 1"), "{debug}");
    assert!(debug.contains("retry_ratio: 0.0"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn with_tower_test_a_retry_waits_for_readiness() {
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower_test::mock;

    let (mut service, mut handle) =
        mock::spawn_layer::<Req, Res, _>(seeded().base_delay(Duration::from_millis(10)));
    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());

    let call = tokio::spawn(service.call(request()));
    let (first, send) = handle.next_request().await.unwrap();
    assert_eq!(first.headers()["x-test"], "kept");
    send.send_response(common::response(503, &[], ""));

    // The backoff passes, but the inner service is not ready: no second call is made.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!call.is_finished());
    handle.allow(1);
    let (second, send) = handle.next_request().await.unwrap();
    assert_eq!(second.uri(), first.uri());
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        b"{\"model\":\"qwen-plus\"}",
        "the body is replayed"
    );
    send.send_response(common::response(200, &[], "ok"));

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
}

/// The scenario of `examples/retry_vs_recipe.rs`, smaller: a live server that rate-limits (the
/// simulator's `qwen-plus` at 60 requests per minute, answers taking 2.7 s), 60 requests arriving
/// at 2 per second. Alibaba's recipe (6 attempts, tenacity's `wait_random_exponential(min=1,
/// max=60)`) against `RetryWithJitter` with its defaults: counts, not times.
mod throttled_server {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use tower_dashscope::mock::{MockDashScope, ModelConfig};

    const REQUESTS: u32 = 60;

    fn chat() -> Req {
        Request::post("/compatible-mode/v1/chat/completions")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"qwen-plus","messages":[{"role":"user","content":"Hello"}]}"#,
            )))
            .unwrap()
    }

    fn simulator() -> MockDashScope {
        MockDashScope::builder()
            .model(
                "qwen-plus",
                ModelConfig::new()
                    .rpm(60)
                    .latency(Duration::from_millis(700), 8.0),
            )
            .build()
    }

    /// Requests completed, and attempts the server saw.
    async fn run<F, Fut>(mock: &MockDashScope, one: F) -> (u32, u64)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let completed = open_loop::open_loop(REQUESTS, Duration::from_millis(500), one).await;
        (completed, mock.stats().total().requests)
    }

    async fn recipe(seed: u64) -> (u32, u64) {
        let mock = simulator();
        let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
        run(&mock, || {
            let (mock, rng) = (mock.clone(), rng.clone());
            async move {
                for attempt in 1..=tenacity::ATTEMPTS {
                    let response = mock.clone().oneshot(chat()).await.unwrap();
                    if response.status().is_success() {
                        return true;
                    }
                    if attempt < tenacity::ATTEMPTS {
                        let wait = tenacity::wait(attempt, &mut *rng.lock().unwrap());
                        tokio::time::sleep(wait).await;
                    }
                }
                false
            }
        })
        .await
    }

    async fn layer(seed: u64) -> (u32, u64) {
        let mock = simulator();
        let service = RetryWithJitter::new().seed(seed).layer(mock.clone());
        run(&mock, || {
            let service = service.clone();
            async move {
                let response = service.oneshot(chat()).await;
                response.is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn retry_alone_completes_more_than_the_recipe_with_fewer_attempts() {
        for seed in 1..=3 {
            let (recipe_done, recipe_attempts) = recipe(seed).await;
            let (done, attempts) = layer(seed).await;
            assert!(
                done >= recipe_done && attempts < recipe_attempts,
                "seed {seed}: RetryWithJitter completed {done} of {REQUESTS} in {attempts} \
                 attempts, the recipe {recipe_done} in {recipe_attempts}"
            );
        }
    }
}

// The API the layer opened: `retry_if` and the `Budget` trait.

#[tokio::test(start_paused = true)]
async fn retry_if_decides_what_is_retried() {
    use tower_dashscope::retry::Failure;

    // A 501 retried by choice.
    let server = Scripted::statuses(&[501, 200]);
    let response = seeded()
        .retry_if(|f: &Failure| f.status() == Some(StatusCode::NOT_IMPLEMENTED))
        .layer(server.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.call_count(), 2);

    // A 503 not retried by choice.
    let server = Scripted::statuses(&[503, 200]);
    let response = seeded()
        .retry_if(|f: &Failure| f.class() != ErrorClass::Unavailable && f.is_retryable())
        .layer(server.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.call_count(), 1);
}

/// A budget that counts what the layer asks of it and grants `retries` retries.
#[derive(Debug, Default)]
struct Counting {
    deposits: AtomicU32,
    withdrawals: AtomicU32,
    refunds: AtomicU32,
    retries: AtomicU32,
}

impl tower_dashscope::retry::Budget for Counting {
    fn deposit(&self) {
        self.deposits.fetch_add(1, Ordering::SeqCst);
    }
    fn withdraw(&self) -> bool {
        self.withdrawals.fetch_add(1, Ordering::SeqCst);
        self.retries
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
    fn refund(&self) {
        self.refunds.fetch_add(1, Ordering::SeqCst);
        self.retries.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_plugged_budget_is_asked_and_refunded_and_survives_seed() {
    let budget = Arc::new(Counting {
        retries: AtomicU32::new(2),
        ..Counting::default()
    });
    let layer = RetryWithJitter::new().budget_with(budget.clone()).seed(3);
    let server = Scripted::new(vec![(503, vec![("retry-after", "1")], "")]);

    // Two retries granted, the third refused: three attempts.
    let response = layer
        .layer(server.clone())
        .oneshot(request())
        .await
        .unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(budget.deposits.load(Ordering::SeqCst), 1);
    assert_eq!(budget.withdrawals.load(Ordering::SeqCst), 3);
    assert_eq!(budget.refunds.load(Ordering::SeqCst), 0);

    // A caller leaving during the wait gets its retry refunded.
    budget.retries.store(1, Ordering::SeqCst);
    let call = tokio::time::timeout(
        Duration::from_millis(100),
        layer.layer(server.clone()).oneshot(request()),
    );
    assert!(call.await.is_err());
    assert_eq!(budget.refunds.load(Ordering::SeqCst), 1);
    assert_eq!(budget.retries.load(Ordering::SeqCst), 1);
}
