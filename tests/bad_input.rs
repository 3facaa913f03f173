//! The bad-input matrix of issue 17: every malformed request body, `Retry-After` value, error
//! body and stream gets a clear typed error or an untouched pass-through, in bounded memory,
//! without a panic or a stack overflow — through each layer that reads it and through the full
//! recommended stack (FallbackModel -> RetryWithJitter -> TokenBudget -> RegionRouter ->
//! WaitTimeoutHeader -> ClassifyDashScopeError).
//!
//! Memory is measured with a per-thread allocator that tracks the bytes held; every test runs
//! on a current-thread runtime so that the whole path runs on the measured thread.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_dashscope::body::ReplayBody;
use tower_dashscope::request::ChatRequest;
use tower_dashscope::{
    Api, Attempts, ClassifyDashScopeError, DashScopeError, ErrorClass, FallbackModel, Quota,
    RateLimitKind, Region, RegionRouter, RetryWithJitter, ServedModel, TokenBudget,
    WaitTimeoutHeader,
};

#[path = "support/inner.rs"]
mod inner;
#[path = "support/peak_alloc.rs"]
mod peak_alloc;
#[path = "support/stack.rs"]
mod stack;

use inner::{End, Inner, TestBody, chat, drain, ok_json, response, sse, throttled, unavailable};
use stack::{Layers, recommended};

const MIB: usize = 1024 * 1024;

/// Calls `service` once with `request`.
async fn call<S, B>(
    service: S,
    request: Request<Full<Bytes>>,
) -> Result<Response<B>, DashScopeError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
{
    service.oneshot(request).await
}

/// Calls `service` with `request`, which must answer, and reads the body to its end: the bytes
/// it yielded and the error it ended with, if any.
async fn call_and_drain<S, B>(
    service: S,
    request: Request<Full<Bytes>>,
) -> (usize, Option<B::Error>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
    B: http_body::Body<Data = Bytes>,
{
    let response = call(service, request).await.unwrap();
    drain(response.into_body()).await
}

// ------------------------------------------------------------------------------------------
// Request bodies
// ------------------------------------------------------------------------------------------

const NOT_JSON: &[u8] = b"model=qwen-plus&messages=hello";
const INVALID_UTF8: &[u8] =
    b"{\"model\":\"qwen-plus\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\xc0\"}]}";
const INVALID_UTF8_MODEL: &[u8] = b"{\"model\":\"qwen-\xffplus\",\"messages\":[]}";

/// Every request body of the matrix that is not a chat request the layers can read, by name.
fn unreadable_bodies() -> Vec<(&'static str, Bytes)> {
    vec![
        ("not json", Bytes::from_static(NOT_JSON)),
        ("empty", Bytes::new()),
        ("json array", Bytes::from_static(b"[1,2,3]")),
        (
            "truncated json",
            Bytes::from_static(br#"{"model":"qwen-plus","messages":[{"#),
        ),
        ("invalid utf-8 in content", Bytes::from_static(INVALID_UTF8)),
        (
            "invalid utf-8 in model",
            Bytes::from_static(INVALID_UTF8_MODEL),
        ),
        ("nul bytes", Bytes::from_static(b"\0\0\0\0")),
        (
            "trailing garbage",
            Bytes::from_static(br#"{"model":"qwen-plus"} trailing"#),
        ),
    ]
}

/// A body no layer can read passes every layer that reads bodies, and the stack, untouched:
/// same bytes (the same allocation), not counted by the budget, not rewritten by fallback.
async fn passes_untouched<S, B>(name: &str, make: impl Fn(Inner) -> S, budget: Option<&TokenBudget>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
{
    for (case, body) in unreadable_bodies() {
        let inner = Inner::ok();
        let response = call(make(inner.clone()), chat(body.clone()))
            .await
            .unwrap_or_else(|err| panic!("{name}, {case}: {err}"));
        assert_eq!(response.status(), 200, "{name}, {case}");
        assert_eq!(inner.calls(), 1, "{name}, {case}");
        let sent = inner.body(0);
        assert_eq!(sent, body, "{name}, {case}: the body changed");
        assert_eq!(
            sent.as_ptr(),
            body.as_ptr(),
            "{name}, {case}: the body was copied"
        );
        if let Some(budget) = budget {
            drop(response);
            assert_eq!(budget.in_flight(), 0, "{name}, {case}");
            assert_eq!(budget.tokens_in_window(""), 0, "{name}, {case}");
            assert_eq!(budget.tokens_in_window("qwen-plus"), 0, "{name}, {case}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn unreadable_request_bodies_pass_the_budget_untouched() {
    let budget = TokenBudget::new(Quota::per_minute(600, 1_000_000)).max_concurrency(4);
    passes_untouched("budget", |inner| budget.layer(inner), Some(&budget)).await;
}

#[tokio::test(start_paused = true)]
async fn unreadable_request_bodies_pass_fallback_untouched() {
    let fallback = FallbackModel::new(["qwen-plus", "qwen-flash"]);
    passes_untouched("fallback", |inner| fallback.layer(inner), None).await;
}

#[tokio::test(start_paused = true)]
async fn unreadable_request_bodies_pass_retry_and_router_untouched() {
    passes_untouched(
        "retry",
        |inner| RetryWithJitter::new().seed(1).layer(inner),
        None,
    )
    .await;
    let router = RegionRouter::new(Region::Singapore, "sk-test-0000");
    passes_untouched("router", |inner| router.layer(inner), None).await;
}

#[tokio::test(start_paused = true)]
async fn unreadable_request_bodies_pass_the_stack_untouched() {
    let layers = Layers::default();
    passes_untouched("stack", |inner| layers.over(inner), Some(&layers.budget)).await;
}

/// A request fallback cannot read is not switched to another model on a failure that would
/// switch a readable one: the caller gets the typed failure, never a rewritten body.
#[tokio::test(start_paused = true)]
async fn unreadable_request_bodies_are_never_rewritten_on_a_failure() {
    for (case, body) in unreadable_bodies() {
        let inner = Inner::new(|_, _| throttled());
        let service = FallbackModel::new(["qwen-plus", "qwen-flash"])
            .layer(ClassifyDashScopeError::new().layer(inner.clone()));
        let err = call(service, chat(body.clone())).await.unwrap_err();
        assert_eq!(
            err.class(),
            ErrorClass::RateLimited(RateLimitKind::Requests),
            "{case}"
        );
        assert_eq!(inner.calls(), 1, "{case}");
        assert_eq!(inner.body(0), body, "{case}");
    }
}

/// `model` of every wrong type: the request is sent as it is, counted under no model, never
/// rewritten; a failure that would switch a string model is the caller's typed error.
#[tokio::test(start_paused = true)]
async fn model_of_the_wrong_type_passes_untouched_and_is_never_rewritten() {
    let long = format!(r#"{{"model":"{}","messages":[]}}"#, "q".repeat(300));
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "number",
            Bytes::from_static(br#"{"model":42,"messages":[]}"#),
        ),
        (
            "float",
            Bytes::from_static(br#"{"model":4.2e300,"messages":[]}"#),
        ),
        (
            "bool",
            Bytes::from_static(br#"{"model":true,"messages":[]}"#),
        ),
        (
            "null",
            Bytes::from_static(br#"{"model":null,"messages":[]}"#),
        ),
        (
            "array",
            Bytes::from_static(br#"{"model":["qwen-plus"],"messages":[]}"#),
        ),
        (
            "object",
            Bytes::from_static(br#"{"model":{"name":"qwen-plus"},"messages":[]}"#),
        ),
        ("300 characters", Bytes::from(long)),
    ];
    for (case, body) in cases {
        // The view: no model.
        let chat_view = ChatRequest::parse(Api::OpenAiCompatible, &Default::default(), &body);
        if let Some(view) = chat_view {
            assert_eq!(view.model(), None, "{case}");
        }
        if case != "300 characters" {
            assert_eq!(
                tower_dashscope::fallback::rewrite_model(&body, "qwen-flash"),
                None,
                "{case}"
            );
        }

        // Through the stack: a 429 on every attempt; retried (the budget counts each attempt
        // under no model), never rewritten, and the typed 429 in the end.
        let inner = Inner::new(|_, _| throttled());
        let layers = Layers::default();
        let err = call(layers.over(inner.clone()), chat(body.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            err.class(),
            ErrorClass::RateLimited(RateLimitKind::Requests),
            "{case}"
        );
        assert!(inner.calls() >= 1, "{case}");
        for n in 0..inner.calls() {
            assert_eq!(inner.body(n), body, "{case}: attempt {n} was rewritten");
        }
        assert_eq!(layers.budget.in_flight(), 0, "{case}");
        assert_eq!(layers.budget.tokens_in_window("qwen-plus"), 0, "{case}");
    }
}

/// A 100 MiB chat body: nothing copies it (the inner service gets the caller's allocation, on
/// every attempt), the stack holds a bounded amount of memory while it goes through twice (a
/// retried 503), and it is passed on uncounted (it is over the 16 MiB any layer parses).
#[tokio::test(start_paused = true)]
async fn a_100_mib_body_goes_through_the_stack_uncopied_in_bounded_memory() {
    let mut big = Vec::with_capacity(100 * MIB);
    big.extend_from_slice(br#"{"model":"qwen-plus","messages":[{"role":"user","content":""#);
    big.resize(100 * MIB - 4, b'a');
    big.extend_from_slice(br#""}]}"#);
    let big = Bytes::from(big);

    let inner = Inner::new(|n, _| if n == 0 { unavailable() } else { ok_json() });
    let layers = Layers::default();
    let service = layers.over(inner.clone());
    let ((bytes, err), peak) =
        peak_alloc::measure_async(|| call_and_drain(service, chat(big.clone()))).await;
    assert!(err.is_none());
    assert!(bytes > 0);
    assert_eq!(inner.calls(), 2, "the 503 was retried");
    for n in 0..2 {
        assert_eq!(
            inner.body(n).as_ptr(),
            big.as_ptr(),
            "attempt {n} got a copy"
        );
        assert_eq!(inner.body(n).len(), big.len());
    }
    assert!(peak < MIB, "the stack held {peak} bytes for a 100 MiB body");
    assert_eq!(layers.budget.in_flight(), 0);
}

/// The measurement can fail: a copy of the body is seen.
#[test]
fn the_allocator_sees_a_copy() {
    let big = Bytes::from(vec![b' '; 100 * MIB]);
    let (copy, peak) = peak_alloc::measure(|| big.to_vec());
    assert_eq!(copy.len(), big.len());
    assert!(peak >= 100 * MIB);
    assert!(big.try_clone_body().is_some());
}

/// The same body through each layer alone, with the allocations it makes.
#[tokio::test(start_paused = true)]
async fn a_100_mib_body_goes_through_each_layer_uncopied() {
    let big = Bytes::from(vec![b' '; 100 * MIB]);
    async fn check<S, B>(name: &str, service: S, inner: &Inner, big: &Bytes)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
    {
        let ((), peak) = peak_alloc::measure_async(|| async {
            let response = call(service, chat(big.clone())).await.unwrap();
            drop(response);
        })
        .await;
        assert_eq!(
            inner.body(0).as_ptr(),
            big.as_ptr(),
            "{name} copied the body"
        );
        assert!(peak < MIB, "{name} held {peak} bytes");
    }
    let inner = Inner::ok();
    check(
        "budget",
        TokenBudget::new(Quota::per_minute(600, 1_000_000)).layer(inner.clone()),
        &inner,
        &big,
    )
    .await;
    let inner = Inner::ok();
    check(
        "fallback",
        FallbackModel::new(["qwen-plus", "qwen-flash"]).layer(inner.clone()),
        &inner,
        &big,
    )
    .await;
    let inner = Inner::ok();
    check(
        "retry",
        RetryWithJitter::new().seed(1).layer(inner.clone()),
        &inner,
        &big,
    )
    .await;
    let inner = Inner::ok();
    check(
        "router",
        RegionRouter::new(Region::Singapore, "sk-test-0000").layer(inner.clone()),
        &inner,
        &big,
    )
    .await;
    let inner = Inner::ok();
    check(
        "wait timeout",
        WaitTimeoutHeader::new(Duration::from_secs(30)).layer(inner.clone()),
        &inner,
        &big,
    )
    .await;
    let inner = Inner::ok();
    check(
        "classify",
        ClassifyDashScopeError::new().layer(inner.clone()),
        &inner,
        &big,
    )
    .await;
}

/// `{"model":"qwen-plus","messages":[[[[…]]]]}`, `depth` levels deep.
fn nested(depth: usize) -> Bytes {
    let mut body = Vec::with_capacity(2 * depth + 64);
    body.extend_from_slice(br#"{"model":"qwen-plus","messages":"#);
    body.resize(body.len() + depth, b'[');
    body.resize(body.len() + depth, b']');
    body.push(b'}');
    Bytes::from(body)
}

/// Runs `test` on a thread with a 2 MiB stack (Rust's default for spawned threads) and a
/// paused current-thread runtime.
fn on_small_stack<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .stack_size(2 * MIB)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(test())
        })
        .unwrap()
        .join()
        .expect("the test thread panicked or overflowed its stack");
}

#[test]
fn a_body_nested_100_000_levels_deep_is_read_without_recursion() {
    on_small_stack(|| async {
        let body = nested(100_000);
        assert!(ChatRequest::parse(Api::OpenAiCompatible, &Default::default(), &body).is_none());
        // The model rewrite scans without recursion, so it can rewrite even this.
        let rewritten = tower_dashscope::fallback::rewrite_model(&body, "qwen-flash").unwrap();
        assert!(rewritten.starts_with(br#"{"model":"qwen-flash","messages":[[["#));
        assert_eq!(rewritten.len(), body.len() + 1);
        // An unterminated one too.
        let open = Bytes::from(
            [
                &br#"{"model":"qwen-plus","messages":"#[..],
                &[b'['; 100_000],
            ]
            .concat(),
        );
        assert_eq!(
            tower_dashscope::fallback::rewrite_model(&open, "qwen-flash"),
            None
        );
    });
}

#[test]
fn a_body_nested_100_000_levels_deep_passes_each_layer_and_the_stack() {
    on_small_stack(|| async {
        let body = nested(100_000);
        let inner = Inner::ok();
        let budget = TokenBudget::new(Quota::per_minute(600, 1_000_000));
        call(budget.layer(inner.clone()), chat(body.clone()))
            .await
            .unwrap();
        assert_eq!(
            budget.tokens_in_window("qwen-plus"),
            0,
            "not a chat request it can read"
        );
        call(
            FallbackModel::new(["qwen-plus", "qwen-flash"]).layer(inner.clone()),
            chat(body.clone()),
        )
        .await
        .unwrap();
        call(
            RetryWithJitter::new().layer(inner.clone()),
            chat(body.clone()),
        )
        .await
        .unwrap();
        call(recommended(inner.clone()), chat(body.clone()))
            .await
            .unwrap();
        assert_eq!(inner.calls(), 4);
        for n in 0..4 {
            assert_eq!(inner.body(n), body);
        }
    });
}

#[test]
fn a_body_nested_100_000_levels_deep_is_not_switched_on_a_failure() {
    on_small_stack(|| async {
        let body = nested(100_000);
        let inner = Inner::new(|_, _| response(503, &[], TestBody::full("")));
        let err = call(recommended(inner.clone()), chat(body.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Unavailable);
        for n in 0..inner.calls() {
            assert_eq!(inner.body(n), body, "attempt {n} was rewritten");
        }
    });
}

// ------------------------------------------------------------------------------------------
// Retry-After
// ------------------------------------------------------------------------------------------

/// Garbage `Retry-After` and `retry-after-ms` values, raw bytes.
fn garbage_retry_after() -> Vec<(&'static str, Vec<u8>)> {
    let mut cases: Vec<(&'static str, Vec<u8>)> = [
        "abc",
        "-1",
        "-0.5",
        "1e400",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "+5",
        "0x10",
        "5 s",
        " ",
        "1,2",
        "1.2.3",
        "99999999999999999999999999",
        "Wed, 31 Feb 2026 25:61:61 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ]
    .iter()
    .map(|s| ("retry-after", s.as_bytes().to_vec()))
    .collect();
    cases.push(("retry-after", b"\xff\xfe\x80".to_vec()));
    cases.push(("retry-after", vec![b'9'; 8 * 1024]));
    cases.push(("retry-after", [b"1".as_slice(), &[b','; 4096]].concat()));
    for ms in ["-1", "1e999", "abc", "18446744073709551616", "NaN"] {
        cases.push(("retry-after-ms", ms.as_bytes().to_vec()));
    }
    cases
}

/// The classifier reads no garbage as a wait: `retry_after()` is absent or at most a day.
#[tokio::test(start_paused = true)]
async fn garbage_retry_after_is_ignored_or_clamped_by_the_classifier() {
    for (name, value) in garbage_retry_after() {
        let inner = Inner::new(move |_, _| {
            response(
                429,
                &[(name, &value)],
                TestBody::full(r#"{"code":"Throttling","message":"slow down"}"#),
            )
        });
        let err = call(ClassifyDashScopeError::new().layer(inner), chat("{}"))
            .await
            .unwrap_err();
        assert!(
            matches!(err.class(), ErrorClass::RateLimited(_)),
            "{name}: {err}"
        );
        if let Some(wait) = err.retry_after() {
            assert!(wait <= tower_dashscope::MAX_RETRY_AFTER, "{name}: {wait:?}");
        }
    }
}

/// Retry with a garbage `Retry-After`, with and without a classifier below, and the stack:
/// the 429 is retried after a wait of its own schedule (at most `max_delay`), never a garbage
/// one, and the second attempt's answer comes back.
#[tokio::test(start_paused = true)]
async fn garbage_retry_after_never_makes_retry_wait_beyond_its_schedule() {
    for (name, value) in garbage_retry_after() {
        let header = value.clone();
        let script = move |n: usize, _: &Request<Full<Bytes>>| {
            if n == 0 {
                response(
                    429,
                    &[(name, &header)],
                    TestBody::full(r#"{"code":"Throttling","message":"slow down"}"#),
                )
            } else {
                ok_json()
            }
        };
        let retry = RetryWithJitter::new()
            .seed(1)
            .max_delay(Duration::from_secs(5));
        let label = format!(
            "{name}: {:?}",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(name, http::HeaderValue::from_bytes(&value).unwrap());
        let parse = tower_dashscope::parse_retry_after(&headers);

        for layered in ["retry", "retry + classify", "stack"] {
            let inner = Inner::new(script.clone());
            let start = Instant::now();
            let outcome = match layered {
                "retry" => call(retry.clone().layer(inner.clone()), chat("{}"))
                    .await
                    .map(|r| {
                        (
                            r.status().as_u16(),
                            r.extensions().get::<Attempts>().copied(),
                        )
                    }),
                "retry + classify" => call(
                    retry
                        .clone()
                        .layer(ClassifyDashScopeError::new().layer(inner.clone())),
                    chat("{}"),
                )
                .await
                .map(|r| {
                    (
                        r.status().as_u16(),
                        r.extensions().get::<Attempts>().copied(),
                    )
                }),
                _ => {
                    let layers = Layers {
                        retry: retry.clone(),
                        ..Layers::default()
                    };
                    call(
                        layers.over(inner.clone()),
                        chat(r#"{"model":"qwen-max","messages":[]}"#),
                    )
                    .await
                    .map(|r| {
                        (
                            r.status().as_u16(),
                            r.extensions().get::<Attempts>().copied(),
                        )
                    })
                }
            };
            let outcome = outcome.map_err(|err| {
                (
                    err.status().map(|s| s.as_u16()),
                    err.attempts(),
                    err.retry_after(),
                )
            });
            match parse {
                // A valid value beyond `max_retry_after` (a far date, 10^26 seconds) is not
                // waited for: the failure comes back at once, typed, with the clamped wait.
                Some(wait) if wait > Duration::from_secs(120) => {
                    assert_eq!(start.elapsed(), Duration::ZERO, "{label} via {layered}");
                    assert_eq!(inner.calls(), 1, "{label} via {layered}");
                    match outcome {
                        Ok((status, _)) => assert_eq!((layered, status), ("retry", 429)),
                        Err((status, attempts, retry_after)) => {
                            assert_eq!(status, Some(429), "{label} via {layered}");
                            assert_eq!(attempts, Some(1), "{label} via {layered}");
                            assert_eq!(
                                retry_after,
                                Some(tower_dashscope::MAX_RETRY_AFTER),
                                "{label} via {layered}"
                            );
                        }
                    }
                }
                // Garbage is no hint: the retry's own schedule, at most `max_delay`.
                _ => {
                    let (status, attempts) =
                        outcome.unwrap_or_else(|err| panic!("{label} via {layered}: {err:?}"));
                    assert_eq!(status, 200, "{label} via {layered}");
                    assert_eq!(attempts, Some(Attempts(2)), "{label} via {layered}");
                    assert!(
                        start.elapsed() <= Duration::from_secs(5),
                        "{label} via {layered}: waited {:?}",
                        start.elapsed()
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Error bodies
// ------------------------------------------------------------------------------------------

/// Every malformed kind of error body, for a status.
fn malformed_error_bodies() -> Vec<(&'static str, TestBody)> {
    static A64K: [u8; 64 * 1024] = [b'a'; 64 * 1024];
    let huge_message = TestBody::new(
        [Bytes::from_static(br#"{"code":"Throttling","message":""#)],
        End::Done,
    )
    .repeat(Bytes::from_static(&A64K), 160) // 10 MiB
    .then(r#""}"#);
    let huge_garbage =
        TestBody::new(Vec::<Bytes>::new(), End::Done).repeat(Bytes::from_static(&A64K), 1600); // 100 MiB
    let deep = {
        let mut body = br#"{"code":"Throttling","message":"#.to_vec();
        body.resize(body.len() + 60_000, b'[');
        Bytes::from(body)
    };
    vec![
        (
            "truncated json",
            TestBody::full(r#"{"code":"Throttling.RateQuota","message":"Requests rate"#),
        ),
        (
            "truncated mid-escape",
            TestBody::full(r#"{"code":"Throttling","message":"\u00"#),
        ),
        (
            "wrong types",
            TestBody::full(r#"{"code":42,"message":{"a":[1,2]},"request_id":false}"#),
        ),
        (
            "error of the wrong type",
            TestBody::full(r#"{"error":"nope","request_id":["x"]}"#),
        ),
        (
            "openai error of wrong types",
            TestBody::full(r#"{"error":{"code":[],"message":7,"type":null}}"#),
        ),
        ("json array", TestBody::full(r#"[{"code":"Throttling"}]"#)),
        ("json string", TestBody::full(r#""Throttling""#)),
        ("huge message (10 MiB)", huge_message),
        ("huge garbage (100 MiB)", huge_garbage),
        ("nested 60,000 deep", TestBody::full(deep)),
        (
            "non-utf-8",
            TestBody::full(Bytes::from_static(
                b"{\"code\":\"Throttl\xffing\",\"message\":\"\xc0\xaf\"}",
            )),
        ),
        (
            "binary",
            TestBody::full(Bytes::from_static(&[0u8, 159, 146, 150, 255, 0, 1])),
        ),
        (
            "html",
            TestBody::full(
                "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
            ),
        ),
        ("empty", TestBody::full("")),
        ("no frames", TestBody::new(Vec::<Bytes>::new(), End::Done)),
        (
            "cut by the connection",
            TestBody::new([r#"{"code":"Thrott"#], End::Fail),
        ),
        ("stalled", TestBody::new([r#"{"code":"Thrott"#], End::Never)),
        (
            "sse error frame cut short",
            TestBody::full("event:error\n:HTTP_STATUS/429\ndata:{\"code\":\"Thrott"),
        ),
        (
            "bom then garbage",
            TestBody::full(Bytes::from_static(b"\xEF\xBB\xBF\xEF\xBB\xBF{{{")),
        ),
    ]
}

/// The class a status gives without a readable body.
fn class_of(status: u16) -> fn(ErrorClass) -> bool {
    match status {
        429 => |c| matches!(c, ErrorClass::RateLimited(_)),
        500 => |c| c == ErrorClass::ServerError,
        502 | 503 => |c| c == ErrorClass::Unavailable || c == ErrorClass::ServerError,
        400 => |c| c == ErrorClass::InvalidRequest,
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_error_bodies_are_typed_errors_in_bounded_memory() {
    for status in [400u16, 429, 500, 503] {
        for (case, body) in malformed_error_bodies() {
            let body = std::sync::Mutex::new(Some(body));
            let inner =
                Inner::new(move |_, _| response(status, &[], body.lock().unwrap().take().unwrap()));
            let (err, peak) = peak_alloc::measure_async(|| async {
                call(ClassifyDashScopeError::new().layer(inner), chat("{}"))
                    .await
                    .unwrap_err()
            })
            .await;
            if case.starts_with("sse") {
                // The frame's own `:HTTP_STATUS/429` is the status that counts.
                assert!(
                    matches!(err.class(), ErrorClass::RateLimited(_)),
                    "{status} {case}: {:?}",
                    err.class()
                );
            } else {
                assert!(
                    class_of(status)(err.class()),
                    "{status} {case}: {:?}",
                    err.class()
                );
            }
            if !case.starts_with("sse") {
                assert_eq!(
                    err.status().map(|s| s.as_u16()),
                    Some(status),
                    "{status} {case}"
                );
            }
            let message = err.message().unwrap_or("");
            assert!(
                message.len() <= 64 * 1024,
                "{status} {case}: message of {} bytes",
                message.len()
            );
            let shown = err.to_string();
            assert!(
                shown.len() <= 80 * 1024,
                "{status} {case}: Display of {} bytes",
                shown.len()
            );
            assert!(peak < MIB, "{status} {case}: held {peak} bytes");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_error_bodies_through_the_stack_end_in_typed_errors() {
    for (case, body) in malformed_error_bodies() {
        let body = std::sync::Mutex::new(Some(body));
        // The first attempt gets the malformed 500, the rest an empty 503: the stack retries,
        // fails over to qwen-flash, and ends with a typed error.
        let inner = Inner::new(move |_, _| match body.lock().unwrap().take() {
            Some(body) => response(500, &[], body),
            None => response(503, &[], TestBody::full("")),
        });
        let layers = Layers::default();
        let (err, peak) = peak_alloc::measure_async(|| async {
            call(
                layers.over(inner.clone()),
                chat(r#"{"model":"qwen-plus","messages":[]}"#),
            )
            .await
            .unwrap_err()
        })
        .await;
        assert!(
            matches!(
                err.class(),
                ErrorClass::Unavailable | ErrorClass::ServerError
            ),
            "{case}: {err}"
        );
        assert!(peak < MIB, "{case}: held {peak} bytes");
        assert_eq!(layers.budget.in_flight(), 0, "{case}");
    }
}

// ------------------------------------------------------------------------------------------
// Streams
// ------------------------------------------------------------------------------------------

const STREAM_REQUEST: &str =
    r#"{"model":"qwen-plus","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const EVENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"index\":0,\"finish_reason\":null}]}\n\n";
const DONE: &str = "data: {\"choices\":[{\"delta\":{},\"index\":0,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

fn stream_request() -> Request<Full<Bytes>> {
    let mut request = chat(STREAM_REQUEST);
    request
        .headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    request
}

/// A stream that goes silent after its first event fails with a timeout at the idle timeout,
/// through the classifier alone and through the stack.
#[tokio::test(start_paused = true)]
async fn a_stream_that_never_ends_times_out_when_idle() {
    let classify = ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(30));
    let script = |_, _: &Request<Full<Bytes>>| sse(TestBody::new([EVENT], End::Never));

    let (bytes, err) = call_and_drain(classify.layer(Inner::new(script)), stream_request()).await;
    assert_eq!(bytes, EVENT.len());
    assert_eq!(err.expect("a typed error").class(), ErrorClass::Timeout);

    let layers = Layers {
        classify,
        ..Layers::default()
    };
    let start = Instant::now();
    let (bytes, err) = call_and_drain(layers.over(Inner::new(script)), stream_request()).await;
    assert_eq!(bytes, EVENT.len());
    assert_eq!(err.expect("a typed error").class(), ErrorClass::Timeout);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(layers.budget.in_flight(), 0);
}

/// A stream silent from its first byte is the call's timeout (so retry and fallback act on it).
#[tokio::test(start_paused = true)]
async fn a_stream_silent_from_the_start_is_the_calls_timeout() {
    let classify = ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(30));
    let inner = Inner::new(|_, _| sse(TestBody::new(Vec::<Bytes>::new(), End::Never)));
    let err = call(classify.layer(inner.clone()), stream_request())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);

    let layers = Layers {
        classify,
        ..Layers::default()
    };
    let err = call(layers.over(inner.clone()), stream_request())
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(layers.budget.in_flight(), 0);
    // Retried and then switched to qwen-flash: every attempt reached the inner service.
    assert!(inner.calls() > 2);
}

/// A stream that ends midway — cleanly or by a reset — ends its body with
/// `StreamInterrupted` after every byte that came, through the classifier and the stack.
#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_midway_is_interrupted() {
    for end in [End::Done, End::Fail] {
        let script = move |_, _: &Request<Full<Bytes>>| {
            sse(TestBody::new([EVENT, EVENT, "data: {\"choi"], end))
        };
        let (bytes, err) = call_and_drain(
            ClassifyDashScopeError::new().layer(Inner::new(script)),
            stream_request(),
        )
        .await;
        assert_eq!(bytes, 2 * EVENT.len() + 12, "{end:?}");
        assert_eq!(
            err.expect("a typed error").class(),
            ErrorClass::StreamInterrupted,
            "{end:?}"
        );

        let layers = Layers::default();
        let response = call(layers.over(Inner::new(script)), stream_request())
            .await
            .unwrap();
        assert_eq!(
            response.extensions().get::<ServedModel>(),
            Some(&ServedModel("qwen-plus".into()))
        );
        let (bytes, err) = drain(response.into_body()).await;
        assert_eq!(bytes, 2 * EVENT.len() + 12, "{end:?}");
        assert_eq!(
            err.expect("a typed error").class(),
            ErrorClass::StreamInterrupted,
            "{end:?}"
        );
        assert_eq!(layers.budget.in_flight(), 0);
    }
}

/// A stream cut inside its first event is the call's `StreamInterrupted`: the stack retries it
/// and falls back, and the answer is the next model's whole stream, never a splice.
#[tokio::test(start_paused = true)]
async fn a_stream_cut_before_its_first_event_is_retried_whole() {
    let inner = Inner::new(|n, _| {
        if n == 0 {
            sse(TestBody::new(["data: {\"choi"], End::Fail))
        } else {
            sse(TestBody::new([EVENT, DONE], End::Done))
        }
    });
    let err = call(
        ClassifyDashScopeError::new().layer(inner.clone()),
        stream_request(),
    )
    .await
    .unwrap_err();
    // The connection's reset is the body's failure: a connection error, retryable.
    assert_eq!(err.class(), ErrorClass::Connection);
    assert!(err.is_retryable());

    let (bytes, err) = call_and_drain(recommended(inner.clone()), stream_request()).await;
    assert!(err.is_none());
    assert_eq!(bytes, EVENT.len() + DONE.len());
}

static A64K: [u8; 64 * 1024] = [b'a'; 64 * 1024];

/// A stream with one 10 MiB line (`content` of 10 MiB), then a normal end.
fn ten_mib_line(first: bool) -> TestBody {
    let head = "data: {\"choices\":[{\"delta\":{\"content\":\"";
    let body = if first {
        TestBody::new([head], End::Done)
    } else {
        TestBody::new([EVENT, head], End::Done)
    };
    body.repeat(Bytes::from_static(&A64K), 160)
        .then("\"},\"index\":0,\"finish_reason\":null}]}\n\n")
        .then(DONE)
}

/// A 10 MiB line passes through every byte, uninspected, and the classifier and the stack hold
/// a bounded amount of memory for it (about twice `max_event_size`, 1 MiB by default).
#[tokio::test(start_paused = true)]
async fn a_10_mib_line_passes_through_in_bounded_memory() {
    for first in [false, true] {
        let expected = {
            let body = ten_mib_line(first);
            let (n, _) = drain(body).await;
            n
        };
        let inner = Inner::new(move |_, _| sse(ten_mib_line(first)));
        let ((bytes, err), peak) = peak_alloc::measure_async(|| {
            call_and_drain(
                ClassifyDashScopeError::new().layer(inner.clone()),
                stream_request(),
            )
        })
        .await;
        assert!(err.is_none(), "first {first}: {err:?}");
        assert_eq!(bytes, expected, "first {first}");
        assert!(peak < 3 * MIB, "classify, first {first}: held {peak} bytes");

        let layers = Layers::default();
        let ((bytes, err), peak) = peak_alloc::measure_async(|| {
            call_and_drain(layers.over(inner.clone()), stream_request())
        })
        .await;
        assert!(err.is_none(), "stack, first {first}: {err:?}");
        assert_eq!(bytes, expected, "stack, first {first}");
        assert!(peak < 3 * MIB, "stack, first {first}: held {peak} bytes");
    }
}

/// A 10 MiB line that never ends (no newline, then the connection ends): every byte passes,
/// memory stays bounded, and the body ends with a typed error, not a clean end.
#[tokio::test(start_paused = true)]
async fn a_10_mib_line_without_an_end_is_bounded_and_typed() {
    for end in [End::Done, End::Fail] {
        let inner = Inner::new(move |_, _| {
            sse(TestBody::new([EVENT, "data: {\"choices\":"], end)
                .repeat(Bytes::from_static(&A64K), 160))
        });
        let ((bytes, err), peak) =
            peak_alloc::measure_async(|| call_and_drain(recommended(inner), stream_request()))
                .await;
        assert_eq!(bytes, EVENT.len() + 17 + 10 * MIB, "{end:?}");
        assert!(peak < 3 * MIB, "{end:?}: held {peak} bytes");
        // Cut inside an event, cleanly or not: the output is incomplete, and says so.
        assert_eq!(
            err.expect("a typed error").class(),
            ErrorClass::StreamInterrupted,
            "{end:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Streaming request bodies (BufferRequestBody in front of the stack)
// ------------------------------------------------------------------------------------------

/// A 100 MiB streaming request body in front of the stack: `BufferRequestBody` reads at most
/// its limit (and one chunk) of it, fails with `PayloadTooLarge` without calling the inner
/// service, and holds memory bounded by the limit, not the body.
#[tokio::test(start_paused = true)]
async fn a_100_mib_streaming_body_is_refused_at_the_buffer_limit() {
    use tower_dashscope::body::{BufferRequestBody, DASHSCOPE_BODY_LIMIT};
    let inner = Inner::ok();
    let service = BufferRequestBody::new(DASHSCOPE_BODY_LIMIT).layer(recommended(inner.clone()));
    let body =
        TestBody::new(Vec::<Bytes>::new(), End::Done).repeat(Bytes::from_static(&A64K), 1600);
    let request = Request::post("/compatible-mode/v1/chat/completions")
        .body(body)
        .unwrap();
    let (err, peak) =
        peak_alloc::measure_async(|| async { service.oneshot(request).await.unwrap_err() }).await;
    assert_eq!(err.class(), ErrorClass::PayloadTooLarge);
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(inner.calls(), 0);
    assert!(peak < 2 * DASHSCOPE_BODY_LIMIT + MIB, "held {peak} bytes");
}

/// A streaming request body that fails midway is a typed error, and nothing is sent.
#[tokio::test(start_paused = true)]
async fn a_streaming_body_that_fails_midway_is_a_typed_error() {
    use tower_dashscope::body::BufferRequestBody;
    let inner = Inner::ok();
    let service = BufferRequestBody::new(MIB).layer(recommended(inner.clone()));
    let body = TestBody::new([r#"{"model":"qwen-plus","mess"#], End::Fail);
    let request = Request::post("/compatible-mode/v1/chat/completions")
        .body(body)
        .unwrap();
    let err = service.oneshot(request).await.unwrap_err();
    assert!(
        err.message().is_some_and(|m| m.contains("request body")),
        "{err}"
    );
    assert_eq!(inner.calls(), 0);
}

// ------------------------------------------------------------------------------------------
// Malformed error events inside streams
// ------------------------------------------------------------------------------------------

/// Error-looking events of every malformed kind, as the first event (the call's outcome) and
/// after a good one (the body's): a typed error or a pass-through of every byte, no panic, in
/// bounded memory.
#[tokio::test(start_paused = true)]
async fn malformed_error_events_in_a_stream_are_typed_or_passed_through() {
    type Make = std::sync::Arc<dyn Fn() -> TestBody + Send + Sync>;
    fn full(body: impl Into<Bytes>) -> Make {
        let body = body.into();
        std::sync::Arc::new(move || TestBody::full(body.clone()))
    }
    let huge_error: Make = std::sync::Arc::new(|| {
        TestBody::new(
            ["data: {\"error\":{\"code\":\"Throttling\",\"message\":\""],
            End::Done,
        )
        .repeat(Bytes::from_static(&A64K), 160)
        .then("\"}}\n\n")
    });
    let cases: Vec<(&str, Make)> = vec![
        (
            "truncated error json",
            full("data: {\"error\":{\"code\":\"Thrott\n\n"),
        ),
        (
            "error of wrong types",
            full("data: {\"error\":{\"code\":7,\"message\":[1],\"type\":{}}}\n\n"),
        ),
        ("error as a string", full("data: {\"error\":\"boom\"}\n\n")),
        (
            "native error, no status",
            full("event:error\ndata:{\"code\":42}\n\n"),
        ),
        (
            "native error, garbage status",
            full("event:error\n:HTTP_STATUS/99999999999999999999\ndata:{}\n\n"),
        ),
        (
            "native error, status 0",
            full("event:error\n:HTTP_STATUS/0\ndata:{}\n\n"),
        ),
        (
            "non-utf-8 data",
            full(Bytes::from_static(
                b"event:error\ndata:{\"code\":\"\xff\xfe\"}\n\n",
            )),
        ),
        (
            "nested 60,000 deep",
            full(format!("data: {{\"error\":{}\n\n", "[".repeat(60_000))),
        ),
        ("huge error message (10 MiB)", huge_error),
    ];
    for (case, make) in cases {
        for after_good in [false, true] {
            let make = make.clone();
            let make_body = move || {
                let body = make();
                if !after_good {
                    return body;
                }
                // The good event first, then the case's frames.
                let mut frames = vec![Bytes::from_static(EVENT.as_bytes())];
                let mut rest = body;
                while let Some(Ok(frame)) = next_frame(&mut rest) {
                    frames.push(frame);
                }
                TestBody::new(frames, End::Done)
            };
            let expected = drain(make_body()).await.0;
            let inner = Inner::new(move |_, _| sse(make_body()));
            let ((bytes, err), peak) = peak_alloc::measure_async(|| async {
                match call(ClassifyDashScopeError::new().layer(inner), stream_request()).await {
                    Ok(response) => drain(response.into_body()).await,
                    Err(err) => (expected, Some(err)),
                }
            })
            .await;
            assert_eq!(bytes, expected, "{case}, after a good event: {after_good}");
            if let Some(err) = &err {
                assert!(
                    err.message().is_none_or(|m| m.len() <= 64 * 1024),
                    "{case}: message of {} bytes",
                    err.message().map_or(0, str::len)
                );
            }
            assert!(
                peak < 3 * MIB,
                "{case}, after a good event {after_good}: held {peak} bytes"
            );
        }
    }
}

/// The next frame of a body that is always ready.
fn next_frame(body: &mut TestBody) -> Option<Result<Bytes, std::io::Error>> {
    use http_body::Body;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(body).poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().ok().map(Ok),
        std::task::Poll::Ready(Some(Err(err))) => Some(Err(err)),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------
// Retry alone over a response body that never ends or is huge
// ------------------------------------------------------------------------------------------

/// Without a classifier below, retry reads a failed response's body away during its backoff:
/// a 503 whose body never ends, or is 100 MiB, does not hold the retry or its memory.
#[tokio::test(start_paused = true)]
async fn retry_alone_is_not_held_by_a_failed_responses_body() {
    for (case, end, chunks) in [("never ends", End::Never, 1), ("100 MiB", End::Done, 1600)] {
        let inner = Inner::new(move |n, _| {
            if n == 0 {
                response(
                    503,
                    &[],
                    TestBody::new(Vec::<Bytes>::new(), end)
                        .repeat(Bytes::from_static(&A64K), chunks),
                )
            } else {
                ok_json()
            }
        });
        let retry = RetryWithJitter::new()
            .seed(1)
            .max_delay(Duration::from_secs(2));
        let start = Instant::now();
        let (response, peak) = peak_alloc::measure_async(|| async {
            call(retry.layer(inner.clone()), chat("{}")).await.unwrap()
        })
        .await;
        assert_eq!(response.status(), 200, "{case}");
        assert_eq!(inner.calls(), 2, "{case}");
        assert!(
            start.elapsed() <= Duration::from_secs(2),
            "{case}: {:?}",
            start.elapsed()
        );
        assert!(peak < MIB, "{case}: held {peak} bytes");
    }
}

/// An error event of 1 MiB (the largest inspected) full of tiny JSON values: reading its fields
/// costs about its own size (the scanner holds the event), not a tree of it (which was about 17
/// times its size: 17.7 MB for this one).
#[tokio::test(start_paused = true)]
async fn a_1_mib_error_event_of_tiny_values_is_read_in_bounded_memory() {
    for (name, fill) in [("numbers", "0,"), ("objects", "{},"), ("arrays", "[],")] {
        let n = (480 * 1024) / fill.len();
        let items = fill.repeat(n);
        let event = format!(
            "data: {{\"error\":{{\"code\":\"Throttling\",\"message\":\"slow down\",\"details\":[{items}0]}},\"extra\":[{items}0]}}\n\n"
        );
        let event = Bytes::from(event);
        for after_good in [false, true] {
            let body = if after_good {
                TestBody::new(
                    [Bytes::from_static(EVENT.as_bytes()), event.clone()],
                    End::Done,
                )
            } else {
                TestBody::full(event.clone())
            };
            let body = std::sync::Mutex::new(Some(body));
            let inner = Inner::new(move |_, _| sse(body.lock().unwrap().take().unwrap()));
            let (err, peak) = peak_alloc::measure_async(|| async {
                match call(ClassifyDashScopeError::new().layer(inner), stream_request()).await {
                    Ok(response) => drain(response.into_body()).await.1.expect("an error event"),
                    Err(err) => err,
                }
            })
            .await;
            assert_eq!(
                err.class(),
                ErrorClass::RateLimited(RateLimitKind::Requests),
                "{name}"
            );
            assert_eq!(err.message(), Some("slow down"), "{name}");
            assert!(
                peak < 2 * MIB,
                "{name}, after a good event {after_good}: held {peak} bytes"
            );
        }
    }
}

/// An event whose data opens an error object (`{"error":`) but is not valid JSON — cut short,
/// or nested past the parser's limit — is a failure, not output: as the first event it is the
/// call's typed error; after a good one, the body's. (It passed as a clean stream before.)
#[tokio::test(start_paused = true)]
async fn a_malformed_error_object_event_is_a_typed_error() {
    let cases = [
        (
            "cut short",
            "data: {\"error\":{\"code\":\"Thrott\n\n".to_owned(),
        ),
        (
            "cut short, spaced",
            "data:  { \"error\" :{\"message\":\"x\n\n".to_owned(),
        ),
        (
            "nested too deep",
            format!("data: {{\"error\":{}\n\n", "[".repeat(60_000)),
        ),
        (
            "native status on it",
            "event:message\n:HTTP_STATUS/429\ndata: {\"error\":{\"code\n\n".to_owned(),
        ),
    ];
    for (case, event) in cases {
        let first = event.clone();
        let inner = Inner::new(move |_, _| sse(TestBody::full(first.clone())));
        let err = call(ClassifyDashScopeError::new().layer(inner), stream_request())
            .await
            .expect_err(case);
        assert!(err.is_retryable(), "{case}: {err}");
        if !case.starts_with("native") {
            assert_eq!(err.class(), ErrorClass::ServerError, "{case}");
            assert!(err.advice().contains("not valid JSON"), "{case}: {err}");
        }
        let later = event.clone();
        let inner = Inner::new(move |_, _| {
            sse(TestBody::new([EVENT.to_owned(), later.clone()], End::Done))
        });
        let (bytes, err) =
            call_and_drain(ClassifyDashScopeError::new().layer(inner), stream_request()).await;
        assert_eq!(bytes, EVENT.len() + event.len(), "{case}");
        assert!(err.expect(case).is_retryable(), "{case}");
    }
    // Data that only mentions errors, or is not an object, is output as before.
    for data in [
        "data: not json with \"error\" in it\n\n",
        "data: [\"error\", 1\n\n",
        "data: {\"content\":\"the \\\"error\\\" was\"}\n\n",
    ] {
        let inner = Inner::new(move |_, _| sse(TestBody::full(data)));
        let detect = ClassifyDashScopeError::new().detect_truncation(false);
        let response = call(detect.layer(inner), stream_request())
            .await
            .unwrap_or_else(|err| panic!("{data}: {err}"));
        let (bytes, err) = drain(response.into_body()).await;
        assert_eq!(bytes, data.len());
        assert!(err.is_none(), "{data}: {err:?}");
    }
}

/// A chat body just under the 16 MiB the layers parse, made of tiny values where the parse
/// looks (messages, content parts, strings with escapes): it is read without building a tree,
/// so the stack holds a bounded amount of memory (the body is the caller's), and it is counted
/// and rewritten as a chat request.
#[tokio::test(start_paused = true)]
async fn a_15_mib_body_of_tiny_values_is_parsed_in_bounded_memory() {
    let shapes: [(&str, &str); 4] = [
        ("messages", r#"{"role":"user","content":"a"},"#),
        ("content parts", r#"{"type":"text","text":"a"},"#),
        ("numbers", "0,"),
        ("escaped strings", r#""\u0061\n","#),
    ];
    for (name, item) in shapes {
        let n = 15 * MIB / item.len();
        let (head, tail) = match name {
            "messages" => (
                r#"{"model":"qwen-plus","messages":["#,
                r#"{"role":"user","content":"a"}]}"#,
            ),
            "content parts" => (
                r#"{"model":"qwen-plus","messages":[{"role":"user","content":["#,
                r#"{"type":"text","text":"a"}]}]}"#,
            ),
            _ => (r#"{"model":"qwen-plus","messages":[],"extra":["#, "0]}"),
        };
        let body = Bytes::from([head, &item.repeat(n), tail].concat());

        // qwen-plus is throttled, so fallback rewrites the body for qwen-flash: one copy.
        let inner = Inner::new(|_, req| {
            if req
                .body()
                .bytes()
                .unwrap()
                .starts_with(br#"{"model":"qwen-plus""#)
            {
                throttled()
            } else {
                ok_json()
            }
        });
        let layers = Layers {
            budget: TokenBudget::new(Quota::per_minute(600, u32::MAX)),
            ..Layers::default()
        };
        let ((), peak) = peak_alloc::measure_async(|| async {
            let response = call(layers.over(inner.clone()), chat(body.clone()))
                .await
                .unwrap();
            drop(response);
        })
        .await;
        assert_eq!(inner.calls(), 2, "{name}");
        assert!(
            inner.body(1).starts_with(br#"{"model":"qwen-flash""#),
            "{name}"
        );
        assert!(
            layers.budget.tokens_in_window("qwen-flash") > 0,
            "{name}: counted"
        );
        // The rewritten copy is the one allocation of the body's size.
        assert!(
            peak < body.len() + MIB,
            "{name}: held {peak} bytes for a {} byte body",
            body.len()
        );
    }
}
