//! The success-path cost of each layer, of the whole recommended stack, and of tower's nearest
//! built-in equivalent, over an in-memory service; and the allocations per request of each.
//!
//! `cargo bench --bench overhead` (BENCHMARKS.md has the numbers and the machine). Each
//! iteration builds a request with a 2 KiB chat body (`Full<Bytes>`, the bytes shared, not
//! copied), drives `poll_ready`, `call` and the response future, and reads the response body to
//! its end, so that whatever a layer holds until the body ends (a budget's permit) is released
//! inside the measurement.
//!
//! Before the timings, a table of allocations per request is printed, counted by this
//! benchmark's global allocator on the calling thread: the bare service's own, and what each
//! configuration adds.

use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{AUTHORIZATION, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
#[path = "support/always_once.rs"]
mod always_once;
use always_once::AlwaysOnce;
use tower::limit::RateLimitLayer;
use tower::retry::RetryLayer;
use tower::util::MapRequestLayer;
use tower::{Layer, Service, ServiceBuilder, service_fn};
use tower_dashscope::{
    BoxError, ClassifyDashScopeError, FallbackModel, Quota, Region, RegionRouter, RetryWithJitter,
    TokenBudget, WaitTimeoutHeader,
};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

/// A chat body of 2 KiB: a few turns, `model` first.
fn chat_body() -> Bytes {
    let mut body = String::from(r#"{"model":"qwen-plus","max_tokens":512,"messages":["#);
    let mut turn = 0;
    while body.len() < 2048 - 120 {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        body.push_str(&format!(
            r#"{{"role":"{role}","content":"Turn {turn}: the quick brown fox jumps over the lazy dog, twice over."}},"#
        ));
        turn += 1;
    }
    body.push_str(r#"{"role":"user","content":"Now answer."}],"temperature":0.7}"#);
    Bytes::from(body)
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// The inner service: answers at once with a small chat completion.
fn inner()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Full<Bytes>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(
            br#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":500,"completion_tokens":1,"total_tokens":501},"model":"qwen-plus"}"#,
        )));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        Ok::<_, BoxError>(response)
    })
}

/// One ready-call-poll cycle and the body read to its end; every step must be ready at once.
fn call_once<S, B>(service: &mut S, cx: &mut Context<'_>, request: Request<Full<Bytes>>) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let Poll::Ready(ready) = service.poll_ready(cx) else {
        panic!("the service was not ready")
    };
    ready.unwrap();
    let future = pin!(service.call(request));
    let Poll::Ready(response) = future.poll(cx) else {
        panic!("the response was not ready")
    };
    let mut body = response.unwrap().into_body();
    let mut frames = 0;
    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(cx) {
        drop(frame.unwrap());
        frames += 1;
    }
    frames
}

/// A budget no benchmark run fills: the largest quota over an hour's window (about 2.6e11
/// tokens, 2.6e8 requests of these), so that it does all its work and never waits.
fn budget() -> TokenBudget {
    TokenBudget::new(Quota::per_minute(u32::MAX, u32::MAX)).burst(Duration::from_secs(3600))
}

/// One configuration under test, its types erased.
trait Probe {
    fn once(&mut self, cx: &mut Context<'_>, request: Request<Full<Bytes>>) -> usize;
}

struct P<S>(S);

impl<S, B> Probe for P<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    fn once(&mut self, cx: &mut Context<'_>, request: Request<Full<Bytes>>) -> usize {
        call_once(&mut self.0, cx, request)
    }
}

/// Every configuration: the bare service, each layer alone, the recommended stack (outermost
/// first, as the README writes it), and tower's nearest built-in equivalent: `RateLimit` →
/// `Retry` (a policy that clones the request and never retries) → a header set by
/// `MapRequest` (tower-http's `SetRequestHeader` is not a dependency; this does what it does
/// for one static header).
fn configurations() -> Vec<(&'static str, Box<dyn Probe>)> {
    let router = || RegionRouter::new(Region::Singapore, "sk-bench-0000");
    let fallback = || FallbackModel::new(["qwen-plus", "qwen-flash"]);
    vec![
        ("bare service", Box::new(P(inner()))),
        (
            "ClassifyDashScopeError",
            Box::new(P(ClassifyDashScopeError::new().layer(inner()))),
        ),
        (
            "RetryWithJitter",
            Box::new(P(RetryWithJitter::new().seed(1).layer(inner()))),
        ),
        (
            "WaitTimeoutHeader",
            Box::new(P(
                WaitTimeoutHeader::new(Duration::from_secs(30)).layer(inner())
            )),
        ),
        ("TokenBudget", Box::new(P(budget().layer(inner())))),
        ("RegionRouter", Box::new(P(router().layer(inner())))),
        ("FallbackModel", Box::new(P(fallback().layer(inner())))),
        (
            "full recommended stack (6 layers)",
            Box::new(P(ServiceBuilder::new()
                .layer(fallback())
                .layer(RetryWithJitter::new().seed(1))
                .layer(budget())
                .layer(router())
                .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
                .layer(ClassifyDashScopeError::new())
                .service(inner()))),
        ),
        (
            "tower: RateLimit + Retry + MapRequest header",
            Box::new(P(ServiceBuilder::new()
                .layer(RateLimitLayer::new(u64::MAX / 2, Duration::from_secs(1)))
                .layer(RetryLayer::new(AlwaysOnce))
                .layer(MapRequestLayer::new(|mut req: Request<Full<Bytes>>| {
                    req.headers_mut().insert(
                        AUTHORIZATION,
                        HeaderValue::from_static("Bearer sk-bench-0000"),
                    );
                    req
                }))
                .service(inner()))),
        ),
    ]
}

/// Allocations per request of `probe` (mean over 1000 calls after a warm-up), the request's
/// own construction excluded.
fn allocations(probe: &mut dyn Probe, body: &Bytes) -> f64 {
    const CALLS: u64 = 1000;
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100 {
        probe.once(&mut cx, request(body));
    }
    let mut counted = 0;
    for _ in 0..CALLS {
        let req = request(body);
        let before = counting_alloc::count();
        probe.once(&mut cx, req);
        counted += (counting_alloc::count() - before) as u64;
    }
    counted as f64 / CALLS as f64
}

fn overhead(c: &mut Criterion) {
    // The budget's and the rate limit's clocks are tokio's: give them a runtime context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let body = chat_body();
    assert!((2000..=2100).contains(&body.len()), "{}", body.len());

    println!(
        "allocations per request ({}-byte body; building the request excluded):",
        body.len()
    );
    for (name, mut probe) in configurations() {
        println!("  {name:<46} {:>6.2}", allocations(probe.as_mut(), &body));
    }

    let mut group = c.benchmark_group("overhead");
    let mut cx = Context::from_waker(Waker::noop());
    for (name, mut probe) in configurations() {
        group.bench_function(name, |b| {
            b.iter(|| black_box(probe.once(&mut cx, request(&body))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40);
    targets = overhead
}
criterion_main!(benches);
