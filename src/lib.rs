//! Tower layers that make calls to Alibaba Cloud Model Studio (DashScope / Qwen) — and to any
//! OpenAI- or Anthropic-compatible LLM endpoint — survive production.
//!
//! Each behaviour is an independent [`tower::Layer`]; stack the ones you need over any HTTP
//! client service (hyper-util's `Client`, a `tower::service_fn` around reqwest, a `tower-test`
//! mock) with [`tower::ServiceBuilder`]. Every service has `type Error = DashScopeError`, so the
//! top of any stack matches on one typed error:
//!
//! - [`ClassifyDashScopeError`] turns every failure — non-2xx responses in any of DashScope's
//!   body shapes, SSE-framed error bodies, transport errors and timeouts — into a
//!   [`DashScopeError`] with an [`ErrorClass`]; success bodies pass through untouched.
//! - [`RetryWithJitter`] retries what a later attempt can fix, with capped exponential backoff
//!   and jitter, `Retry-After` honoured, a deadline, a retry budget against outages and a
//!   throttle for 429s from a live server, both shared by its clones.
//! - [`TokenBudget`] keeps each model within its requests and tokens per minute, shaped per
//!   second as DashScope enforces them: it reserves before sending, waits instead of collecting
//!   429s ([`BudgetWait`]), and settles against the usage the response reports; its windows can
//!   live in Redis for a fleet (feature `redis`).
//! - [`FallbackModel`] answers with the next model of a chain when one is throttled, down or
//!   silent — on the errors another model can fix only — and says which in [`ServedModel`].
//! - [`WaitTimeoutHeader`] sets `X-DashScope-Wait-Timeout` so the server queues burst-throttled
//!   requests instead of answering 429.
//! - [`RegionRouter`] sends each request to its region's, plan's and API's base URL with that
//!   endpoint's key, refuses key/plan mismatches locally, and fails over between regions only
//!   where resending can help.
//! - [`RecommendedStack`] composes all six in the recommended order from one configuration
//!   (region and key, quotas, fallback chains, retry settings) and names the service it makes,
//!   [`RecommendedService`]; [`ServiceBuilderExt`] adds one method per layer to
//!   [`tower::ServiceBuilder`] for stacks of your own.
//! - `mock::MockDashScope` (feature `mock`, on by default) is a DashScope simulator — quotas, error bodies,
//!   streams and scripted faults — for tests, benchmarks and demos.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, ClassifyDashScopeError, ErrorClass, WaitTimeoutHeader};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let http_client = service_fn(|_req: Request<Full<Bytes>>| async {
//! #     let body = r#"{"error":{"code":"invalid_parameter_error","param":null,"message":"<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 129024]","type":"invalid_request_error"},"request_id":"262914be"}"#;
//! #     Ok::<_, BoxError>(Response::builder().status(StatusCode::BAD_REQUEST).body(Full::new(Bytes::from(body))).unwrap())
//! # });
//! let client = ServiceBuilder::new()
//!     .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
//!     .layer(ClassifyDashScopeError::new())
//!     .service(http_client);
//!
//! let request = Request::post("https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions")
//!     .body(Full::new(Bytes::from(r#"{"model":"qwen-plus","messages":[]}"#)))
//!     .unwrap();
//! match client.oneshot(request).await {
//!     Ok(response) => println!("status {}", response.status()),
//!     Err(err) if err.class() == ErrorClass::ContextLengthExceeded => {
//!         assert_eq!(err.message(), Some("Range of input length should be [1, 129024]"));
//!     }
//!     Err(err) => panic!("unexpected: {err}"),
//! }
//! # }
//! ```
//!
//! # All six in one call
//!
//! [`RecommendedStack`] puts the six layers in the recommended order — `FallbackModel` →
//! `RetryWithJitter` → `TokenBudget` → `RegionRouter` → `WaitTimeoutHeader` →
//! `ClassifyDashScopeError` → your client — from one configuration; its [module docs](stack)
//! draw the order and say why. With no quota it never holds a request back, and with no
//! fallback chain it sends every request to the model asked for.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_dashscope::{Quota, RecommendedStack, Region, ServiceBuilderExt};
//! # let http_client = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
//! #     Ok::<_, tower_dashscope::BoxError>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default()))
//! # });
//!
//! let client = ServiceBuilder::new()
//!     .recommended_stack(
//!         RecommendedStack::new(Region::Singapore, "sk-your-key")
//!             .failover(Region::Virginia, "sk-your-us-key")
//!             .quota(Quota::per_minute(600, 1_000_000))
//!             .fallback(["qwen-plus", "qwen-flash"]),
//!     )
//!     .service(http_client);
//! # let _ = client;
//! ```
//!
//! For another order, or fewer layers, [`ServiceBuilderExt`] has one method per layer
//! (`examples/custom_stack.rs` composes them by hand and measures what a wrong order costs).
//!
//! # Your HTTP client
//!
//! The layers wrap any `tower::Service<http::Request<B>>` whose body can be replayed
//! ([`body::ReplayBody`]: `Full<Bytes>`, `String`, `Bytes`, … and
//! [`body::BufferRequestBody`] to bring a streaming body in). Each example runs against the
//! simulator by default and against DashScope when `DASHSCOPE_API_KEY` is set:
//!
//! | you use | example |
//! |---|---|
//! | hyper-util's `Client` (with hyper-rustls) | `cargo run --example hyper_client`: a call and a stream printed token by token |
//! | reqwest | `cargo run --example reqwest`: `reqwest::Client` as a tower service in a dozen lines |
//! | axum | `examples/axum_gateway.rs`: an OpenAI-compatible gateway, the stack in axum state |
//! | your own order | `cargo run --example custom_stack` |
//!
//! The examples log what the layers decide with `tracing-subscriber` (`RUST_LOG`, by default
//! `tower_dashscope=info`).
//!
//! # Testing your stack
//!
//! Put a [`tower-test`](https://docs.rs/tower-test) mock where the HTTP client goes: the test
//! sees each request the stack sends and answers it as DashScope would. Here the first answer
//! is DashScope's 429, and the test watches the retry come after a backoff — in no time, since
//! the clock is paused:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Layer, ServiceExt};
//! use tower_dashscope::{Attempts, RecommendedStack, Region, RetryWithJitter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let (http_client, mut dashscope) =
//!     tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
//! let client = RecommendedStack::new(Region::Singapore, "sk-test")
//!     .retry(RetryWithJitter::new().seed(1)) // the same backoff every run
//!     .layer(http_client);
//!
//! let request = Request::post("/compatible-mode/v1/chat/completions")
//!     .body(Full::from(r#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}"#))
//!     .unwrap();
//! let call = tokio::spawn(client.oneshot(request));
//!
//! // The first attempt: routed to Singapore with the key, and throttled.
//! let (sent, reply) = dashscope.next_request().await.unwrap();
//! assert_eq!(sent.uri().host(), Some("dashscope-intl.aliyuncs.com"));
//! assert_eq!(sent.headers()["authorization"], "Bearer sk-test");
//! let throttled_at = tokio::time::Instant::now();
//! reply.send_response(
//!     Response::builder()
//!         .status(429)
//!         .body(Full::from(r#"{"error":{"message":"Requests rate limit exceeded, please try again later.","type":"limit_requests","param":null,"code":"limit_requests"}}"#))
//!         .unwrap(),
//! );
//!
//! // The retry, after a backoff.
//! let (_sent, reply) = dashscope.next_request().await.unwrap();
//! assert!(throttled_at.elapsed() > std::time::Duration::ZERO);
//! reply.send_response(Response::new(Full::from(r#"{"choices":[]}"#)));
//!
//! let response = call.await.unwrap().unwrap();
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
//! # }
//! ```
//!
//! For whole scenarios — quotas, outages, streams, faults — use the simulator,
//! `mock::MockDashScope` (feature `mock`), in process or on a loopback port.
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `mock` | yes | `mock`: the DashScope simulator, in process and on a loopback HTTP server (hyper). Turn it off with `default-features = false` when you do not need it: the layers need no feature. |
//! | `hyper-client` | no | recognises hyper's and hyper-util's client errors by type (not by text) when deciding whether a failed request was sent ([`Delivery`]) |
//! | `redis` | no | `budget::RedisStore`: one [`TokenBudget`] for a fleet, through Redis or Valkey |
//!
//! # Compared with what you would otherwise use
//!
//! Facts, not a verdict; the measured numbers are in `BENCHMARKS.md` in the repository (simulated
//! time, fixed seeds: `cargo run --release --example goodput`).
//!
//! - **tower's built-ins** (`tower::retry::Retry`, `tower::limit::RateLimit`,
//!   `ConcurrencyLimit`, `Timeout`) are generic and cheap: 5,179 instructions per request for
//!   `RateLimit` + `Retry` + a header, against 45,908 for this crate's six layers (callgrind;
//!   the timings, `cargo bench --bench overhead`, are in BENCHMARKS.md). They know nothing of DashScope: you write the retry `Policy` (which failures,
//!   which backoff, `Retry-After`), `RateLimit` counts requests — not tokens — for everything behind
//!   it rather than per model, and nothing reads error bodies, switches models or regions.
//! - **reqwest-retry** (reqwest-middleware, 0.9) retries by status and error kind: 5xx, 408 and
//!   429, timeouts and connection errors, on a `RetryPolicy` schedule (exponential backoff). It
//!   does not read `Retry-After`, does not read bodies (a 429 streamed inside an HTTP 200, or a
//!   plan-wide quota that no retry fixes, look like any other answer), has no retry budget shared
//!   across requests, and no rate limiting, fallback or region routing. Requests with a streaming
//!   body cannot be retried.
//! - **LiteLLM** is a proxy (a Python server your services call over HTTP) with an
//!   OpenAI-compatible API and a DashScope provider; its router does retries, fallbacks between
//!   deployments and models, cooldowns, and RPM/TPM-aware routing, configured in YAML. It is a
//!   separate process and a network hop; this crate is a library in your process. Its retry
//!   schedule — 2 retries, `min(0.5 s · 2^n, 8 s)` plus up to 0.75 s, integer `Retry-After` in
//!   1–60 s — is what BENCHMARKS.md's `litellm` strategy models (not its fallbacks or limits).
//! - **The OpenAI SDKs' defaults** (Python and Node): 2 retries on 408, 409, 429, 5xx, connection
//!   errors and timeouts, `min(0.5 s · 2^n, 8 s)` less up to 25% jitter, `retry-after-ms` /
//!   `Retry-After` followed when within 60 s, a 600 s timeout; no rate limiting, fallback or
//!   region failover. Measured against the simulator: under a quota offered twice its rate they
//!   completed 1167 of 2000 requests with 73% of attempts throttled, through a model outage 306 of
//!   900; the recommended stack completed 2000 of 2000 with 0.05% throttled and 900 of 900 — but,
//!   waiting for quota instead of failing, the quota run took 481 s instead of 245 s. (The outage
//!   run gives the stack a second model to fall back to; the SDK has none.)
//!
//! # Telemetry
//!
//! Every layer logs its decisions with [`tracing`] — retries, fallbacks, budget waits,
//! failovers, and each classified failure — with OpenTelemetry GenAI field names
//! (`gen_ai.request.model`, `error.type`, …) and `dashscope.*` ones; giving up is a WARN, the
//! success path logs nothing above DEBUG, and a disabled level costs no formatting. The
//! [`telemetry`] module has the table of events and fields.
//!
//! # Time
//!
//! Every layer takes its time from `tokio::time`, so tests can run with
//! `tokio::time::pause()`.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod api;
pub mod body;
pub mod budget;
pub mod builder;
pub mod classify;
mod error;
mod extensions;
pub mod fallback;
pub mod future;
mod guard;
pub mod headers;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
pub mod outcome;
pub mod request;
pub mod retry;
mod retry_after;
pub mod router;
mod spare;
pub mod stack;
pub mod telemetry;
pub mod wait_timeout;

pub use api::{Api, Region};
pub use budget::{OutputCharge, Quota, TokenBudget, TokenBudgetService};
pub use builder::ServiceBuilderExt;
pub use classify::{ClassifyDashScopeError, ClassifyDashScopeErrorService};
pub use error::{
    BoxError, DashScopeError, Delivery, ErrorClass, QuotaReset, QuotaScope, RateLimitKind,
};
pub use extensions::{Attempts, BudgetWait, ServedModel, ServedRegion, Usage, UsageSlot};
pub use fallback::{FallbackModel, FallbackModelService};
pub use retry::{RetryWithJitter, RetryWithJitterService};
pub use retry_after::{MAX_RETRY_AFTER, RETRY_AFTER_MS, parse_retry_after, parse_retry_after_at};
pub use router::{RegionRouter, RegionRouterService};
pub use stack::{RecommendedService, RecommendedStack};
pub use wait_timeout::{WaitTimeoutHeader, WaitTimeoutHeaderService};

// The README's examples use the simulator.
#[cfg(all(doctest, feature = "mock"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
