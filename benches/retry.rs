//! Success-path overhead of `RetryWithJitter` over a service that answers at once.
//!
//! `cargo bench --bench retry`. Amplification during an outage is measured by
//! `cargo run --release --example outage_amplification`.

use std::hint::black_box;
use std::task::{Context, Waker};

use bytes::Bytes;
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
#[path = "support/always_once.rs"]
mod always_once;
use always_once::AlwaysOnce;
use tower::{Layer, service_fn};
use tower_dashscope::{BoxError, ClassifyDashScopeError, RetryWithJitter, WaitTimeoutHeader};

/// The request every retry benchmark sends.
fn chat_request() -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[]}"#,
        )))
        .unwrap()
}

fn success_path(c: &mut Criterion) {
    let inner = || {
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
                b"{\"ok\":true}",
            ))))
        })
    };
    // The budget's clock is tokio's: give it a runtime context.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut group = c.benchmark_group("retry_success_path");

    let mut bare = inner();
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(support::call_once(&mut bare, &mut cx, chat_request())))
    });

    let mut retry = RetryWithJitter::new().layer(inner());
    group.bench_function("RetryWithJitter", |b| {
        b.iter(|| black_box(support::call_once(&mut retry, &mut cx, chat_request())))
    });

    let mut tower_retry = tower::retry::RetryLayer::new(AlwaysOnce).layer(inner());
    group.bench_function("tower::retry::Retry (clone request, no retries)", |b| {
        b.iter(|| {
            black_box(support::call_once(
                &mut tower_retry,
                &mut cx,
                chat_request(),
            ))
        })
    });

    let mut stack = RetryWithJitter::new().layer(
        WaitTimeoutHeader::new(std::time::Duration::from_secs(30))
            .layer(ClassifyDashScopeError::new().layer(inner())),
    );
    group.bench_function(
        "RetryWithJitter + WaitTimeoutHeader + ClassifyDashScopeError",
        |b| b.iter(|| black_box(support::call_once(&mut stack, &mut cx, chat_request()))),
    );
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
