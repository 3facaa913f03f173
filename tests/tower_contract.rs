//! The tower contract, for every layer and the recommended stack: each drives an inner service
//! that panics when called without `poll_ready` and whose clones start unready, through every
//! path that calls it again (retry, fallback, failover, a budget wait); services, futures and
//! response bodies are `Send + Sync + 'static` (checked at compile time); the stack works behind
//! `tower::buffer::Buffer` and as axum state; and clones share what the docs say they share —
//! the retry budget, the token budget, fallback's cooldowns, the router's health — and layers
//! built apart (or configured after cloning) share nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_dashscope::{
    Attempts, BoxError, BudgetWait, ClassifyDashScopeError, DashScopeError, ErrorClass,
    FallbackModel, Quota, Region, RegionRouter, RetryWithJitter, ServedModel, TokenBudget,
    WaitTimeoutHeader,
};

#[path = "support/inner.rs"]
mod inner;
#[path = "support/stack.rs"]
mod stack;

use inner::{
    Inner, PLUS, Strict, TestBody, assert_model, assert_region, chat, drain, is_primary, model_of,
    ok_json, refuse_primary, refused, response, throttled, unavailable,
};
use stack::{Layers, Stack, recommended};

// ------------------------------------------------------------------------------------------
// poll_ready discipline
// ------------------------------------------------------------------------------------------

/// Calls `service` (made afresh, and a clone of it, each starting unready) `n` times at once,
/// from spawned tasks; every call must succeed.
async fn drive<S, B>(name: &str, service: S, n: usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let mut tasks = Vec::new();
    for _ in 0..n {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(chat(PLUS)).await?;
            let (_, err) = drain(response.into_body()).await;
            assert!(err.is_none(), "{err:?}");
            Ok::<_, DashScopeError>(())
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

#[tokio::test(start_paused = true)]
async fn classify_wait_timeout_and_buffer_ready_the_inner_service_before_each_call() {
    drive(
        "classify",
        ClassifyDashScopeError::new().layer(Strict::new(Inner::ok())),
        8,
    )
    .await;
    let wait = WaitTimeoutHeader::new(Duration::from_secs(30));
    drive("wait timeout", wait.layer(Strict::new(Inner::ok())), 8).await;
    let buffer = tower_dashscope::body::BufferRequestBody::new(1024 * 1024);
    drive(
        "buffer request body",
        buffer.layer(Strict::new(Inner::ok())),
        8,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn retry_readies_the_inner_service_before_each_attempt() {
    // Every request fails twice before it succeeds.
    let inner = Inner::new(|n, _| if n % 3 < 2 { unavailable() } else { ok_json() });
    let retry = RetryWithJitter::new()
        .seed(1)
        .max_attempts(30)
        .budget(100, 1.0);
    let service = retry.layer(ClassifyDashScopeError::new().layer(Strict::new(inner.clone())));
    let response = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    drive("retry", service, 8).await;
}

#[tokio::test(start_paused = true)]
async fn budget_readies_the_inner_service_after_a_wait() {
    // One request a second: all but the first wait, and each readies its service once admitted.
    let budget = TokenBudget::new(Quota::per_minute(60, 1_000_000)).max_concurrency(2);
    let service = budget.layer(Strict::new(Inner::ok()));
    let response = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_none());
    drop(response);
    let response = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_some());
    drop(response);
    drive("budget", service, 8).await;
    assert_eq!(budget.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_readies_the_inner_service_before_each_model() {
    let inner = Inner::new(|_, req| {
        if model_of(req) == "qwen-plus" {
            throttled()
        } else {
            ok_json()
        }
    });
    let fallback =
        FallbackModel::new(["qwen-plus", "qwen-flash"]).cooldown(Duration::from_millis(1));
    let service = fallback.layer(ClassifyDashScopeError::new().layer(Strict::new(inner.clone())));
    let response = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert_model(&response, "qwen-flash");
    drive("fallback", service, 8).await;
}

#[tokio::test(start_paused = true)]
async fn router_readies_the_inner_service_before_each_failover() {
    let inner = Inner::fallible(refuse_primary);
    let router = RegionRouter::new(Region::Singapore, "sk-test-0000")
        .failover(Region::Virginia, "sk-test-1111")
        .cooldown(Duration::from_millis(1));
    let service = router.layer(ClassifyDashScopeError::new().layer(Strict::new(inner.clone())));
    let response = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert_region(&response, Region::Virginia);
    drive("router", service, 8).await;
}

/// The whole stack over a strict inner service, every path at once: the primary region
/// refuses connections, qwen-plus is throttled, and qwen-flash fails once in three.
fn hostile() -> Inner {
    let flaky = Arc::new(AtomicUsize::new(0));
    Inner::fallible(move |_, req| {
        if is_primary(req) {
            return Err(refused());
        }
        if model_of(req) == "qwen-plus" {
            return Ok(throttled());
        }
        if flaky.fetch_add(1, Ordering::Relaxed) % 3 == 0 {
            Ok(unavailable())
        } else {
            Ok(ok_json())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_stack_readies_the_inner_service_before_every_call() {
    let layers = Layers {
        retry: RetryWithJitter::new().seed(1).budget(100, 1.0),
        ..Layers::default()
    };
    let service = layers.over(Strict::new(hostile()));
    let response = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert_model(&response, "qwen-flash");
    assert_region(&response, Region::Virginia);
    drop(response);
    drive("stack", service, 16).await;
    assert_eq!(layers.budget.in_flight(), 0);
    // The one-call stack with its own defaults, too.
    let defaults = tower_dashscope::RecommendedStack::new(Region::Singapore, "sk-test-0000");
    drive(
        "default stack",
        defaults.layer(Strict::new(Inner::ok())),
        16,
    )
    .await;
}

/// The strict service really panics: the tests above would catch a call without `poll_ready`.
#[test]
#[should_panic(expected = "called without poll_ready")]
fn the_strict_service_panics_when_called_unready() {
    let mut service = Strict::new(Inner::ok());
    drop(service.call(chat(PLUS)));
}

// ------------------------------------------------------------------------------------------
// Send + Sync + 'static
// ------------------------------------------------------------------------------------------

/// `S`, its future, its response (and so its body) and its error are `Send + Sync + 'static`.
fn assert_service<S>()
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + Sync + 'static,
    S::Future: Send + Sync + 'static,
    S::Response: Send + Sync + 'static,
    S::Error: Send + Sync + 'static,
{
}

fn assert_layer<L: Layer<Inner> + Clone + Send + Sync + 'static>() {}

#[test]
fn services_futures_and_bodies_are_send_sync_and_static() {
    assert_layer::<ClassifyDashScopeError>();
    assert_layer::<WaitTimeoutHeader>();
    assert_layer::<RetryWithJitter>();
    assert_layer::<TokenBudget>();
    assert_layer::<FallbackModel>();
    assert_layer::<RegionRouter>();
    assert_layer::<tower_dashscope::RecommendedStack>();

    assert_service::<Inner>();
    assert_service::<tower_dashscope::ClassifyDashScopeErrorService<Inner>>();
    assert_service::<tower_dashscope::WaitTimeoutHeaderService<Inner>>();
    assert_service::<tower_dashscope::RetryWithJitterService<Inner>>();
    assert_service::<tower_dashscope::TokenBudgetService<Inner>>();
    assert_service::<tower_dashscope::FallbackModelService<Inner>>();
    assert_service::<tower_dashscope::RegionRouterService<Inner>>();
    assert_service::<Stack<Inner>>();
    assert_service::<tower_dashscope::body::BufferRequestBodyService<Inner>>();
}

// ------------------------------------------------------------------------------------------
// Buffer and axum
// ------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_stack_works_behind_a_buffer() {
    let layers = Layers::default();
    let buffered = tower::buffer::Buffer::new(layers.over(Strict::new(hostile())), 4);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let buffered = buffered.clone();
        tasks.push(tokio::spawn(async move {
            let response = buffered.oneshot(chat(PLUS)).await?;
            let (_, err) = drain(response.into_body()).await;
            assert!(err.is_none());
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Errors come through the buffer as the stack's typed error.
    let always_down = Inner::new(|_, _| {
        response(
            401,
            &[],
            TestBody::full(r#"{"code":"InvalidApiKey","message":"Invalid API-key provided."}"#),
        )
    });
    let buffered = tower::buffer::Buffer::new(recommended(Strict::new(always_down)), 4);
    let err = buffered.oneshot(chat(PLUS)).await.unwrap_err();
    let err = err
        .downcast::<DashScopeError>()
        .expect("the stack's typed error");
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert_eq!(layers.budget.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_stack_works_as_axum_state() {
    use axum::extract::State;
    use axum::routing::post;

    type Client = Stack<Strict<Inner>>;

    async fn handler(State(client): State<Client>, body: Bytes) -> (StatusCode, String) {
        match client.oneshot(chat(body)).await {
            Ok(response) => {
                let status = response.status();
                let served = response
                    .extensions()
                    .get::<ServedModel>()
                    .map(|m| m.0.clone());
                let (bytes, _) = drain(response.into_body()).await;
                (
                    status,
                    format!("{} bytes from {}", bytes, served.unwrap_or_default()),
                )
            }
            Err(err) => (
                err.status().unwrap_or(StatusCode::BAD_GATEWAY),
                err.class().to_string(),
            ),
        }
    }

    let layers = Layers::default();
    let app = axum::Router::new()
        .route("/chat", post(handler))
        .with_state(layers.over(Strict::new(hostile())));
    for _ in 0..4 {
        let request = Request::post("/chat")
            .body(axum::body::Body::from(PLUS))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(text.ends_with(b"from qwen-flash"), "{text:?}");
    }
    assert_eq!(layers.budget.in_flight(), 0);
}

// ------------------------------------------------------------------------------------------
// What clones share
// ------------------------------------------------------------------------------------------

/// Attempts a request makes against an inner service that is always down.
async fn attempts<S, B>(service: S) -> u32
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
{
    let Err(err) = service.oneshot(chat(PLUS)).await else {
        panic!("the service is always down")
    };
    err.attempts().unwrap_or(1)
}

#[tokio::test(start_paused = true)]
async fn retry_clones_share_the_retry_budget_and_separate_layers_do_not() {
    let down = || ClassifyDashScopeError::new().layer(Inner::new(|_, _| unavailable()));
    // A budget of 1 retry a second over 10 s and no ratio: 10 retries in all, then none.
    let configure = || {
        RetryWithJitter::new()
            .seed(1)
            .max_attempts(100)
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(1))
            .budget(1, 0.0)
    };
    let layer = configure();
    assert_eq!(attempts(layer.layer(down())).await, 11);
    // A clone of the layer, and a service made from it, find the budget spent.
    assert_eq!(attempts(layer.clone().layer(down())).await, 1);
    let service = layer.layer(down());
    assert_eq!(attempts(service.clone()).await, 1);
    // A layer built apart, or a clone configured anew, has a budget of its own.
    assert_eq!(attempts(configure().layer(down())).await, 11);
    assert_eq!(
        attempts(layer.clone().budget(1, 0.0).layer(down())).await,
        11
    );
}

#[tokio::test(start_paused = true)]
async fn budget_clones_share_the_windows_and_separate_layers_do_not() {
    let budget = TokenBudget::new(Quota::per_minute(60, 1_000_000));
    let a = budget.layer(Inner::ok());
    let b = budget.clone().layer(Inner::ok());
    let response = a.clone().oneshot(chat(PLUS)).await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_none());
    assert!(budget.tokens_in_window("qwen-plus") > 0);
    // The clone's service waits for the same window (one request a second).
    let response = b.oneshot(chat(PLUS)).await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_some());
    // A budget built apart, or a clone configured anew, does not.
    let apart = TokenBudget::new(Quota::per_minute(60, 1_000_000));
    let response = apart.layer(Inner::ok()).oneshot(chat(PLUS)).await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_none());
    let configured = budget.clone().max_concurrency(4);
    assert_eq!(configured.tokens_in_window("qwen-plus"), 0);
}

#[tokio::test(start_paused = true)]
async fn budget_clones_share_the_concurrency_cap() {
    let budget = TokenBudget::new(Quota::per_minute(6000, 10_000_000)).max_concurrency(1);
    let a = budget.layer(Inner::ok());
    let b = budget.clone().layer(Inner::ok());
    let held = a.oneshot(chat(PLUS)).await.unwrap(); // holds the permit until its body ends
    assert_eq!(budget.in_flight(), 1);
    let mut waiting = tokio_test::task::spawn(b.oneshot(chat(PLUS)));
    assert!(
        waiting.poll().is_pending(),
        "the clone's request waits for the shared permit"
    );
    drop(held);
    assert_eq!(budget.in_flight(), 0);
    tokio::task::yield_now().await;
    let response = waiting.await.unwrap();
    assert_eq!(budget.in_flight(), 1);
    drop(response);
    assert_eq!(budget.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_clones_share_cooldowns_and_separate_layers_do_not() {
    let script = |_, req: &Request<Full<Bytes>>| {
        if model_of(req) == "qwen-plus" {
            throttled()
        } else {
            ok_json()
        }
    };
    let fallback =
        FallbackModel::new(["qwen-plus", "qwen-flash"]).cooldown(Duration::from_secs(60));
    let first = Inner::new(script);
    fallback
        .layer(ClassifyDashScopeError::new().layer(first.clone()))
        .oneshot(chat(PLUS))
        .await
        .unwrap();
    assert_eq!(first.calls(), 2);
    // qwen-plus cools down for every clone: the next request goes straight to qwen-flash.
    let second = Inner::new(script);
    fallback
        .clone()
        .layer(ClassifyDashScopeError::new().layer(second.clone()))
        .oneshot(chat(PLUS))
        .await
        .unwrap();
    assert_eq!(second.calls(), 1);
    assert_eq!(model_of(&second.seen.lock().unwrap()[0]), "qwen-flash");
    // As documented, a clone given another setting still shares the table...
    let fourth = Inner::new(script);
    let configured = fallback.clone().max_wait(Duration::from_secs(1));
    configured
        .layer(ClassifyDashScopeError::new().layer(fourth.clone()))
        .oneshot(chat(PLUS))
        .await
        .unwrap();
    assert_eq!(model_of(&fourth.seen.lock().unwrap()[0]), "qwen-flash");
    // ...while a layer built apart, or a clone given more models, tries qwen-plus first.
    for apart in [
        FallbackModel::new(["qwen-plus", "qwen-flash"]).cooldown(Duration::from_secs(60)),
        fallback.clone().with_chain(["qwen-max", "qwen-turbo"]),
    ] {
        let third = Inner::new(script);
        apart
            .layer(ClassifyDashScopeError::new().layer(third.clone()))
            .oneshot(chat(PLUS))
            .await
            .unwrap();
        assert_eq!(model_of(&third.seen.lock().unwrap()[0]), "qwen-plus");
    }
}

#[tokio::test(start_paused = true)]
async fn router_clones_share_health_and_separate_layers_do_not() {
    let script = refuse_primary;
    let router = RegionRouter::new(Region::Singapore, "sk-test-0000")
        .failover(Region::Virginia, "sk-test-1111")
        .cooldown(Duration::from_secs(60));
    let first = Inner::fallible(script);
    router
        .layer(first.clone())
        .oneshot(chat(PLUS))
        .await
        .unwrap();
    assert_eq!(first.calls(), 2);
    assert!(!router.is_healthy(0));
    assert!(!router.clone().is_healthy(0));
    // Every clone starts at Virginia now.
    let second = Inner::fallible(script);
    router
        .clone()
        .layer(second.clone())
        .oneshot(chat(PLUS))
        .await
        .unwrap();
    assert_eq!(second.calls(), 1);
    assert!(!is_primary(&second.seen.lock().unwrap()[0]));
    // A router built apart, or a clone configured anew, starts at Singapore.
    for apart in [
        RegionRouter::new(Region::Singapore, "sk-test-0000")
            .failover(Region::Virginia, "sk-test-1111"),
        router.clone().cooldown(Duration::from_secs(60)),
    ] {
        assert!(apart.is_healthy(0));
        let third = Inner::fallible(script);
        apart
            .layer(third.clone())
            .oneshot(chat(PLUS))
            .await
            .unwrap();
        assert!(is_primary(&third.seen.lock().unwrap()[0]));
    }
}

/// What a request carries is its own: a clone's request does not see another's attempts.
#[tokio::test(start_paused = true)]
async fn clones_do_not_share_per_request_state() {
    let inner = Inner::new(|n, _| if n == 0 { unavailable() } else { ok_json() });
    let service = recommended(inner);
    let first = service.clone().oneshot(chat(PLUS)).await.unwrap();
    let second = service.clone().oneshot(chat(PLUS)).await.unwrap();
    assert_eq!(first.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(second.extensions().get::<Attempts>(), Some(&Attempts(1)));
}
