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
pub mod stack;
pub mod wait_timeout;

pub use api::{Api, Region};
pub use budget::{Quota, TokenBudget, TokenBudgetService};
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
