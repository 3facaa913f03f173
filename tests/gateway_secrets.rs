//! No API key anywhere from the gateway of `examples/axum_gateway`: its failure paths over
//! loopback (a fallback, a stream broken midway, bad input, a refused upstream key, a caller's
//! own credentials) with `tracing` captured at TRACE level; the answers' statuses, headers and
//! bodies, the configuration's `Debug` and its errors — a key pasted into the file included —
//! are searched for the keys. The capture helper is tests/support/capture.rs, as for the
//! layers' own check (tests/secrets.rs).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tower_dashscope::mock::{Fault, MidStreamError, MockDashScope, ModelConfig};

#[path = "support/capture.rs"]
mod capture;
#[allow(dead_code)]
#[path = "../examples/axum_gateway/mod.rs"]
mod gateway;
#[path = "support/gateway.rs"]
mod harness;

use capture::{Capture, assert_no_secret};
use gateway::config;

/// The upstream key the gateway sends.
const KEY: &str = "sk-secret-gateway-3a4b5c";
/// A key the simulator takes instead, for the refused-key case.
const OTHER: &str = "sk-secret-other-6d7e8f";
/// A caller's own key, sent to the gateway (which must not pass it on or print it).
const CALLER: &str = "sk-secret-caller-9a0b1c";
const KEY_VAR: &str = "GATEWAY_SECRETS_TEST_KEY";
const MARK: &str = "secret-";
const BOUND: Duration = Duration::from_secs(30);

/// qwen-max falls back to qwen-plus.
const FALLBACKS: &str = r#"
[fallbacks]
"qwen-max" = ["qwen-plus"]
"#;

/// Starts `mock` on loopback and a gateway in front of it; returns the gateway's address and
/// what printing its configuration showed.
async fn start(
    mock: &MockDashScope,
    out: &mut String,
) -> (std::net::SocketAddr, tower_dashscope::mock::MockServer) {
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let config = harness::config(
        server.local_addr(),
        KEY_VAR,
        &harness::models_etc(FALLBACKS),
    );
    let _ = writeln!(out, "config: {config:?}");
    let harness::Served { addr, .. } =
        harness::serve(config, KEY_VAR, KEY, std::future::pending::<()>()).await;
    (addr, server)
}

/// Sends `body` (with the caller's own key), and prints the answer.
async fn post(addr: std::net::SocketAddr, what: &str, body: impl Into<Bytes>, out: &mut String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {CALLER}"))
        .body(Full::new(body.into()))
        .unwrap();
    let response = tokio::time::timeout(BOUND, client.request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers");
    let _ = writeln!(
        out,
        "{what}: {} {:?}",
        response.status(),
        response.headers()
    );
    let body = tokio::time::timeout(BOUND, response.into_body().collect())
        .await
        .expect("the body ends in time");
    match body {
        Ok(body) => {
            let _ = writeln!(
                out,
                "{what} body: {}",
                String::from_utf8_lossy(&body.to_bytes())
            );
        }
        Err(err) => {
            let _ = writeln!(out, "{what} body error: {err} / {err:?}");
        }
    }
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "max_tokens": 16,
           "messages": [{"role": "user", "content": "Say hello to the gateway."}]})
    .to_string()
}

#[tokio::test]
async fn no_failure_of_the_gateway_shows_a_key() {
    let (logs, _guard) = Capture::start();
    let mut out = String::new();

    // The upstream takes the gateway's key: a fallback, a broken stream, bad input.
    let mock = MockDashScope::builder()
        .model(
            "qwen-max",
            ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(3600)),
        )
        .model(
            "qwen-plus",
            ModelConfig::new().fault(Fault::ErrorMidStream {
                after_tokens: 3,
                error: MidStreamError::Internal,
            }),
        )
        .api_key(KEY)
        .build();
    let (addr, _server) = start(&mock, &mut out).await;
    post(addr, "fallback", chat("qwen-max", false), &mut out).await;
    post(addr, "broken stream", chat("qwen-plus", true), &mut out).await;
    post(addr, "fallback stream", chat("qwen-max", true), &mut out).await;
    post(addr, "not json", "{not json", &mut out).await;
    post(
        addr,
        "unknown model",
        chat("no-such-model", false),
        &mut out,
    )
    .await;
    post(addr, "too large", vec![b' '; 8192], &mut out).await;
    assert!(mock.stats().requests >= 3, "the upstream was called");

    // The upstream refuses the gateway's key.
    let refusing = MockDashScope::builder()
        .model("qwen-max", ModelConfig::new())
        .model("qwen-plus", ModelConfig::new())
        .api_key(OTHER)
        .build();
    let (addr, _server) = start(&refusing, &mut out).await;
    post(addr, "refused key", chat("qwen-max", false), &mut out).await;
    post(addr, "refused key stream", chat("qwen-max", true), &mut out).await;
    assert!(out.contains("upstream_authentication"), "{out}");

    // A key pasted into the configuration file, where a variable's name belongs.
    for text in [
        format!("[[upstreams]]\nregion = \"ap-southeast-1\"\napi_key = \"{KEY}\"\n"),
        format!("[[upstreams]]\nregion = \"ap-southeast-1\"\napi_key_env = \"{KEY}\"\n"),
        format!(
            "[[upstreams]]\nbase_url = \"https://user:{KEY}@example.com/v1\"\napi_key_env = \"X\"\n"
        ),
        format!("{KEY}\n"),
    ] {
        match config::parse(&text, "gateway.toml") {
            Ok(config) => {
                let _ = writeln!(out, "parsed: {config:?}");
            }
            Err(err) => {
                let _ = writeln!(out, "config error: {err} / {err:?}");
            }
        }
    }

    let text = logs.text();
    assert!(
        logs.records()
            .iter()
            .any(|r| r.level == tracing::Level::TRACE),
        "TRACE was captured"
    );
    assert!(
        text.contains("fallback: switching model"),
        "the layers ran: {text}"
    );
    if let Some(path) = std::env::var_os("SECRETS_DUMP") {
        std::fs::write(path, format!("{text}\n{out}")).unwrap();
    }
    assert_no_secret(&text, &[MARK]);
    assert_no_secret(&out, &[MARK]);
}
