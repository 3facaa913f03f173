//! What one simulated DashScope answer costs, in process: the baseline under every benchmark and
//! test that runs against `MockDashScope`.
//!
//! `cargo bench --bench mock`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_dashscope::ClassifyDashScopeError;
use tower_dashscope::mock::{MockDashScope, ModelConfig};

const COMPAT: &str = "/compatible-mode/v1/chat/completions";
const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";

fn request(path: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = if path == NATIVE {
        r#"{"model":"qwen-plus","input":{"messages":[{"role":"user","content":"Summarise this paragraph in one sentence."}]},"parameters":{"max_tokens":16}}"#
    } else if stream {
        r#"{"model":"qwen-plus","messages":[{"role":"user","content":"Summarise this paragraph in one sentence."}],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}"#
    } else {
        r#"{"model":"qwen-plus","messages":[{"role":"user","content":"Summarise this paragraph in one sentence."}],"max_tokens":16}"#
    };
    let mut request = Request::post(path);
    if stream && path == NATIVE {
        request = request.header("x-dashscope-sse", "enable");
    }
    request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn answers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // Quotas on, and never reached: the admission path is measured, not the 429 path.
    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new()
                .rpm(u32::MAX)
                .tpm(u32::MAX)
                .burst_limit(u32::MAX),
        )
        .build();
    let mut group = c.benchmark_group("mock_answer");
    for (name, path, stream) in [
        ("compatible", COMPAT, false),
        ("compatible, streamed (16 tokens)", COMPAT, true),
        ("native, streamed (16 tokens)", NATIVE, true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let response = mock.clone().oneshot(request(path, stream)).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap().to_bytes())
                })
            })
        });
    }
    let classified = ClassifyDashScopeError::new().layer(mock.clone());
    group.bench_function(
        "compatible, streamed, through ClassifyDashScopeError",
        |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let response = classified
                        .clone()
                        .oneshot(request(COMPAT, true))
                        .await
                        .unwrap();
                    black_box(response.into_body().collect().await.unwrap().to_bytes())
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, answers);
criterion_main!(benches);
