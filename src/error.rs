//! The error currency of every layer: [`DashScopeError`], its [`ErrorClass`] and [`RateLimitKind`].
//!
//! Every service in this crate has `type Error = DashScopeError`. Match on
//! [`DashScopeError::class`] at the top of a stack to decide what to do:
//!
//! ```
//! use tower_dashscope::{DashScopeError, ErrorClass, RateLimitKind};
//!
//! fn advice(err: &DashScopeError) -> &'static str {
//!     match err.class() {
//!         ErrorClass::RateLimited(RateLimitKind::Tokens) => "slow down: tokens per minute",
//!         ErrorClass::ContextLengthExceeded => "shorten the conversation",
//!         ErrorClass::Authentication => "check the key and the region",
//!         _ if err.is_retryable() => "try again later",
//!         _ => "fix the request",
//!     }
//! }
//!
//! let err = DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Tokens))
//!     .with_code("Throttling.AllocationQuota");
//! assert_eq!(advice(&err), "slow down: tokens per minute");
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

/// A type-erased error, as tower uses it: what every inner service's error is converted into
/// before it is classified.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Which limit a rate-limited request hit.
///
/// DashScope enforces limits per root account and per model, per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RateLimitKind {
    /// Requests per second or minute: `Throttling`, `Throttling.RateQuota`, compatible-mode
    /// `limit_requests`.
    Requests,
    /// Tokens per minute (input + output): `Throttling.AllocationQuota` "Allocated quota
    /// exceeded", compatible-mode `insufficient_quota` "You exceeded your current quota". This is
    /// transient throttling despite the billing-like wording.
    Tokens,
    /// The growth-rate limit: `Throttling.BurstRate`, `limit_burst_rate` "Request rate increased
    /// too quickly". Ramp traffic up smoothly; `X-DashScope-Wait-Timeout` lets the server queue.
    Burst,
    /// Too many requests in flight at once: Coding Plan's "concurrency allocated quota
    /// exceeded" (a plan-wide dynamic cap), a gateway's or a client-side concurrency limit,
    /// batch capacity held by jobs in flight.
    Concurrency,
    /// Refused by a limit on this side of the network (a client-side budget in fail-fast mode);
    /// the request never reached the server.
    Local,
    /// A 429 (or `rate_limit_error`) that did not say which limit it was.
    Unspecified,
}

impl fmt::Display for RateLimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateLimitKind::Requests => "requests",
            RateLimitKind::Tokens => "tokens",
            RateLimitKind::Burst => "burst",
            RateLimitKind::Concurrency => "concurrency",
            RateLimitKind::Local => "local",
            RateLimitKind::Unspecified => "unspecified",
        })
    }
}

/// Who shares the limit or quota an error reports: what a model fallback needs to know.
///
/// DashScope's rate limits and free quotas are per model (§5 of its rate-limit rules), so
/// another model may still answer; a Coding Plan's or Token Plan's windows are shared by every
/// model on the plan, and an overdue bill stops the whole account, so trying a sibling model
/// only spends another request. See [`DashScopeError::quota_scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaScope {
    /// This model only: DashScope's requests, tokens and burst limits per model,
    /// `Throttling.AllocationQuota` "Free allocated quota exceeded.",
    /// `AllocationQuota.FreeTierOnly`, `CommodityNotPurchased`. Another model may answer.
    Model,
    /// Every model of a subscription plan: Coding Plan's `usage` / `hour` / `week` / `month`
    /// windows and its concurrency cap, a Token Plan's quota. Another model of the same plan
    /// fails the same way.
    Plan,
    /// The whole account: `Arrearage`, `PrepaidBillOverdue`, `PostpaidBillOverdue`,
    /// `billing_error`. No model answers until the bill is paid.
    Account,
}

impl QuotaScope {
    /// Whether a different model (of the same account and plan) can succeed where this failed.
    #[must_use]
    pub fn other_models_may_succeed(self) -> bool {
        self == QuotaScope::Model
    }
}

impl fmt::Display for QuotaScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaScope::Model => "model",
            QuotaScope::Plan => "plan",
            QuotaScope::Account => "account",
        })
    }
}

/// When an exhausted quota comes back: a wall-clock time, exact or estimated.
///
/// Exact when the server wrote it (a Token Plan's "The quota will reset at 09-12 11:40:00 UTC.")
/// or the plan's published schedule fixes it (a Coding Plan's weekly window resets on Monday
/// 00:00 UTC+8); estimated when only a rule of thumb is known (a Coding Plan's `usage` and
/// `hour` windows "usually recover after about an hour"). See [`DashScopeError::quota_reset`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_dashscope::QuotaReset;
///
/// let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// assert!(!QuotaReset::exact(at).is_estimate());
/// assert_eq!(QuotaReset::estimated(at).at(), at);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaReset {
    at: SystemTime,
    estimated: bool,
}

impl QuotaReset {
    /// A reset time the server stated or a published schedule fixes.
    #[must_use]
    pub fn exact(at: SystemTime) -> Self {
        QuotaReset {
            at,
            estimated: false,
        }
    }

    /// A reset time guessed from a rule of thumb; the quota may come back earlier or later.
    #[must_use]
    pub fn estimated(at: SystemTime) -> Self {
        QuotaReset {
            at,
            estimated: true,
        }
    }

    /// When the quota is (expected to be) back.
    #[must_use]
    pub fn at(self) -> SystemTime {
        self.at
    }

    /// Whether [`at`](Self::at) is an estimate rather than a stated or scheduled time.
    #[must_use]
    pub fn is_estimate(self) -> bool {
        self.estimated
    }
}

/// What kind of failure a [`DashScopeError`] is: the one thing a caller matches on.
///
/// Each variant lists the DashScope codes that produce it. Only rate limits,
/// server errors, unavailability, timeouts and connection errors are
/// [retryable](ErrorClass::is_retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// 401: `InvalidApiKey`, `invalid_api_key`, `NOT AUTHORIZED`, "invalid access token or token
    /// expired", `authentication_error`. Usually a key from another region, or a Coding Plan key
    /// (`sk-sp-`) on a pay-as-you-go base URL. Not retryable.
    Authentication,
    /// 403: `AccessDenied`, `AccessDenied.Unpurchased`, `Model.AccessDenied`,
    /// `Workspace.AccessDenied`, `App.AccessDenied`, `permission_error`; a plain
    /// "Access denied." (exhausted free quota *or* no access: the error's advice names both);
    /// Coding Plan's 405 "only available for Coding Agents" (send a `User-Agent`).
    /// Not retryable.
    PermissionDenied,
    /// Free quota, subscription or billing exhausted: `Arrearage`, `AllocationQuota.FreeTierOnly`,
    /// `Throttling.AllocationQuota` with exactly "Free allocated quota exceeded.",
    /// `CommodityNotPurchased`, `PrepaidBillOverdue`, `PostpaidBillOverdue`, `billing_error`,
    /// Coding Plan "usage / hour / week / month allocated quota exceeded", Token Plan "Your
    /// token-plan … quota has been exhausted", per-feature count limits (voice clones).
    /// [`DashScopeError::quota_scope`] says whether another model can help,
    /// [`DashScopeError::quota_reset`] when the quota comes back.
    /// Not retryable (until the quota resets or the bill is paid).
    QuotaExhausted,
    /// 429 throttling; [`RateLimitKind`] says which limit. Retryable.
    RateLimited(RateLimitKind),
    /// 400 and other 4xx: `InvalidParameter`, `invalid_parameter_error`,
    /// `invalid_request_error`, `InternalError.Algo.*` on a 400, a 403 `AccessDenied` "does not
    /// support synchronous / asynchronous calls" (the `X-DashScope-Async` header). Not
    /// retryable.
    InvalidRequest,
    /// The input is longer than the model's context window: "Range of input length should be
    /// [1, N]", `context_length_exceeded`. Not retryable with the same input (a model with a
    /// longer context may take it).
    ContextLengthExceeded,
    /// Moderation blocked the input or the output: `DataInspectionFailed`,
    /// `data_inspection_failed`, `FaqRuleBlocked`, `CustomRoleBlocked`, `IPInfringementSuspect`.
    /// Not retryable with the same input.
    ContentFiltered,
    /// 404: `ModelNotFound`, `model_not_found`, `model_not_supported`, `WorkSpaceNotFound`,
    /// `not_found_error`, a bare 404 (wrong base path), or a redirect (wrong base URL); a 400
    /// "Model not exist." or "url error, please check url！" (model and endpoint do not match);
    /// a 403 `Endpoint.AccessDenied` (a retired model: use its replacement). Not retryable.
    NotFound,
    /// 413 (the gateway's 16 MiB body limit), `request_too_large`. Not retryable.
    PayloadTooLarge,
    /// 500 and other 5xx: `InternalError`, `InternalError.Algo` on a 5xx, `SystemError`,
    /// `ModelServiceFailed`, `api_error`, `internal_server_error`. Retryable. Some 500s are
    /// caused by the request (`list index out of range`, invalid tool-call JSON): their
    /// [advice](DashScopeError::advice) says so.
    ServerError,
    /// 503, capacity: `ModelUnavailable`, `ModelServingError` "throttled due to system capacity
    /// limits", `ServiceUnavailable`, `overloaded_error`. Retryable (or try another model).
    Unavailable,
    /// The call took too long: `RequestTimeOut` (the server's 300 s limit; stream instead),
    /// `InternalError.Timeout`, `ResponseTimeout`, `timeout_error`, 408, 504, `tower::timeout`
    /// and IO timeouts. Retryable.
    Timeout,
    /// The request may not have reached the server: refused, reset or aborted connections, DNS
    /// failures, `APIConnectionError`, and any transport error this crate does not recognise.
    /// Retryable.
    Connection,
    /// A response stream ended before it was complete, or its body failed while being read. The
    /// partial output was delivered and is billed. Not retryable as such.
    StreamInterrupted,
}

impl ErrorClass {
    /// Whether a later attempt of the same request can succeed: true for rate limits (every kind),
    /// server errors, unavailability, timeouts and connection errors.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited(_)
                | ErrorClass::ServerError
                | ErrorClass::Unavailable
                | ErrorClass::Timeout
                | ErrorClass::Connection
        )
    }

    /// The class of a failure known only by its HTTP status: the one status table of the crate.
    ///
    /// Every layer that reacts to failures uses it for an `Ok` response with a non-2xx status
    /// when no [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) sits below it, and the
    /// classifier falls back to it when a body says nothing it knows. A 2xx or 1xx status is not
    /// a failure and gives [`ErrorClass::ServerError`] (a server that claimed success but was
    /// taken to have failed).
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_dashscope::{ErrorClass, RateLimitKind};
    ///
    /// assert_eq!(ErrorClass::from_status(StatusCode::TOO_MANY_REQUESTS),
    ///            ErrorClass::RateLimited(RateLimitKind::Unspecified));
    /// assert_eq!(ErrorClass::from_status(StatusCode::SERVICE_UNAVAILABLE), ErrorClass::Unavailable);
    /// assert!(!ErrorClass::from_status(StatusCode::NOT_IMPLEMENTED).is_retryable());
    /// ```
    #[must_use]
    pub fn from_status(status: StatusCode) -> ErrorClass {
        use ErrorClass::*;
        match status.as_u16() {
            300..=399 => NotFound,
            401 => Authentication,
            402 => QuotaExhausted,
            403 => PermissionDenied,
            404 | 405 | 410 => NotFound,
            408 => Timeout,
            413 => PayloadTooLarge,
            429 => RateLimited(RateLimitKind::Unspecified),
            400..=499 => InvalidRequest,
            // Not Implemented / HTTP Version Not Supported: the server will never do it.
            501 | 505 => InvalidRequest,
            503 => Unavailable,
            504 => Timeout,
            _ => ServerError,
        }
    }

    /// A short, stable, lowercase name for logs and metrics labels, e.g. `rate_limited_tokens`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Authentication => "authentication",
            ErrorClass::PermissionDenied => "permission_denied",
            ErrorClass::QuotaExhausted => "quota_exhausted",
            ErrorClass::RateLimited(kind) => match kind {
                RateLimitKind::Requests => "rate_limited_requests",
                RateLimitKind::Tokens => "rate_limited_tokens",
                RateLimitKind::Burst => "rate_limited_burst",
                RateLimitKind::Concurrency => "rate_limited_concurrency",
                RateLimitKind::Local => "rate_limited_local",
                RateLimitKind::Unspecified => "rate_limited",
            },
            ErrorClass::InvalidRequest => "invalid_request",
            ErrorClass::ContextLengthExceeded => "context_length_exceeded",
            ErrorClass::ContentFiltered => "content_filtered",
            ErrorClass::NotFound => "not_found",
            ErrorClass::PayloadTooLarge => "payload_too_large",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connection => "connection",
            ErrorClass::StreamInterrupted => "stream_interrupted",
        }
    }

    /// What a caller can do about an error of this class, in a few words.
    #[must_use]
    pub fn advice(self) -> &'static str {
        match self {
            ErrorClass::Authentication => {
                "check that the API key belongs to this region and plan (Coding Plan `sk-sp-` keys \
                 work only on the Coding Plan hosts)"
            }
            ErrorClass::PermissionDenied => {
                "check that the account or workspace has access to this model"
            }
            ErrorClass::QuotaExhausted => {
                "the free quota, subscription or balance is used up: top up, buy the model, or \
                 wait for the quota to reset"
            }
            ErrorClass::RateLimited(RateLimitKind::Burst) => {
                "back off and ramp traffic up more smoothly; X-DashScope-Wait-Timeout lets the \
                 server queue instead"
            }
            ErrorClass::RateLimited(RateLimitKind::Tokens) => {
                "back off and retry; send fewer tokens per minute to this model"
            }
            ErrorClass::RateLimited(_) => "back off and retry; send fewer requests to this model",
            ErrorClass::InvalidRequest => "fix the request parameters; retrying will not help",
            ErrorClass::ContextLengthExceeded => {
                "shorten the input or use a model with a longer context window"
            }
            ErrorClass::ContentFiltered => {
                "moderation blocked the input or output; retrying the same input will not help"
            }
            ErrorClass::NotFound => "check the model name and the base URL",
            ErrorClass::PayloadTooLarge => "the request body is too large; send less",
            ErrorClass::ServerError => "a server-side failure: retry with backoff",
            ErrorClass::Unavailable => {
                "the model is overloaded or offline: retry later or use another model"
            }
            ErrorClass::Timeout => "retry; for long generations use streaming",
            ErrorClass::Connection => "check the network and the base URL, then retry",
            ErrorClass::StreamInterrupted => {
                "the stream ended early; the partial output is billed, resend if you need it whole"
            }
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorClass::Authentication => f.write_str("authentication failed"),
            ErrorClass::PermissionDenied => f.write_str("permission denied"),
            ErrorClass::QuotaExhausted => f.write_str("quota exhausted"),
            ErrorClass::RateLimited(RateLimitKind::Unspecified) => f.write_str("rate limited"),
            ErrorClass::RateLimited(kind) => write!(f, "rate limited ({kind})"),
            ErrorClass::InvalidRequest => f.write_str("invalid request"),
            ErrorClass::ContextLengthExceeded => f.write_str("context length exceeded"),
            ErrorClass::ContentFiltered => f.write_str("content filtered"),
            ErrorClass::NotFound => f.write_str("not found"),
            ErrorClass::PayloadTooLarge => f.write_str("payload too large"),
            ErrorClass::ServerError => f.write_str("server error"),
            ErrorClass::Unavailable => f.write_str("service unavailable"),
            ErrorClass::Timeout => f.write_str("timed out"),
            ErrorClass::Connection => f.write_str("connection failed"),
            ErrorClass::StreamInterrupted => f.write_str("stream interrupted"),
        }
    }
}

/// A classified failure of a call to DashScope or a compatible endpoint.
///
/// It carries what a caller needs to decide: the [`ErrorClass`], the real HTTP status (for an
/// error inside an event stream, the `:HTTP_STATUS/NNN` value, not the `200` of the status
/// line), DashScope's code, the message with its `<NNN> Code: ` prefix stripped, the request id,
/// a server-requested retry delay, and for transport failures the underlying error as
/// [`source`](StdError::source). For quota and limit errors it also says who shares the quota
/// ([`quota_scope`](Self::quota_scope): one model, the plan, the account) and when it comes back
/// ([`quota_reset`](Self::quota_reset)); [`advice`](Self::advice) says what to do.
///
/// It is one pointer wide, so `Result<Response, DashScopeError>` stays small, and cheap to clone.
///
/// Converting any service error into it (`DashScopeError::from(BoxError)`) passes an existing `DashScopeError` through unchanged and classifies transport errors:
/// `tower::timeout::error::Elapsed`, `tokio::time::error::Elapsed` and IO timeouts anywhere in the
/// source chain are [`ErrorClass::Timeout`]; everything else (refused, reset, DNS, hyper errors,
/// unknown errors) is [`ErrorClass::Connection`] with the source kept. Transport errors also
/// say whether the request may have reached the server ([`delivery`](Self::delivery)).
#[derive(Clone)]
pub struct DashScopeError {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    class: ErrorClass,
    status: Option<StatusCode>,
    code: Option<Box<str>>,
    message: Option<Box<str>>,
    request_id: Option<Box<str>>,
    retry_after: Option<Duration>,
    attempts: Option<u32>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
    quota_scope: Option<QuotaScope>,
    quota_reset: Option<QuotaReset>,
    /// Advice for this error in particular, instead of its class's.
    advice: Option<Cow<'static, str>>,
    /// For failures without an answer: whether the request may have reached the server.
    delivery: Option<Delivery>,
}

/// Whether a request that failed without an answer may have reached the server: what decides
/// if it is safe to send it again somewhere else.
///
/// Set on transport failures ([`DashScopeError::delivery`]) when the error is converted
/// (`DashScopeError::from(BoxError)`), and on errors a layer raises on this side of the network
/// (those are [`NotSent`](Delivery::NotSent)). A chat completion that reached the server may be
/// generated and billed even though its answer was lost, so only a `NotSent` failure is
/// always safe to resend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// The request never left this machine, or never reached a server that could act on it: DNS
    /// failed, the connection was refused or unreachable, the TLS handshake failed, a pooled
    /// connection closed before the request was written (hyper's `is_canceled`), or a layer
    /// refused it locally. Safe to resend at once, to this endpoint or another.
    NotSent,
    /// The request may have been written, in part or whole, before the failure: the connection
    /// was reset or closed after the request was sent (hyper's `is_incomplete_message`), a
    /// timeout fired while the call was under way, or the error is not one this crate can
    /// place. The server may be generating (and billing) the answer.
    MaybeSent,
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delivery::NotSent => "not sent",
            Delivery::MaybeSent => "maybe sent",
        })
    }
}

impl DashScopeError {
    /// An error of `class` with nothing else known. Add details with the `with_*` methods; this
    /// is how test doubles and custom layers make errors that look like the classifier's.
    #[must_use]
    pub fn new(class: ErrorClass) -> Self {
        DashScopeError {
            inner: Box::new(Inner {
                class,
                status: None,
                code: None,
                message: None,
                request_id: None,
                retry_after: None,
                attempts: None,
                source: None,
                quota_scope: None,
                quota_reset: None,
                advice: None,
                delivery: None,
            }),
        }
    }

    /// Sets the HTTP status the error carries.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.inner.status = Some(status);
        self
    }

    /// Sets DashScope's error code, e.g. `Throttling.RateQuota`.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.inner.code = Some(code.into().into_boxed_str());
        self
    }

    /// Sets the human-readable message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.inner.message = Some(message.into().into_boxed_str());
        self
    }

    /// Sets the request id that DashScope's support asks for.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.inner.request_id = Some(request_id.into().into_boxed_str());
        self
    }

    /// Sets how long the server asked the client to wait before retrying.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.inner.retry_after = Some(retry_after);
        self
    }

    /// Sets how many attempts were made before giving up (set by a retrying layer).
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.inner.attempts = Some(attempts);
        self
    }

    /// Sets the underlying error, returned by [`source`](StdError::source).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(Arc::from(source.into()));
        self
    }

    /// Sets who shares the exhausted quota or limit; see [`quota_scope`](Self::quota_scope).
    #[must_use]
    pub fn with_quota_scope(mut self, scope: QuotaScope) -> Self {
        self.inner.quota_scope = Some(scope);
        self
    }

    /// Sets when the exhausted quota comes back; see [`quota_reset`](Self::quota_reset). This
    /// does not set [`retry_after`](Self::retry_after).
    #[must_use]
    pub fn with_quota_reset(mut self, reset: QuotaReset) -> Self {
        self.inner.quota_reset = Some(reset);
        self
    }

    /// Sets what to do about this error in particular, replacing its class's
    /// [`advice`](ErrorClass::advice) in [`advice`](Self::advice) and `Display`.
    #[must_use]
    pub fn with_advice(mut self, advice: impl Into<Cow<'static, str>>) -> Self {
        self.inner.advice = Some(advice.into());
        self
    }

    /// Sets whether the request may have reached the server; see [`delivery`](Self::delivery).
    #[must_use]
    pub fn with_delivery(mut self, delivery: Delivery) -> Self {
        self.inner.delivery = Some(delivery);
        self
    }

    /// For a failure without an answer from the server: whether the request may have reached
    /// it ([`Delivery`]). `None` when the server answered (the request was delivered) or nothing
    /// is known.
    ///
    /// Transport errors are placed when they are converted, by walking their source chain:
    ///
    /// - hyper-util's legacy client error with `is_connect()` (DNS, refused, unreachable, TLS
    ///   handshake, connect timeout): [`NotSent`](Delivery::NotSent). By type with the feature
    ///   `hyper-client`, else by its `client error (Connect)` text.
    /// - hyper's `is_canceled()` (the request was handed back unwritten, e.g. a pooled
    ///   connection closed first): `NotSent`; `is_incomplete_message()` and other hyper errors
    ///   after sending: [`MaybeSent`](Delivery::MaybeSent). (Type checks need hyper: the
    ///   features `mock` or `hyper-client`.)
    /// - IO errors: `ConnectionRefused`, `AddrNotAvailable`, `HostUnreachable`,
    ///   `NetworkUnreachable`, `NetworkDown`: `NotSent`; `ConnectionReset`,
    ///   `ConnectionAborted`, `BrokenPipe`, `UnexpectedEof`, `TimedOut`: `MaybeSent`.
    /// - timeouts (`tower::timeout`, `tokio::time`) and anything else: `MaybeSent`.
    ///
    /// ```
    /// use std::io;
    /// use tower_dashscope::{DashScopeError, Delivery};
    ///
    /// let refused = DashScopeError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
    /// assert_eq!(refused.delivery(), Some(Delivery::NotSent));
    /// let reset = DashScopeError::from(io::Error::from(io::ErrorKind::ConnectionReset));
    /// assert_eq!(reset.delivery(), Some(Delivery::MaybeSent));
    /// ```
    #[must_use]
    pub fn delivery(&self) -> Option<Delivery> {
        self.inner.delivery
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        self.inner.class
    }

    /// The real HTTP status: for an error inside an event stream, the `:HTTP_STATUS/NNN` value.
    /// `None` for transport failures and for errors raised on this side of the network.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// DashScope's error code (`Throttling.RateQuota`, `invalid_parameter_error`, …), if the
    /// server sent one. For the OpenAI-compatible shape this is `error.code`, or `error.type`
    /// when the code is missing.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.inner.code.as_deref()
    }

    /// The server's message, with DashScope's `<NNN> Code.Name: ` prefix stripped.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The request id: the body's `request_id`, else the `x-request-id` response header.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        self.inner.request_id.as_deref()
    }

    /// How long the server (or a gateway in front of it) asked the client to wait, from
    /// `retry-after-ms` or `Retry-After` (see [`parse_retry_after`](crate::parse_retry_after)).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Who shares the limit or quota this error reports: `Some(Model)` when another model may
    /// answer, `Some(Plan)` or `Some(Account)` when every model behind the same key fails the
    /// same way (a model fallback should skip them), `None` when unknown or not a quota or
    /// limit error.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tower_dashscope::{classify::classify_response, ErrorClass, QuotaScope};
    ///
    /// let body = br#"{"code":"throttling","message":"usage allocated quota exceeded. please try again later."}"#;
    /// let err = classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
    /// assert_eq!(err.class(), ErrorClass::QuotaExhausted);
    /// assert_eq!(err.quota_scope(), Some(QuotaScope::Plan));
    /// ```
    #[must_use]
    pub fn quota_scope(&self) -> Option<QuotaScope> {
        self.inner.quota_scope
    }

    /// Whether a different model behind the same key cannot help: the limit or quota is shared
    /// by the whole plan or account (see [`quota_scope`](Self::quota_scope)).
    #[must_use]
    pub fn is_plan_wide(&self) -> bool {
        matches!(
            self.inner.quota_scope,
            Some(QuotaScope::Plan | QuotaScope::Account)
        )
    }

    /// When an exhausted quota comes back, if known; see [`QuotaReset`].
    ///
    /// The classifier sets it for a Token Plan's "The quota will reset at MM-DD hh:mm:ss UTC"
    /// (exact, and [`retry_after`](Self::retry_after) is set to the time until then), a Coding
    /// Plan's `week` window (exact: Monday 00:00 UTC+8; `retry_after` set too), and a Coding
    /// Plan's `usage` and `hour` windows (an estimate, one hour after the error; `retry_after`
    /// is *not* set, so nothing waits on a guess). A `month` window resets on the
    /// subscription day, which the response does not say: `None`.
    #[must_use]
    pub fn quota_reset(&self) -> Option<QuotaReset> {
        self.inner.quota_reset
    }

    /// Shorthand for `quota_reset().map(QuotaReset::at)`: when the quota is (expected to be)
    /// back.
    #[must_use]
    pub fn quota_resets_at(&self) -> Option<SystemTime> {
        self.inner.quota_reset.map(QuotaReset::at)
    }

    /// What to do about this error: advice particular to it when the classifier knows some
    /// (e.g. send a `User-Agent` to Coding Plan, switch a retired model to its replacement, set
    /// `X-DashScope-Async`), else its class's [`advice`](ErrorClass::advice).
    #[must_use]
    pub fn advice(&self) -> &str {
        self.inner
            .advice
            .as_deref()
            .unwrap_or_else(|| self.inner.class.advice())
    }

    /// How many attempts a retrying layer made before returning this error; `None` when no
    /// retrying layer was involved.
    #[must_use]
    pub fn attempts(&self) -> Option<u32> {
        self.inner.attempts
    }

    /// Whether a later attempt of the same request can succeed; see
    /// [`ErrorClass::is_retryable`].
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.inner.class.is_retryable()
    }

    /// Classifies a transport error that is not a `DashScopeError` already.
    fn from_transport(err: BoxError) -> Self {
        let class = if is_timeout(&*err) {
            ErrorClass::Timeout
        } else {
            ErrorClass::Connection
        };
        let delivery = delivery_of(&*err);
        DashScopeError::new(class)
            .with_delivery(delivery)
            .with_source(err)
    }

    /// Classifies an error met while reading a successful response's body: the output stopped
    /// part-way, so anything but a timeout is [`ErrorClass::StreamInterrupted`].
    pub(crate) fn from_body_error(err: BoxError) -> Self {
        match err.downcast::<DashScopeError>() {
            Ok(err) => *err,
            Err(err) if is_timeout(&*err) => {
                DashScopeError::new(ErrorClass::Timeout).with_source(err)
            }
            Err(err) => DashScopeError::new(ErrorClass::StreamInterrupted).with_source(err),
        }
    }
}

/// Whether a transport error may have reached the server, from the first error in its source
/// chain that says (see [`DashScopeError::delivery`]).
fn delivery_of(err: &(dyn StdError + 'static)) -> Delivery {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(delivery) = delivery_of_one(err) {
            return delivery;
        }
        next = err.source();
    }
    Delivery::MaybeSent
}

/// What one error of a chain says about delivery, if anything.
fn delivery_of_one(err: &(dyn StdError + 'static)) -> Option<Delivery> {
    if let Some(ds) = err.downcast_ref::<DashScopeError>() {
        return Some(ds.delivery().unwrap_or(Delivery::MaybeSent));
    }
    if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
        return Some(Delivery::MaybeSent);
    }
    #[cfg(feature = "hyper-client")]
    if let Some(client) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
        if client.is_connect() {
            return Some(Delivery::NotSent);
        }
        // `Canceled` and `SendRequest` carry hyper's error as their source: it decides.
        return None;
    }
    #[cfg(any(feature = "mock", feature = "hyper-client"))]
    if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
        // hyper hands a request back as canceled only when it was never written.
        return Some(if hyper.is_canceled() {
            Delivery::NotSent
        } else {
            Delivery::MaybeSent
        });
    }
    if let Some(io) = err.downcast_ref::<io::Error>() {
        use io::ErrorKind::*;
        return match io.kind() {
            ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            | NetworkDown => Some(Delivery::NotSent),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut => {
                Some(Delivery::MaybeSent)
            }
            // An IO error that does not say (a DNS failure is often `Other`): the errors
            // around it may.
            _ => None,
        };
    }
    // hyper-util's legacy client error, recognised without depending on its client: its
    // `Display` is `client error (<kind>)`.
    let text = err.to_string();
    if text == "client error (Connect)" {
        return Some(Delivery::NotSent);
    }
    None
}

/// Whether a timeout appears anywhere in `err`'s source chain.
fn is_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return true;
            }
        }
        if let Some(ds) = err.downcast_ref::<DashScopeError>() {
            return ds.class() == ErrorClass::Timeout;
        }
        next = err.source();
    }
    false
}

impl From<BoxError> for DashScopeError {
    /// Passes a boxed `DashScopeError` through unchanged; classifies anything else as a transport
    /// error (see the type's docs).
    fn from(err: BoxError) -> Self {
        match err.downcast::<DashScopeError>() {
            Ok(err) => *err,
            Err(err) => DashScopeError::from_transport(err),
        }
    }
}

impl From<io::Error> for DashScopeError {
    fn from(err: io::Error) -> Self {
        DashScopeError::from(BoxError::from(err))
    }
}

impl From<tower::timeout::error::Elapsed> for DashScopeError {
    fn from(err: tower::timeout::error::Elapsed) -> Self {
        DashScopeError::new(ErrorClass::Timeout).with_source(err)
    }
}

impl From<ErrorClass> for DashScopeError {
    fn from(class: ErrorClass) -> Self {
        DashScopeError::new(class)
    }
}

/// Converts an inner service's error into the crate's error currency.
pub(crate) fn into_dashscope_error<E: Into<BoxError>>(err: E) -> DashScopeError {
    DashScopeError::from(err.into())
}

impl fmt::Debug for DashScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("DashScopeError");
        d.field("class", &inner.class);
        if let Some(status) = inner.status {
            d.field("status", &status.as_u16());
        }
        if let Some(code) = &inner.code {
            d.field("code", code);
        }
        if let Some(message) = &inner.message {
            d.field("message", message);
        }
        if let Some(request_id) = &inner.request_id {
            d.field("request_id", request_id);
        }
        if let Some(retry_after) = inner.retry_after {
            d.field("retry_after", &retry_after);
        }
        if let Some(attempts) = inner.attempts {
            d.field("attempts", &attempts);
        }
        if let Some(source) = &inner.source {
            d.field("source", source);
        }
        if let Some(scope) = inner.quota_scope {
            d.field("quota_scope", &scope);
        }
        if let Some(reset) = inner.quota_reset {
            d.field("quota_reset", &reset);
        }
        if let Some(advice) = &inner.advice {
            d.field("advice", advice);
        }
        if let Some(delivery) = inner.delivery {
            d.field("delivery", &delivery);
        }
        d.finish()
    }
}

impl fmt::Display for DashScopeError {
    /// One log line: class, status and code, message, request id, retry delay (or when the
    /// quota resets), what to do.
    ///
    /// `rate limited (tokens) [429 Throttling.AllocationQuota]: Allocated quota exceeded, please
    /// increase your quota limit. (request id 70acdc21-…); back off and retry; send fewer tokens
    /// per minute to this model`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        write!(f, "{}", inner.class)?;
        match (inner.status, inner.code.as_deref()) {
            (Some(status), Some(code)) => write!(f, " [{} {code}]", status.as_u16())?,
            (Some(status), None) => write!(f, " [{}]", status.as_u16())?,
            (None, Some(code)) => write!(f, " [{code}]")?,
            (None, None) => {}
        }
        // The source is not printed: `source()` returns it, and error reporters (anyhow, eyre,
        // tracing's error chains) print the chain themselves.
        if let Some(message) = &inner.message {
            write!(f, ": {message}")?;
        }
        if let Some(request_id) = &inner.request_id {
            write!(f, " (request id {request_id})")?;
        }
        match (inner.quota_reset, inner.retry_after) {
            (Some(reset), _) => {
                let at = HttpTime(reset.at);
                if reset.is_estimate() {
                    write!(f, "; quota expected back around {at} (estimate)")?;
                } else {
                    write!(f, "; quota resets at {at}")?;
                }
            }
            (None, Some(retry_after)) => write!(
                f,
                "; server asks to retry after {:.3}s",
                retry_after.as_secs_f64()
            )?,
            (None, None) => {}
        }
        if let Some(attempts) = inner.attempts {
            let plural = if attempts == 1 { "" } else { "s" };
            write!(f, "; after {attempts} attempt{plural}")?;
        }
        write!(f, "; {}", self.advice())
    }
}

/// A wall-clock time as an HTTP-date, or as seconds from the Unix epoch where an HTTP-date
/// cannot say it (before 1970, after 9999: `httpdate` panics on those).
struct HttpTime(SystemTime);

impl fmt::Display for HttpTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const YEAR_10000: u64 = 253_402_300_800;
        match self.0.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(since) if since.as_secs() < YEAR_10000 => {
                f.write_str(&httpdate::fmt_http_date(self.0))
            }
            Ok(since) => write!(f, "{}s after the Unix epoch", since.as_secs()),
            Err(before) => write!(f, "{}s before the Unix epoch", before.duration().as_secs()),
        }
    }
}

impl StdError for DashScopeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_small_send_sync() {
        assert_send_sync::<DashScopeError>();
        assert_eq!(
            std::mem::size_of::<DashScopeError>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn boxed_dashscope_error_passes_through_unchanged() {
        let original = DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Burst))
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .with_code("Throttling.BurstRate")
            .with_request_id("r-1");
        let boxed: BoxError = Box::new(original);
        let back = DashScopeError::from(boxed);
        assert_eq!(back.class(), ErrorClass::RateLimited(RateLimitKind::Burst));
        assert_eq!(back.code(), Some("Throttling.BurstRate"));
        assert_eq!(back.request_id(), Some("r-1"));
        assert!(back.source().is_none());
    }

    #[test]
    fn io_errors_are_connection_or_timeout() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::NotFound,
            io::ErrorKind::Other,
        ] {
            let err = DashScopeError::from(io::Error::new(kind, "boom"));
            assert_eq!(err.class(), ErrorClass::Connection, "{kind:?}");
            assert!(err.is_retryable());
            assert_eq!(err.source().unwrap().to_string(), "boom");
        }
        let err = DashScopeError::from(io::Error::new(io::ErrorKind::TimedOut, "slow"));
        assert_eq!(err.class(), ErrorClass::Timeout);
    }

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn timeouts_are_found_deep_in_the_source_chain() {
        let err = Wrapper(io::Error::new(io::ErrorKind::TimedOut, "connect timeout"));
        let err = DashScopeError::from(BoxError::from(err));
        assert_eq!(err.class(), ErrorClass::Timeout);

        let err = Wrapper(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        let err = DashScopeError::from(BoxError::from(err));
        assert_eq!(err.class(), ErrorClass::Connection);
        assert_eq!(err.source().unwrap().to_string(), "client error (Connect)");
    }

    #[test]
    fn tower_timeout_elapsed_is_timeout() {
        let err: BoxError = tower::timeout::error::Elapsed::new().into();
        assert_eq!(DashScopeError::from(err).class(), ErrorClass::Timeout);
    }

    #[test]
    fn unknown_errors_are_connection_with_source() {
        let err: BoxError = "something odd".into();
        let err = DashScopeError::from(err);
        assert_eq!(err.class(), ErrorClass::Connection);
        assert_eq!(err.source().unwrap().to_string(), "something odd");
        // The cause is `source()`'s to report, not `Display`'s: a reporter that prints the
        // chain (anyhow's `{:#}`) shows it once.
        let display = err.to_string();
        assert!(display.starts_with("connection failed; "), "{display}");
        assert!(!display.contains("something odd"), "{display}");
        let mut chain = vec![display];
        let mut next = err.source();
        while let Some(cause) = next {
            chain.push(cause.to_string());
            next = cause.source();
        }
        assert_eq!(chain.join(": ").matches("something odd").count(), 1);
    }

    #[test]
    fn retryable_classes() {
        use ErrorClass::*;
        let retryable = [
            RateLimited(RateLimitKind::Requests),
            RateLimited(RateLimitKind::Tokens),
            RateLimited(RateLimitKind::Burst),
            RateLimited(RateLimitKind::Concurrency),
            RateLimited(RateLimitKind::Local),
            RateLimited(RateLimitKind::Unspecified),
            ServerError,
            Unavailable,
            Timeout,
            Connection,
        ];
        let fatal = [
            Authentication,
            PermissionDenied,
            QuotaExhausted,
            InvalidRequest,
            ContextLengthExceeded,
            ContentFiltered,
            NotFound,
            PayloadTooLarge,
            StreamInterrupted,
        ];
        for class in retryable {
            assert!(class.is_retryable(), "{class:?}");
            assert!(DashScopeError::new(class).is_retryable(), "{class:?}");
        }
        for class in fatal {
            assert!(!class.is_retryable(), "{class:?}");
        }
    }

    #[test]
    fn display_reads_as_one_log_line() {
        let err = DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Tokens))
            .with_status(StatusCode::TOO_MANY_REQUESTS)
            .with_code("Throttling.AllocationQuota")
            .with_message("Allocated quota exceeded, please increase your quota limit.")
            .with_request_id("70acdc21")
            .with_retry_after(Duration::from_millis(1500));
        assert_eq!(
            err.to_string(),
            "rate limited (tokens) [429 Throttling.AllocationQuota]: Allocated quota exceeded, \
             please increase your quota limit. (request id 70acdc21); server asks to retry after \
             1.500s; back off and retry; send fewer tokens per minute to this model"
        );
        assert!(!err.to_string().contains('\n'));
    }
}
