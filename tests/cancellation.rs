//! Cancellation at every await point: dropping a request's future while it waits for the
//! token budget, sleeps a retry's backoff, waits for a stream's first event, waits for a
//! cooled-down model or a first byte, fails over to another region, or probes a model or a
//! region after its cooldown returns every concurrency permit and reserved token, refunds the
//! retry budget, and leaves no probe slot taken: a later request can still probe.
//!
//! Each test stops the future exactly at its point: the inner service records every call and
//! can hang one forever, time is paused and advanced by hand, and the future is polled by hand
//! (`tokio_test::task`), so what has been called and what is pending is known at each step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio_test::task;
use tower::{Layer, ServiceExt};
use tower_dashscope::{
    Attempts, BudgetWait, ClassifyDashScopeError, ErrorClass, FallbackModel, Quota, Region,
    RegionRouter, RetryWithJitter, TokenBudget,
};

#[path = "support/inner.rs"]
mod inner;
#[path = "support/stack.rs"]
mod stack;
#[path = "support/store.rs"]
mod store;

use inner::{
    End, Inner, PLUS, TestBody, assert_model, assert_region, chat, drain, is_primary, model_of,
    ok_json, refuse_primary, refused, sse, throttled, unavailable,
};
use stack::Layers;
use store::ScriptedStore;
use tower_dashscope::budget::{BudgetStore as _, StoreFuture};

/// `future`'s output; a future still pending after ten minutes of (paused) time is a hang, and
/// fails the test instead of hanging it.
async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(600), future)
        .await
        .expect("hung: a dropped request left something taken")
}

/// A request of [`PLUS`] through a clone of `service`, which must answer (within [`within`]).
async fn send<S>(service: &S) -> S::Response
where
    S: tower::Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    within(service.clone().oneshot(chat(PLUS))).await.unwrap()
}

/// A request of [`PLUS`] through a clone of `service`, polled once by hand: it must be pending.
#[track_caller]
fn pending<S>(service: &S) -> task::Spawn<tower::util::Oneshot<S, Request<Full<Bytes>>>>
where
    S: tower::Service<Request<Full<Bytes>>> + Clone,
{
    let mut request = task::spawn(service.clone().oneshot(chat(PLUS)));
    assert!(request.poll().is_pending());
    request
}

/// A budget with room for everything here but one request at a time.
fn one_at_a_time() -> TokenBudget {
    TokenBudget::new(Quota::per_minute(600, 1_000_000)).max_concurrency(1)
}

fn last_model(inner: &Inner) -> String {
    model_of(inner.seen.lock().unwrap().last().unwrap())
}

fn stream_request() -> Request<Full<Bytes>> {
    let mut request = chat(
        r#"{"model":"qwen-plus","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":10}"#,
    );
    request
        .headers_mut()
        .insert("accept", "text/event-stream".parse().unwrap());
    request
}

const EVENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"index\":0,\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

// ------------------------------------------------------------------------------------------
// The budget wait
// ------------------------------------------------------------------------------------------

/// Requests waiting for the rate hold nothing: dropping one leaves the window as it was, and
/// the next waiter takes its turn (at 1 s, not 2 s).
#[tokio::test(start_paused = true)]
async fn dropping_a_request_waiting_for_the_rate_takes_nothing_and_frees_its_turn() {
    let budget = TokenBudget::new(Quota::per_minute(60, 1_000_000));
    let inner = Inner::ok();
    let service = budget.layer(inner.clone());
    drain(
        within(service.clone().oneshot(chat(PLUS)))
            .await
            .unwrap()
            .into_body(),
    )
    .await;
    let one = budget.tokens_in_window("qwen-plus");
    assert!(one > 0);

    let mut second = task::spawn(service.clone().oneshot(chat(PLUS)));
    let mut third = task::spawn(service.clone().oneshot(chat(PLUS)));
    assert!(second.poll().is_pending());
    assert!(third.poll().is_pending());
    assert_eq!(inner.calls(), 1, "both wait for the budget");
    assert_eq!(budget.in_flight(), 0);
    assert_eq!(
        budget.tokens_in_window("qwen-plus"),
        one,
        "a waiter reserves nothing"
    );

    drop(second);
    assert_eq!(budget.tokens_in_window("qwen-plus"), one);
    // The third takes the second's turn (about 1 s after the first), not the one after it.
    let start = tokio::time::Instant::now();
    let response = loop {
        if let std::task::Poll::Ready(response) = third.poll() {
            break response.unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(3), "never admitted");
        tokio::time::advance(Duration::from_millis(10)).await;
    };
    let waited = response.extensions().get::<BudgetWait>().unwrap().0;
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(
        waited < Duration::from_millis(1500),
        "the dropped request kept its turn: {waited:?}"
    );
    drop(response);
    // The first has left the one-second window; the third alone is in it (nothing of the
    // second's).
    assert_eq!(budget.tokens_in_window("qwen-plus"), one);
    assert_eq!(budget.in_flight(), 0);
}

/// A request waiting for a concurrency permit, dropped, leaves the count as it was; a request
/// dropped while its call is under way gives its permit back (and keeps its tokens, as the
/// server may have billed them).
#[tokio::test(start_paused = true)]
async fn dropping_a_request_waiting_for_a_permit_or_under_way_returns_the_permit() {
    let budget = TokenBudget::new(Quota::per_minute(6000, 10_000_000)).max_concurrency(1);
    let inner = Inner::hanging(|n, _| (n != 0).then(|| Ok(ok_json())));
    let service = budget.layer(inner.clone());

    let first = pending(&service);
    assert_eq!(inner.calls(), 1, "sent, and the answer never comes");
    assert_eq!(budget.in_flight(), 1);
    let charged = budget.tokens_in_window("qwen-plus");
    assert!(charged > 0);

    let second = pending(&service);
    assert_eq!(inner.calls(), 1, "waits for the permit");
    drop(second);
    assert_eq!(budget.in_flight(), 1);
    assert_eq!(budget.tokens_in_window("qwen-plus"), charged);

    drop(first);
    assert_eq!(budget.in_flight(), 0);
    // Sent: the server may be writing the answer, and counts its output when written; with
    // no usage to say how much, the output the model's answers are expected to use is owed
    // (the whole of max_tokens until answers have taught a share).
    assert!(
        budget.tokens_in_window("qwen-plus") > charged,
        "sent: its expected output is owed too"
    );

    let response = send(&service).await;
    assert!(response.extensions().get::<BudgetWait>().is_none());
    drop(response);
    assert_eq!(budget.in_flight(), 0);
}

/// The same through the whole stack: a waiter of the stack's budget, dropped, holds nothing.
#[tokio::test(start_paused = true)]
async fn dropping_a_stack_request_waiting_for_the_budget_takes_nothing() {
    let layers = Layers {
        budget: TokenBudget::new(Quota::per_minute(60, 1_000_000)).max_concurrency(4),
        ..Layers::default()
    };
    let inner = Inner::ok();
    let service = layers.over(inner.clone());
    drain(
        within(service.clone().oneshot(chat(PLUS)))
            .await
            .unwrap()
            .into_body(),
    )
    .await;
    let one = layers.budget.tokens_in_window("qwen-plus");

    let mut waiting = pending(&service);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(waiting.poll().is_pending());
    assert_eq!(inner.calls(), 1);
    drop(waiting);
    assert_eq!(layers.budget.in_flight(), 0);
    assert_eq!(layers.budget.tokens_in_window("qwen-plus"), one);

    tokio::time::advance(Duration::from_millis(500)).await;
    let response = send(&service).await;
    // Its turn is the dropped request's: at about 1 s, a few ms from now.
    let waited = response
        .extensions()
        .get::<BudgetWait>()
        .map_or(Duration::ZERO, |w| w.0);
    assert!(waited < Duration::from_millis(100), "{waited:?}");
}

/// A budget store that, while `slow` is set, never answers (a Redis that hangs), and the flag.
fn hanging_store() -> (ScriptedStore, Arc<AtomicBool>) {
    let slow = Arc::new(AtomicBool::new(false));
    let flag = slow.clone();
    let store = ScriptedStore::new(Arc::default(), move |local, key, limits, tokens| {
        if flag.load(Ordering::SeqCst) {
            StoreFuture::Pending(Box::pin(std::future::pending()))
        } else {
            local.try_take(key, limits, tokens)
        }
    });
    (store, slow)
}

/// Dropped while the budget asks a shared store that does not answer: the permit held for the
/// answer comes back, and the next request (the store answering again) is admitted at once.
#[tokio::test(start_paused = true)]
async fn dropping_a_request_while_the_budget_asks_its_store_returns_the_permit() {
    let (store, slow) = hanging_store();
    let budget = TokenBudget::new(Quota::per_minute(600, 1_000_000))
        .max_concurrency(1)
        .store(store);
    let inner = Inner::ok();
    let service = budget.layer(inner.clone());
    slow.store(true, Ordering::SeqCst);
    let mut asking = pending(&service);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(asking.poll().is_pending());
    assert_eq!(inner.calls(), 0);
    assert_eq!(
        budget.in_flight(),
        1,
        "a permit is held for the store's answer"
    );
    drop(asking);
    assert_eq!(budget.in_flight(), 0);

    slow.store(false, Ordering::SeqCst);
    let response = send(&service).await;
    assert!(response.extensions().get::<BudgetWait>().is_none());
    drop(response);
    assert_eq!(budget.in_flight(), 0);
}

// ------------------------------------------------------------------------------------------
// The backoff sleep
// ------------------------------------------------------------------------------------------

/// The retry budget allows 10 retries; ten requests dropped in their backoff each had one
/// withdrawn and must have it refunded: an eleventh still makes all its retries.
#[tokio::test(start_paused = true)]
async fn dropping_a_request_during_its_backoff_refunds_the_retry_budget() {
    let retry = RetryWithJitter::new()
        .seed(1)
        .max_attempts(11)
        .base_delay(Duration::from_secs(1))
        .max_delay(Duration::from_secs(1))
        .budget(1, 0.0);
    let inner = Inner::new(|_, _| unavailable());
    let service = retry.layer(ClassifyDashScopeError::new().layer(inner.clone()));
    for n in 1..=10 {
        let request = pending(&service);
        assert_eq!(inner.calls(), n, "one attempt, then the backoff");
        drop(request);
    }
    let before = inner.calls();
    let err = within(service.clone().oneshot(chat(PLUS)))
        .await
        .unwrap_err();
    assert_eq!(
        err.attempts(),
        Some(11),
        "the budget was refunded for every dropped retry"
    );
    assert_eq!(inner.calls() - before, 11);
}

/// In the stack, a request in its backoff holds no budget permit, and dropping it there
/// leaves none behind.
#[tokio::test(start_paused = true)]
async fn dropping_a_stack_request_during_its_backoff_holds_no_permit() {
    let layers = Layers {
        budget: one_at_a_time(),
        ..Layers::default()
    };
    let inner = Inner::new(|n, _| if n == 0 { unavailable() } else { ok_json() });
    let service = layers.over(inner.clone());
    let request = pending(&service);
    assert_eq!(inner.calls(), 1);
    assert_eq!(
        layers.budget.in_flight(),
        0,
        "the failed attempt's permit is back"
    );
    // Another request gets the one permit while the first sleeps.
    let response = send(&service).await;
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    drop(response);
    drop(request);
    assert_eq!(layers.budget.in_flight(), 0);
}

// ------------------------------------------------------------------------------------------
// The first-event peek
// ------------------------------------------------------------------------------------------

/// A stream whose first event never comes holds the call in the classifier; dropping it there
/// returns the budget's permit, in the budget alone and in the stack.
#[tokio::test(start_paused = true)]
async fn dropping_a_stream_waiting_for_its_first_event_returns_the_permit() {
    let silent = || Inner::new(|_, _| sse(TestBody::new(["data: {\"choi"], End::Never)));

    let budget = one_at_a_time();
    let inner = silent();
    let service = budget.layer(ClassifyDashScopeError::new().layer(inner.clone()));
    let mut request = task::spawn(service.clone().oneshot(stream_request()));
    assert!(request.poll().is_pending());
    assert_eq!(inner.calls(), 1);
    assert_eq!(budget.in_flight(), 1, "held while the classifier peeks");
    drop(request);
    assert_eq!(budget.in_flight(), 0);

    let layers = Layers {
        budget: one_at_a_time(),
        ..Layers::default()
    };
    let inner = silent();
    let mut request = task::spawn(layers.over(inner.clone()).oneshot(stream_request()));
    assert!(request.poll().is_pending());
    assert_eq!(inner.calls(), 1);
    assert_eq!(layers.budget.in_flight(), 1);
    drop(request);
    assert_eq!(layers.budget.in_flight(), 0);
    // The permit serves the next request.
    let inner = Inner::new(|_, _| sse(TestBody::full(EVENT)));
    let response = within(layers.over(inner).oneshot(stream_request()))
        .await
        .unwrap();
    let (_, err) = drain(response.into_body()).await;
    assert!(err.is_none());
    assert_eq!(layers.budget.in_flight(), 0);
}

// ------------------------------------------------------------------------------------------
// Fallback: the wait for a cooled-down model, the probe, the first-byte timeout
// ------------------------------------------------------------------------------------------

/// Every model cooling: the request waits; dropped there, it leaves no probe taken, and the
/// first request after the cooldown probes qwen-plus and puts it back.
#[tokio::test(start_paused = true)]
async fn dropping_a_request_waiting_for_a_cooled_model_leaves_no_probe_taken() {
    let fallback = FallbackModel::new(["qwen-plus", "qwen-flash"])
        .cooldown(Duration::from_secs(10))
        .max_wait(Duration::from_secs(30));
    let inner = Inner::new(|n, _| if n < 2 { throttled() } else { ok_json() });
    let service = fallback.layer(ClassifyDashScopeError::new().layer(inner.clone()));

    let err = within(service.clone().oneshot(chat(PLUS)))
        .await
        .unwrap_err();
    assert!(matches!(err.class(), ErrorClass::RateLimited(_)));
    assert_eq!(inner.calls(), 2, "both models throttled and cooling");
    let mut waiting = pending(&service);
    assert_eq!(inner.calls(), 2, "waiting for a model to come back");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(waiting.poll().is_pending());
    drop(waiting);

    tokio::time::advance(Duration::from_secs(5)).await;
    let response = send(&service).await;
    assert_model(&response, "qwen-plus");
    assert_eq!(inner.calls(), 3);
}

/// The one probe after a cooldown, dropped while under way, proves nothing: the next request
/// probes the model again instead of skipping it for good.
#[tokio::test(start_paused = true)]
async fn dropping_a_fallback_probe_lets_the_next_request_probe() {
    let fallback =
        FallbackModel::new(["qwen-plus", "qwen-flash"]).cooldown(Duration::from_secs(10));
    // qwen-plus: throttled, then silent (the probe), then fine.
    let inner = Inner::hanging(|n, req| match (n, model_of(req).as_str()) {
        (0, _) => Some(Ok(throttled())),
        (_, "qwen-flash") => Some(Ok(ok_json())),
        (2, _) => None,
        _ => Some(Ok(ok_json())),
    });
    let service = fallback.layer(ClassifyDashScopeError::new().layer(inner.clone()));
    let response = send(&service).await;
    assert_model(&response, "qwen-flash");
    assert_eq!(inner.calls(), 2);

    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = pending(&service);
    assert_eq!(inner.calls(), 3);
    assert_eq!(last_model(&inner), "qwen-plus", "the probe");
    // While the probe is under way, others skip qwen-plus.
    let response = send(&service).await;
    assert_model(&response, "qwen-flash");
    drop(probe);

    let response = send(&service).await;
    assert_model(&response, "qwen-plus");
    assert_eq!(last_model(&inner), "qwen-plus");
    // Healthy again: the next goes straight to it.
    send(&service).await;
    assert_eq!(last_model(&inner), "qwen-plus");
}

/// Dropped while waiting for a first byte under `first_byte_timeout`: the model is not cooled
/// (the drop proved nothing), and in the stack the budget's permit comes back.
#[tokio::test(start_paused = true)]
async fn dropping_a_request_waiting_for_its_first_byte_cools_nothing_and_returns_the_permit() {
    let layers = Layers {
        fallback: FallbackModel::new(["qwen-plus", "qwen-flash"])
            .first_byte_timeout(Duration::from_secs(5)),
        budget: one_at_a_time(),
        ..Layers::default()
    };
    let inner = Inner::hanging(|n, _| (n != 0).then(|| Ok(ok_json())));
    let service = layers.over(inner.clone());
    let mut request = pending(&service);
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(request.poll().is_pending());
    assert_eq!(inner.calls(), 1);
    assert_eq!(layers.budget.in_flight(), 1);
    drop(request);
    assert_eq!(layers.budget.in_flight(), 0);

    assert_model(&send(&service).await, "qwen-plus");
    assert_eq!(layers.budget.in_flight(), 0);
}

/// The first-byte timeout fires, fallback switches, and the switched attempt is dropped: the
/// timed-out model cools, the permit comes back, and qwen-plus is probed after its cooldown.
#[tokio::test(start_paused = true)]
async fn dropping_a_request_after_a_first_byte_timeout_switched_it() {
    let layers = Layers {
        fallback: FallbackModel::new(["qwen-plus", "qwen-flash"])
            .first_byte_timeout(Duration::from_secs(5))
            .cooldown(Duration::from_secs(10)),
        retry: RetryWithJitter::new().seed(1).max_attempts(1),
        budget: one_at_a_time(),
        ..Layers::default()
    };
    // The first two calls hang; the third on answers.
    let inner = Inner::hanging(|n, _| (n >= 2).then(|| Ok(ok_json())));
    let service = layers.over(inner.clone());
    let mut request = pending(&service);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(request.poll().is_pending());
    assert_eq!(
        inner.calls(),
        2,
        "timed out on qwen-plus, now waiting on qwen-flash"
    );
    assert_eq!(last_model(&inner), "qwen-flash");
    assert_eq!(layers.budget.in_flight(), 1);
    drop(request);
    assert_eq!(layers.budget.in_flight(), 0);

    // qwen-plus cools for 10 s, then the probe finds it well.
    assert_model(&send(&service).await, "qwen-flash");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_model(&send(&service).await, "qwen-plus");
    assert_eq!(layers.budget.in_flight(), 0);
}

/// The whole stack, every model cooling: a request waiting in fallback holds no permit, no
/// retry and no probe.
#[tokio::test(start_paused = true)]
async fn dropping_a_stack_request_waiting_for_a_cooled_model() {
    let layers = Layers {
        fallback: FallbackModel::new(["qwen-plus", "qwen-flash"])
            .cooldown(Duration::from_secs(10))
            .max_wait(Duration::from_secs(30)),
        retry: RetryWithJitter::new().seed(1).max_attempts(1),
        budget: one_at_a_time(),
        ..Layers::default()
    };
    let inner = Inner::new(|n, _| if n < 2 { throttled() } else { ok_json() });
    let service = layers.over(inner.clone());
    within(service.clone().oneshot(chat(PLUS)))
        .await
        .unwrap_err();
    assert_eq!(inner.calls(), 2);
    let waiting = pending(&service);
    assert_eq!(inner.calls(), 2);
    assert_eq!(layers.budget.in_flight(), 0);
    drop(waiting);
    assert_eq!(layers.budget.in_flight(), 0);
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = send(&service).await;
    assert_model(&response, "qwen-plus");
}

// ------------------------------------------------------------------------------------------
// Router: the failover and the probe
// ------------------------------------------------------------------------------------------

fn router() -> RegionRouter {
    RegionRouter::new(Region::Singapore, "sk-test-0000")
        .failover(Region::Virginia, "sk-test-1111")
        .cooldown(Duration::from_secs(10))
}

/// Dropped during its failover (the primary refused, the second region silent): the stack's
/// permit comes back, and the primary's probe after its cooldown is free to take.
#[tokio::test(start_paused = true)]
async fn dropping_a_request_during_its_failover() {
    let layers = Layers {
        router: router(),
        budget: one_at_a_time(),
        ..Layers::default()
    };
    // The primary refuses once; Virginia hangs once; then everything answers.
    let inner = Inner::hanging(|n, req| match n {
        0 if is_primary(req) => Some(Err(refused())),
        1 => None,
        _ => Some(Ok(ok_json())),
    });
    let service = layers.over(inner.clone());
    let request = pending(&service);
    assert_eq!(inner.calls(), 2, "failed over to Virginia, which is silent");
    assert!(!is_primary(inner.seen.lock().unwrap().last().unwrap()));
    assert_eq!(layers.budget.in_flight(), 1);
    drop(request);
    assert_eq!(layers.budget.in_flight(), 0);
    assert!(!layers.router.is_healthy(0));
    assert!(
        layers.router.is_healthy(1),
        "a dropped request proves nothing against Virginia"
    );

    // Cooling: Virginia first. After the cooldown: the primary's probe, which succeeds.
    assert_region(&send(&service).await, Region::Virginia);
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = send(&service).await;
    assert_region(&response, Region::Singapore);
    assert!(layers.router.is_healthy(0));
    drop(response);
    assert_eq!(layers.budget.in_flight(), 0);
}

/// The router's probe of the primary after its cooldown, dropped while under way: the next
/// request probes it again.
#[tokio::test(start_paused = true)]
async fn dropping_a_router_probe_lets_the_next_request_probe() {
    let router = router();
    // The primary: refuses, then hangs (the probe), then answers.
    let inner = Inner::hanging(|n, req| match (n, is_primary(req)) {
        (0, true) => Some(Err(refused())),
        (2, true) => None,
        _ => Some(Ok(ok_json())),
    });
    let service = router.layer(ClassifyDashScopeError::new().layer(inner.clone()));
    let response = send(&service).await;
    assert_region(&response, Region::Virginia);
    assert!(!router.is_healthy(0));

    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = pending(&service);
    assert_eq!(inner.calls(), 3);
    assert!(
        is_primary(inner.seen.lock().unwrap().last().unwrap()),
        "the probe"
    );
    // While it is under way, others go to Virginia.
    let response = send(&service).await;
    assert_region(&response, Region::Virginia);
    drop(probe);

    let response = send(&service).await;
    assert_region(&response, Region::Singapore);
    assert!(router.is_healthy(0));
}

/// A probe that fails cools the endpoint again (a sanity check of the probe path above).
#[tokio::test(start_paused = true)]
async fn a_failed_router_probe_cools_the_primary_again() {
    let router = router();
    let inner = Inner::fallible(refuse_primary);
    let service = router.layer(inner.clone());
    send(&service).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let response = send(&service).await;
    assert_region(&response, Region::Virginia);
    assert!(!router.is_healthy(0));
    // Without a failover left, the primary's refusal is the caller's typed error.
    let alone = RegionRouter::new(Region::Singapore, "sk-test-0000");
    let err = within(alone.layer(inner).oneshot(chat(PLUS)))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection);
}

// ------------------------------------------------------------------------------------------
// The caller drops a stream midway
// ------------------------------------------------------------------------------------------

/// A stream's body holds the budget's permit until it ends; dropped midway — while the next
/// chunk is awaited — it gives the permit back and keeps the tokens (the output was billed).
#[tokio::test(start_paused = true)]
async fn dropping_a_stream_body_midway_returns_the_permit() {
    use http_body_util::BodyExt;
    let layers = Layers {
        budget: one_at_a_time(),
        ..Layers::default()
    };
    let inner = Inner::new(|_, _| {
        sse(TestBody::new(
            [
                "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"index\":0,\"finish_reason\":null}]}\n\n",
            ],
            End::Never,
        ))
    });
    let response = within(layers.over(inner.clone()).oneshot(stream_request()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = within(body.frame()).await.unwrap().unwrap();
    assert!(first.is_data());
    let mut next = task::spawn(body.frame());
    assert!(next.poll().is_pending());
    assert_eq!(layers.budget.in_flight(), 1);
    drop(next);
    drop(body);
    assert_eq!(layers.budget.in_flight(), 0);
    assert!(
        layers.budget.tokens_in_window("qwen-plus") > 0,
        "billed as estimated"
    );
}
