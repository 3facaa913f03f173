//! Stay under DashScope's per-model RPM and TPM instead of collecting 429s.
//!
//! DashScope limits requests and tokens per minute, per model, per root account, and enforces
//! them per second (RPS = RPM/60, TPS = TPM/60). [`TokenBudget`] keeps every model's traffic
//! within its [`Quota`] on the client side:
//!
//! - **Reserve before sending, all or nothing.** When a request is admitted, one request of the
//!   model's rate, its estimated input tokens and a concurrency permit are taken together. The
//!   input is estimated from the messages. The output is charged as the server counts it
//!   ([`output_charge`](TokenBudget::output_charge)): by default when the answer's usage reports
//!   it, as a server counts what it has written (Alibaba's recipe: input up front, output
//!   settled afterwards); or reserved with the input, as the share of `max_tokens` the model's
//!   answers have used so far ([`learn_output`](TokenBudget::learn_output)), for upstreams that
//!   count `max_tokens` on admission — which a model switches to by itself when the server's
//!   token 429s show it counts that way
//!   ([`detect_output_charge`](TokenBudget::detect_output_charge)). A request that is still waiting holds nothing and is
//!   charged nothing; dropping it leaves no trace.
//! - **Wait, don't fail.** A request with no room waits — in arrival order per model, except
//!   that a few behind the first may take room it cannot use, for at most a window of its
//!   wait ([`backfill`](TokenBudget::backfill)) — until it has room
//!   ([`BudgetWait`](crate::BudgetWait) in the response says how long). With
//!   [`max_wait`](TokenBudget::max_wait) a request that would wait longer is not sent and gets a
//!   [`RateLimited(Local)`](crate::RateLimitKind::Local) error whose `retry_after` is the wait,
//!   so a fallback above can go to a model with room first.
//! - **Shaped per second.** Over any window of one second (configurable:
//!   [`burst`](TokenBudget::burst)) a model is sent at most one second's worth of its quota, so
//!   both of DashScope's enforcements — a continuous bucket holding one second's worth, and
//!   fixed one-second windows — are satisfied.
//! - **Settled both ways.** When the response reports its `usage` (streamed or not; the
//!   [`UsageSlot`](crate::UsageSlot) protocol of [`ClassifyDashScopeError`](crate::ClassifyDashScopeError)
//!   below), an over-estimate is given back and an under-estimate is charged as debt to the next
//!   requests. The reported input also teaches each model a correction for the estimator (a
//!   moving mean of reported / estimated input), so that an estimator off by a steady factor —
//!   ±50%, say — is charged as the server counts after a few answers. The reported output
//!   teaches the share of `max_tokens` answers use, in the same way. An over-estimate settled
//!   after its charge left the window (answers often outlast a second) cannot come out of the
//!   window any more; it is kept as credit against later debt (up to one window's worth), so
//!   that sustained throughput converges on the true TPM. A request the server refused (a 429,
//!   a 400) gets its tokens back; one cancelled or cut after it was sent keeps its estimate, as
//!   the server billed it (with output charged when reported, the output its model's answers
//!   are expected to use is owed then, as for an answer that reports no usage). A usage above the reservation by more than a minute of the model's
//!   token quota is not believed (a proxy's bug or a hostile upstream could report billions):
//!   only a minute's worth is owed, with a WARN event.
//! - **A request bigger than a second's worth** waits for an empty window, then goes into debt;
//!   it never fails and never waits forever.
//! - **Adaptive.** When the configured quota is higher than what the account really has, the
//!   server's 429s lower the model's rates by kind — requests, tokens, or, for the burst limit, a
//!   slow ramp — and successes raise them back, additively. An optional
//!   [`warm_up`](TokenBudget::warm_up) ramps a cold start.
//!
//! The shaping is a sliding window of its own rather than governor's GCRA: settling against
//! real usage needs refunds and debt, which governor does not have, and a token bucket that
//! holds a second's worth admits up to two seconds' worth in some one-second window. See
//! `window.rs` for the algorithm; all its time is `tokio::time`.
//!
//! **A fleet shares one budget** through a [`BudgetStore`] other than this process's
//! [`LocalStore`]: with the `redis` cargo feature, `RedisStore` keeps the windows in Redis (or
//! Valkey), one atomic script call per admission on the server's clock, while waiting stays in
//! each process. While Redis is unavailable, a policy of the user's applies: fail closed with
//! [`RateLimited(Local)`](crate::RateLimitKind::Local), or serve an explicit share of the quota
//! (quota ÷ replicas) in process — never the whole quota per process.
//!
//! Requests that are not chat requests (a path of no chat API, or a body that cannot be read
//! without consuming it — see [`ReplayBody`]) pass through uncounted.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, BudgetWait, Quota, TokenBudget};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let client = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! // 120 requests a minute: two a second.
//! let budget = TokenBudget::new(Quota::per_minute(120, 1_000_000));
//! let service = ServiceBuilder::new().layer(budget).service(client);
//!
//! let chat = || Request::post("/compatible-mode/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"qwen-plus","messages":[],"max_tokens":10}"#)))
//!     .unwrap();
//! for _ in 0..2 {
//!     let response = service.clone().oneshot(chat()).await.unwrap();
//!     assert!(response.extensions().get::<BudgetWait>().is_none()); // sent at once
//! }
//! // The third request of the same second waits for the window to move on.
//! let response = service.clone().oneshot(chat()).await.unwrap();
//! assert!(response.extensions().get::<BudgetWait>().unwrap().0 >= Duration::from_millis(990));
//! # }
//! ```
//!
//! Customised:
//!
//! ```
//! use std::time::Duration;
//! use tower_dashscope::{Quota, TokenBudget};
//!
//! let budget = TokenBudget::new(Quota::per_minute(600, 1_000_000))  // every other model
//!     .model("qwen-max", Quota::per_minute(60, 100_000))           // this one is tighter
//!     .max_concurrency(32)                                         // in flight, all models
//!     .max_wait(Duration::from_secs(5))                            // or RateLimited(Local)
//!     .default_output_tokens(512)                                  // when max_tokens is unset
//!     .warm_up(0.2, Duration::from_secs(30));                      // ramp from 20% over 30 s
//! # let _ = budget;
//! ```

mod estimate;
pub mod future;
#[cfg(feature = "redis")]
mod redis;
mod state;
mod store;
mod window;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response, Uri};
use tower::{Layer, Service};

use self::estimate::DynEstimator;
pub use self::estimate::{CharEstimator, TokenEstimator};
pub use self::future::{BudgetBody, ResponseFuture};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreError, SCRIPT_VERSION, WhenUnavailable};
use self::state::{Cost, Key, Shared};
pub use self::store::{Admission, BudgetKey, BudgetStore, Limits, LocalStore, StoreFuture, Taken};
use crate::body::ReplayBody;
use crate::error::{BoxError, DashScopeError, into_dashscope_error};
use crate::request::ChatRequest;

/// A model's quota: requests and tokens (input + output) per minute, as DashScope states them.
///
/// Zero in either place means that dimension is not limited.
///
/// ```
/// use tower_dashscope::Quota;
///
/// let quota = Quota::per_minute(600, 1_000_000);
/// assert_eq!(quota.requests_per_minute(), 600);
/// assert_eq!(quota.tokens_per_minute(), 1_000_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    requests: u32,
    tokens: u32,
}

impl Quota {
    /// `requests` and `tokens` per minute; zero leaves that dimension unlimited.
    #[must_use]
    pub const fn per_minute(requests: u32, tokens: u32) -> Self {
        Quota { requests, tokens }
    }

    /// Requests per minute (zero: unlimited).
    #[must_use]
    pub const fn requests_per_minute(&self) -> u32 {
        self.requests
    }

    /// Tokens per minute (zero: unlimited).
    #[must_use]
    pub const fn tokens_per_minute(&self) -> u32 {
        self.tokens
    }
}

/// When an upstream counts an answer's output tokens against its tokens-per-minute quota, and
/// so when [`TokenBudget`] charges them: see [`TokenBudget::output_charge`].
///
/// The simulator has the same setting
#[cfg_attr(
    feature = "mock",
    doc = "([`ModelConfig::output_charge`](crate::mock::ModelConfig::output_charge)),"
)]
#[cfg_attr(
    not(feature = "mock"),
    doc = "(`ModelConfig::output_charge` in `mock`),"
)]
/// so that a budget can be tried against either kind of server.
///
/// ```
/// use tower_dashscope::{OutputCharge, Quota, TokenBudget};
///
/// // An upstream that reserves `max_tokens` when it admits a request, as OpenAI does.
/// let budget = TokenBudget::new(Quota::per_minute(600, 1_000_000))
///     .output_charge(OutputCharge::OnAdmission);
/// # let _ = budget;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutputCharge {
    /// The output is counted when it has been generated: the input when the request is
    /// admitted, the answer's tokens as they are produced. A server cannot know an answer's
    /// length before it writes it, and this is what Alibaba's own rate-limit recipe mirrors
    /// ("charge input up front, settle output afterwards").
    ///
    /// [`TokenBudget`] charges the estimated input before sending and the output from the
    /// usage the answer reports, as debt that holds back later requests until the window has
    /// room for it, as the server's own bucket does.
    #[default]
    WhenGenerated,
    /// The output is counted before the answer, when the request is admitted: a server that
    /// reserves `max_tokens` up front (OpenAI's documented rule), or the simulator's
    /// clairvoyant mode that charges the answer's real length at admission.
    ///
    /// [`TokenBudget`] reserves the expected output with the input (the whole `max_tokens`,
    /// or the learned share: [`TokenBudget::learn_output`]) and settles the difference both
    /// ways when the usage arrives.
    OnAdmission,
}

/// Which account a request is counted in, for users with several: see
/// [`TokenBudget::account`].
type AccountFn = Arc<dyn Fn(&Uri, &HeaderMap) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) default: Quota,
    pub(crate) models: HashMap<String, Quota>,
    pub(crate) window: Duration,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) default_output_tokens: u32,
    pub(crate) learn_output: bool,
    pub(crate) output_charge: OutputCharge,
    /// Whether a server's token 429s may switch a model to reserving output.
    pub(crate) detect_output_charge: bool,
    /// How many requests behind the first in line may take room it cannot use.
    pub(crate) backfill: usize,
    pub(crate) estimator: DynEstimator,
    pub(crate) adaptive: bool,
    pub(crate) warm_up: Option<(f64, Duration)>,
    pub(crate) max_models: usize,
    pub(crate) account: Option<AccountFn>,
    /// A store of the caller's; `None` makes a [`LocalStore`] for each new budget.
    pub(crate) store: Option<Arc<dyn BudgetStore>>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("default", &self.default)
            .field("models", &self.models)
            .field("window", &self.window)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_wait", &self.max_wait)
            .field("default_output_tokens", &self.default_output_tokens)
            .field("learn_output", &self.learn_output)
            .field("output_charge", &self.output_charge)
            .field("detect_output_charge", &self.detect_output_charge)
            .field("backfill", &self.backfill)
            .field("adaptive", &self.adaptive)
            .field("warm_up", &self.warm_up)
            .field("max_models", &self.max_models)
            .field("account", &self.account.is_some())
            .field("shared_store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// How many requests behind the first in line may take room it cannot use by default; see
/// [`TokenBudget::backfill`].
pub const DEFAULT_BACKFILL: usize = 16;

/// The most models (and accounts) a budget keeps state for; see [`TokenBudget::max_models`].
pub const DEFAULT_MAX_MODELS: usize = 1024;

/// Layer that keeps each model within its quota; see the [module docs](self).
///
/// Cloning is cheap and shares the budget: every clone, and every service made from any of
/// them, counts in the same state. The builder methods make a new budget, so configure first,
/// then clone.
///
/// # Default
///
/// - the quota given to [`new`](Self::new) for every model ([`model`](Self::model) for others);
/// - [`burst`](Self::burst): one second (a second's worth of the quota at once);
/// - [`max_concurrency`](Self::max_concurrency): unlimited;
/// - [`max_wait`](Self::max_wait): unlimited (requests wait as long as their quota needs);
/// - [`default_output_tokens`](Self::default_output_tokens): 1024;
/// - [`output_charge`](Self::output_charge): [`OutputCharge::WhenGenerated`] — the input is
///   charged before sending, the output when the answer's usage arrives — switching a model to
///   reserving its output when the server shows it counts output on admission
///   ([`detect_output_charge`](Self::detect_output_charge));
/// - [`learn_output`](Self::learn_output): on — the output charged is the share of
///   `max_tokens` the model's answers have used, learned from their usage; `learn_output(false)`
///   charges the whole of `max_tokens`, the conservative behaviour of earlier versions;
/// - [`backfill`](Self::backfill): [`DEFAULT_BACKFILL`] requests behind the first in line may
///   use room it cannot;
/// - [`estimator`](Self::estimator): [`CharEstimator`];
/// - [`adaptive`](Self::adaptive): on; [`warm_up`](Self::warm_up): off;
/// - [`max_models`](Self::max_models): [`DEFAULT_MAX_MODELS`];
/// - one budget per model name, whatever the account ([`account`](Self::account));
/// - the windows in this process ([`LocalStore`]; [`store`](Self::store) for a shared one).
#[derive(Clone, Debug)]
#[must_use]
pub struct TokenBudget {
    shared: Arc<Shared>,
}

impl TokenBudget {
    /// A budget that gives every model `quota`.
    pub fn new(quota: Quota) -> Self {
        TokenBudget {
            shared: Shared::new(Config {
                default: quota,
                models: HashMap::new(),
                window: Duration::from_secs(1),
                max_concurrency: None,
                max_wait: None,
                default_output_tokens: 1024,
                learn_output: true,
                output_charge: OutputCharge::WhenGenerated,
                detect_output_charge: true,
                backfill: DEFAULT_BACKFILL,
                estimator: DynEstimator(Arc::new(CharEstimator)),
                adaptive: true,
                warm_up: None,
                max_models: DEFAULT_MAX_MODELS,
                account: None,
                store: None,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.shared.config.clone();
        change(&mut config);
        self.shared = Shared::new(config);
        self
    }

    /// `model`'s own quota, in place of the default.
    pub fn model(self, model: impl Into<String>, quota: Quota) -> Self {
        let model = model.into();
        self.with(|c| {
            c.models.insert(model, quota);
        })
    }

    /// How many requests may be in flight at once, over every model (a request is in flight
    /// from its admission until its response body ends or is dropped). `0` is taken as `1`.
    pub fn max_concurrency(self, max: usize) -> Self {
        self.with(|c| c.max_concurrency = Some(max.max(1)))
    }

    /// The longest a request may wait for room. A request that would wait longer is not sent:
    /// it fails at once with [`RateLimited(Local)`](crate::RateLimitKind::Local) and the wait as
    /// its `retry_after`. `Duration::ZERO` fails fast.
    ///
    /// It also bounds the wait for a shared [`store`](Self::store)'s answer, giving each round
    /// trip at least a second: a store that does not answer in time fails the request, not
    /// sent, as [`Connection`](crate::ErrorClass::Connection).
    pub fn max_wait(self, max_wait: Duration) -> Self {
        self.with(|c| c.max_wait = Some(max_wait))
    }

    /// The window over which a model may be sent its quota's worth at once: a second by
    /// default, as DashScope enforces. Longer windows allow larger bursts (and suit quotas of
    /// under 60 requests a minute); the window is clamped to 1 ms ..= 1 h.
    pub fn burst(self, window: Duration) -> Self {
        let window = window.clamp(Duration::from_millis(1), Duration::from_secs(3600));
        self.with(|c| c.window = window)
    }

    /// The output tokens charged for a request that sets no `max_tokens`.
    pub fn default_output_tokens(self, tokens: u32) -> Self {
        self.with(|c| c.default_output_tokens = tokens)
    }

    /// Whether the output reserved for a request is learned from the answers (on by default) or
    /// is the whole of its `max_tokens` (off). It applies where output is reserved before
    /// sending ([`OutputCharge::OnAdmission`]), and to what is owed for an answer that reports
    /// no usage.
    ///
    /// On, each model keeps a moving mean of `output tokens / max_tokens` over the usage its
    /// answers report, starting at 1.0, and charges that share of a request's `max_tokens`
    /// (or of [`default_output_tokens`](Self::default_output_tokens)). An answer longer than
    /// that is charged as debt when its usage arrives and a shorter one given back, so the
    /// budget still holds the quota over time; within one second, answers longer than the
    /// mean can take the server over its per-second limit where the charge said they would
    /// not. Off, no answer can ever be longer than what was charged, at the price of
    /// throughput: where answers use 60% of `max_tokens`, the budget admits about a quarter
    /// fewer tokens than the quota allows.
    pub fn learn_output(self, learn: bool) -> Self {
        self.with(|c| c.learn_output = learn)
    }

    /// When the upstream counts an answer's output against its token quota, and so when the
    /// budget charges it: [`OutputCharge::WhenGenerated`] by default (the input before
    /// sending, the output from the usage the answer reports), or
    /// [`OutputCharge::OnAdmission`] (the expected output reserved with the input, settled
    /// both ways; for upstreams that reserve `max_tokens` up front).
    ///
    /// Charged when generated, a model's answers finishing together can put the budget in
    /// debt, as they put the server's own bucket: nothing new is sent until the window has
    /// room again, so a request is not sent into a second the server has already spent.
    pub fn output_charge(self, charge: OutputCharge) -> Self {
        self.with(|c| c.output_charge = charge)
    }

    /// Whether a model charged [`OutputCharge::WhenGenerated`] switches to reserving its
    /// answers' expected output before sending when the server shows it counts output on
    /// admission (on by default).
    ///
    /// The sign is the server refusing tokens the budget had room for: against a server that
    /// counts output when written, the budget sees about one such 429 in 2,000 attempts;
    /// against one that counts it on admission, several in every hundred. Three token 429s
    /// within a hundred outcomes switch the model (an INFO event says so) for as long as the
    /// budget keeps its state. Off, the charge stays as set whatever the server answers.
    pub fn detect_output_charge(self, detect: bool) -> Self {
        self.with(|c| c.detect_output_charge = detect)
    }

    /// How many requests waiting behind the first in line for a model may take room it cannot
    /// use: [`DEFAULT_BACKFILL`] by default, `0` for strict arrival order.
    ///
    /// Requests wait in arrival order. When the first needs more room than a window has left,
    /// one of the next `n` whose cost fits may be sent in its place, so that the room is used
    /// rather than left to expire (with charges of a few hundred tokens against a second's
    /// worth of a few thousand, in-order admission leaves about half a request's worth of each
    /// second unused). It only happens while the first has waited less than one
    /// [`burst`](Self::burst) window; after that, room is kept for it, so a request is held
    /// back by those behind it for at most about one window more than in strict order. With
    /// a store across the network (one whose
    /// [`answers_locally`](BudgetStore::answers_locally) is `false`, such as `RedisStore`),
    /// each try would be a round trip, and requests keep strict arrival order.
    pub fn backfill(self, n: usize) -> Self {
        self.with(|c| c.backfill = n)
    }

    /// How input tokens are estimated before sending; [`CharEstimator`] by default.
    pub fn estimator(self, estimator: impl TokenEstimator) -> Self {
        self.with(|c| c.estimator = DynEstimator(Arc::new(estimator)))
    }

    /// Whether the server's 429s lower a model's rates (and successes raise them back). On by
    /// default; turn it off when the quota is known exactly.
    pub fn adaptive(self, adaptive: bool) -> Self {
        self.with(|c| c.adaptive = adaptive)
    }

    /// After a cold start, ramp each model from `from` (a fraction of its quota, clamped to
    /// `0.01 ..= 1.0`) to its whole quota over `over`, as DashScope's growth-rate limit wants.
    pub fn warm_up(self, from: f64, over: Duration) -> Self {
        let from = if from.is_finite() {
            from.clamp(0.01, 1.0)
        } else {
            1.0
        };
        self.with(|c| c.warm_up = Some((from, over)))
    }

    /// The most models (and accounts) with state at once: beyond it, idle ones are forgotten,
    /// and if none is idle, new names share one budget of the default quota. Memory stays
    /// bounded however many model names arrive. `0` is taken as `1`.
    pub fn max_models(self, max: usize) -> Self {
        self.with(|c| c.max_models = max.max(1))
    }

    /// Counts requests per account as well as per model, for users with several accounts:
    /// `account` names the account of a request (from its URI or headers, e.g. a workspace
    /// header); `None` counts it in a shared one. Limits are per account at DashScope.
    pub fn account(
        self,
        account: impl Fn(&Uri, &HeaderMap) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let account: AccountFn = Arc::new(account);
        self.with(|c| c.account = Some(account))
    }

    /// Where the windows live: a [`BudgetStore`] shared by a fleet (one atomic step per
    /// admission), in place of this process's [`LocalStore`]. Arrival order, concurrency and
    /// adaptive rates stay per process.
    pub fn store(self, store: impl BudgetStore) -> Self {
        let store: Arc<dyn BudgetStore> = Arc::new(store);
        self.with(|c| c.store = Some(store))
    }

    /// Requests admitted and not yet finished, over every model.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// The tokens counted against `model` now (in its window, and owed), for metrics and tests.
    #[must_use]
    pub fn tokens_in_window(&self, model: &str) -> u64 {
        self.shared.tokens_used(&Key::new(None, model))
    }

    /// The request and token rates in force for `model`, as fractions of its quota (below 1.0
    /// after the server throttled it, or while warming up); `None` before its first request.
    #[must_use]
    pub fn rate_factors(&self, model: &str) -> Option<(f64, f64)> {
        self.shared.factors(&Key::new(None, model))
    }

    /// How many models (and accounts) have state now.
    #[must_use]
    pub fn tracked_models(&self) -> usize {
        self.shared.model_count()
    }

    /// What `model` may still be sent now, for OpenAI-style `x-ratelimit-*` headers and
    /// metrics: its quota, and the requests and tokens left in the current shaping window
    /// (one [`burst`](Self::burst) long, a second by default) at the rates in force.
    ///
    /// A snapshot: another request may take the room a moment later. With
    /// [`account`](Self::account), these are the numbers of the requests counted in no
    /// account.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_dashscope::{Quota, TokenBudget};
    ///
    /// // 120 requests and 60,000 tokens a minute: 2 requests and 1,000 tokens a second.
    /// let budget = TokenBudget::new(Quota::per_minute(120, 60_000));
    /// let room = budget.headroom("qwen-plus");
    /// assert_eq!(room.quota, Quota::per_minute(120, 60_000));
    /// assert_eq!(room.window, Duration::from_secs(1));
    /// assert_eq!((room.requests, room.tokens), (Some(2), Some(1_000)));
    /// ```
    #[must_use]
    pub fn headroom(&self, model: &str) -> Headroom {
        let (quota, limits, requests_used, tokens_used) =
            self.shared.headroom(&Key::new(None, model));
        let left =
            |limit: u64, used: u64| (limit != u64::MAX).then(|| limit.saturating_sub(used) / 1000);
        Headroom {
            quota,
            window: limits.window,
            requests: requests_used.and_then(|used| left(limits.requests, used)),
            tokens: left(limits.tokens, tokens_used),
        }
    }
}

/// What a model may still be sent now: [`TokenBudget::headroom`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Headroom {
    /// The model's quota, per minute.
    pub quota: Quota,
    /// The shaping window the numbers below are counted in ([`TokenBudget::burst`]).
    pub window: Duration,
    /// Whole requests left in the window now; `None` when requests are unlimited or the
    /// [`BudgetStore`] cannot tell without a round trip.
    pub requests: Option<u64>,
    /// Whole tokens left in the window now (debt counts against it); `None` when tokens are
    /// unlimited.
    pub tokens: Option<u64>,
}

impl<S> Layer<S> for TokenBudget {
    type Service = TokenBudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenBudgetService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Service that keeps each model within its quota; made by [`TokenBudget`], see the
/// [module docs](self).
pub struct TokenBudgetService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for TokenBudgetService<S> {
    fn clone(&self) -> Self {
        TokenBudgetService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for TokenBudgetService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBudgetService")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S> TokenBudgetService<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, R> Service<Request<B>> for TokenBudgetService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Response = Response<BudgetBody<R>>;
    type Error = DashScopeError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(into_dashscope_error)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The readied service goes into the future and is called once the request is admitted.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let Some(chat) = ChatRequest::of(&mut request) else {
            return ResponseFuture::passthrough(service, request);
        };
        let config = &self.shared.config;
        let input = match request.body().bytes() {
            Some(body) => config.estimator.0.input_tokens(&chat, &body),
            None => chat.estimated_input_tokens(),
        };
        let output = chat.max_tokens().unwrap_or(config.default_output_tokens);
        let cost = Cost {
            input,
            output: u64::from(output),
        };
        let account = config
            .account
            .as_ref()
            .and_then(|account| account(request.uri(), request.headers()))
            .map(Arc::from);
        // The parse's own name, shared: no copy per request.
        let key = Key::from_parts(
            account,
            chat.model_shared()
                .cloned()
                .unwrap_or_else(|| Arc::from("")),
        );
        ResponseFuture::admitting(service, request, self.shared.clone(), key, cost)
    }
}
