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

use std::hint::black_box;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_dashscope::{ClassifyDashScopeError, RetryWithJitter, WaitTimeoutHeader};

#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;
#[path = "support/overhead.rs"]
mod workload;

use workload::{budget, call_once, chat_body, fallback, inner, recommended, request, router};

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
            Box::new(P(recommended(inner()))),
        ),
        (
            "tower: RateLimit + Retry + MapRequest header",
            Box::new(P(workload::tower_equivalent(inner()))),
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
    let runtime = workload::runtime();
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
