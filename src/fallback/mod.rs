//! When one model is throttled, down or silent, answer with the next — on the right errors only.
//!
//! DashScope's limits are per model, so a 429 on `qwen-plus` says nothing about `qwen-flash`.
//! [`FallbackModel`] sends a request for a model of a chain to that model, and on a failure
//! that another model can fix, rewrites the body's `model` to the next model of the chain and
//! sends it again.
//!
//! - **Chains.** `FallbackModel::new(["qwen-max", "qwen-plus", "qwen-flash"])`: a request for
//!   `qwen-max` is tried with `qwen-plus`, then `qwen-flash`; one for `qwen-plus` with
//!   `qwen-flash`. [`with_chain`](FallbackModel::with_chain) adds chains (a model in several
//!   belongs to the first). A request for a model in no chain passes through untouched.
//! - **What switches** ([`default_switch`]): rate limits of every kind (the budget's
//!   [`Local`](crate::RateLimitKind::Local) included), [`Unavailable`](ErrorClass::Unavailable),
//!   [`ServerError`](ErrorClass::ServerError), [`Timeout`](ErrorClass::Timeout), a stream that
//!   broke before its first byte ([`StreamInterrupted`](ErrorClass::StreamInterrupted) — the
//!   layer only ever sees it then), and [`QuotaExhausted`](ErrorClass::QuotaExhausted) — but
//!   never an error whose limit or quota is shared by the whole plan or account
//!   ([`DashScopeError::is_plan_wide`]): every sibling model fails the same way. Never
//!   `Authentication`, `PermissionDenied`, `InvalidRequest` or `Connection` (a different model
//!   on the same host does not fix those). [`ContentFiltered`](ErrorClass::ContentFiltered) is
//!   off by default ([`switch_on_content_filtered`](FallbackModel::switch_on_content_filtered)):
//!   moderation refused *this input*, and quietly sending it to another model gets around a
//!   safety decision rather than recovering from a failure. [`NotFound`](ErrorClass::NotFound)
//!   (a retired model) is opt-in too ([`switch_on_not_found`](FallbackModel::switch_on_not_found)).
//!   [`switch_if`](FallbackModel::switch_if) replaces all of this with your predicate. Without a
//!   [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) below, `Ok` responses are judged by
//!   their status alone ([`failure_of`](crate::outcome::failure_of)): 429 and 5xx switch.
//! - **Context windows.** [`context_window`](FallbackModel::context_window) declares a model's
//!   window. On [`ContextLengthExceeded`](ErrorClass::ContextLengthExceeded) the request goes to
//!   the declared model with the smallest window that is larger than the failing model's and
//!   fits the estimated input plus `max_tokens` (the budget's [`TokenEstimator`]); models that
//!   cannot fit are skipped without a round trip, and when none fits the original error is
//!   returned.
//! - **Silent providers.** [`first_byte_timeout`](FallbackModel::first_byte_timeout): a model that
//!   sends no response headers — or, for a stream, no first event; for any other answer, not the
//!   first byte of its body — within the timeout is a [`Timeout`](ErrorClass::Timeout), and the
//!   next model is tried.
//! - **Streams.** A stream that fails before any byte reached the caller falls back; one that
//!   fails after ends its body with the typed [`DashScopeError`]. Two models' output are never
//!   spliced together.
//! - **The rewrite** changes only the top-level `"model"` string of the JSON body; every other
//!   byte stays as it was (whitespace, key order, escapes, nested `"model"` keys), for the
//!   OpenAI-compatible, native and Anthropic bodies alike. The body is scanned, not parsed into a
//!   tree and serialised again. A body that is not a JSON chat request with a top-level string
//!   `model`, or cannot be replayed ([`ReplayBody`]), is sent once, unchanged.
//! - **Cooldowns.** A model that failed with a switching error is skipped for a while, so later
//!   requests go straight to the next model: for the failure's retry-after if it has one, else
//!   for [`cooldown`](FallbackModel::cooldown). A new failure extends a cooldown, never shortens
//!   it. When every model of the chain is cooling, the request waits for the first to come back,
//!   up to [`max_wait`](FallbackModel::max_wait) from the call, instead of failing at once. After a
//!   cooldown, one request at a time probes the model (half-open); its success puts the model
//!   back in rotation; its failure goes to the next model at once (the probe carries
//!   [`FallbackProbe`], which a [`RetryWithJitter`](crate::RetryWithJitter) below honours by
//!   not retrying a failure the default rule switches on) and cools the model again. State is
//!   shared by every clone of the layer and bounded by the models configured.
//! - **What the caller learns.** [`ServedModel`] in the response's extensions: the model that
//!   answered. The body is that model's own (its `model` and `usage` are the truth; nothing is
//!   relabelled). When the chain is exhausted the last failure is returned, its
//!   [advice](DashScopeError::advice) naming the models tried. Every switch, cooldown, skip, wait
//!   and probe is a `tracing` event. Each attempt readies the inner service again.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, ClassifyDashScopeError, FallbackModel, ServedModel};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // qwen-plus is throttled; qwen-flash answers.
//! let client = service_fn(|req: Request<Full<Bytes>>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     let response = if body.starts_with(br#"{"model":"qwen-plus""#) {
//!         Response::builder().status(429)
//!             .body(Full::from(r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}"#))?
//!     } else {
//!         Response::new(Full::new(body)) // echoes the request it got
//!     };
//!     Ok::<_, BoxError>(response)
//! });
//! let service = ServiceBuilder::new()
//!     .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
//!     .layer(ClassifyDashScopeError::new())
//!     .service(client);
//!
//! let request = Request::post("/compatible-mode/v1/chat/completions")
//!     .body(Full::from(r#"{"model":"qwen-plus", "messages":[{"role":"user","content":"hi"}]}"#))
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.extensions().get::<ServedModel>(), Some(&ServedModel("qwen-flash".into())));
//! let sent = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(sent, r#"{"model":"qwen-flash", "messages":[{"role":"user","content":"hi"}]}"#);
//! # }
//! ```
//!
//! Customised:
//!
//! ```
//! use std::time::Duration;
//! use tower_dashscope::{ErrorClass, FallbackModel};
//! use tower_dashscope::fallback::default_switch;
//!
//! let fallback = FallbackModel::new(["qwen-max", "qwen-plus", "qwen-flash"])
//!     .with_chain(["qwen3-coder-plus", "qwen3-coder-flash"])
//!     .cooldown(Duration::from_secs(10))           // without a Retry-After
//!     .max_wait(Duration::from_secs(3))            // when the whole chain is cooling
//!     .first_byte_timeout(Duration::from_secs(20)) // a silent model counts as a timeout
//!     .switch_on_not_found(true)                   // a retired model: use the next
//!     // A longer context: qwen-plus (128k) → qwen-long (10M) when the input does not fit.
//!     .context_window("qwen-plus", 131_072)
//!     .context_window("qwen-long", 10_000_000)
//!     // Your own rule: the defaults, but never on timeouts (the request may have been billed).
//!     .switch_if(|err| default_switch(err) && err.class() != ErrorClass::Timeout);
//! # let _ = fallback;
//! ```
//!
//! # Order with retry
//!
//! Both orders work; they differ in what happens on a rate limit.
//!
//! - **Fallback outside retry** (recommended: `FallbackModel → RetryWithJitter → TokenBudget →
//!   … → ClassifyDashScopeError`). Server errors and timeouts are retried on the primary with
//!   backoff first, then the chain moves on — right when failures are brief and the primary is
//!   the model you want; a model's half-open probe after its cooldown is not retried
//!   ([`FallbackProbe`]). Rate limits switch at once, without sleeping a backoff: each attempt
//!   that has a model after it carries [`FallbackAvailable`] in its extensions, and
//!   [`RetryWithJitter`](crate::RetryWithJitter) hands rate-limited failures of such a request
//!   straight back (unless they are plan-wide, which no other model fixes), so the next model
//!   is tried. The last model of the chain is retried as usual.
//!   [`hand_off_rate_limits(false)`](FallbackModel::hand_off_rate_limits) makes retry wait out
//!   rate limits on each model instead.
//! - **Fallback inside retry** (`RetryWithJitter → FallbackModel → …`). Every switching failure
//!   moves to the next model at once; retry backs off only when the whole chain failed, then
//!   walks it again (cooling models are skipped). Choose it when any model of the chain will
//!   do and latency matters more than which model answers.
//!
//! # First-byte timeout, with and without a classifier below
//!
//! The timer starts when an attempt is sent to the layer below and stops at the first byte the
//! caller would see. Without a [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) below,
//! the response future ends when the headers arrive, so for a stream this layer also waits for
//! the body's first data frame under the same timer. With one below, the classifier's response
//! future already waits for a stream's first event before it resolves, so the timer around it
//! covers that wait; the frame this layer then reads is the one the classifier replays, at once.
//! Either way a model that answers headers and then stays silent is caught. Layers between
//! (a retry's backoff, a budget's wait) count against the timer: set it above the budget's
//! `max_wait`, or put the fallback inside the retry.
//!
//! [`ReplayBody`]: crate::body::ReplayBody
//! [`TokenEstimator`]: crate::budget::TokenEstimator

mod cooldown;
pub mod future;
mod rewrite;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use self::cooldown::Health;
use self::future::ResponseFuture;
use crate::body::ReplayBody;
use crate::budget::{CharEstimator, TokenEstimator};
use crate::error::{BoxError, DashScopeError, ErrorClass, into_dashscope_error};
pub use crate::extensions::ServedModel;

/// The longest chain: models beyond it are ignored (with a `tracing` warning).
pub const MAX_CHAIN: usize = 64;

/// Put into each attempt's request extensions by [`FallbackModel`] when another model of the
/// chain is left to try and rate limits switch models: it tells a
/// [`RetryWithJitter`](crate::RetryWithJitter) below to hand rate-limited failures straight
/// back rather than wait a backoff, since the next model can take the request now. A plan-wide
/// rate limit ([`DashScopeError::is_plan_wide`]) is still retried: no model fixes it.
///
/// Insert it yourself to get the same behaviour from a fallback of your own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FallbackAvailable;

/// Put into a request's extensions by [`FallbackModel`] when the attempt is the one half-open
/// probe of a model whose cooldown has passed and another model of the chain is left: it tells
/// a [`RetryWithJitter`](crate::RetryWithJitter) below to hand a failure of this attempt that
/// [`default_switch`] switches on straight back rather than retry it on the same model with a
/// backoff. A probe only asks whether the model is back; when it is not, the next model
/// answers now and the cooldown is renewed at once, so the model is probed again a cooldown
/// later (not a cooldown plus a backoff). Other failures (a connection error, a plan-wide
/// limit) are retried as usual, since the fallback would not switch on them. A
/// [`FallbackModel`] with a [`switch_if`](FallbackModel::switch_if) rule of its own, which the
/// retry cannot see, does not mark its probes.
///
/// Insert it yourself to get the same behaviour from a fallback of your own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FallbackProbe;

/// The default rule for switching models: `true` for rate limits of every kind,
/// [`Unavailable`](ErrorClass::Unavailable), [`ServerError`](ErrorClass::ServerError),
/// [`Timeout`](ErrorClass::Timeout), [`StreamInterrupted`](ErrorClass::StreamInterrupted) (seen
/// only before a stream's first byte) and [`QuotaExhausted`](ErrorClass::QuotaExhausted) — unless
/// the error is [plan-wide](DashScopeError::is_plan_wide) — and `false` for everything else.
/// See the [module docs](self) for why.
///
/// ```
/// use tower_dashscope::{DashScopeError, ErrorClass, QuotaScope, RateLimitKind};
/// use tower_dashscope::fallback::default_switch;
///
/// assert!(default_switch(&DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Local))));
/// assert!(default_switch(&DashScopeError::new(ErrorClass::QuotaExhausted)));
/// let plan = DashScopeError::new(ErrorClass::QuotaExhausted).with_quota_scope(QuotaScope::Plan);
/// assert!(!default_switch(&plan));
/// assert!(!default_switch(&DashScopeError::new(ErrorClass::InvalidRequest)));
/// assert!(!default_switch(&DashScopeError::new(ErrorClass::ContentFiltered)));
/// ```
#[must_use]
pub fn default_switch(err: &DashScopeError) -> bool {
    !err.is_plan_wide()
        && matches!(
            err.class(),
            ErrorClass::RateLimited(_)
                | ErrorClass::Unavailable
                | ErrorClass::ServerError
                | ErrorClass::Timeout
                | ErrorClass::StreamInterrupted
                | ErrorClass::QuotaExhausted
        )
}

/// `json` with its top-level `"model"` string set to `model`, every other byte as it was — the
/// rewrite [`FallbackModel`] makes (see the [module docs](self)), for a layer or test of your
/// own.
///
/// `None` when `json` is not a JSON object with a top-level string `model` (a key spelt with
/// escapes, `"mod\u0065l"`, counts). Scanned once, never parsed into a tree; never panics.
///
/// ```
/// use tower_dashscope::fallback::rewrite_model;
///
/// let body = br#"{ "messages": [{"model": "nested", "content": "hi"}],
///   "model" : "qwen-max" }"#;
/// let rewritten = rewrite_model(body, "qwen-plus").unwrap();
/// assert_eq!(&rewritten[..], &br#"{ "messages": [{"model": "nested", "content": "hi"}],
///   "model" : "qwen-plus" }"#[..]);
/// assert!(rewrite_model(b"[1, 2]", "qwen-plus").is_none());
/// ```
#[must_use]
pub fn rewrite_model(json: &[u8], model: &str) -> Option<Bytes> {
    let spans = rewrite::find_model(json)?;
    Some(rewrite::rewrite(json, &spans, &rewrite::json_string(model)))
}

/// Decides whether a failure switches models.
type SwitchIf = Arc<dyn Fn(&DashScopeError) -> bool + Send + Sync>;

/// One model the layer knows.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) name: Arc<str>,
    /// The name as a JSON string token, for the rewrite.
    pub(crate) token: Bytes,
    pub(crate) window: Option<u64>,
    /// The first chain holding it, and its position there.
    pub(crate) chain: Option<(usize, usize)>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) models: Vec<Model>,
    index: HashMap<Arc<str>, usize>,
    pub(crate) chains: Vec<Vec<usize>>,
    /// Models with a declared window, smallest window first.
    pub(crate) by_window: Vec<usize>,
    pub(crate) cooldown: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) first_byte_timeout: Option<Duration>,
    content_filtered: bool,
    not_found: bool,
    switch_if: Option<SwitchIf>,
    hand_off: bool,
    /// `hand_off`, and rate limits switch: attempts with a next model carry
    /// [`FallbackAvailable`].
    pub(crate) hands_off: bool,
    pub(crate) estimator: Arc<dyn TokenEstimator>,
}

impl Config {
    pub(crate) fn model_id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn id_or_insert(&mut self, name: &str) -> usize {
        if let Some(id) = self.model_id(name) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = self.models.len();
        self.models.push(Model {
            token: rewrite::json_string(&name),
            name: name.clone(),
            window: None,
            chain: None,
        });
        self.index.insert(name, id);
        id
    }

    /// Whether `err` switches models.
    pub(crate) fn switches(&self, err: &DashScopeError) -> bool {
        if let Some(switch_if) = &self.switch_if {
            return switch_if(err);
        }
        default_switch(err)
            || (self.content_filtered && err.class() == ErrorClass::ContentFiltered)
            || (self.not_found && err.class() == ErrorClass::NotFound)
    }

    /// Whether attempts that have a next model should carry [`FallbackAvailable`].
    fn compute_hands_off(&self) -> bool {
        self.hand_off
            && self.switches(&DashScopeError::new(ErrorClass::RateLimited(
                crate::RateLimitKind::Unspecified,
            )))
    }
}

/// Layer that answers with the next model of a chain when one is throttled, down or silent;
/// see the [module docs](self).
///
/// Cloning is cheap and shares the cooldown table: configure the layer first, then clone it or
/// apply it to services (a builder method called on a clone starts a table of its own when it
/// adds models).
///
/// # Default
///
/// - switching on [`default_switch`]; [`switch_on_content_filtered`](Self::switch_on_content_filtered)
///   and [`switch_on_not_found`](Self::switch_on_not_found): off;
/// - [`cooldown`](Self::cooldown): 5 s (a failure's retry-after wins);
/// - [`max_wait`](Self::max_wait): 10 s;
/// - [`first_byte_timeout`](Self::first_byte_timeout): none;
/// - [`hand_off_rate_limits`](Self::hand_off_rate_limits): on;
/// - no context windows; the estimator is [`CharEstimator`].
#[derive(Clone)]
#[must_use]
pub struct FallbackModel {
    config: Arc<Config>,
    health: Arc<Health>,
}

impl FallbackModel {
    /// A layer with one chain, in order of preference.
    pub fn new<I>(chain: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let config = Config {
            models: Vec::new(),
            index: HashMap::new(),
            chains: Vec::new(),
            by_window: Vec::new(),
            cooldown: Duration::from_secs(5),
            max_wait: Duration::from_secs(10),
            first_byte_timeout: None,
            content_filtered: false,
            not_found: false,
            switch_if: None,
            hand_off: true,
            hands_off: true,
            estimator: Arc::new(CharEstimator),
        };
        FallbackModel {
            config: Arc::new(config),
            health: Arc::new(Health::new(0)),
        }
        .with_chain(chain)
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = (*self.config).clone();
        let models = config.models.len();
        change(&mut config);
        config.hands_off = config.compute_hands_off();
        if config.models.len() != models {
            self.health = Arc::new(Health::new(config.models.len()));
        }
        self.config = Arc::new(config);
        self
    }

    /// Adds a chain. A model already in an earlier chain keeps its place there; repeated models
    /// in one chain count once; models beyond [`MAX_CHAIN`] are ignored.
    pub fn with_chain<I>(self, chain: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.with(|config| {
            let number = config.chains.len();
            let mut ids: Vec<usize> = Vec::new();
            for name in chain {
                let name = name.into();
                let id = config.id_or_insert(&name);
                if ids.contains(&id) {
                    continue;
                }
                if ids.len() == MAX_CHAIN {
                    tracing::warn!(gen_ai.request.model = %name, "fallback: chain longer than {MAX_CHAIN} models; ignoring the rest");
                    break;
                }
                if config.models[id].chain.is_none() {
                    config.models[id].chain = Some((number, ids.len()));
                }
                ids.push(id);
            }
            config.chains.push(ids);
        })
    }

    /// How long a model that failed is skipped when the failure carries no retry-after.
    pub fn cooldown(self, cooldown: Duration) -> Self {
        self.with(|c| c.cooldown = cooldown)
    }

    /// How long, from the call, a request may wait for a model to come back when every model
    /// it could use is cooling down. Past it, the request fails with the last failure (or, if
    /// it never got to send, an [`Unavailable`](ErrorClass::Unavailable) error whose
    /// retry-after says when the first model is back). `Duration::ZERO` fails at once.
    pub fn max_wait(self, max_wait: Duration) -> Self {
        self.with(|c| c.max_wait = max_wait)
    }

    /// A model that sends no response headers — or, to a streaming request, no first event; to
    /// any other, not the first byte of its body — within `timeout` of the attempt is a
    /// [`Timeout`](ErrorClass::Timeout): the next model is tried. A successful answer is handed
    /// on once its first byte is in. See the [module docs](self#first-byte-timeout-with-and-without-a-classifier-below).
    pub fn first_byte_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.first_byte_timeout = Some(timeout))
    }

    /// Whether moderation refusals ([`ContentFiltered`](ErrorClass::ContentFiltered)) switch
    /// models. Off by default: the refusal is about the input, and another model answering it
    /// gets around a safety decision instead of recovering from a failure. Turn it on only if
    /// the chain's models are moderated differently on purpose.
    pub fn switch_on_content_filtered(self, yes: bool) -> Self {
        self.with(|c| c.content_filtered = yes)
    }

    /// Whether [`NotFound`](ErrorClass::NotFound) (a retired or misspelt model, a wrong
    /// endpoint) switches models. Off by default: it is a configuration mistake that a fallback
    /// would hide.
    pub fn switch_on_not_found(self, yes: bool) -> Self {
        self.with(|c| c.not_found = yes)
    }

    /// Which failures switch models: those for which `predicate` returns `true`, replacing the
    /// defaults and the `switch_on_*` options. Compose with [`default_switch`]. Without a
    /// classifier below, `Ok` non-2xx responses are given to it as an error built from their
    /// status and retry-after.
    pub fn switch_if<F>(self, predicate: F) -> Self
    where
        F: Fn(&DashScopeError) -> bool + Send + Sync + 'static,
    {
        let predicate: SwitchIf = Arc::new(predicate);
        self.with(|c| c.switch_if = Some(predicate))
    }

    /// Whether a [`RetryWithJitter`](crate::RetryWithJitter) below hands rate-limited failures
    /// straight back when another model is left ([`FallbackAvailable`]); on by default. Off,
    /// retry waits out rate limits on each model before this layer switches.
    pub fn hand_off_rate_limits(self, yes: bool) -> Self {
        self.with(|c| c.hand_off = yes)
    }

    /// Declares `model`'s context window in tokens, for the context-window chain (see the
    /// [module docs](self)).
    pub fn context_window(self, model: impl Into<String>, tokens: u64) -> Self {
        let model = model.into();
        self.with(|config| {
            let id = config.id_or_insert(&model);
            config.models[id].window = Some(tokens);
            let mut by_window: Vec<usize> = (0..config.models.len())
                .filter(|&m| config.models[m].window.is_some())
                .collect();
            by_window.sort_by_key(|&m| config.models[m].window);
            by_window.truncate(MAX_CHAIN);
            config.by_window = by_window;
        })
    }

    /// The estimator of input tokens for the context-window chain; [`CharEstimator`] by default.
    pub fn estimator(self, estimator: impl TokenEstimator) -> Self {
        let estimator: Arc<dyn TokenEstimator> = Arc::new(estimator);
        self.with(|c| c.estimator = estimator)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chains: Vec<Vec<&str>> = self
            .chains
            .iter()
            .map(|chain| chain.iter().map(|&m| &*self.models[m].name).collect())
            .collect();
        let windows: Vec<(&str, u64)> = self
            .by_window
            .iter()
            .filter_map(|&m| Some((&*self.models[m].name, self.models[m].window?)))
            .collect();
        f.debug_struct("FallbackModel")
            .field("chains", &chains)
            .field("context_windows", &windows)
            .field("cooldown", &self.cooldown)
            .field("max_wait", &self.max_wait)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("switch_on_content_filtered", &self.content_filtered)
            .field("switch_on_not_found", &self.not_found)
            .field("switch_if", &self.switch_if.as_ref().map(|_| "custom"))
            .field("hand_off_rate_limits", &self.hand_off)
            .finish()
    }
}

impl fmt::Debug for FallbackModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl<S> Layer<S> for FallbackModel {
    type Service = FallbackModelService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackModelService {
            inner,
            config: self.config.clone(),
            health: self.health.clone(),
        }
    }
}

/// Service that answers with the next model of a chain; made by [`FallbackModel`], see the
/// [module docs](self).
pub struct FallbackModelService<S> {
    inner: S,
    config: Arc<Config>,
    health: Arc<Health>,
}

impl<S: Clone> Clone for FallbackModelService<S> {
    fn clone(&self) -> Self {
        FallbackModelService {
            inner: self.inner.clone(),
            config: self.config.clone(),
            health: self.health.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for FallbackModelService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackModelService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> FallbackModelService<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for FallbackModelService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: ReplayBody,
    ResBody: http_body::Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<future::ResponseBody<ResBody>>;
    type Error = DashScopeError;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(into_dashscope_error)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service makes the first attempt; the future keeps it for the others and
        // readies it again before each one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(inner, req, self.config.clone(), self.health.clone())
    }
}
