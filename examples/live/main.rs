//! Live mode alone: three small requests to DashScope (billed to your key) through
//! `RetryWithJitter`, `WaitTimeoutHeader` and `ClassifyDashScopeError`, over HTTPS.
//!
//! ```sh
//! DASHSCOPE_API_KEY=sk-... cargo run --example live
//! ```
//!
//! | variable | meaning |
//! |---|---|
//! | `DASHSCOPE_API_KEY` | the key, sent as `Authorization: Bearer …` and never printed |
//! | `DASHSCOPE_REGION` | `singapore` / `ap-southeast-1` (default), `beijing` / `cn-beijing`, `virginia` / `us-east-1`, `hongkong` / `cn-hongkong`; keys work only in their own region |
//! | `DASHSCOPE_BASE_URL` | optional `http(s)://host[:port]` in place of the region's host: a workspace-dedicated host, a proxy, or the simulator of `cargo run --example mock_server` |
//! | `DASHSCOPE_MODEL` | optional, default `qwen-flash` |
//!
//! For each call: status, time, attempts, tokens used and the start of the answer, or the typed
//! error and its class; the layers' decisions are logged to stderr (`RUST_LOG`, default
//! `tower_dashscope=info`). Exits 0 if at least one call succeeded, 1 if none did, 2 on bad settings.

mod demo;
#[path = "../support/logging.rs"]
mod logging;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    match std::env::var_os("DASHSCOPE_API_KEY") {
        Some(key) if !key.to_string_lossy().trim().is_empty() => demo::live_demo(&key).await,
        _ => {
            eprintln!(
                "error: set DASHSCOPE_API_KEY to a DashScope key (or run `cargo run --example \
                 quickstart` for the simulator)"
            );
            ExitCode::from(2)
        }
    }
}
