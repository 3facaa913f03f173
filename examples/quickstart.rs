//! The quickstart: chat requests through the layers, over real HTTP — against the crate's
//! DashScope simulator, or, with a key, against DashScope itself.
//!
//! `cargo run --example quickstart`
//!
//! **Simulator (no `DASHSCOPE_API_KEY`).** It starts `MockDashScope` on a loopback port with a
//! tight quota on `qwen-plus` (600 RPM, 60k TPM), an outage on `qwen-max` for the first two
//! seconds, a burst limit and some latency; then sends 40 requests at once — both API flavours,
//! mixed sizes, some streaming, one too long for the context window — through the recommended
//! stack (`FallbackModel`, `RetryWithJitter`, `TokenBudget`, `RegionRouter`,
//! `WaitTimeoutHeader`, `ClassifyDashScopeError`) over hyper-util's HTTP client, and reports
//! what happened. No key, no network.
//!
//! **Live (`DASHSCOPE_API_KEY` set).** Three small requests (`max_tokens` 32; billed to the key's
//! account) through the same layers, over HTTPS (rustls with ring and the webpki roots): an
//! OpenAI-compatible chat, the same streamed with `stream_options.include_usage`, and a native
//! `text-generation` call. For each: status, time, attempts, tokens used and the start of the
//! answer, or the typed error and its class. Exits 0 if at least one call succeeded. (The same
//! code runs alone as `cargo run --example live`.)
//!
//! | variable | meaning |
//! |---|---|
//! | `DASHSCOPE_API_KEY` | the key, sent as `Authorization: Bearer …` and never printed |
//! | `DASHSCOPE_REGION` | `singapore` / `ap-southeast-1` (default), `beijing` / `cn-beijing`, `virginia` / `us-east-1`, `hongkong` / `cn-hongkong`; keys work only in their own region |
//! | `DASHSCOPE_BASE_URL` | optional `http(s)://host[:port]` in place of the region's host: a workspace-dedicated host, a proxy, or the simulator of `cargo run --example mock_server` |
//! | `DASHSCOPE_MODEL` | optional, default `qwen-flash` |
//!
//! The layers' decisions (retries, fallbacks, budget waits, failovers) are logged to stderr
//! with `tracing`: `RUST_LOG` chooses what (default `tower_dashscope=info`;
//! `RUST_LOG=tower_dashscope=debug` shows every classified failure and routed request).
//!
//! Without the internet, against the simulator served by the `mock_server` example:
//!
//! ```sh
//! cargo run --example mock_server &        # prints: listening on http://127.0.0.1:PORT
//! DASHSCOPE_API_KEY=sk-mock DASHSCOPE_BASE_URL=http://127.0.0.1:PORT cargo run --example quickstart
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::{
    Attempts, BudgetWait, ClassifyDashScopeError, FallbackModel, Quota, Region, RegionRouter,
    RetryWithJitter, ServedModel, ServedRegion, TokenBudget, WaitTimeoutHeader,
};

#[path = "live/demo.rs"]
mod live;
#[path = "support/logging.rs"]
mod logging;

const COMPAT: &str = "/compatible-mode/v1/chat/completions";
const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    logging::init();
    match std::env::var_os("DASHSCOPE_API_KEY") {
        Some(key) if !key.to_string_lossy().trim().is_empty() => Ok(live::live_demo(&key).await),
        Some(_) => {
            eprintln!("note: DASHSCOPE_API_KEY is empty; running against the simulator.\n");
            simulator_demo().await?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            simulator_demo().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// 40 requests at once to the simulator, and what happened.
async fn simulator_demo() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new()
                .rpm(600) // 10 requests per second
                .tpm(60_000) // 1000 tokens per second
                .burst_limit(8)
                .context_window(2_000)
                .latency(Duration::from_millis(120), 200.0),
        )
        .model(
            "qwen-max",
            ModelConfig::new()
                .rpm(600)
                .outage(Duration::ZERO..Duration::from_secs(2))
                .latency(Duration::from_millis(200), 100.0),
        )
        // A model with a longer context window, for what qwen-plus cannot take.
        .model(
            "qwen-long",
            ModelConfig::new()
                .rpm(600)
                .context_window(100_000)
                .latency(Duration::from_millis(150), 200.0),
        )
        .seed(2026)
        .build();
    let server = mock.serve("127.0.0.1:0".parse()?).await?;
    let base = format!("http://{}", server.local_addr());

    let http_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        // qwen-max down or throttled: qwen-plus answers; an input too long for qwen-plus's
        // window goes to qwen-long, without a round trip to qwen-plus first.
        .layer(
            FallbackModel::new(["qwen-max", "qwen-plus"])
                .context_window("qwen-plus", 2_000)
                .context_window("qwen-long", 100_000),
        )
        .layer(
            RetryWithJitter::new()
                .base_delay(Duration::from_millis(500))
                .max_delay(Duration::from_secs(4))
                .deadline(Duration::from_secs(30))
                .seed(2026),
        )
        // The account's quotas, so the layer waits instead of collecting 429s.
        .layer(TokenBudget::new(Quota::per_minute(600, 60_000)))
        // The simulator stands in for a region: base URL and key per endpoint. Live, this is
        // `RegionRouter::new(Region::Singapore, key)`.
        .layer(RegionRouter::new(Region::custom(&base)?, "sk-demo"))
        .layer(WaitTimeoutHeader::new(Duration::from_secs(3)))
        .layer(ClassifyDashScopeError::new())
        .service(http_client);

    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..40 {
        let model = if i % 5 == 4 { "qwen-max" } else { "qwen-plus" };
        let native = i % 3 == 0;
        let streaming = i % 4 == 1;
        let text = match i {
            17 => "a very long contract to summarise, clause by clause. ".repeat(200),
            _ => "Summarise this paragraph in one sentence. ".repeat(1 + (i % 7) * 3),
        };
        let body = if native {
            serde_json::json!({"model": model, "input": {"messages": [{"role": "user", "content": text}]}, "parameters": {"max_tokens": 40}})
        } else {
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 40, "stream": streaming})
        };
        let path = if native { NATIVE } else { COMPAT };
        let mut request = Request::post(path).header("content-type", "application/json");
        if native && streaming {
            request = request.header("X-DashScope-SSE", "enable");
        }
        let request = request.body(Full::new(Bytes::from(body.to_string())))?;
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let response = client.oneshot(request).await?;
            let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let waited = response
                .extensions()
                .get::<BudgetWait>()
                .map_or(Duration::ZERO, |w| w.0);
            let region = response
                .extensions()
                .get::<ServedRegion>()
                .map(|r| r.0.to_string());
            let fell_back = response
                .extensions()
                .get::<ServedModel>()
                .is_some_and(|served| served.0 != model);
            // Read to the end: errors inside streams surface here.
            response.into_body().collect().await?;
            Ok::<(u32, Duration, Option<String>, bool), tower_dashscope::DashScopeError>((
                attempts, waited, region, fell_back,
            ))
        }));
    }

    let (mut succeeded, mut retries) = (0, 0);
    let (mut held_back, mut longest_wait) = (0, Duration::ZERO);
    let mut served_by = BTreeMap::new();
    let mut fallbacks = 0;
    let mut failures: BTreeMap<&'static str, (u32, String)> = BTreeMap::new();
    for call in calls {
        match call.await? {
            Ok((attempts, waited, region, fell_back)) => {
                succeeded += 1;
                fallbacks += u32::from(fell_back);
                *served_by.entry(region.unwrap_or_default()).or_insert(0) += 1;
                retries += attempts - 1;
                if !waited.is_zero() {
                    held_back += 1;
                    longest_wait = longest_wait.max(waited);
                }
            }
            Err(err) => {
                retries += err.attempts().unwrap_or(1).saturating_sub(1);
                failures
                    .entry(err.class().as_str())
                    .or_insert((0, err.to_string()))
                    .0 += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = mock.stats();
    server.shutdown();

    let all = stats.total();
    let max = stats.model("qwen-max").map(|m| m.total).unwrap_or_default();
    println!(
        "tower-dashscope quickstart: 40 chat requests at once, over HTTP, to the DashScope simulator"
    );
    println!("(qwen-plus: 600 RPM / 60k TPM, burst limit; qwen-max: down for the first 2 s)\n");
    println!(
        "  succeeded                    {succeeded:>3} of 40 in {:.1} s",
        elapsed.as_secs_f64()
    );
    println!("  requests the server saw      {:>3}", stats.requests);
    println!(
        "  429s the server sent         {:>3}  (requests {}, tokens {}, burst {})",
        stats.throttled(),
        all.throttled_requests,
        all.throttled_tokens,
        all.throttled_burst,
    );
    println!("  503s during the outage       {:>3}", max.failed);
    println!(
        "  queued by the server         {:>3}  (X-DashScope-Wait-Timeout instead of a burst 429)",
        all.queued
    );
    println!(
        "  held back by TokenBudget     {held_back:>3}  (longest {:.1} s: waited for quota instead of a 429)",
        longest_wait.as_secs_f64()
    );
    println!(
        "  retries, with jitter         {retries:>3}  (RetryWithJitter, budget shared by all 40)"
    );
    println!("  most requests in flight      {:>3}", stats.peak_in_flight);
    println!(
        "  answered by a fallback model {fallbacks:>3}  (FallbackModel: ServedModel differs from the model asked for)"
    );
    for (region, count) in &served_by {
        println!("  served by (RegionRouter)     {count:>3}  {region}");
    }
    if let Some(plus) = stats.model("qwen-plus") {
        let per_second: Vec<String> = plus
            .timeline
            .iter()
            .map(|(second, c)| format!("{second}s {}/{}", c.succeeded, c.requests))
            .collect();
        println!(
            "\n  qwen-plus, second by second (admitted/asked; quota 10 requests and 1000 tokens a second):"
        );
        println!("    {}", per_second.join("  "));
    }
    if !failures.is_empty() {
        println!("\n  did not succeed (each error says what to do):");
        for (class, (count, example)) in &failures {
            println!("    {count} × {class}: {example}");
        }
    }
    Ok(())
}
