//! Load.
//!
//! - 10,000 concurrent requests through `RecommendedStack` (FallbackModel -> RetryWithJitter ->
//!   TokenBudget -> RegionRouter -> WaitTimeoutHeader -> ClassifyDashScopeError) over the
//!   in-process simulator with quotas and faults, in paused time. Every request ends, with a
//!   response (whose body is read to its end) or a typed error; none is lost, none answered twice
//!   or with another request's answer; nothing deadlocks (the whole run is bounded by a timeout
//!   in paused time, which fires at once if every task is stuck); and the budget's permits all
//!   come back.
//! - 1,000 requests, 100 at a time, through the axum gateway example over loopback in front of
//!   the simulator (real sockets, real time, bounded): each answered once, in the OpenAI shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_dashscope::body::ReplayBody;
use tower_dashscope::mock::{Fault, MidStreamError, MockBody, MockDashScope, ModelConfig};
use tower_dashscope::{
    BoxError, ClassifyDashScopeError, DashScopeError, ErrorClass, FallbackModel, Quota,
    RecommendedStack, Region, RetryWithJitter, TokenBudget,
};

const REQUESTS: u32 = 10_000;
const MARKER: &str = "x-load-marker";
const KEY: &str = "sk-load-test";

/// The recommended stack, with `budget` (a clone is kept to check its permits come back).
fn recommended<S>(
    budget: TokenBudget,
    inner: S,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = DashScopeError>>,
    Error = DashScopeError,
    Future: Send,
> + Clone
+ Send
+ 'static
where
    S: Service<Request<Full<Bytes>>, Response = Response<MockBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    RecommendedStack::new(Region::Singapore, KEY)
        .failover(Region::Beijing, KEY)
        // The first-byte timeout runs from the call, budget wait included: 10,000 requests
        // at 400 a second queue for 25 s, so it must be longer than that.
        .fallback_layer(
            FallbackModel::new(["qwen-plus", "qwen-flash"])
                .first_byte_timeout(Duration::from_secs(60)),
        )
        .retry(RetryWithJitter::new().seed(1))
        .budget(budget)
        .wait_timeout(Duration::from_secs(5))
        .classify(ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(30)))
        .layer(inner)
}

fn simulator() -> MockDashScope {
    MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new()
                .rpm(30_000)
                .tpm(20_000_000)
                .latency(Duration::from_millis(300), 100.0)
                .context_window(4_000)
                .moderation_marker("BLOCK-ME")
                .error_rate(0.05)
                .reset_rate(0.02)
                .fault_rate(Fault::EmptyThrottle, 0.002)
                .fault_rate(Fault::NoFirstByte, 0.005)
                .fault_rate(Fault::Stall { after_tokens: 3 }, 0.005)
                .fault_rate(
                    Fault::ErrorMidStream {
                        after_tokens: 2,
                        error: MidStreamError::Internal,
                    },
                    0.01,
                ),
        )
        .model(
            "qwen-flash",
            ModelConfig::new()
                .rpm(30_000)
                .tpm(20_000_000)
                .latency(Duration::from_millis(100), 200.0)
                .outage(Duration::from_secs(5)..Duration::from_secs(15))
                .error_rate(0.02),
        )
        .api_key(KEY)
        .seed(7)
        .build()
}

/// Request `i`: its marker in a header and in its message; one in ten streams, one in a hundred
/// is refused by moderation, one in a hundred is over the context window.
fn request(i: u32) -> Request<Full<Bytes>> {
    let text = match i % 100 {
        13 => format!("req-{i} BLOCK-ME"),
        42 => format!("req-{i} {}", "long ".repeat(4_000)),
        _ => format!("req-{i} hello"),
    };
    let stream = i % 10 == 3;
    let body = format!(
        r#"{{"model":"qwen-plus","messages":[{{"role":"user","content":"{text}"}}],"max_tokens":8,"stream":{stream}}}"#
    );
    Request::post("/compatible-mode/v1/chat/completions")
        .header(MARKER, i)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// How one request ended.
#[derive(Debug)]
enum End {
    /// A response, its body read to the end.
    Complete,
    /// A response whose body ended with this error.
    BodyFailed(ErrorClass),
    /// The call failed.
    Failed(ErrorClass),
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_concurrent_requests_all_end_once() {
    let mock = simulator();
    // Attempts per request, as the simulator's side saw them.
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let tap = {
        let attempts = attempts.clone();
        let mock = mock.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let marker = req
                .headers()
                .get(MARKER)
                .cloned()
                .expect("the marker header");
            let i: u32 = marker.to_str().unwrap().parse().unwrap();
            // The body that arrives is this request's own, whatever was rewritten above.
            let body = req.body().bytes().unwrap();
            let needle = format!("req-{i} ");
            assert!(
                body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "request {i} arrived with another body"
            );
            *attempts.lock().unwrap().entry(i).or_default() += 1;
            let mock = mock.clone();
            async move {
                let mut response = ServiceExt::<Request<Full<Bytes>>>::oneshot(mock, req).await?;
                response.headers_mut().insert(MARKER, marker);
                Ok::<_, BoxError>(response)
            }
        })
    };
    let budget = TokenBudget::new(Quota::per_minute(24_000, 10_000_000)).max_concurrency(2_000);
    let client = recommended(budget.clone(), tap);

    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let end = match client.oneshot(request(i)).await {
                    Err(err) => End::Failed(err.class()),
                    Ok(response) => {
                        let echoed = response.headers().get(MARKER).cloned();
                        assert_eq!(
                            echoed,
                            Some(HeaderValue::from(i)),
                            "another request's answer"
                        );
                        let mut body = response.into_body();
                        let mut end = End::Complete;
                        while let Some(frame) = body.frame().await {
                            if let Err(err) = frame {
                                end = End::BodyFailed(err.class());
                                break;
                            }
                        }
                        end
                    }
                };
                (i, end)
            })
        })
        .collect();

    let ends = tokio::time::timeout(Duration::from_secs(3_600), async {
        let mut ends = HashMap::new();
        for task in tasks {
            let (i, end) = task.await.expect("a request task panicked");
            assert!(ends.insert(i, end).is_none(), "request {i} ended twice");
        }
        ends
    })
    .await
    .expect("deadlock: not every request ended within an hour of paused time");

    // None lost, none duplicated.
    assert_eq!(ends.len(), REQUESTS as usize);
    assert!((0..REQUESTS).all(|i| ends.contains_key(&i)));
    let attempts = attempts.lock().unwrap();
    for (i, end) in &ends {
        let sent = attempts.get(i).copied().unwrap_or(0);
        match end {
            End::Complete | End::BodyFailed(_) => assert!(sent >= 1, "request {i} answered unsent"),
            // Only the budget, a cooling fallback or a local refusal answers without sending.
            End::Failed(_) => {}
        }
        // Six attempts a model, two models, two regions.
        assert!(sent <= 24, "request {i} sent {sent} times");
        // A refused input is never answered.
        if i % 100 == 13 || i % 100 == 42 {
            assert!(
                !matches!(end, End::Complete),
                "request {i} should have been refused"
            );
        }
    }

    let mut tally: HashMap<String, u32> = HashMap::new();
    for end in ends.values() {
        let key = match end {
            End::Complete => "complete".to_owned(),
            End::BodyFailed(class) => format!("body: {}", class.as_str()),
            End::Failed(class) => format!("error: {}", class.as_str()),
        };
        *tally.entry(key).or_default() += 1;
    }
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    println!("{tally:?}; {} attempts", attempts.values().sum::<u32>());

    // The stack got most requests through the faults; the refused inputs were refused.
    let complete = ends.values().filter(|e| matches!(e, End::Complete)).count();
    assert!(complete >= 8_000, "{complete} complete: {tally:?}");
    let refused = ends
        .values()
        .filter(|e| {
            matches!(
                e,
                End::Failed(ErrorClass::ContentFiltered | ErrorClass::ContextLengthExceeded)
            )
        })
        .count();
    assert!(refused >= 100, "{tally:?}");
    // Every permit and reservation came back.
    assert_eq!(budget.in_flight(), 0);
    assert_eq!(mock.stats().in_flight, 0);
}

// ---- The same through the gateway, over loopback ----

#[allow(dead_code)]
#[path = "../examples/axum_gateway/mod.rs"]
mod gateway;
#[path = "support/gateway.rs"]
mod harness;

/// Requests sent to the gateway, and how many at once (loopback sockets, in real time).
const GATEWAY_REQUESTS: usize = 1_000;
const GATEWAY_CONCURRENCY: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_over_loopback_answers_every_request_once() {
    use http_body_util::BodyExt as _;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use serde_json::Value;

    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new()
                .latency(Duration::from_millis(5), 0.0)
                .error_rate(0.05)
                .fault_rate(Fault::EmptyThrottle, 0.01),
        )
        .model(
            "qwen-flash",
            ModelConfig::new().latency(Duration::from_millis(5), 0.0),
        )
        .api_key(KEY)
        .seed(3)
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let config = harness::config(
        server.local_addr(),
        "LOAD_KEY",
        r#"
[models]
"qwen-plus" = { rpm = 1_000_000, tpm = 100_000_000 }
"qwen-flash" = { rpm = 1_000_000, tpm = 100_000_000 }

[fallbacks]
"qwen-plus" = ["qwen-flash"]

[timeouts]
first_byte = "5s"
idle = "5s"
total = "20s"

[retry]
max_attempts = 2
base_delay = "10ms"
max_delay = "20ms"
"#,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = harness::serve(config, "LOAD_KEY", KEY, async move {
        let _ = stopped.await;
    })
    .await;
    let addr = served.addr;
    let serving = served.task;

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let permits = Arc::new(tokio::sync::Semaphore::new(GATEWAY_CONCURRENCY));
    let tasks: Vec<_> = (0..GATEWAY_REQUESTS)
        .map(|i| {
            let client = client.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let stream = i % 4 == 1;
                let body = format!(
                    r#"{{"model":"qwen-plus","stream":{stream},"max_tokens":4,"messages":[{{"role":"user","content":"req-{i}"}}]}}"#
                );
                let request = Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let response = client.request(request).await.expect("the gateway answers");
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .expect("the body is read")
                    .to_bytes();
                if status.is_success() && stream {
                    let text = std::str::from_utf8(&bytes).unwrap();
                    assert!(
                        text.trim_end().ends_with("data: [DONE]") || text.contains("\"error\""),
                        "a stream that ends neither with [DONE] nor with an error event: {text}"
                    );
                } else {
                    let value: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
                    if status.is_success() {
                        assert!(value["choices"].is_array(), "{value}");
                    } else {
                        assert!(value["error"]["message"].is_string(), "{value}");
                    }
                }
                (i, status)
            })
        })
        .collect();

    let statuses = tokio::time::timeout(Duration::from_secs(120), async {
        let mut statuses = HashMap::new();
        for task in tasks {
            let (i, status) = task.await.expect("a request task panicked");
            assert!(
                statuses.insert(i, status).is_none(),
                "request {i} ended twice"
            );
        }
        statuses
    })
    .await
    .expect("not every request through the gateway ended within 120 s");

    assert_eq!(statuses.len(), GATEWAY_REQUESTS);
    let ok = statuses.values().filter(|s| s.is_success()).count();
    let mut tally: HashMap<u16, usize> = HashMap::new();
    for status in statuses.values() {
        *tally.entry(status.as_u16()).or_default() += 1;
    }
    println!(
        "gateway: {tally:?}; simulator saw {} requests",
        mock.stats().requests
    );
    assert!(ok >= GATEWAY_REQUESTS * 9 / 10, "{tally:?}");
    // Two attempts a model, two models: no request is sent more often than that.
    assert!(mock.stats().requests <= 4 * GATEWAY_REQUESTS as u64);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("the gateway drains in time")
        .unwrap()
        .unwrap();
}
