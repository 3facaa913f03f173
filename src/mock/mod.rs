//! `MockDashScope`: a DashScope simulator for tests, benchmarks and demos (feature `mock`).
//!
//! It answers chat requests the way DashScope does — the OpenAI-compatible, native and
//! Anthropic-compatible endpoints, streaming and not — and fails the way DashScope does: per-model
//! requests- and tokens-per-minute quotas enforced per second, a burst limit that
//! `X-DashScope-Wait-Timeout` can queue, DashScope's own error bodies in the shape of each path
//! (a native streaming 429 arrives inside an HTTP 200 as `event:error` + `:HTTP_STATUS/429`), and
//! scripted faults: outages, a rate of 500s, connection resets, latency, cut streams, moderation,
//! context overflow, exhausted quota.
//!
//! It is a `tower::Service` (in-process, no sockets, driven by `tokio::time`, so
//! `tokio::time::pause()` makes it deterministic), and [`serve`](MockDashScope::serve) puts it on
//! a loopback port for real HTTP clients. [`stats`](MockDashScope::stats) tells what it saw:
//! per model, requests, successes, 429s by kind, queued requests, other failures and tokens
//! admitted, in total and second by second ([`ModelStats::timeline`]), and requests in flight.
//!
//! # Token counts
//!
//! Deterministic, so tests can compute quotas exactly: the input is one token per four
//! characters (not bytes) of message text, as [`ChatRequest::input_chars`] counts them (every
//! string under `messages`, `system`, native `input`), rounded up, and at least one — a single
//! message `"12345678"` is 2 tokens. The output is the request's `max_tokens` (16 when it sets
//! none), one word of a fixed sentence per token. Every answer's `usage` reports exactly these
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
mod model;
mod respond;
mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::Service;

use self::body::InFlight;
pub use self::body::MockBody;
pub use self::model::{Exhausted, MAX_OUTPUT_TOKENS, ModelConfig};
use self::respond::{Failure, Pace};
pub use self::server::MockServer;
use crate::api::Api;
use crate::error::BoxError;
use crate::headers::{X_API_KEY, X_DASHSCOPE_WAIT_TIMEOUT, X_REQUEST_ID};
use crate::request::ChatRequest;

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

/// Builds a [`MockDashScope`].
#[derive(Default)]
#[must_use]
pub struct MockBuilder {
    models: BTreeMap<String, ModelConfig>,
    keys: Vec<ApiKey>,
    seed: u64,
}

/// A key the simulator accepts, everywhere or on one host only.
struct ApiKey {
    key: String,
    /// Lowercase, without a port.
    host: Option<String>,
}

impl ApiKey {
    fn accepts(&self, key: &str, host: Option<&str>) -> bool {
        self.key == key
            && self
                .host
                .as_deref()
                .is_none_or(|bound| host.is_some_and(|h| h.eq_ignore_ascii_case(bound)))
    }
}

impl fmt::Debug for MockBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are secrets, even test ones: only their number is shown.
        f.debug_struct("MockBuilder")
            .field("models", &self.models)
            .field("keys", &self.keys.len())
            .field("seed", &self.seed)
            .finish()
    }
}

impl MockBuilder {
    /// Serves `name` with `config`. Requests for models not configured get 404
    /// `ModelNotFound`.
    pub fn model(mut self, name: impl Into<String>, config: ModelConfig) -> Self {
        self.models.insert(name.into(), config);
        self
    }

    /// Accepts only `Authorization: Bearer <key>` (on the Anthropic-compatible path also
    /// `x-api-key: <key>`) with one of the keys given this way or with
    /// [`api_key_for_host`](Self::api_key_for_host) (any key, or none, when neither is
    /// called). Others get 401 `InvalidApiKey`, as a key from another region or plan does.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(ApiKey {
            key: key.into(),
            host: None,
        });
        self
    }

    /// Accepts `key` only on requests for `host` — the request URI's host, or else its `Host`
    /// header, compared without the port and ignoring case — as DashScope accepts a key only
    /// in its own region and plan: a Singapore key sent to Beijing, or a Coding Plan key
    /// (`sk-sp-…`) sent to a pay-as-you-go host, gets 401 `InvalidApiKey`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::Request;
    /// use http_body_util::Full;
    /// use tower::{Layer, ServiceExt};
    /// use tower_dashscope::mock::{MockDashScope, ModelConfig};
    /// use tower_dashscope::{ClassifyDashScopeError, ErrorClass};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mock = MockDashScope::builder()
    ///     .model("qwen-plus", ModelConfig::new())
    ///     .api_key_for_host("sk-intl", "dashscope-intl.aliyuncs.com")
    ///     .build();
    /// let client = ClassifyDashScopeError::new().layer(mock);
    /// let chat = |host: &str| {
    ///     Request::post(format!("https://{host}/compatible-mode/v1/chat/completions"))
    ///         .header("authorization", "Bearer sk-intl")
    ///         .body(Full::new(Bytes::from(r#"{"model":"qwen-plus","messages":[]}"#)))
    ///         .unwrap()
    /// };
    /// assert!(client.clone().oneshot(chat("dashscope-intl.aliyuncs.com")).await.is_ok());
    /// let err = client.oneshot(chat("dashscope.aliyuncs.com")).await.unwrap_err();
    /// assert_eq!(err.class(), ErrorClass::Authentication);
    /// # }
    /// ```
    pub fn api_key_for_host(mut self, key: impl Into<String>, host: impl Into<String>) -> Self {
        let host: String = host.into();
        let host = match host.parse::<http::uri::Authority>() {
            Ok(authority) => authority.host().to_ascii_lowercase(),
            Err(_) => host.to_ascii_lowercase(),
        };
        self.keys.push(ApiKey {
            key: key.into(),
            host: Some(host),
        });
        self
    }

    /// Seeds the generator behind error and reset rates.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The simulator. Its clock (outage windows, statistics) starts now.
    pub fn build(self) -> MockDashScope {
        let now = Instant::now();
        let models = self
            .models
            .into_iter()
            .map(|(name, config)| {
                let state = ModelState::new(&config, now);
                (name, (config, state))
            })
            .collect();
        MockDashScope {
            shared: Arc::new(Shared {
                start: now,
                keys: self.keys,
                state: Mutex::new(State {
                    models,
                    rng: SmallRng::seed_from_u64(self.seed),
                    stats: MockStats::default(),
                }),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

pub(crate) struct Shared {
    start: Instant,
    keys: Vec<ApiKey>,
    state: Mutex<State>,
    next_id: AtomicU64,
}

struct State {
    models: BTreeMap<String, (ModelConfig, ModelState)>,
    rng: SmallRng,
    stats: MockStats,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn finish_in_flight(&self) {
        let mut state = self.lock();
        state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
    }

    /// The whole second since the simulator was built that `now` falls in.
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }
}

/// A bucket refilled continuously, holding at most one second's worth: DashScope's per-second
/// enforcement of a per-minute limit.
#[derive(Debug)]
struct Bucket {
    per_sec: f64,
    capacity: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn per_minute(per_minute: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_minute) / 60.0;
        let capacity = per_sec.max(1.0);
        Bucket {
            per_sec,
            capacity,
            level: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// Takes `amount` if there is that much — or if the bucket is full, so that a request larger
    /// than one second's worth can ever pass.
    fn has(&self, amount: f64) -> bool {
        self.level >= amount || self.level >= self.capacity
    }
}

#[derive(Debug)]
struct ModelState {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Requests admitted in the current and the previous whole second (for the burst limit).
    second: u64,
    this_second: u32,
    last_second: u32,
}

impl ModelState {
    fn new(config: &ModelConfig, now: Instant) -> Self {
        ModelState {
            requests: config.rpm.map(|rpm| Bucket::per_minute(rpm, now)),
            tokens: config.tpm.map(|tpm| Bucket::per_minute(tpm, now)),
            second: 0,
            this_second: 0,
            last_second: 0,
        }
    }
}

/// How many whole seconds of [`ModelStats::timeline`] the simulator keeps per model: the last
/// hour, counted back from the latest second recorded. Older seconds are dropped, so a
/// long-running simulator's memory stays bounded.
pub const TIMELINE_SECONDS: usize = 3600;

/// What the simulator has seen so far; [`MockDashScope::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MockStats {
    /// Requests received, all of them (bad input and unknown models included).
    pub requests: u64,
    /// Requests being answered now: admitted, and their response body not yet finished or
    /// dropped.
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub peak_in_flight: u64,
    /// Per model, for requests that named a configured model.
    pub models: BTreeMap<String, ModelStats>,
}

impl MockStats {
    /// The statistics of one model.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelStats> {
        self.models.get(name)
    }

    /// 429s sent, all models and kinds.
    #[must_use]
    pub fn throttled(&self) -> u64 {
        self.models.values().map(|m| m.total.throttled()).sum()
    }

    /// The counts of all models added up.
    #[must_use]
    pub fn total(&self) -> Counts {
        self.models
            .values()
            .fold(Counts::default(), |sum, m| sum + m.total)
    }
}

/// What the simulator has seen for one model: totals, and the same counts second by second.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ModelStats {
    /// Everything since the simulator was built.
    pub total: Counts,
    /// The counts of each whole second since the simulator was built (the key; second `0` is
    /// the first), for the last [`TIMELINE_SECONDS`] seconds. Seconds without requests are
    /// absent.
    pub timeline: BTreeMap<u64, Counts>,
}

impl ModelStats {
    /// Tokens (input + output) admitted in each second of the timeline.
    pub fn tokens_per_second(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.timeline.iter().map(|(&second, c)| (second, c.tokens))
    }

    fn record(&mut self, second: u64, count: impl Fn(&mut Counts)) {
        count(&mut self.total);
        count(self.timeline.entry(second).or_default());
        let oldest = second.saturating_sub(TIMELINE_SECONDS as u64 - 1);
        while self
            .timeline
            .first_key_value()
            .is_some_and(|(&s, _)| s < oldest)
        {
            self.timeline.pop_first();
        }
    }
}

/// What happened to one model's requests, over the simulator's life ([`ModelStats::total`]) or
/// in one second ([`ModelStats::timeline`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Counts {
    /// Requests for this model. A caller that gives up on a request while it is queued leaves
    /// it counted here and as [`queued`](Self::queued), with no outcome.
    pub requests: u64,
    /// Requests admitted: charged to the quotas and answered (or being answered) successfully.
    /// As DashScope bills them, they count even if the caller goes away before the answer
    /// ends.
    pub succeeded: u64,
    /// 429 `Throttling.RateQuota` / `limit_requests`.
    pub throttled_requests: u64,
    /// 429 `Throttling.AllocationQuota` / `insufficient_quota`.
    pub throttled_tokens: u64,
    /// 429 `Throttling.BurstRate` / `limit_burst_rate`.
    pub throttled_burst: u64,
    /// Requests queued by `X-DashScope-Wait-Timeout` instead of throttled (a request queued
    /// and then admitted also counts as a request and a success).
    pub queued: u64,
    /// Other failures: outages, 500s, resets, moderation, context overflow, exhausted quota.
    pub failed: u64,
    /// Tokens (input + output) of the admitted requests.
    pub tokens: u64,
}

impl Counts {
    /// 429s of every kind.
    #[must_use]
    pub fn throttled(&self) -> u64 {
        self.throttled_requests + self.throttled_tokens + self.throttled_burst
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            succeeded: self.succeeded + other.succeeded,
            throttled_requests: self.throttled_requests + other.throttled_requests,
            throttled_tokens: self.throttled_tokens + other.throttled_tokens,
            throttled_burst: self.throttled_burst + other.throttled_burst,
            queued: self.queued + other.queued,
            failed: self.failed + other.failed,
            tokens: self.tokens + other.tokens,
        }
    }
}

impl MockDashScope {
    /// A simulator to configure.
    pub fn builder() -> MockBuilder {
        MockBuilder::default()
    }

    /// A snapshot of what the simulator has seen.
    #[must_use]
    pub fn stats(&self) -> MockStats {
        self.shared.lock().stats.clone()
    }

    /// Serves the simulator over HTTP/1.1 on `addr` (use `127.0.0.1:0` for a free loopback
    /// port) until the returned [`MockServer`] is shut down or dropped.
    pub async fn serve(&self, addr: std::net::SocketAddr) -> std::io::Result<MockServer> {
        MockServer::start(self.clone(), addr).await
    }

    fn request_id(&self) -> String {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    /// Answers one request whose body has been read.
    async fn answer(
        self,
        api: Option<Api>,
        host: Option<String>,
        headers: http::HeaderMap,
        body: Result<Bytes, StatusCode>,
    ) -> Result<Response<MockBody>, std::io::Error> {
        let request_id = self.request_id();
        self.shared.lock().stats.requests += 1;
        let Some(api) = api else {
            // A wrong base path: DashScope's gateway answers a bare 404.
            return Ok(bare(StatusCode::NOT_FOUND, &request_id));
        };
        let body = match body {
            Ok(body) => body,
            Err(status) => return Ok(bare(status, &request_id)),
        };
        let sse_header = crate::classify::asks_for_stream(&headers);
        if !self.shared.keys.is_empty() {
            let bearer = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Anthropic's SDKs send the key as `x-api-key`.
            let key = bearer.or_else(|| {
                (api == Api::Anthropic)
                    .then(|| headers.get(X_API_KEY))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
            });
            let host = host.as_deref();
            if !key.is_some_and(|k| self.shared.keys.iter().any(|known| known.accepts(k, host))) {
                let failure = Failure::new(
                    401,
                    "InvalidApiKey",
                    "invalid_api_key",
                    "authentication_error",
                    "Invalid API-key provided.",
                );
                return Ok(failure.respond(api, sse_header, &request_id, None));
            }
        }
        let Some(chat) = ChatRequest::parse(api, &headers, &body) else {
            let failure = Failure::invalid_parameter("The request body is not valid JSON.");
            return Ok(failure.respond(api, sse_header, &request_id, None));
        };
        let Some(model) = chat.model().map(str::to_owned) else {
            let failure = Failure::invalid_parameter("Model not specified.");
            return Ok(failure.respond(api, chat.stream(), &request_id, None));
        };
        let wait = headers
            .get(X_DASHSCOPE_WAIT_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, |secs| {
                Duration::from_secs(secs.min(MAX_WAIT_TIMEOUT_SECS))
            });
        let waited_until = Instant::now() + wait;

        // A request queued for the burst limit is decided again, but counted once.
        let mut queued = false;
        loop {
            let decision = self.decide(&model, &chat, &body, queued);
            match decision {
                Decision::Answer(pace) => {
                    let in_flight = InFlight(self.shared.clone());
                    let generation = pace.generation();
                    // A zero sleep would still wait for the timer's next tick (1 ms).
                    if !chat.stream() && !generation.is_zero() {
                        tokio::time::sleep(generation).await;
                    }
                    let response = respond::success(api, &chat, &model, &request_id, pace);
                    return Ok(response.map(|b| b.with_in_flight(in_flight)));
                }
                Decision::Fail(failure, retry_after) => {
                    return Ok(failure.respond(api, chat.stream(), &request_id, retry_after));
                }
                Decision::Reset => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "MockDashScope reset the connection (scripted fault)",
                    ));
                }
                Decision::Burst { next_second } if next_second <= waited_until => {
                    let second = self.shared.second(Instant::now());
                    if let Some(stats) = self.shared.lock().stats.models.get_mut(&model) {
                        if !queued {
                            stats.record(second, |c| c.queued += 1);
                        }
                    }
                    tokio::time::sleep_until(next_second).await;
                    queued = true;
                }
                Decision::Burst { .. } => {
                    let failure = Failure::new(
                        429,
                        "Throttling.BurstRate",
                        "limit_burst_rate",
                        "rate_limit_error",
                        "Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time.",
                    );
                    let second = self.shared.second(Instant::now());
                    let mut state = self.shared.lock();
                    let retry_after = state.models.get(&model).and_then(|(c, _)| c.retry_after);
                    if let Some(stats) = state.stats.models.get_mut(&model) {
                        stats.record(second, |c| c.throttled_burst += 1);
                    }
                    drop(state);
                    return Ok(failure.respond(api, chat.stream(), &request_id, retry_after));
                }
            }
        }
    }

    /// Decides, under the lock, what happens to a request for `model` now. `again`: the request
    /// was queued and has been counted already.
    fn decide(&self, model: &str, chat: &ChatRequest, body: &[u8], again: bool) -> Decision {
        // The clock is read under the lock, so that no thread applies a time older than one
        // another thread already applied.
        let mut guard = self.shared.lock();
        let now = Instant::now();
        let since_start = now.saturating_duration_since(self.shared.start);
        let second = self.shared.second(now);
        let state = &mut *guard;
        let Some((config, quota)) = state.models.get_mut(model) else {
            let failure = Failure::new(
                404,
                "ModelNotFound",
                "model_not_found",
                "not_found_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            );
            return Decision::Fail(failure, None);
        };
        let stats = state.stats.models.entry(model.to_owned()).or_default();
        if !again {
            stats.record(second, |c| c.requests += 1);
        }
        let fail = |stats: &mut ModelStats, failure: Failure| {
            stats.record(second, |c| c.failed += 1);
            Decision::Fail(failure, None)
        };

        match config.exhausted {
            Some(Exhausted::FreeTier) => {
                return fail(
                    stats,
                    Failure::new(
                        403,
                        "AllocationQuota.FreeTierOnly",
                        "AllocationQuota.FreeTierOnly",
                        "billing_error",
                        "The free tier of the model has been exhausted. If you want to continue access the model on a paid basis, please disable the \"use free tier only\" mode.",
                    ),
                );
            }
            Some(Exhausted::Billing) => {
                return fail(
                    stats,
                    Failure::new(
                        400,
                        "Arrearage",
                        "Arrearage",
                        "billing_error",
                        "Access denied, please make sure your account is in good standing.",
                    ),
                );
            }
            None => {}
        }
        if config.outages.iter().any(|w| w.contains(&since_start)) {
            return fail(
                stats,
                Failure::new(
                    503,
                    "ModelUnavailable",
                    "ServiceUnavailable",
                    "overloaded_error",
                    "Model is unavailable, please try again later.",
                ),
            );
        }
        if config.reset_rate > 0.0 && state.rng.random_bool(config.reset_rate) {
            stats.record(second, |c| c.failed += 1);
            return Decision::Reset;
        }
        if config
            .moderation_marker
            .as_deref()
            .is_some_and(|m| memchr::memmem::find(body, m.as_bytes()).is_some())
        {
            return fail(
                stats,
                Failure::new(
                    400,
                    "DataInspectionFailed",
                    "data_inspection_failed",
                    "invalid_request_error",
                    "Input data may contain inappropriate content.",
                ),
            );
        }
        let input_tokens = respond::input_tokens(chat);
        if input_tokens > config.context_window {
            return fail(
                stats,
                Failure::invalid_parameter(format!(
                    "<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, {}]",
                    config.context_window
                )),
            );
        }

        if chat.max_tokens_is_malformed()
            || chat
                .max_tokens()
                .is_some_and(|n| n == 0 || n > config.max_output_tokens)
        {
            return fail(
                stats,
                Failure::invalid_parameter(format!(
                    "<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, {}]",
                    config.max_output_tokens
                )),
            );
        }

        // Quotas.
        if second != quota.second {
            quota.last_second = if second == quota.second + 1 {
                quota.this_second
            } else {
                0
            };
            quota.this_second = 0;
            quota.second = second;
        }
        if let Some(floor) = config.burst {
            if quota.this_second >= floor && quota.this_second >= 2 * quota.last_second {
                let next_second = self.shared.start + Duration::from_secs(second + 1);
                return Decision::Burst { next_second };
            }
        }
        let output_tokens = respond::output_limit(chat, config.max_output_tokens);
        let tokens = f64::from(input_tokens) + f64::from(output_tokens);
        if let Some(bucket) = &mut quota.requests {
            bucket.refill(now);
            if !bucket.has(1.0) {
                stats.record(second, |c| c.throttled_requests += 1);
                return Decision::Fail(
                    Failure::new(
                        429,
                        "Throttling.RateQuota",
                        "limit_requests",
                        "rate_limit_error",
                        "Requests rate limit exceeded, please try again later.",
                    ),
                    config.retry_after,
                );
            }
        }
        if let Some(bucket) = &mut quota.tokens {
            bucket.refill(now);
            if !bucket.has(tokens) {
                stats.record(second, |c| c.throttled_tokens += 1);
                return Decision::Fail(
                    Failure::new(
                        429,
                        "Throttling.AllocationQuota",
                        "insufficient_quota",
                        "rate_limit_error",
                        "Allocated quota exceeded, please increase your quota limit.",
                    ),
                    config.retry_after,
                );
            }
        }
        if config.error_rate > 0.0 && state.rng.random_bool(config.error_rate) {
            return fail(
                stats,
                Failure::new(
                    500,
                    "InternalError",
                    "internal_error",
                    "api_error",
                    "An internal error has occured, try again later or contact service support.",
                ),
            );
        }
        // Admitted: pay for it.
        if let Some(bucket) = &mut quota.requests {
            bucket.level -= 1.0;
        }
        if let Some(bucket) = &mut quota.tokens {
            bucket.level -= tokens;
        }
        quota.this_second += 1;
        stats.record(second, |c| {
            c.succeeded += 1;
            c.tokens += tokens as u64;
        });
        state.stats.in_flight += 1;
        state.stats.peak_in_flight = state.stats.peak_in_flight.max(state.stats.in_flight);
        Decision::Answer(Pace {
            output_tokens,
            ttft: config.ttft,
            // Any rate, however slow, gives a delay: no overflow, no panic.
            per_token: if config.tokens_per_sec > 0.0 {
                Duration::try_from_secs_f64(1.0 / config.tokens_per_sec).unwrap_or(Duration::MAX)
            } else {
                Duration::ZERO
            },
            cut_after: config.cut_streams_after,
        })
    }
}

enum Decision {
    Answer(Pace),
    Fail(Failure, Option<Duration>),
    Reset,
    Burst { next_second: Instant },
}

/// The host a request is for: its URI's, or else its `Host` header's, without the port.
fn request_host(parts: &http::request::Parts) -> Option<String> {
    if let Some(host) = parts.uri.host() {
        return Some(host.to_owned());
    }
    let header = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    let authority = header.parse::<http::uri::Authority>().ok()?;
    Some(authority.host().to_owned())
}

fn bare(status: StatusCode, request_id: &str) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header(X_REQUEST_ID, request_id)
        .body(MockBody::full(Bytes::new()))
        .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())))
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

/// Response future of [`MockDashScope`].
#[must_use = "futures do nothing unless polled"]
pub struct MockFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<MockBody>, std::io::Error>> + Send>>,
}

impl Future for MockFuture {
    type Output = Result<Response<MockBody>, std::io::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for MockFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockFuture").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for MockDashScope
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<MockBody>;
    /// Only scripted connection resets ([`ModelConfig::reset_rate`]).
    type Error = std::io::Error;
    type Future = MockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let (parts, body) = req.into_parts();
        let api = respond::route(parts.uri.path());
        let host = request_host(&parts);
        MockFuture {
            inner: Box::pin(async move {
                let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
                    Ok(collected) => Ok(collected.to_bytes()),
                    Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                        Err(StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    Err(_) => Err(StatusCode::BAD_REQUEST),
                };
                this.answer(api, host, parts.headers, body).await
            }),
        }
    }
}
