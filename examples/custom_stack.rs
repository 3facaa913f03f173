//! The layers composed by hand with `ServiceBuilder` and `ServiceBuilderExt`, and why their
//! order matters.
//!
//! ```sh
//! cargo run --example custom_stack                              # the simulator, no key
//! DASHSCOPE_API_KEY=sk-... cargo run --example custom_stack     # part 1 against DashScope
//! ```
//!
//! **Part 1** builds the recommended order by hand — what `RecommendedStack` does in one call —
//! over hyper-util's client, and makes one call: to the simulator on a loopback port, or to
//! DashScope when `DASHSCOPE_API_KEY` is set (`DASHSCOPE_REGION`, `DASHSCOPE_BASE_URL`,
//! `DASHSCOPE_MODEL` as `cargo run --example quickstart` reads them).
//!
//! **Part 2** runs the same traffic through the recommended order and through a wrong one,
//! against the in-process simulator with tokio's clock paused (a few seconds of CPU, the same
//! numbers every run), and prints what the server saw:
//!
//! - **The budget outside the retry.** Retries then bypass the budget: they are sent at once,
//!   without waiting for quota, and the budget never sees the 429s that would teach it the
//!   account's real rate. Inside the retry, each attempt pays for its quota.
//! - **The budget outside the fallback.** It then counts the model asked for, not the model
//!   sent: requests for a model that is down fall back, uncounted, onto the next model's quota
//!   and collect its 429s. Inside the fallback, it counts the model actually sent.
//! - **The classifier outside the retry.** Below the classifier a DashScope error that arrives
//!   inside an HTTP 200 (the native API streams a 429 as `event:error` + `:HTTP_STATUS/429`)
//!   looks like a success, so it is never retried; it reaches the caller as an error.
//!   Innermost, everything above sees typed errors.
//!
//! The order, outermost first: `FallbackModel` → `RetryWithJitter` → `TokenBudget` →
//! `RegionRouter` → `WaitTimeoutHeader` → `ClassifyDashScopeError` → the HTTP client.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::{
    DashScopeError, FallbackModel, Quota, RegionRouter, RetryWithJitter, ServiceBuilderExt,
    TokenBudget,
};

#[path = "support/chat_demo.rs"]
mod chat_demo;

use chat_demo::{Endpoint, chat_once, init_tracing, redact};

fn main() -> ExitCode {
    init_tracing();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(message) = runtime.block_on(part_one()) {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    drop(runtime);

    println!("\nPart 2: the same traffic, in the recommended order and in a wrong one");
    println!("(in-process simulator, paused clock: simulated time, same numbers every run)\n");
    // Its own runtime, with tokio's clock paused: minutes of quota in milliseconds.
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    // Part 2's own decisions are counted, not logged.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        paused.block_on(part_two())
    });
    ExitCode::SUCCESS
}

/// The recommended order by hand, over hyper-util's client, and one call.
async fn part_one() -> Result<(), String> {
    let endpoint = Endpoint::from_env().await?;
    println!("Part 1: the six layers by hand, to {}", endpoint.describe());
    let chain = std::iter::once(endpoint.model.clone()).chain(endpoint.fallback.clone());
    // HTTPS (rustls, ring, webpki roots) for DashScope; plain HTTP for the loopback simulator.
    let connector = chat_demo::dashscope_env::https_connector()?;
    let http_client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    // In live mode, the router of `endpoint.stack()` carries the region and its key.
    let router: RegionRouter = endpoint.stack().router_ref().clone();
    let client = ServiceBuilder::new()
        // Outermost: sees each model's final outcome, after its retries.
        .fallback_model(FallbackModel::new(chain).cooldown(Duration::from_secs(5)))
        // Retries one model while retrying can help; hands rate limits to the fallback.
        .retry_with_jitter(
            RetryWithJitter::new()
                .max_attempts(3)
                .base_delay(Duration::from_millis(250))
                .deadline(Duration::from_secs(30)),
        )
        // Every attempt pays for its quota, counted for the model actually sent.
        .token_budget(TokenBudget::new(Quota::per_minute(600, 1_000_000)))
        // Base URL and key per region; failover inside one attempt.
        .region_router(router)
        .wait_timeout_header(Duration::from_secs(10))
        // Innermost: everything above sees typed errors.
        .classify_dashscope_error()
        .service(http_client);
    chat_once(client, &endpoint)
        .await
        .map_err(|err| redact(&err.to_string(), endpoint.key()))
}

/// `count` chat requests, one every `gap`, each on its own task; the bodies read to the end.
async fn drive<S, B>(
    service: S,
    count: u32,
    gap: Duration,
    make: fn() -> Request<Full<Bytes>>,
) -> (u32, u32)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes, Error = DashScopeError> + Send + 'static,
{
    let mut tasks = Vec::new();
    for _ in 0..count {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(make()).await?;
            response.into_body().collect().await.map(|_| ())
        }));
        tokio::time::sleep(gap).await;
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        match task.await.expect("the task ran") {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

fn compat(model: &'static str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello there"}}],"max_tokens":16}}"#
    );
    Request::post("/compatible-mode/v1/chat/completions")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request")
}

/// One run's line: how its requests ended (`ok`, `failed`), and the 429s `mock` sent.
fn print(what: &str, (ok, failed): (u32, u32), mock: &MockDashScope) {
    println!(
        "  {what:<50} {ok:>3} ok {failed:>3} failed   the server sent {:>3} 429s",
        mock.stats().throttled()
    );
}

/// The server for runs 1 and 3: qwen-plus at 60 requests a minute.
fn plus_at_60_rpm() -> MockDashScope {
    MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new().rpm(60))
        .seed(7)
        .build()
}

async fn part_two() {
    let retry = || {
        RetryWithJitter::new()
            .seed(7)
            .base_delay(Duration::from_millis(500))
    };

    // 1. The budget and the retry. The account really has 60 requests a minute; the budget was
    //    told 120 (another service shares the account, or the quota was cut).
    println!("1. TokenBudget inside or outside RetryWithJitter (quota told 120/min, real 60/min):");
    for inside in [true, false] {
        let mock = plus_at_60_rpm();
        let budget = TokenBudget::new(Quota::per_minute(120, 0));
        let outcome = if inside {
            let service = ServiceBuilder::new()
                .retry_with_jitter(retry())
                .token_budget(budget)
                .classify_dashscope_error()
                .service(mock.clone());
            drive(service, 120, Duration::from_millis(500), || {
                compat("qwen-plus")
            })
            .await
        } else {
            let service = ServiceBuilder::new()
                .token_budget(budget)
                .retry_with_jitter(retry())
                .classify_dashscope_error()
                .service(mock.clone());
            drive(service, 120, Duration::from_millis(500), || {
                compat("qwen-plus")
            })
            .await
        };
        print(
            if inside {
                "retry -> budget (recommended)"
            } else {
                "budget -> retry (retries skip the budget)"
            },
            outcome,
            &mock,
        );
    }

    // 2. The budget and the fallback. qwen-max is down; every request asks for it and falls
    //    back to qwen-plus, whose quota (60/min) the budget knows.
    println!("\n2. TokenBudget inside or outside FallbackModel (qwen-max down, qwen-plus 60/min):");
    for inside in [true, false] {
        let mock = MockDashScope::builder()
            .model(
                "qwen-max",
                ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(3600)),
            )
            .model("qwen-plus", ModelConfig::new().rpm(60))
            .seed(7)
            .build();
        let budget =
            TokenBudget::new(Quota::per_minute(0, 0)).model("qwen-plus", Quota::per_minute(60, 0));
        let fallback = FallbackModel::new(["qwen-max", "qwen-plus"]);
        let outcome = if inside {
            let service = ServiceBuilder::new()
                .fallback_model(fallback)
                .retry_with_jitter(retry().max_attempts(2))
                .token_budget(budget)
                .classify_dashscope_error()
                .service(mock.clone());
            drive(service, 60, Duration::from_millis(500), || {
                compat("qwen-max")
            })
            .await
        } else {
            let service = ServiceBuilder::new()
                .token_budget(budget)
                .fallback_model(fallback)
                .retry_with_jitter(retry().max_attempts(2))
                .classify_dashscope_error()
                .service(mock.clone());
            drive(service, 60, Duration::from_millis(500), || {
                compat("qwen-max")
            })
            .await
        };
        print(
            if inside {
                "fallback -> budget (recommended)"
            } else {
                "budget -> fallback (counts qwen-max, sends plus)"
            },
            outcome,
            &mock,
        );
    }

    // 3. The classifier and the retry. Native streaming requests; the server answers a 429 the
    //    way DashScope does for them: inside an HTTP 200, as an error event.
    println!(
        "\n3. ClassifyDashScopeError inside or outside RetryWithJitter (native streams, 60/min):"
    );
    fn native_stream() -> Request<Full<Bytes>> {
        Request::post("/api/v1/services/aigc/text-generation/generation")
            .header("X-DashScope-SSE", "enable")
            .body(Full::from(
                r#"{"model":"qwen-plus","input":{"messages":[{"role":"user","content":"hello there"}]},"parameters":{"max_tokens":16}}"#,
            ))
            .expect("a valid request")
    }
    for inside in [true, false] {
        let mock = plus_at_60_rpm();
        let outcome = if inside {
            let service = ServiceBuilder::new()
                .retry_with_jitter(retry())
                .classify_dashscope_error()
                .service(mock.clone());
            drive(service, 40, Duration::from_millis(800), native_stream).await
        } else {
            let service = ServiceBuilder::new()
                .classify_dashscope_error()
                .retry_with_jitter(retry())
                .service(mock.clone());
            drive(service, 40, Duration::from_millis(800), native_stream).await
        };
        print(
            if inside {
                "retry -> classify (recommended)"
            } else {
                "classify -> retry (a 429 in a 200: not retried)"
            },
            outcome,
            &mock,
        );
    }
}
