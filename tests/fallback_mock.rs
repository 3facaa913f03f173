//! `FallbackModel` against `MockDashScope`: an outage window, a primary that recovers, a silent
//! primary, the context chain, a rate-limited primary in the recommended stack. Paused time.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{Fault, MockDashScope, ModelConfig};
use tower_dashscope::{ClassifyDashScopeError, FallbackModel, RetryWithJitter, ServedModel};

const PATH: &str = "/compatible-mode/v1/chat/completions";

fn chat(model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":8,"messages":[{{"role":"user","content":"hello there"}}]}}"#
    );
    Request::post(PATH)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn served<B>(response: &http::Response<B>) -> String {
    response
        .extensions()
        .get::<ServedModel>()
        .unwrap()
        .0
        .clone()
}

/// The `model` field of a JSON answer: the served model's own.
async fn answer_model<B>(response: http::Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["model"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_the_primary_loses_no_request() {
    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new().outage(Duration::from_secs(10)..Duration::from_secs(40)),
        )
        .model("qwen-flash", ModelConfig::new())
        .build();
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    let t0 = Instant::now();
    let mut by_flash = 0;
    for second in 0..60 {
        tokio::time::sleep_until(t0 + Duration::from_secs(second)).await;
        let response = service.clone().oneshot(chat("qwen-plus", false)).await;
        let response = response.unwrap_or_else(|e| panic!("at {second} s: {e}"));
        let model = served(&response);
        // The body is the served model's own answer, not relabelled.
        assert_eq!(answer_model(response).await, model);
        if model == "qwen-flash" {
            by_flash += 1;
        }
    }
    assert!((30..=36).contains(&by_flash), "{by_flash}");
    // During the 30 s outage the primary saw one request per 5 s cooldown, not one a second.
    let plus = mock.stats().model("qwen-plus").unwrap().total;
    assert!(plus.requests <= 30 + 7, "{plus:?}");
}

#[tokio::test(start_paused = true)]
async fn a_primary_down_for_a_minute_is_back_within_five_seconds_of_recovering() {
    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(60)),
        )
        .model("qwen-flash", ModelConfig::new())
        .build();
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    let t0 = Instant::now();
    let mut back_at = None;
    for tick in 0..30u64 {
        let at = Duration::from_secs(4 * tick);
        tokio::time::sleep_until(t0 + at).await;
        let response = service.clone().oneshot(chat("qwen-plus", false)).await;
        let model = served(&response.unwrap_or_else(|e| panic!("at {at:?}: {e}")));
        if at < Duration::from_secs(60) {
            assert_eq!(model, "qwen-flash", "at {at:?}");
        } else if model == "qwen-plus" && back_at.is_none() {
            back_at = Some(at);
        }
    }
    let back_at = back_at.expect("back on the primary");
    assert!(
        back_at - Duration::from_secs(60) <= Duration::from_secs(5),
        "{back_at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_primary_is_answered_within_the_first_byte_timeout_plus_one_attempt() {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new().fault(Fault::NoFirstByte))
        .model(
            "qwen-flash",
            ModelConfig::new().latency(Duration::from_millis(300), 0.0),
        )
        .build();
    let service = ServiceBuilder::new()
        .layer(
            FallbackModel::new(["qwen-plus", "qwen-flash"])
                .first_byte_timeout(Duration::from_secs(5)),
        )
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    for stream in [true, false] {
        let t0 = Instant::now();
        let response = service
            .clone()
            .oneshot(chat("qwen-plus", stream))
            .await
            .unwrap();
        let elapsed = Instant::now() - t0;
        assert_eq!(served(&response), "qwen-flash", "stream {stream}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
        // The first request waits out the timeout; the second finds the primary cooling.
        let bound = if stream {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        } + Duration::from_millis(300);
        assert!(elapsed <= bound, "stream {stream}: {elapsed:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_context_chain_against_the_simulator() {
    let mock = MockDashScope::builder()
        .model("qwen-flash", ModelConfig::new().context_window(1_000))
        .model("qwen-plus", ModelConfig::new().context_window(8_000))
        .model("qwen-long", ModelConfig::new().context_window(100_000))
        .build();
    let service = ServiceBuilder::new()
        .layer(
            FallbackModel::new(["qwen-flash"])
                .context_window("qwen-flash", 1_000)
                .context_window("qwen-plus", 8_000)
                .context_window("qwen-long", 100_000),
        )
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    // About 10,000 tokens: only qwen-long takes it; qwen-plus is skipped without a request.
    let text = "word ".repeat(8_000);
    let body = format!(
        r#"{{"model":"qwen-flash","max_tokens":8,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    );
    let response = service
        .oneshot(
            Request::post(PATH)
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(served(&response), "qwen-long");
    let stats = mock.stats();
    assert_eq!(stats.model("qwen-flash").unwrap().total.requests, 1);
    assert!(
        stats
            .model("qwen-plus")
            .is_none_or(|m| m.total.requests == 0)
    );
}

#[tokio::test(start_paused = true)]
async fn in_the_recommended_stack_a_throttled_primary_hands_over_at_once() {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new().rpm(60))
        .model("qwen-flash", ModelConfig::new())
        .build();
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
        .layer(RetryWithJitter::new().seed(3))
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    let t0 = Instant::now();
    // Ten requests at once: qwen-plus takes one per second, the rest go to qwen-flash now.
    let calls = (0..10).map(|_| service.clone().oneshot(chat("qwen-plus", false)));
    let responses = futures_join_all(calls).await;
    assert_eq!(Instant::now(), t0, "nobody slept a backoff");
    let served: Vec<String> = responses.into_iter().map(|r| served(&r.unwrap())).collect();
    assert_eq!(
        served.iter().filter(|m| *m == "qwen-plus").count(),
        1,
        "{served:?}"
    );
}

/// Runs futures concurrently on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(|f| Box::pin(f)).collect();
    let mut outputs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<_>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in handles.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => {
                        *output = Some(out);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(start_paused = true)]
async fn the_recommended_stack_compiles_and_falls_back() {
    use tower_dashscope::{Quota, TokenBudget, WaitTimeoutHeader};
    let mock = MockDashScope::builder()
        .model(
            "qwen-max",
            ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(600)),
        )
        .model("qwen-plus", ModelConfig::new())
        .build();
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-max", "qwen-plus"]))
        .layer(RetryWithJitter::new().max_attempts(2).seed(5))
        .layer(TokenBudget::new(Quota::per_minute(600, 1_000_000)))
        .layer(WaitTimeoutHeader::new(Duration::from_secs(5)))
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    let response = service.oneshot(chat("qwen-max", true)).await.unwrap();
    assert_eq!(served(&response), "qwen-plus");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
    // qwen-max was retried once (a 503), then the chain moved on.
    assert_eq!(mock.stats().model("qwen-max").unwrap().total.requests, 2);
}

/// The recommended order (fallback outside retry) with a primary down: after the first
/// request's retries, each later attempt at the cooling primary is a half-open probe, and a
/// probe that fails goes straight back to the fallback (the next model answers at once) instead
/// of being retried on the primary with backoff, which would also hold the cooldown back.
#[tokio::test(start_paused = true)]
async fn a_failed_probe_is_not_retried_below_the_fallback() {
    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new()
                .latency(Duration::ZERO, 1_000_000.0)
                .outage(Duration::ZERO..Duration::from_secs(600)),
        )
        .model(
            "qwen-flash",
            ModelConfig::new().latency(Duration::ZERO, 1_000_000.0),
        )
        .build();
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
        .layer(RetryWithJitter::new().seed(11))
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    let plus = || {
        mock.stats()
            .model("qwen-plus")
            .map_or(0, |m| m.total.requests)
    };
    // The first request retries the primary's 503s (brief failures are worth a retry), then
    // falls back; the primary cools down.
    let first = service.clone().oneshot(chat("qwen-plus", false)).await;
    assert_eq!(served(&first.unwrap()), "qwen-flash");
    let after_first = plus();
    assert!(
        after_first > 1,
        "the first request was retried: {after_first}"
    );
    // After the cooldown, a request probes the primary once and is answered by qwen-flash
    // without sleeping a backoff.
    tokio::time::sleep(Duration::from_secs(60)).await;
    for probe in 1..=3u64 {
        let sent = Instant::now();
        let response = service.clone().oneshot(chat("qwen-plus", false)).await;
        assert_eq!(served(&response.unwrap()), "qwen-flash");
        let took = Instant::now() - sent;
        assert!(
            took < Duration::from_millis(100),
            "probe {probe} slept a backoff: {took:?}"
        );
        assert_eq!(plus(), after_first + probe, "probe {probe} was retried");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// The goodput example's `flap`, reduced: a primary down for a minute under steady traffic
/// (five requests a second, each its own task) through the recommended stack is back in
/// rotation at most 5 s after it recovers.
#[tokio::test(start_paused = true)]
async fn under_steady_traffic_the_primary_is_back_within_five_seconds() {
    use tower_dashscope::{Quota, TokenBudget, WaitTimeoutHeader};
    let recovery = Duration::from_secs(70);
    let model = || {
        ModelConfig::new()
            .rpm(600)
            .tpm(200_000)
            .latency(Duration::from_millis(500), 60.0)
    };
    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            model().outage(Duration::from_secs(10)..recovery),
        )
        .model("qwen-flash", model())
        .build();
    let service = ServiceBuilder::new()
        .layer(
            FallbackModel::new(["qwen-plus", "qwen-flash"])
                .first_byte_timeout(Duration::from_secs(10)),
        )
        .layer(RetryWithJitter::new().seed(1))
        .layer(TokenBudget::new(Quota::per_minute(600, 200_000)))
        .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    let body = format!(
        r#"{{"model":"qwen-plus","max_tokens":200,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "word ".repeat(160)
    );
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        tokio::time::sleep_until(t0 + Duration::from_millis(200 * i)).await;
        let service = service.clone();
        let request = Request::post(PATH)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(request).await.unwrap();
            let model = served(&response);
            response.into_body().collect().await.unwrap();
            model
        }));
    }
    let mut first_back = None;
    for (i, task) in tasks.into_iter().enumerate() {
        let at = Duration::from_millis(200 * i as u64);
        if task.await.unwrap() == "qwen-plus" && at >= recovery && first_back.is_none() {
            first_back = Some(at);
        }
    }
    let back = first_back.expect("back on the primary") - recovery;
    assert!(back <= Duration::from_secs(5), "back after {back:?}");
}
