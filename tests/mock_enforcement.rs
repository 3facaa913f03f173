//! The two ways the simulator enforces per-minute quotas per second: a continuous bucket, and
//! strict fixed one-second windows.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_dashscope::mock::{Enforcement, MockDashScope, ModelConfig, OutputCharge};
use tower_dashscope::{ClassifyDashScopeError, ErrorClass, RateLimitKind};

const COMPAT: &str = "/compatible-mode/v1/chat/completions";

fn chat(text: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 4});
    Request::post(COMPAT)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Sends `count` requests `gap` apart; returns the classes of the failures.
async fn pattern(mock: &MockDashScope, count: usize, gap: Duration, text: &str) -> Vec<ErrorClass> {
    let client = ClassifyDashScopeError::new().layer(mock.clone());
    let mut failures = Vec::new();
    for _ in 0..count {
        match client.clone().oneshot(chat(text)).await {
            Ok(response) => {
                let _ = response.into_body().collect().await.unwrap();
            }
            Err(err) => failures.push(err.class()),
        }
        tokio::time::sleep(gap).await;
    }
    failures
}

#[tokio::test(start_paused = true)]
async fn a_pattern_that_passes_a_bucket_is_throttled_by_fixed_windows() {
    // 120 RPM = 2 a second. A request every 490 ms is slightly over 2 a second on average, but
    // a bucket holding one second's worth absorbs it for a while; fixed windows see three
    // requests in the first whole second and refuse the third.
    let quota = || ModelConfig::new().rpm(120);
    let gap = Duration::from_millis(490);
    let continuous = MockDashScope::builder().model("m", quota()).build();
    assert_eq!(pattern(&continuous, 10, gap, "hi").await, []);
    // Built now, so its windows start with the pattern.
    let fixed = MockDashScope::builder()
        .model("m", quota().enforcement(Enforcement::FixedWindow))
        .build();
    let failures = pattern(&fixed, 10, gap, "hi").await;
    assert!(!failures.is_empty());
    assert!(
        failures
            .iter()
            .all(|c| *c == ErrorClass::RateLimited(RateLimitKind::Requests)),
        "{failures:?}"
    );
    // Each whole second admits exactly two.
    let stats = fixed.stats();
    let model = stats.model("m").unwrap();
    assert!(
        model.timeline.values().all(|c| c.succeeded <= 2),
        "{model:?}"
    );
    assert_eq!(model.total.throttled_requests, failures.len() as u64);
}

#[tokio::test(start_paused = true)]
async fn tokens_per_minute_in_fixed_windows() {
    // 6000 TPM = 100 tokens a second; each request is 40 input + 4 output = 44 tokens. Two fit
    // in a second, the third does not; the next second starts afresh.
    let text = "x".repeat(160);
    let continuous = MockDashScope::builder()
        .model("m", ModelConfig::new().tpm(6_000))
        .build();
    // 44 tokens every 450 ms is under 100 a second: the bucket passes all of them, but the
    // first whole second holds three of them (0, 450, 900 ms).
    let gap = Duration::from_millis(450);
    assert_eq!(pattern(&continuous, 6, gap, &text).await, []);
    let fixed = MockDashScope::builder()
        .model(
            "m",
            ModelConfig::new()
                .tpm(6_000)
                .enforcement(Enforcement::FixedWindow),
        )
        .build();
    let failures = pattern(&fixed, 6, gap, &text).await;
    assert_eq!(
        failures.first(),
        Some(&ErrorClass::RateLimited(RateLimitKind::Tokens)),
        "{failures:?}"
    );
    let stats = fixed.stats();
    let model = stats.model("m").unwrap();
    assert_eq!(model.timeline[&0].succeeded, 2);
    assert_eq!(model.timeline[&0].throttled_tokens, 1);
}

/// A chat request of `input` characters (a token per four) and `max_tokens`, streamed or not.
fn sized(input: usize, max_tokens: u32, stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "x".repeat(input)}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    Request::post(COMPAT)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn output_is_counted_when_generated_unless_told_to_count_it_on_admission() {
    for enforcement in [Enforcement::Continuous, Enforcement::FixedWindow] {
        // 60 tokens a second; 10 tokens a second of output, so a 100-token answer takes 10 s.
        let model = || {
            ModelConfig::new()
                .tpm(3600)
                .latency(Duration::ZERO, 10.0)
                .enforcement(enforcement)
        };
        let generated = MockDashScope::builder().model("m", model()).build();
        let client = ClassifyDashScopeError::new().layer(generated.clone());
        // Input 10 + output 100: more than a second's worth, admitted for its input; streamed,
        // so that its headers come before its answer is written.
        let answer = client.clone().oneshot(sized(40, 100, true)).await.unwrap();
        // Another fits beside it while the first is being written.
        let beside = client.clone().oneshot(sized(40, 1, false)).await;
        assert!(beside.is_ok(), "{enforcement:?}: {beside:?}");
        // Statistics count the input now, the output when it has been written.
        let counted = |mock: &MockDashScope| mock.stats().model("m").unwrap().total.tokens;
        assert_eq!(counted(&generated), 10 + 10 + 1, "{enforcement:?}");
        let _ = beside.unwrap().into_body().collect().await.unwrap();
        let _ = answer.into_body().collect().await.unwrap();
        assert_eq!(counted(&generated), 10 + 100 + 10 + 1, "{enforcement:?}");
        // Written, the 100 output tokens are over the second's 60: the next request, in the
        // same second, is refused.
        let after = client
            .clone()
            .oneshot(sized(40, 1, false))
            .await
            .unwrap_err();
        assert_eq!(
            after.class(),
            ErrorClass::RateLimited(RateLimitKind::Tokens),
            "{enforcement:?}"
        );

        // Counted on admission, the same first request needs room for all 110 tokens: it
        // passes only an untouched window or a full bucket, and the one beside it is refused.
        let on_admission = MockDashScope::builder()
            .model("m", model().output_charge(OutputCharge::OnAdmission))
            .build();
        let client = ClassifyDashScopeError::new().layer(on_admission.clone());
        let answer = client.clone().oneshot(sized(40, 100, true)).await.unwrap();
        assert_eq!(counted(&on_admission), 110, "{enforcement:?}");
        let beside = client
            .clone()
            .oneshot(sized(40, 1, false))
            .await
            .unwrap_err();
        assert_eq!(
            beside.class(),
            ErrorClass::RateLimited(RateLimitKind::Tokens),
            "{enforcement:?}"
        );
        drop(answer);
    }
}
