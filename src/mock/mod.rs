//! `MockDashScope`: a DashScope simulator for tests, benchmarks and demos (feature `mock`).
//!
//! It answers chat requests the way DashScope does — the OpenAI-compatible, native and
//! Anthropic-compatible endpoints, streaming and not — and fails the way DashScope does: per-model
//! requests- and tokens-per-minute quotas enforced per second (the input counted on admission,
//! an answer's output when it has been written: [`ModelConfig::output_charge`]), a burst limit that
//! `X-DashScope-Wait-Timeout` can queue, DashScope's own error bodies in the shape of each path
//! (a native streaming 429 arrives inside an HTTP 200 as `event:error` + `:HTTP_STATUS/429`), and
//! scripted faults: outages, a rate of 500s, connection resets, latency, cut streams, moderation,
//! context overflow, exhausted quota.
//!
//! It is a `tower::Service` (in-process, no sockets, driven by `tokio::time`, so
//! `tokio::time::pause()` makes it deterministic), and [`serve`](MockDashScope::serve) puts it on
//! a loopback port for real HTTP clients. [`stats`](MockDashScope::stats) tells what it saw:
//! per model, requests, successes, 429s by kind, queued requests, other failures and tokens
//! counted, in total and second by second ([`ModelStats::timeline`]), and requests in flight.
//!
//! # Token counts
//!
//! Deterministic, so tests can compute quotas exactly: the input is one token per four
//! characters (not bytes) of message text, as [`ChatRequest::input_chars`] counts them (every
//! string under `messages`, `system`, native `input`), rounded up, and at least one — a single
//! message `"12345678"` is 2 tokens. The output is the request's `max_tokens` (16 when it sets
//! none) — or, with [`OutputLength::Uniform`], a seeded draw at or below it — one word of a
//! fixed sentence per token. Every answer's `usage` reports exactly these
//! counts, and the tokens-per-minute quota charges their sum when the request is admitted.
//!
//! [`ChatRequest::input_chars`]: crate::request::ChatRequest::input_chars
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use tower::{Layer, ServiceExt};
//! use tower_dashscope::mock::{MockDashScope, ModelConfig};
//! use tower_dashscope::{ClassifyDashScopeError, ErrorClass, RateLimitKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mock = MockDashScope::builder()
//!     .model("qwen-plus", ModelConfig::new().rpm(60)) // one request per second
//!     .build();
//! let client = ClassifyDashScopeError::new().layer(mock.clone());
//!
//! let chat = || {
//!     Request::post("/compatible-mode/v1/chat/completions")
//!         .body(Full::new(Bytes::from(r#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}"#)))
//!         .unwrap()
//! };
//! assert!(client.clone().oneshot(chat()).await.is_ok());
//! let err = client.clone().oneshot(chat()).await.unwrap_err();
//! assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Requests));
//! assert_eq!(err.code(), Some("limit_requests"));
//! assert_eq!(mock.stats().model("qwen-plus").unwrap().total.throttled_requests, 1);
//! # }
//! ```
//!
//! A customised simulator: two models, a tokens-per-minute quota, an outage, gateway-style
//! `Retry-After` and a required key.
//!
//! ```
//! use std::time::Duration;
//! use tower_dashscope::mock::{MockDashScope, ModelConfig};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mock = MockDashScope::builder()
//!     .model("qwen-plus", ModelConfig::new().rpm(600).tpm(50_000).retry_after(Duration::from_millis(1500)))
//!     .model("qwen-flash", ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(30)))
//!     .api_key("sk-test")
//!     .seed(7)
//!     .build();
//! # let _ = mock;
//! # }
//! ```

mod body;
mod builder;
mod burst;
mod failure;
mod fault;
mod keys;
mod model;
mod plan;
mod quota;
mod respond;
mod server;
mod service;
mod stats;

use std::fmt;
use std::sync::Arc;

pub use self::body::MockBody;
pub use self::builder::MockBuilder;
pub use self::fault::{AnthropicErrorShape, Fault, MidStreamError};
pub use self::model::{Enforcement, Exhausted, MAX_OUTPUT_TOKENS, ModelConfig, OutputLength};
pub use self::plan::{CodingPlan, TokenPlan};
pub use self::server::{DEFAULT_HEADER_READ_TIMEOUT, MockServer};
pub use self::service::MockFuture;
use self::service::Shared;
pub use self::stats::{Counts, MockStats, ModelStats, TIMELINE_SECONDS};
/// When an answer's output counts against a quota; the same setting as the budget's.
pub use crate::budget::OutputCharge;

/// The longest `X-DashScope-Wait-Timeout` the simulator honours, in seconds; larger values are
/// read as this.
pub const MAX_WAIT_TIMEOUT_SECS: u64 = 3600;

/// The gateway's request body limit: larger bodies get 413 with an empty body.
pub const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// A DashScope simulator; see the [module docs](self). Clones share all state.
#[derive(Clone)]
pub struct MockDashScope {
    shared: Arc<Shared>,
}

impl MockDashScope {
    /// A simulator to configure.
    pub fn builder() -> MockBuilder {
        MockBuilder::default()
    }

    /// A snapshot of what the simulator has seen.
    #[must_use]
    pub fn stats(&self) -> MockStats {
        let mut state = self.shared.lock();
        // Output counted when generated is in the statistics from the moment it was.
        self.shared
            .count_generated(&mut state, tokio::time::Instant::now());
        state.stats.clone()
    }

    /// Serves the simulator over HTTP/1.1 on `addr` (use `127.0.0.1:0` for a free loopback
    /// port) until the returned [`MockServer`] is shut down or dropped.
    pub async fn serve(&self, addr: std::net::SocketAddr) -> std::io::Result<MockServer> {
        MockServer::start(self.clone(), addr).await
    }
}

impl fmt::Debug for MockDashScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("MockDashScope")
            .field("models", &state.models.keys().collect::<Vec<_>>())
            .field("requests", &state.stats.requests)
            .finish_non_exhaustive()
    }
}
