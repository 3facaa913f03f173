//! Classifying error bodies, and the success-path cost of `ClassifyDashScopeError`.
//!
//! `cargo bench --bench classify`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
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
        b.iter(|| {
            black_box(support::call_once(
                &mut bare,
                &mut cx,
                Request::new(Full::new(Bytes::from_static(b"{}"))),
            ))
        })
    });

    let mut classified = ClassifyDashScopeError::new().layer(inner());
    group.bench_function("ClassifyDashScopeError", |b| {
        b.iter(|| {
            black_box(support::call_once(
                &mut classified,
                &mut cx,
                Request::new(Full::new(Bytes::from_static(b"{}"))),
            ))
        })
    });

    let mut both = WaitTimeoutHeader::new(std::time::Duration::from_secs(30))
        .layer(ClassifyDashScopeError::new().layer(inner()));
    group.bench_function("WaitTimeoutHeader + ClassifyDashScopeError", |b| {
        b.iter(|| {
            black_box(support::call_once(
                &mut both,
                &mut cx,
                Request::new(Full::new(Bytes::from_static(b"{}"))),
            ))
        })
    });
    group.finish();
}

/// A body yielding pre-built chunks.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Reads a whole ~1 MB event stream through the layer, in network-sized chunks.
fn stream_scanning(c: &mut Criterion) {
    // Realistic traffic: native and compatible streams back to back, without their ends, then
    // one end, so the whole thing is one valid stream.
    let native = include_str!("../tests/fixtures/streams/native_truncated.sse");
    let compat = include_str!("../tests/fixtures/streams/compat_truncated.sse");
    let mut text = String::new();
    while text.len() < 1_000_000 {
        text.push_str(native);
        text.push_str(compat);
    }
    text.push_str("data: [DONE]\n\n");
    let mut group = c.benchmark_group("stream");
    group.throughput(criterion::Throughput::Bytes(text.len() as u64));
    for (name, chunk, content_type, usage) in [
        (
            "pass-through, not inspected, 1460 B chunks",
            1460,
            "text/plain",
            false,
        ),
        ("inspected, 1460 B chunks", 1460, "text/event-stream", false),
        (
            "inspected + usage, 1460 B chunks",
            1460,
            "text/event-stream",
            true,
        ),
        (
            "inspected, 16 KiB chunks",
            16 * 1024,
            "text/event-stream",
            false,
        ),
    ] {
        let chunks: Vec<Bytes> = text
            .as_bytes()
            .chunks(chunk)
            .map(Bytes::copy_from_slice)
            .collect();
        let mut cx = Context::from_waker(Waker::noop());
        group.bench_function(name, |b| {
            b.iter(|| {
                let body = Chunks(chunks.iter().cloned().collect());
                let body = std::sync::Mutex::new(Some(body));
                let mut service = ClassifyDashScopeError::new().layer(service_fn(
                    move |_req: Request<Full<Bytes>>| {
                        let mut response = Response::new(body.lock().unwrap().take().unwrap());
                        response
                            .headers_mut()
                            .insert("content-type", HeaderValue::from_static(content_type));
                        async move { Ok::<_, BoxError>(response) }
                    },
                ));
                let mut request = Request::new(Full::default());
                if usage {
                    request
                        .extensions_mut()
                        .insert(tower_dashscope::classify::UsageSlot::new());
                }
                let Poll::Ready(Ok(())) = service.poll_ready(&mut cx) else {
                    panic!()
                };
                let future = pin!(service.call(request));
                let Poll::Ready(Ok(response)) = future.poll(&mut cx) else {
                    panic!("not ready")
                };
                let mut body = response.into_body();
                let mut total = 0;
                while let Poll::Ready(Some(frame)) =
                    std::pin::Pin::new(&mut body).poll_frame(&mut cx)
                {
                    total += frame.unwrap().into_data().unwrap().len();
                }
                assert_eq!(total, text.len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, classify_fixtures, success_path, stream_scanning);
criterion_main!(benches);
