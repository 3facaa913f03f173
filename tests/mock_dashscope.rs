//! The simulator: quota arithmetic in paused time, every error it emits classified correctly,
//! stream framing, faults, bad input, and HTTP mode over loopback.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Layer, ServiceExt};
use tower_dashscope::classify::{Usage, UsageSlot};
use tower_dashscope::mock::{Exhausted, MAX_OUTPUT_TOKENS, MockDashScope, ModelConfig};
use tower_dashscope::{
    ClassifyDashScopeError, DashScopeError, ErrorClass, RateLimitKind, RetryWithJitter,
};

const COMPAT: &str = "/compatible-mode/v1/chat/completions";
const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";
const ANTHROPIC: &str = "/apps/anthropic/v1/messages";

fn chat(path: &str, model: &str, text: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = if path == NATIVE {
        serde_json::json!({"model": model, "input": {"messages": [{"role": "user", "content": text}]}, "parameters": {"max_tokens": 4}})
    } else {
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4, "stream": stream, "stream_options": {"include_usage": true}})
    };
    let mut request = Request::post(path);
    if stream && path == NATIVE {
        request = request.header("X-DashScope-SSE", "enable");
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Sends through the classifier and reads the body to its end.
async fn send(
    mock: &MockDashScope,
    request: Request<Full<Bytes>>,
) -> Result<Bytes, DashScopeError> {
    let response = ClassifyDashScopeError::new()
        .layer(mock.clone())
        .oneshot(request)
        .await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

#[tokio::test(start_paused = true)]
async fn requests_per_minute_are_enforced_per_second() {
    // 120 RPM = 2 per second.
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new().rpm(120))
        .build();
    let mut ok = 0;
    for _ in 0..5 {
        if send(&mock, chat(COMPAT, "qwen-plus", "hi", false))
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 2, "one second's worth");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        send(&mock, chat(COMPAT, "qwen-plus", "hi", false))
            .await
            .is_ok(),
        "refilled by one"
    );
    assert!(
        send(&mock, chat(COMPAT, "qwen-plus", "hi", false))
            .await
            .is_err()
    );
    // Over a minute of steady traffic, admissions match the quota.
    let mut admitted = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if send(&mock, chat(COMPAT, "qwen-plus", "hi", false))
            .await
            .is_ok()
        {
            admitted += 1;
        }
    }
    assert!(
        (119..=121).contains(&admitted),
        "{admitted} in 60 s at 120 RPM"
    );
    let stats = mock.stats();
    let model = stats.model("qwen-plus").unwrap();
    assert_eq!(model.total.requests, 607);
    assert_eq!(model.total.succeeded + model.total.throttled_requests, 607);
}

#[tokio::test(start_paused = true)]
async fn tokens_per_minute_count_input_and_output() {
    // 6000 TPM = 100 tokens per second. "x" * 360 → 90 input tokens + 4 output = 94.
    let mock = MockDashScope::builder()
        .model("qwen-max", ModelConfig::new().tpm(6_000))
        .build();
    let text = "x".repeat(360);
    assert!(
        send(&mock, chat(COMPAT, "qwen-max", &text, false))
            .await
            .is_ok()
    );
    let err = send(&mock, chat(COMPAT, "qwen-max", &text, false))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Tokens));
    assert_eq!(err.code(), Some("insufficient_quota"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        send(&mock, chat(COMPAT, "qwen-max", &text, false))
            .await
            .is_ok()
    );
    let tokens: u64 = mock
        .stats()
        .model("qwen-max")
        .unwrap()
        .tokens_per_second()
        .map(|(_, tokens)| tokens)
        .sum();
    assert_eq!(tokens, 2 * 94);
}

#[tokio::test(start_paused = true)]
async fn every_error_it_emits_is_classified_correctly() {
    let rate = ModelConfig::new().rpm(60).tpm(1_000_000);
    let mock = MockDashScope::builder()
        .model("rpm", rate)
        .model("tpm", ModelConfig::new().tpm(600))
        .model(
            "down",
            ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(3600)),
        )
        .model("free", ModelConfig::new().exhausted(Exhausted::FreeTier))
        .model("owed", ModelConfig::new().exhausted(Exhausted::Billing))
        .model(
            "small",
            ModelConfig::new()
                .context_window(10)
                .moderation_marker("BAD"),
        )
        .model("flaky", ModelConfig::new().error_rate(1.0))
        .build();
    use ErrorClass::*;
    for path in [COMPAT, NATIVE, ANTHROPIC] {
        for stream in [false, true] {
            let cases: Vec<(&str, String, ErrorClass, u16)> = vec![
                (
                    "tpm",
                    "x".repeat(100),
                    RateLimited(RateLimitKind::Tokens),
                    429,
                ),
                ("down", "hi".into(), Unavailable, 503),
                ("free", "hi".into(), QuotaExhausted, 403),
                ("owed", "hi".into(), QuotaExhausted, 400),
                ("small", "x".repeat(100), ContextLengthExceeded, 400),
                ("small", "BAD".into(), ContentFiltered, 400),
                ("flaky", "hi".into(), ServerError, 500),
                ("nope", "hi".into(), NotFound, 404),
            ];
            // The quotas: the first request passes, the next is throttled.
            let _ = send(&mock, chat(path, "rpm", "hi", stream)).await;
            let _ = send(&mock, chat(path, "tpm", "hi", stream)).await;
            let err = send(&mock, chat(path, "rpm", "hi", stream))
                .await
                .unwrap_err();
            assert_eq!(
                err.class(),
                RateLimited(RateLimitKind::Requests),
                "{path} {stream}: {err}"
            );
            assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
            assert!(err.request_id().is_some());
            for (model, text, class, status) in cases {
                let err = send(&mock, chat(path, model, &text, stream))
                    .await
                    .unwrap_err();
                assert_eq!(err.class(), class, "{path} stream={stream} {model}: {err}");
                assert_eq!(
                    err.status().map(|s| s.as_u16()),
                    Some(status),
                    "{path} {model}"
                );
                assert!(err.request_id().is_some(), "{path} {model}");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_native_streaming_429_arrives_inside_an_http_200() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new().rpm(60))
        .build();
    let _ = send(&mock, chat(NATIVE, "m", "hi", true)).await;
    let response = mock
        .clone()
        .oneshot(chat(NATIVE, "m", "hi", true))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.starts_with("id:1\nevent:error\n:HTTP_STATUS/429\ndata:{"),
        "{text}"
    );
    assert!(text.contains("Throttling.RateQuota"));
}

#[tokio::test(start_paused = true)]
async fn streams_are_framed_paced_and_report_usage() {
    let mock = MockDashScope::builder()
        .model(
            "m",
            ModelConfig::new().latency(Duration::from_millis(500), 10.0),
        )
        .model("cut", ModelConfig::new().cut_streams_after(2))
        .build();
    for path in [COMPAT, NATIVE, ANTHROPIC] {
        let slot = UsageSlot::new();
        let mut request = chat(path, "m", "12345678", true);
        request.extensions_mut().insert(slot.clone());
        let start = tokio::time::Instant::now();
        let body = send(&mock, request).await.unwrap();
        // 4 tokens: 500 ms to the first, then 100 ms each.
        assert_eq!(start.elapsed(), Duration::from_millis(800), "{path}");
        assert_eq!(slot.get(), Some(Usage::new(2, 4)), "{path}");
        let text = String::from_utf8(body.to_vec()).unwrap();
        if path == NATIVE {
            assert_eq!(text.matches("\"finish_reason\":\"null\"").count(), 3);
            assert!(text.contains("\"finish_reason\":\"stop\""));
        } else if path == ANTHROPIC {
            let events: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("event: "))
                .collect();
            assert_eq!(
                events,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ]
            );
            assert!(text.contains(r#""usage":{"input_tokens":2,"output_tokens":0}"#));
            assert!(text.contains(r#""usage":{"output_tokens":4}"#));
        } else {
            assert!(text.ends_with("data: [DONE]\n\n"));
        }
        let err = send(&mock, chat(path, "cut", "hi", true))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::StreamInterrupted, "{path}");
    }
    assert_eq!(
        mock.stats().in_flight,
        0,
        "finished bodies are no longer in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn burst_limit_and_wait_timeout_queueing() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new().burst_limit(3))
        .build();
    let mut throttled = 0;
    for _ in 0..5 {
        if let Err(err) = send(&mock, chat(COMPAT, "m", "hi", false)).await {
            assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Burst));
            throttled += 1;
        }
    }
    assert_eq!(throttled, 2);
    // After an idle second, `floor` requests pass, even a floor of one.
    let one = MockDashScope::builder()
        .model("m", ModelConfig::new().burst_limit(1))
        .build();
    assert!(send(&one, chat(COMPAT, "m", "hi", false)).await.is_ok());
    let err = send(&one, chat(COMPAT, "m", "hi", false))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Burst));
    // With the wait-timeout header the server queues until the next second instead.
    let mut request = chat(COMPAT, "m", "hi", false);
    request
        .headers_mut()
        .insert("x-dashscope-wait-timeout", "5".parse().unwrap());
    let start = tokio::time::Instant::now();
    assert!(send(&mock, request).await.is_ok());
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(mock.stats().model("m").unwrap().total.queued, 1);
}

#[tokio::test(start_paused = true)]
async fn gateway_retry_after_and_keys() {
    let mock = MockDashScope::builder()
        .model(
            "m",
            ModelConfig::new()
                .rpm(60)
                .retry_after(Duration::from_millis(1500)),
        )
        .api_key("sk-right")
        .build();
    let keyed = |key: &str| {
        let mut request = chat(COMPAT, "m", "hi", false);
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    let err = send(&mock, keyed("sk-other-region")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert!(send(&mock, keyed("sk-right")).await.is_ok());
    let err = send(&mock, keyed("sk-right")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    // The retry layer waits as asked and succeeds.
    let client = RetryWithJitter::new()
        .seed(1)
        .layer(ClassifyDashScopeError::new().layer(mock.clone()));
    let response = client.oneshot(keyed("sk-right")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_dashscopes_answers() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    let raw = |path: &str, body: Vec<u8>| {
        Request::post(path)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    // The compatible shape, exactly: `invalid_parameter_error` is the code, not the type.
    let response = mock
        .clone()
        .oneshot(raw(COMPAT, b"not json".to_vec()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["error"]["code"], "invalid_parameter_error");
    assert_eq!(value["error"]["type"], "invalid_request_error");
    let err = send(&mock, raw(COMPAT, b"not json".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.code()),
        (ErrorClass::InvalidRequest, Some("invalid_parameter_error"))
    );
    let err = send(&mock, raw(NATIVE, br#"{"input":{}}"#.to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.code()),
        (ErrorClass::InvalidRequest, Some("InvalidParameter"))
    );
    let err = send(
        &mock,
        raw(COMPAT, br#"{"model":"qwen-nope","messages":[]}"#.to_vec()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class(), err.code()),
        (ErrorClass::NotFound, Some("model_not_found"))
    );
    let err = send(&mock, raw("/v1/v1/messages", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.code()),
        (ErrorClass::NotFound, None),
        "a bare 404 for a wrong base path"
    );
    // A wait-timeout too large to add to a clock: read as the longest wait, no panic.
    let mut request = chat(COMPAT, "m", "hi", false);
    request.headers_mut().insert(
        "x-dashscope-wait-timeout",
        u64::MAX.to_string().parse().unwrap(),
    );
    assert!(send(&mock, request).await.is_ok());
    let err = send(&mock, raw(COMPAT, vec![b' '; 16 * 1024 * 1024 + 1]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::PayloadTooLarge);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_request_bodies_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        path in prop_oneof![Just(COMPAT), Just(NATIVE), Just(ANTHROPIC), Just("/x")],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let mock = MockDashScope::builder().model("m", ModelConfig::new().rpm(60).tpm(1000)).build();
            let request = Request::post(path).body(Full::new(Bytes::from(body))).unwrap();
            let response = mock.oneshot(request).await.unwrap();
            let _ = response.into_body().collect().await.unwrap();
        });
    }
}

#[tokio::test]
async fn http_mode_over_loopback_with_hyper_utils_client() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new().rpm(60))
        .model("reset", ModelConfig::new().reset_rate(1.0))
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = ClassifyDashScopeError::new()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    let absolute = |request: Request<Full<Bytes>>| {
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("{base}{}", parts.uri.path()).parse().unwrap();
        Request::from_parts(parts, body)
    };
    let ok = client
        .clone()
        .oneshot(absolute(chat(COMPAT, "m", "hi", true)))
        .await
        .unwrap();
    let body = ok.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let err = client
        .clone()
        .oneshot(absolute(chat(NATIVE, "m", "hi", true)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS), "{err}");
    let err = client
        .clone()
        .oneshot(absolute(chat(COMPAT, "reset", "hi", false)))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection, "{err}");
    assert!(err.is_retryable());
    assert_eq!(mock.stats().requests, 3);
    server.shutdown();
}

#[tokio::test(start_paused = true)]
async fn the_timeline_counts_each_second() {
    // 120 RPM = 2 requests per second. Five requests at the start of each of three seconds:
    // two admitted and three throttled in every second.
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new().rpm(120))
        .build();
    for _ in 0..3 {
        for _ in 0..5 {
            let _ = send(&mock, chat(COMPAT, "m", "12345678", false)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats = mock.stats();
    let model = stats.model("m").unwrap();
    assert_eq!(
        model.timeline.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for (second, counts) in &model.timeline {
        assert_eq!(counts.requests, 5, "second {second}");
        assert_eq!(counts.succeeded, 2, "second {second}");
        assert_eq!(counts.throttled_requests, 3, "second {second}");
        // 2 input tokens (8 characters, 4 a token) + 4 output, each.
        assert_eq!(counts.tokens, 2 * (2 + 4), "second {second}");
    }
    assert_eq!(model.total.requests, 15);
    assert_eq!(model.total.throttled(), 9);
    assert_eq!(stats.total(), model.total);
    assert_eq!(
        model.tokens_per_second().collect::<Vec<_>>(),
        [(0, 12), (1, 12), (2, 12)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeline_keeps_the_last_hour() {
    use tower_dashscope::mock::TIMELINE_SECONDS;
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    let seconds = TIMELINE_SECONDS as u64 + 100;
    for _ in 0..seconds {
        send(&mock, chat(COMPAT, "m", "hi", false)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats = mock.stats();
    let model = stats.model("m").unwrap();
    assert_eq!(model.timeline.len(), TIMELINE_SECONDS);
    assert_eq!(
        model.timeline.keys().next(),
        Some(&100),
        "the oldest seconds go first"
    );
    assert_eq!(model.total.requests, seconds, "totals are kept whole");

    // An hour, not 3600 busy seconds: with a request every other second, half as many.
    for _ in 0..TIMELINE_SECONDS {
        send(&mock, chat(COMPAT, "m", "hi", false)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let stats = mock.stats();
    let timeline = &stats.model("m").unwrap().timeline;
    let (first, last) = (
        timeline.keys().next().unwrap(),
        timeline.keys().last().unwrap(),
    );
    assert_eq!(
        last - first,
        TIMELINE_SECONDS as u64 - 2,
        "{first}..={last}"
    );
    assert_eq!(timeline.len(), TIMELINE_SECONDS / 2);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_counts_once_and_in_flight_peaks_are_kept() {
    let mock = MockDashScope::builder()
        .model(
            "m",
            ModelConfig::new()
                .burst_limit(2)
                .latency(Duration::from_millis(100), 10.0),
        )
        .build();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut request = chat(COMPAT, "m", "hi", true);
            request
                .headers_mut()
                .insert("x-dashscope-wait-timeout", "10".parse().unwrap());
            let mock = mock.clone();
            tokio::spawn(async move { send(&mock, request).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let stats = mock.stats();
    let model = stats.model("m").unwrap();
    // Two admitted in second 0; two queued to second 1, where two more are allowed.
    assert_eq!(model.total.requests, 4);
    assert_eq!(model.total.queued, 2);
    assert_eq!(model.total.succeeded, 4);
    assert_eq!(model.timeline[&0].succeeded, 2);
    assert_eq!(model.timeline[&1].succeeded, 2);
    // Each stream takes 100 ms + 3 × 100 ms, so the two of each second overlap.
    assert_eq!(stats.peak_in_flight, 2);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn keys_bound_to_a_host_work_only_there() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .api_key_for_host("sk-intl", "DashScope-Intl.aliyuncs.com")
        .api_key_for_host("sk-sp-coding", "coding-intl.dashscope.aliyuncs.com:443")
        .api_key("sk-anywhere")
        .build();
    let request = |uri: &str, host: Option<&str>, key: &str| {
        let mut request = chat(COMPAT, "m", "hi", false);
        *request.uri_mut() = uri.parse().unwrap();
        if let Some(host) = host {
            request.headers_mut().insert("host", host.parse().unwrap());
        }
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    const INTL: &str = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions";
    const BEIJING: &str = "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions";
    const CODING: &str = "https://coding-intl.dashscope.aliyuncs.com/v1/chat/completions";
    const PATH: &str = "/compatible-mode/v1/chat/completions";
    let accepted = [
        (INTL, None, "sk-intl"),
        (PATH, Some("dashscope-intl.aliyuncs.com:8443"), "sk-intl"),
        (CODING, None, "sk-sp-coding"),
        (BEIJING, None, "sk-anywhere"),
    ];
    for (uri, host, key) in accepted {
        assert!(
            send(&mock, request(uri, host, key)).await.is_ok(),
            "{uri} {host:?} {key}"
        );
    }
    let refused = [
        (BEIJING, None, "sk-intl"),
        (PATH, None, "sk-intl"),
        (PATH, Some("dashscope.aliyuncs.com"), "sk-intl"),
        (INTL, None, "sk-sp-coding"),
        (CODING, None, "sk-other"),
    ];
    for (uri, host, key) in refused {
        let err = send(&mock, request(uri, host, key)).await.unwrap_err();
        assert_eq!(
            err.class(),
            ErrorClass::Authentication,
            "{uri} {host:?} {key}"
        );
        assert_eq!(err.code(), Some("invalid_api_key"));
    }
    // The Anthropic-compatible path also takes the key as Anthropic's SDKs send it.
    let anthropic = |header: &'static str, key: &str| {
        let mut request = chat(ANTHROPIC, "m", "hi", false);
        request.headers_mut().insert(header, key.parse().unwrap());
        request
    };
    assert!(
        send(&mock, anthropic("x-api-key", "sk-anywhere"))
            .await
            .is_ok()
    );
    let err = send(&mock, anthropic("x-api-key", "sk-other"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    let mut compat = chat(COMPAT, "m", "hi", false);
    compat
        .headers_mut()
        .insert("x-api-key", "sk-anywhere".parse().unwrap());
    let err = send(&mock, compat).await.unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::Authentication,
        "only Bearer on the other paths"
    );
    // Keys are not shown by Debug.
    let debug = format!(
        "{:?}",
        MockDashScope::builder().api_key_for_host("sk-secret-value", "h")
    );
    assert!(!debug.contains("sk-secret-value"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn max_tokens_out_of_range_is_refused_as_dashscope_does() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new().max_output_tokens(100))
        .build();
    let compat =
        |max_tokens: &str| format!(r#"{{"model":"m","messages":[],"max_tokens":{max_tokens}}}"#);
    let mut cases = vec![
        (COMPAT, compat("0")),
        (COMPAT, compat("101")),
        (
            NATIVE,
            r#"{"model":"m","input":{"messages":[]},"parameters":{"max_tokens":4000000000}}"#
                .to_owned(),
        ),
        (
            ANTHROPIC,
            r#"{"model":"m","messages":[],"max_tokens":101}"#.to_owned(),
        ),
    ];
    // Anything but a whole number is out of range too, as DashScope answers it.
    for bad in ["-1", "1.5", "\"10\"", "true", "{}"] {
        cases.push((COMPAT, compat(bad)));
    }
    for (path, body) in cases {
        let request = Request::post(path)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let err = send(&mock, request).await.unwrap_err();
        assert_eq!(
            err.class(),
            ErrorClass::InvalidRequest,
            "{path} {body}: {err}"
        );
        assert_eq!(
            err.message(),
            Some("Range of max_tokens should be [1, 100]"),
            "{path} {body}"
        );
    }
    let request = Request::post(COMPAT)
        .body(Full::new(Bytes::from(
            r#"{"model":"m","messages":[],"max_tokens":100}"#,
        )))
        .unwrap();
    assert!(send(&mock, request).await.is_ok());
    assert_eq!(mock.stats().model("m").unwrap().total.failed, 9);

    // The model's limit bounds the default output too, and is itself bounded.
    let mock = MockDashScope::builder()
        .model("short", ModelConfig::new().max_output_tokens(2))
        .model("huge", ModelConfig::new().max_output_tokens(u32::MAX))
        .build();
    let request = Request::post(COMPAT)
        .body(Full::new(Bytes::from(r#"{"model":"short","messages":[]}"#)))
        .unwrap();
    let body = send(&mock, request).await.unwrap();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["usage"]["completion_tokens"], 2);
    let request = Request::post(COMPAT)
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"huge","messages":[],"max_tokens":{}}}"#,
            u32::MAX
        ))))
        .unwrap();
    let err = send(&mock, request).await.unwrap_err();
    assert_eq!(
        err.message(),
        Some(format!("Range of max_tokens should be [1, {MAX_OUTPUT_TOKENS}]").as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn native_streams_repeat_the_text_unless_incremental() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    for (incremental, last) in [(false, "Qwen answers your"), (true, " your")] {
        let body = serde_json::json!({"model": "m", "input": {"messages": [{"role": "user", "content": "hi"}]}, "parameters": {"max_tokens": 3, "incremental_output": incremental}});
        let request = Request::post(NATIVE)
            .header("x-dashscope-sse", "enable")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let body = send(&mock, request).await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        let contents: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| {
                let v: serde_json::Value = serde_json::from_str(d).unwrap();
                v["output"]["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(contents.len(), 3);
        assert_eq!(
            contents.last().map(String::as_str),
            Some(last),
            "{incremental}"
        );
    }
}
