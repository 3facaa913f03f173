//! Load: 10,000 concurrent requests through `RecommendedStack` (FallbackModel ->
//! RetryWithJitter -> TokenBudget -> RegionRouter -> WaitTimeoutHeader -> ClassifyDashScopeError)
//! over the in-process simulator with quotas and faults, in paused time.
//!
//! Every request ends, with a response (whose body is read to its end) or a typed error; none is
//! lost, none answered twice or with another request's answer; nothing deadlocks (the whole run
//! is bounded by a timeout in paused time, which fires at once if every task is stuck); and the
//! budget's permits all come back.

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
