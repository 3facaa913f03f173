//! Memory per in-flight request: the heap the recommended stack holds for each request it has
//! in flight, against the bare simulator.
//!
//! ```text
//! cargo run --example memory_per_request
//! ```
//!
//! For N = 100, 1,000 and 10,000 concurrent requests, each on a task of its own, to
//! `MockDashScope` (in process, paused time, a 10 s time to first token so that all N are in
//! flight at once) either directly ("bare") or through `RecommendedStack` (FallbackModel ->
//! RetryWithJitter -> TokenBudget -> RegionRouter -> WaitTimeoutHeader ->
//! ClassifyDashScopeError), a counting global allocator gives:
//!
//! - **held**: live heap bytes with all N requests in flight, minus those with none, over N;
//! - **peak**: the highest live heap bytes from the first request sent to the last answer read,
//!   minus those with none, over N.
//!
//! Both include what any caller pays: the task, the request and its body, the simulator's side.
//! The stack's own cost is the difference between the two columns. A second table puts each
//! layer alone over the classifier (N = 1,000), to show where the stack's bytes go; the layers'
//! futures nest, so the stack costs a little more than the sum of its layers. The quotas are set so that
//! nothing waits or fails: every request is admitted at once and answered.

#[path = "support/peak_alloc.rs"]
mod peak_alloc;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::{
    BoxError, ClassifyDashScopeError, FallbackModel, Quota, RecommendedStack, Region, RegionRouter,
    RetryWithJitter, TokenBudget, WaitTimeoutHeader,
};

const KEY: &str = "sk-memory";
const TIME_TO_FIRST_TOKEN: Duration = Duration::from_secs(10);

fn simulator() -> MockDashScope {
    let model = || ModelConfig::new().latency(TIME_TO_FIRST_TOKEN, 0.0);
    MockDashScope::builder()
        .model("qwen-plus", model())
        .model("qwen-flash", model())
        .api_key(KEY)
        .seed(1)
        .build()
}

fn request(i: usize) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"qwen-plus","messages":[{{"role":"user","content":"request {i}: say hello"}}],"max_tokens":8}}"#
    );
    Request::post("/compatible-mode/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Bytes per request: (held with all in flight, peak).
async fn measure<S, B>(service: S, mock: &MockDashScope, n: usize) -> (usize, usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    async fn one<S, B>(service: S, i: usize) -> bool
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes>,
    {
        match service.oneshot(request(i)).await {
            Ok(response) => response.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }

    // One request first, so that what is made once (a model's state, a region's health) is
    // not counted per request.
    assert!(
        one(service.clone(), usize::MAX).await,
        "the warm-up request failed"
    );
    let base = peak_alloc::live_bytes();
    peak_alloc::reset_peak();

    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(one(service.clone(), i)))
        .collect();
    // In paused time the clock moves only once every task waits: on the simulator's time to
    // first token.
    let mut waited = Duration::ZERO;
    while (mock.stats().in_flight as usize) < n {
        assert!(
            waited < TIME_TO_FIRST_TOKEN / 2,
            "not all requests got in flight"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += Duration::from_millis(1);
    }
    let held = peak_alloc::live_bytes().saturating_sub(base);
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.expect("a request task panicked"));
    }
    assert_eq!(ok, n, "every request is answered");
    let peak = peak_alloc::peak_bytes().saturating_sub(base);
    (held / n, peak / n)
}

async fn bare(n: usize) -> (usize, usize) {
    let mock = simulator();
    measure(mock.clone(), &mock, n).await
}

async fn stack(n: usize) -> (usize, usize) {
    let mock = simulator();
    let service = RecommendedStack::new(Region::Singapore, KEY)
        .fallback(["qwen-plus", "qwen-flash"])
        .retry(RetryWithJitter::new().seed(1))
        .budget(budget())
        .layer(mock.clone());
    measure(service, &mock, n).await
}

/// A budget that never makes a request wait.
fn budget() -> TokenBudget {
    TokenBudget::new(Quota::per_minute(u32::MAX, u32::MAX))
}

/// One layer over the classifier (the layers above it need its typed errors), `n` requests:
/// bytes held per request.
async fn one_layer(layer: &str, n: usize) -> usize {
    let mock = simulator();
    let classify = ClassifyDashScopeError::new().layer(mock.clone());
    let (held, _) = match layer {
        "ClassifyDashScopeError" => measure(classify, &mock, n).await,
        "WaitTimeoutHeader" => {
            let layer = WaitTimeoutHeader::new(Duration::from_secs(30));
            measure(layer.layer(classify), &mock, n).await
        }
        "RegionRouter" => {
            let layer = RegionRouter::new(Region::Singapore, KEY);
            measure(layer.layer(classify), &mock, n).await
        }
        "TokenBudget" => measure(budget().layer(classify), &mock, n).await,
        "RetryWithJitter" => {
            let layer = RetryWithJitter::new().seed(1);
            measure(layer.layer(classify), &mock, n).await
        }
        "FallbackModel" => {
            let layer = FallbackModel::new(["qwen-plus", "qwen-flash"]);
            measure(layer.layer(classify), &mock, n).await
        }
        _ => unreachable!(),
    };
    held
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    println!("heap bytes per in-flight request (live with all N in flight, and peak, over N)");
    println!();
    println!(
        "| {:>6} | {:>10} | {:>10} | {:>11} | {:>11} | {:>14} |",
        "N", "bare held", "bare peak", "stack held", "stack peak", "stack - bare"
    );
    println!("|-------:|-----------:|-----------:|------------:|------------:|---------------:|");
    for n in [100, 1_000, 10_000] {
        let (bare_held, bare_peak) = runtime.block_on(bare(n));
        let (stack_held, stack_peak) = runtime.block_on(stack(n));
        println!(
            "| {n:>6} | {bare_held:>10} | {bare_peak:>10} | {stack_held:>11} | {stack_peak:>11} | {:>14} |",
            format!("{:+} held", stack_held as isize - bare_held as isize)
        );
    }

    let n = 1_000;
    let (bare_held, _) = runtime.block_on(bare(n));
    println!();
    println!("each layer alone over ClassifyDashScopeError, N = {n}: bytes held per request");
    println!();
    println!(
        "| {:<24} | {:>6} | {:>13} |",
        "layer", "held", "over classify"
    );
    println!("|:-------------------------|-------:|--------------:|");
    println!(
        "| {:<24} | {bare_held:>6} | {:>13} |",
        "(bare simulator)", ""
    );
    let classify = runtime.block_on(one_layer("ClassifyDashScopeError", n));
    println!(
        "| {:<24} | {classify:>6} | {:>13} |",
        "ClassifyDashScopeError", ""
    );
    for layer in [
        "WaitTimeoutHeader",
        "RegionRouter",
        "TokenBudget",
        "RetryWithJitter",
        "FallbackModel",
    ] {
        let held = runtime.block_on(one_layer(layer, n));
        println!(
            "| {layer:<24} | {held:>6} | {:>+13} |",
            held as isize - classify as isize
        );
    }
}
