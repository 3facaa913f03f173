//! The layers' `tracing` output: the events a person reads to see what the layers decided, with
//! the field names of the crate docs' telemetry table. Captured by a small test subscriber
//! (tests/support/capture.rs); the simulator in paused time underneath.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::{
    ClassifyDashScopeError, ErrorClass, FallbackModel, Quota, RateLimitKind, Region, RegionRouter,
    RetryWithJitter, TokenBudget, WaitTimeoutHeader,
};
use tracing::Level;

#[path = "support/capture.rs"]
mod capture;
#[path = "support/hosts.rs"]
mod hosts;

use capture::{Capture, Kind};
use hosts::RefuseHosts;

const PATH: &str = "/compatible-mode/v1/chat/completions";

fn chat(model: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":8,"messages":[{{"role":"user","content":"hello there"}}]}}"#
    );
    Request::post(PATH)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A chat request for `model` to Singapore's host.
fn intl(model: &str) -> Request<Full<Bytes>> {
    let mut req = chat(model);
    *req.uri_mut() = format!("https://dashscope-intl.aliyuncs.com{PATH}")
        .parse()
        .unwrap();
    req
}

/// A simulator serving `models`.
fn mock<const N: usize>(models: [(&str, ModelConfig); N]) -> MockDashScope {
    models
        .into_iter()
        .fold(MockDashScope::builder(), |builder, (name, config)| {
            builder.model(name, config)
        })
        .build()
}

/// A model that is down from the start for `outage`.
fn down_for(outage: Duration) -> ModelConfig {
    ModelConfig::new().outage(Duration::ZERO..outage)
}

/// Sends `request` through `service`, which must answer, and reads the body to its end.
async fn complete<S, B>(service: S, request: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let response = service.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
}

/// A number, as the subscriber saw it.
fn number(value: &str) -> u64 {
    value
        .parse()
        .unwrap_or_else(|_| panic!("`{value}` is not a number"))
}

#[tokio::test(start_paused = true)]
async fn a_retry_says_which_attempt_failed_how_and_how_long_it_waits() {
    let (logs, _guard) = Capture::start();
    let mock = mock([("qwen-plus", down_for(Duration::from_millis(1)))]);
    let service = ServiceBuilder::new()
        .layer(RetryWithJitter::new().seed(7))
        .layer(ClassifyDashScopeError::new())
        .service(mock);
    complete(service, intl("qwen-plus")).await;

    let classified = logs.expect_event("DashScope error classified");
    assert_eq!(classified.level, Level::DEBUG);
    assert_eq!(classified.expect("error.type"), "unavailable");
    assert_eq!(classified.expect("http.response.status_code"), "503");
    assert_eq!(classified.expect("dashscope.code"), "ServiceUnavailable");
    assert!(
        classified.field("dashscope.request_id").is_some(),
        "{classified}"
    );

    let retrying = logs.expect_event("retrying after a delay");
    assert_eq!(retrying.level, Level::INFO);
    assert_eq!(retrying.expect("attempt"), "1");
    assert_eq!(retrying.expect("error.type"), "unavailable");
    assert!(number(retrying.expect("delay_ms")) > 0, "{retrying}");
    assert_eq!(retrying.target, "tower_dashscope::retry::future");
    // The success that followed logged nothing above DEBUG.
    let loud: Vec<_> = logs
        .records()
        .into_iter()
        .filter(|r| r.kind == Kind::Event && r.level < Level::DEBUG)
        .filter(|r| !r.name.contains("retrying"))
        .collect();
    assert!(loud.is_empty(), "{loud:?}");
}

#[tokio::test(start_paused = true)]
async fn giving_up_is_a_warning_with_the_attempts_and_the_reason() {
    let (logs, _guard) = Capture::start();
    let mock = mock([("qwen-plus", down_for(Duration::from_secs(3600)))]);
    let service = ServiceBuilder::new()
        .layer(RetryWithJitter::new().max_attempts(2).seed(7))
        .layer(ClassifyDashScopeError::new())
        .service(mock);
    let err = service.oneshot(intl("qwen-plus")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    let gave_up = logs.expect_event("giving up");
    assert_eq!(gave_up.level, Level::WARN);
    assert_eq!(gave_up.expect("attempt"), "2");
    assert_eq!(gave_up.expect("reason"), "attempts exhausted");
    assert_eq!(gave_up.expect("error.type"), "unavailable");
}

#[tokio::test(start_paused = true)]
async fn a_fallback_names_the_model_it_leaves_the_one_it_takes_and_the_one_that_served() {
    let (logs, _guard) = Capture::start();
    let mock = mock([
        ("qwen-max", down_for(Duration::from_secs(600))),
        ("qwen-plus", ModelConfig::new()),
    ]);
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-max", "qwen-plus"]))
        .layer(RetryWithJitter::new().max_attempts(1))
        .layer(ClassifyDashScopeError::new())
        .service(mock);
    complete(service, intl("qwen-max")).await;

    let cooling = logs.expect_event("fallback: model cooling down");
    assert_eq!(cooling.level, Level::INFO);
    assert_eq!(cooling.expect("gen_ai.request.model"), "qwen-max");
    assert_eq!(cooling.expect("error.type"), "unavailable");
    assert!(number(cooling.expect("cooldown_ms")) > 0);

    let switched = logs.expect_event("fallback: switching model");
    assert_eq!(switched.level, Level::INFO);
    assert_eq!(switched.expect("gen_ai.request.model"), "qwen-max");
    assert_eq!(switched.expect("dashscope.fallback.model"), "qwen-plus");
    assert_eq!(switched.expect("error.type"), "unavailable");

    let served = logs.expect_event("served by a fallback model");
    assert_eq!(served.expect("gen_ai.request.model"), "qwen-max");
    assert_eq!(served.expect("gen_ai.response.model"), "qwen-plus");

    // The request's span: what it asked for, what served it; the decisions happen inside it.
    let records = logs.records();
    let span = records
        .iter()
        .find(|r| r.kind == Kind::Span && r.name == "dashscope.fallback")
        .expect("a dashscope.fallback span");
    assert_eq!(span.level, Level::DEBUG);
    assert_eq!(span.expect("gen_ai.request.model"), "qwen-max");
    assert!(records.iter().any(|r| r.kind == Kind::SpanRecord
        && r.name == "dashscope.fallback"
        && r.field("gen_ai.response.model") == Some("qwen-plus")));
    assert_eq!(switched.spans, ["dashscope.fallback"]);

    // The retry below stopped, but the request did not fail: no warning.
    let not_retrying = logs.expect_event("not retrying; the fallback above has another model");
    assert_eq!(not_retrying.level, Level::DEBUG);
    assert_eq!(not_retrying.expect("gen_ai.request.model"), "qwen-max");
    let warnings: Vec<_> = records
        .iter()
        .filter(|r| r.kind == Kind::Event && r.level <= Level::WARN)
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test(start_paused = true)]
async fn below_a_fallback_the_retry_names_the_model_and_runs_in_spans() {
    let (logs, _guard) = Capture::start();
    let mock = mock([
        ("qwen-max", down_for(Duration::from_millis(1))),
        ("qwen-plus", ModelConfig::new()),
    ]);
    let service = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-max", "qwen-plus"]))
        .layer(RetryWithJitter::new().max_attempts(3).seed(7))
        .layer(ClassifyDashScopeError::new())
        .service(mock);
    complete(service, intl("qwen-max")).await;

    let retrying = logs.expect_event("retrying after a delay");
    assert_eq!(retrying.expect("gen_ai.request.model"), "qwen-max");
    assert_eq!(retrying.spans, ["dashscope.fallback", "dashscope.retry"]);
    // The second attempt is recorded on the retry's span.
    assert!(logs.records().iter().any(|r| r.kind == Kind::SpanRecord
        && r.name == "dashscope.retry"
        && r.field("attempt") == Some("2")));
}

#[tokio::test(start_paused = true)]
async fn a_budget_wait_says_for_which_model_and_how_long_and_the_settle_reports_usage() {
    let (logs, _guard) = Capture::start();
    let mock = mock([("qwen-plus", ModelConfig::new())]);
    let service = ServiceBuilder::new()
        .layer(TokenBudget::new(Quota::per_minute(1, 1_000_000)))
        .layer(ClassifyDashScopeError::new())
        .service(mock);
    for _ in 0..2 {
        complete(service.clone(), intl("qwen-plus")).await;
    }

    let waiting = logs.expect_event("no room yet; waiting");
    assert_eq!(waiting.level, Level::DEBUG);
    assert_eq!(waiting.expect("gen_ai.request.model"), "qwen-plus");
    assert!(number(waiting.expect("wait_ms")) > 0, "{waiting}");

    let admitted = logs.expect_event("admitted after waiting");
    assert_eq!(admitted.expect("gen_ai.request.model"), "qwen-plus");
    assert!(number(admitted.expect("wait_ms")) > 0, "{admitted}");

    let settled = logs.events("settled with the reported usage");
    assert_eq!(settled.len(), 2, "{}", logs.text());
    assert_eq!(settled[0].expect("gen_ai.request.model"), "qwen-plus");
    assert!(number(settled[0].expect("gen_ai.usage.input_tokens")) > 0);
    assert!(number(settled[0].expect("gen_ai.usage.output_tokens")) > 0);
}

#[tokio::test(start_paused = true)]
async fn a_budget_refusal_is_a_warning_naming_the_model_and_the_wait() {
    let (logs, _guard) = Capture::start();
    let mock = mock([("qwen-plus", ModelConfig::new())]);
    let service = ServiceBuilder::new()
        .layer(TokenBudget::new(Quota::per_minute(1, 1_000_000)).max_wait(Duration::from_secs(1)))
        .layer(ClassifyDashScopeError::new())
        .service(mock);
    complete(service.clone(), intl("qwen-plus")).await;
    let err = service.oneshot(intl("qwen-plus")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
    let refused = logs.expect_event("giving up: TokenBudget has no room");
    assert_eq!(refused.level, Level::WARN);
    assert_eq!(refused.expect("gen_ai.request.model"), "qwen-plus");
    assert_eq!(refused.expect("error.type"), "rate_limited_local");
    assert!(number(refused.expect("wait_ms")) > 1000, "{refused}");
    assert_eq!(refused.expect("dashscope.budget.max_wait_ms"), "1000");
}

#[tokio::test(start_paused = true)]
async fn a_failover_names_both_regions_and_the_recovery_is_logged() {
    let (logs, _guard) = Capture::start();
    let mock = mock([("qwen-plus", ModelConfig::new())]);
    let inner = RefuseHosts::new(mock).refuse("dashscope-intl.aliyuncs.com");
    let service = ServiceBuilder::new()
        .layer(
            RegionRouter::new(Region::Singapore, "sk-intl")
                .failover(Region::Virginia, "sk-us")
                .cooldown(Duration::from_secs(30)),
        )
        .layer(WaitTimeoutHeader::new(Duration::from_secs(5)))
        .layer(ClassifyDashScopeError::new())
        .service(inner.clone());
    complete(service.clone(), chat("qwen-plus")).await;

    let routed = logs.expect_event("routing request");
    assert_eq!(routed.level, Level::DEBUG);
    assert_eq!(routed.expect("dashscope.region"), "ap-southeast-1");
    assert_eq!(routed.expect("attempt"), "1");

    let unhealthy = logs.expect_event("endpoint unhealthy");
    assert_eq!(unhealthy.expect("dashscope.region"), "ap-southeast-1");

    let failover = logs.expect_event("failing over to the next endpoint");
    assert_eq!(failover.level, Level::INFO);
    assert_eq!(failover.expect("dashscope.region"), "ap-southeast-1");
    assert_eq!(failover.expect("dashscope.failover.region"), "us-east-1");
    assert_eq!(failover.expect("error.type"), "connection");
    assert_eq!(failover.expect("dashscope.delivery"), "not sent");

    let header = logs.expect_event("X-DashScope-Wait-Timeout set");
    assert_eq!(header.expect("dashscope.wait_timeout_s"), "5");

    // Singapore answers again after its cooldown: the probe logs the recovery.
    inner.accept_all();
    tokio::time::advance(Duration::from_secs(31)).await;
    complete(service, chat("qwen-plus")).await;
    let probing = logs.expect_event("probing an endpoint after its cooldown");
    assert_eq!(probing.expect("dashscope.region"), "ap-southeast-1");
    let healthy = logs.expect_event("endpoint healthy again");
    assert_eq!(healthy.level, Level::INFO);
    assert_eq!(healthy.expect("dashscope.region"), "ap-southeast-1");
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_midway_is_classified_and_frames_are_traced() {
    let (logs, _guard) = Capture::start();
    let mock = mock([("qwen-plus", ModelConfig::new().cut_streams_after(3))]);
    let service = tower::Layer::layer(&ClassifyDashScopeError::new(), mock);
    let mut req = intl("qwen-plus");
    *req.body_mut() = Full::new(Bytes::from(
        r#"{"model":"qwen-plus","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"hello there"}]}"#,
    ));
    let response = service.oneshot(req).await.unwrap();
    let err = response.into_body().collect().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::StreamInterrupted);
    let classified = logs.expect_event("DashScope error classified");
    assert_eq!(classified.expect("phase"), "stream");
    assert_eq!(classified.expect("error.type"), "stream_interrupted");
    let frame = logs.expect_event("DashScope stream frame");
    assert_eq!(frame.level, Level::TRACE);
    assert!(number(frame.expect("bytes")) > 0);
}
