//! The gateway's request handling (examples/axum_gateway), in process: any method, path,
//! `content-length` and body gives an answer, never a panic or a hang; every refusal is an
//! OpenAI-shaped JSON error with a message; a body that is not JSON, or is over the limit, is
//! refused as such.
//!
//! The gateway runs over the simulator on a loopback port (two models, no quota, no latency),
//! so requests it accepts are answered for real, streams included.
//!
//! Input: byte 0 picks the route (bits 0-1: chat completions twice, models, another path), the
//! method (bit 4: GET) and the `content-length` (bit 2: sent; bit 3: wrong); the rest is the
//! body.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../examples/axum_gateway/mod.rs"]
mod gateway;

use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;
use tower_dashscope::mock::{MockDashScope, MockServer, ModelConfig};
use tower_dashscope_fuzz::block_on;

const KEY: &str = "sk-fuzz-gateway";
const LIMIT: usize = 4096;

struct Harness {
    router: Router,
    _server: MockServer,
}

fn harness() -> Harness {
    block_on(async {
        let mock = MockDashScope::builder()
            .model("qwen-plus", ModelConfig::new())
            .model("qwen-flash", ModelConfig::new())
            .api_key(KEY)
            .build();
        let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = {LIMIT}

[[upstreams]]
base_url = "http://{}"
api_key_env = "FUZZ_KEY"

[models]
"qwen-plus" = {{ rpm = 100_000_000, tpm = 4_000_000_000 }}
"qwen-flash" = {{ rpm = 100_000_000, tpm = 4_000_000_000 }}

[aliases]
"gpt-4o" = "qwen-plus"

[fallbacks]
"qwen-plus" = ["qwen-flash"]

[retry]
max_attempts = 1
"#,
            server.local_addr()
        );
        let config = gateway::config::parse(&text, "fuzz.toml").unwrap();
        let upstreams = gateway::app::resolve_upstreams(&config, |name| {
            (name == "FUZZ_KEY").then(|| KEY.to_owned())
        })
        .await
        .unwrap();
        let gateway = gateway::app::Gateway::new(config, &upstreams.resolved).unwrap();
        Harness {
            router: gateway.router(),
            _server: server,
        }
    })
}

thread_local! {
    static HARNESS: Harness = harness();
}

fuzz_target!(|data: &[u8]| {
    let [flags, body @ ..] = data else { return };
    let path = match flags & 3 {
        0 | 1 => "/v1/chat/completions",
        2 => "/v1/models",
        _ => "/v1/embeddings",
    };
    let method = if flags & 16 == 16 {
        Method::GET
    } else {
        Method::POST
    };
    let mut request = Request::builder().method(method.clone()).uri(path);
    if flags & 4 == 4 {
        let declared = if flags & 8 == 8 {
            LIMIT + 1 + body.len()
        } else {
            body.len()
        };
        request = request.header("content-length", declared);
    }
    let request = request
        .body(axum::body::Body::from(Bytes::copy_from_slice(body)))
        .unwrap();
    let router = HARNESS.with(|h| h.router.clone());
    let (status, bytes) = block_on(async move {
        tokio::time::timeout(Duration::from_secs(20), async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.map(|c| c.to_bytes());
            (status, bytes)
        })
        .await
        .expect("the gateway did not answer within 20 s")
    });
    let bytes = bytes.expect("the answer's body failed");
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!(
            "{method} {path} -> {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(160)])
        );
    }

    let chat = path == "/v1/chat/completions" && method == Method::POST;
    if status != StatusCode::OK && status != StatusCode::METHOD_NOT_ALLOWED {
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "a {status} that is not JSON: {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        let message = value["error"]["message"]
            .as_str()
            .expect("an error message");
        assert!(!message.is_empty());
    }
    if chat {
        if body.len() > LIMIT || (flags & 12 == 12) {
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        } else if serde_json::from_slice::<Value>(body).is_err() {
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
});
