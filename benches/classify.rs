//! Classifying error bodies, and the success-path cost of `ClassifyDashScopeError`.
//!
//! `cargo bench --bench classify`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tower::{Layer, Service, service_fn};
use tower_dashscope::classify::classify_response;
use tower_dashscope::{BoxError, ClassifyDashScopeError, WaitTimeoutHeader};

const FIXTURES: &str = include_str!("../tests/fixtures/dashscope-errors.jsonl");

fn classify_fixtures(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify_response");
    for line in FIXTURES.lines().filter(|l| !l.trim().is_empty()) {
        let fixture: Value = serde_json::from_str(line).unwrap();
        let status = StatusCode::from_u16(fixture["status"].as_u64().unwrap() as u16).unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in fixture["headers"].as_object().unwrap() {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v.as_str().unwrap()).unwrap(),
            );
        }
        let body = fixture["body"].as_str().unwrap().as_bytes().to_vec();
        group.bench_function(fixture["name"].as_str().unwrap(), |b| {
            b.iter(|| classify_response(black_box(status), black_box(&headers), black_box(&body)))
        });
    }
    group.finish();
}

/// One ready-call-poll cycle over a service whose future is immediately ready.
fn call_once<S>(service: &mut S, cx: &mut Context<'_>) -> S::Response
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let Poll::Ready(ready) = service.poll_ready(cx) else {
        panic!("not ready")
    };
    ready.unwrap();
    let future = pin!(service.call(Request::new(Full::new(Bytes::from_static(b"{}")))));
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
    let mut cx = Context::from_waker(Waker::noop());
    let mut group = c.benchmark_group("success_path");

    let mut bare = inner();
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(call_once(&mut bare, &mut cx)))
    });

    let mut classified = ClassifyDashScopeError::new().layer(inner());
    group.bench_function("ClassifyDashScopeError", |b| {
        b.iter(|| black_box(call_once(&mut classified, &mut cx)))
    });

    let mut both = WaitTimeoutHeader::new(std::time::Duration::from_secs(30))
        .layer(ClassifyDashScopeError::new().layer(inner()));
    group.bench_function("WaitTimeoutHeader + ClassifyDashScopeError", |b| {
        b.iter(|| black_box(call_once(&mut both, &mut cx)))
    });
    group.finish();
}

criterion_group!(benches, classify_fixtures, success_path);
criterion_main!(benches);
