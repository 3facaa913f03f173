//! The cost of `FallbackModel`'s rewrite of a body's `model`, and of the layer on the success
//! path.
//!
//! `cargo bench --bench fallback`. The rewrite scans the top-level object once and copies the
//! bytes around the model's value; for reference, the same change made by parsing the body into
//! a `serde_json::Value` and serialising it again (which also loses the body's formatting).

use std::hint::black_box;
use std::task::{Context, Waker};

use bytes::Bytes;
mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, service_fn};
use tower_dashscope::body::ReplayBody;
use tower_dashscope::fallback::rewrite_model;
use tower_dashscope::{BoxError, FallbackModel};

/// A chat body of about `size` bytes: a system prompt, alternating turns, then `model` last so
/// that the scanner has to skip everything before it.
fn chat_body(size: usize) -> Bytes {
    let mut messages = Vec::new();
    let mut len = 0;
    let mut turn = 0;
    while len < size {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let content = format!(
            "Turn {turn}: the \\\"quick\\\" brown fox — 狐狸 — jumps over the lazy dog. {}",
            "lorem ipsum ".repeat(4)
        );
        let message = format!(r#"{{"role":"{role}","content":"{content}"}}"#);
        len += message.len() + 1;
        messages.push(message);
        turn += 1;
    }
    let body = format!(
        r#"{{"messages":[{}],"temperature":0.7,"stream":false,"model":"qwen-max"}}"#,
        messages.join(",")
    );
    Bytes::from(body)
}

fn rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("fallback_rewrite");
    for size in [1024, 100 * 1024] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let label = format!("{} KiB", size / 1024);
        group.bench_with_input(
            BenchmarkId::new("scan + splice", &label),
            &body,
            |b, body| b.iter(|| black_box(rewrite_model(black_box(body), "qwen-plus"))),
        );
        group.bench_with_input(
            BenchmarkId::new("serde_json Value round trip (reference)", &label),
            &body,
            |b, body| {
                b.iter(|| {
                    let mut value: serde_json::Value =
                        serde_json::from_slice(black_box(body)).unwrap();
                    value["model"] = serde_json::Value::from("qwen-plus");
                    black_box(serde_json::to_vec(&value).unwrap())
                })
            },
        );
    }
    group.finish();
}

fn success_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let inner = || {
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
                b"{\"ok\":true}",
            ))))
        })
    };
    let body = chat_body(1024);
    let request = || {
        Request::post("/compatible-mode/v1/chat/completions")
            .body(Full::new(body.clone()))
            .unwrap()
    };
    let mut cx = Context::from_waker(Waker::noop());
    let mut group = c.benchmark_group("fallback_success_path_1KiB");
    let mut bare = inner();
    group.bench_function("bare service", |b| {
        b.iter(|| black_box(support::call_once(&mut bare, &mut cx, request())))
    });
    let mut fallback = FallbackModel::new(["qwen-max", "qwen-plus"]).layer(inner());
    group.bench_function("FallbackModel (model in a chain)", |b| {
        b.iter(|| black_box(support::call_once(&mut fallback, &mut cx, request())))
    });
    // qwen-max answers 429: the first request cools it down for an hour, and from then on
    // every request is rewritten to qwen-plus before it is sent.
    let throttling = service_fn(|req: Request<Full<Bytes>>| async move {
        let body = req.body().bytes().unwrap_or_default();
        let status = if body.ends_with(br#""model":"qwen-max"}"#) {
            429
        } else {
            200
        };
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
        *response.status_mut() = http::StatusCode::from_u16(status)?;
        Ok::<_, BoxError>(response)
    });
    let mut switching = FallbackModel::new(["qwen-max", "qwen-plus"])
        .cooldown(std::time::Duration::from_secs(3600))
        .layer(throttling);
    support::call_once(&mut switching, &mut cx, request());
    group.bench_function(
        "FallbackModel (primary cooling: rewrite on every request)",
        |b| b.iter(|| black_box(support::call_once(&mut switching, &mut cx, request()))),
    );
    group.finish();
}

criterion_group!(benches, rewrite, success_path);
criterion_main!(benches);
