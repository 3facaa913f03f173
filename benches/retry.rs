//! Success-path overhead of `RetryWithJitter` over a service that answers at once.
//!
//! `cargo bench --bench retry`. Amplification during an outage is measured by
//! `cargo run --release --example outage_amplification`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_dashscope::{BoxError, ClassifyDashScopeError, RetryWithJitter, WaitTimeoutHeader};

fn call_once<S>(service: &mut S, cx: &mut Context<'_>) -> S::Response
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let Poll::Ready(ready) = service.poll_ready(cx) else {
        panic!("not ready")
    };
    ready.unwrap();
    let request = Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[]}"#,
        )))
        .unwrap();
    let future = pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(response) => response.unwrap(),
        Poll::Pending => panic!("not ready"),
    }
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
        b.iter(|| black_box(call_once(&mut bare, &mut cx)))
    });

    let mut retry = RetryWithJitter::new().layer(inner());
    group.bench_function("RetryWithJitter", |b| {
        b.iter(|| black_box(call_once(&mut retry, &mut cx)))
    });

    let mut tower_retry = tower::retry::RetryLayer::new(AlwaysOnce).layer(inner());
    group.bench_function("tower::retry::Retry (clone request, no retries)", |b| {
        b.iter(|| black_box(call_once(&mut tower_retry, &mut cx)))
    });

    let mut stack = RetryWithJitter::new().layer(
        WaitTimeoutHeader::new(std::time::Duration::from_secs(30))
            .layer(ClassifyDashScopeError::new().layer(inner())),
    );
    group.bench_function(
        "RetryWithJitter + WaitTimeoutHeader + ClassifyDashScopeError",
        |b| b.iter(|| black_box(call_once(&mut stack, &mut cx))),
    );
    group.finish();
}

/// A tower retry policy that clones the request (like any retrying policy must) and never retries.
#[derive(Clone)]
struct AlwaysOnce;

impl<Res, E> tower::retry::Policy<Request<Full<Bytes>>, Res, E> for AlwaysOnce {
    type Future = std::future::Ready<()>;
    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        _result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        None
    }
    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
}

criterion_group!(benches, success_path);
criterion_main!(benches);
