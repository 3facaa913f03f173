//! hyper-util's legacy `Client`, with TLS (hyper-rustls: ring and the webpki roots), under the
//! recommended stack: one answer in one piece, then one streamed and printed token by token.
//!
//! ```sh
//! cargo run --example hyper_client                              # the simulator, no key
//! DASHSCOPE_API_KEY=sk-... cargo run --example hyper_client     # DashScope (billed)
//! RUST_LOG=tower_dashscope=debug cargo run --example hyper_client
//! ```
//!
//! Without a key it starts the DashScope simulator on a loopback port (plain HTTP; the same
//! client speaks HTTPS to DashScope) with `qwen-max` down for two seconds: the first call asks
//! for `qwen-max`, is retried, then answered by `qwen-plus` (`FallbackModel`), and the log
//! shows each step. With `DASHSCOPE_API_KEY` set it calls DashScope with `DASHSCOPE_REGION`,
//! `DASHSCOPE_BASE_URL` and `DASHSCOPE_MODEL` as `cargo run --example quickstart` reads them.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower_dashscope::ServiceBuilderExt;

#[path = "support/chat_demo.rs"]
mod chat_demo;

use chat_demo::chat_both;

#[tokio::main]
async fn main() -> ExitCode {
    let endpoint = match chat_demo::start("hyper-util Client under the recommended stack").await {
        Ok(endpoint) => endpoint,
        Err(code) => return code,
    };

    // HTTPS with ring and the webpki roots; plain HTTP for the loopback simulator.
    let connector = match chat_demo::dashscope_env::https_connector() {
        Ok(connector) => connector,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let http_client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build::<_, Full<Bytes>>(connector);

    let stack = endpoint.stack();
    let client = ServiceBuilder::new()
        .recommended_stack(stack.clone())
        // Each attempt's connection and response head, below the classifier so that it is a
        // typed, retryable `Timeout`: longer than the wait the server may queue a request for.
        .timeout(Duration::from_secs(60))
        .service(http_client);

    let failed = !chat_both(client, &endpoint).await;
    if let Some((mock, _server)) = &endpoint.simulator {
        let stats = mock.stats();
        println!(
            "\nthe simulator saw {} requests, {} of them failed (qwen-max's outage) and {} throttled",
            stats.requests,
            stats.model("qwen-max").map_or(0, |m| m.total.failed),
            stats.throttled()
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
