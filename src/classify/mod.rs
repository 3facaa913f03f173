//! Turn every failure into one typed [`DashScopeError`].
//!
//! [`ClassifyDashScopeError`] sits innermost, right above the HTTP client, so that every layer
//! above it sees typed errors:
//!
//! - a non-2xx response becomes `Err(DashScopeError)`: the body is read up to a bound (64 KiB by
//!   default; a 100 MiB error body costs at most the bound) and for at most
//!   [`error_body_timeout`](ClassifyDashScopeError::error_body_timeout) (10 s by default; a body
//!   that stalls is classified from the status and the bytes that had arrived), parsed in any of
//!   DashScope's four shapes — native, OpenAI-compatible, Anthropic-compatible, SSE-framed — and
//!   classified by status, code and message ([`classify_response`] is the function that does
//!   it);
//! - a transport error from the client becomes `Err(DashScopeError)` of class
//!   [`Timeout`](crate::ErrorClass::Timeout) or [`Connection`](crate::ErrorClass::Connection),
//!   the original kept as its `source()`;
//! - a 2xx response passes through: its body is wrapped in [`ResponseBody`], whose errors are
//!   `DashScopeError`s too. A response that is not an event stream is handed out at once, with
//!   no copy and no allocation.
//!
//! # Event streams
//!
//! DashScope reports throttling and failures *inside* successful-looking streams. A 2xx response
//! whose `content-type` is `text/event-stream` is scanned as it is read, split across chunks at
//! any byte, `\n` or `\r\n`, comments and multi-line `data:` included, one leading UTF-8
//! byte-order mark skipped. So is a 2xx answer to a request that asked to stream
//! (`X-DashScope-SSE: enable` or `Accept: text/event-stream`) whatever its `content-type`,
//! unless its first non-blank byte is `{` or `[` (JSON) or it has none: then it passes through
//! untouched. A response without a body (`204`, `205`, or a body that says it is empty) is
//! never scanned.
//!
//! - **An error before the first event is the call's `Err`.** The future holds the response
//!   until the first complete event has arrived (at most
//!   [`first_event_limit`](ClassifyDashScopeError::first_event_limit) bytes, 64 KiB, and at
//!   most [`FIRST_EVENT_FRAME_LIMIT`] frames, empty ones included). If it is an error — native
//!   `event:error` with `:HTTP_STATUS/429` on an HTTP 200, a compatible `data: {"error":…}`, a
//!   Responses-API `error` or `response.failed` — the call fails with the real status, code,
//!   message and request id, so retry and fallback layers above can act on a streaming 429.
//!   An event that opens an error object (`{"error":`) but is not valid JSON — cut short, or
//!   nested past the parser's limit — is an error too (a
//!   [`ServerError`](crate::ErrorClass::ServerError) whose advice says so), never output.
//!   Otherwise the response is handed out and the bytes read so far are replayed first.
//! - **An error after the first event** ends the body with `Err(DashScopeError)`, after every
//!   byte up to the end of the error event has been yielded.
//! - **A truncated stream** ends with
//!   [`ErrorClass::StreamInterrupted`](crate::ErrorClass::StreamInterrupted). Which streams are
//!   truncated depends on the API their events show: a chat stream (native, OpenAI-compatible
//!   chat completions, Anthropic messages) that ends without a final `finish_reason` (the
//!   native string `"null"` is not final), `data: [DONE]` or `message_stop`; an OpenAI
//!   Responses-API stream that ends without `response.completed` or `response.incomplete`; a
//!   response declared `text/event-stream` that ends without a single event. A stream of any
//!   other API has no end that can be checked, and passes when it ends cleanly.
//!   [Configurable](ClassifyDashScopeError::detect_truncation).
//! - **Idle streams** can be failed with [`ErrorClass::Timeout`](crate::ErrorClass::Timeout)
//!   ([`idle_timeout`](ClassifyDashScopeError::idle_timeout), off by default).
//! - **Fairness**: however many frames a body has ready, the response future reads a few dozen
//!   per poll and then yields to the executor, so one response cannot monopolise its thread.
//! - **Usage**: with a [`UsageSlot`] in the request's extensions, the last `usage` the response
//!   reports (streamed or not, either API shape) is recorded in it.
//!
//! The bytes the caller reads are exactly the bytes the server sent, in the same chunks. The
//! scanner allocates nothing per chunk once warm and parses JSON only for events that look like
//! errors (or carry usage, when a slot asks for it), keeping only the keys an error is read
//! from: an error event or body costs about its own size, whatever it holds.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, ClassifyDashScopeError, ErrorClass, RateLimitKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any HTTP client service: here, one that always answers like a throttled DashScope.
//! let client = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later.","request_id":"7b2c1e4a"}"#;
//!     Ok::<_, BoxError>(
//!         Response::builder()
//!             .status(StatusCode::TOO_MANY_REQUESTS)
//!             .body(Full::new(Bytes::from(body)))
//!             .unwrap(),
//!     )
//! });
//!
//! let service = ServiceBuilder::new()
//!     .layer(ClassifyDashScopeError::new())
//!     .service(client);
//!
//! let err = service.oneshot(Request::new(Full::default())).await.unwrap_err();
//! assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Requests));
//! assert_eq!(err.code(), Some("Throttling.RateQuota"));
//! assert_eq!(err.request_id(), Some("7b2c1e4a"));
//! assert!(err.is_retryable());
//! # }
//! ```
//!
//! Customised: read at most 4 KiB of an error body.
//!
//! ```
//! use tower_dashscope::ClassifyDashScopeError;
//!
//! let layer = ClassifyDashScopeError::new().error_body_limit(4 * 1024);
//! # let _ = layer;
//! ```

mod body;
pub mod future;
mod rules;
mod shapes;
mod sse;
mod stream;
mod usage;

use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower::{Layer, Service};

pub use self::body::ResponseBody;
use self::future::ResponseFuture;
pub use self::rules::{classify_response, classify_response_at};
pub use self::usage::{Usage, UsageSlot};
use crate::error::{BoxError, DashScopeError, into_dashscope_error};

/// How many bytes of an error body are read by default: 64 KiB.
pub const DEFAULT_ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How many bytes of an event stream are held, by default, while waiting for its first event:
/// 64 KiB.
pub const DEFAULT_FIRST_EVENT_LIMIT: usize = 64 * 1024;

/// The largest stream event (or line) inspected by default: 1 MiB. Larger events pass through
/// uninspected.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1024 * 1024;

/// How long an error body is read, by default, before the error is classified from what has
/// arrived: 10 s.
pub const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many frames of an event stream (empty ones included) are read at most while waiting for
/// its first event: 1024. Past this, the response is handed out as with
/// [`first_event_limit`](ClassifyDashScopeError::first_event_limit).
pub const FIRST_EVENT_FRAME_LIMIT: usize = 1024;

/// Layer that turns every failure into a typed [`DashScopeError`]; see the [module
/// docs](self).
///
/// # Default
///
/// - error bodies are read up to [`DEFAULT_ERROR_BODY_LIMIT`] (64 KiB), for at most
///   [`DEFAULT_ERROR_BODY_TIMEOUT`] (10 s);
/// - at most [`DEFAULT_FIRST_EVENT_LIMIT`] (64 KiB) of a stream is held back waiting for its
///   first event;
/// - stream events up to [`DEFAULT_MAX_EVENT_SIZE`] (1 MiB) are inspected;
/// - truncated streams are reported ([`detect_truncation`](Self::detect_truncation));
/// - no idle timeout between chunks.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClassifyDashScopeError {
    config: Config,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) error_body_limit: usize,
    pub(crate) first_event_limit: usize,
    pub(crate) max_event_size: usize,
    pub(crate) detect_truncation: bool,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) error_body_timeout: Option<Duration>,
}

impl Config {
    const DEFAULT: Config = Config {
        error_body_limit: DEFAULT_ERROR_BODY_LIMIT,
        first_event_limit: DEFAULT_FIRST_EVENT_LIMIT,
        max_event_size: DEFAULT_MAX_EVENT_SIZE,
        detect_truncation: true,
        idle_timeout: None,
        error_body_timeout: Some(DEFAULT_ERROR_BODY_TIMEOUT),
    };
}

impl ClassifyDashScopeError {
    /// The layer with its defaults.
    pub const fn new() -> Self {
        ClassifyDashScopeError {
            config: Config::DEFAULT,
        }
    }

    /// How many bytes of a non-2xx body to read before classifying. The rest of the body is
    /// never polled. `0` classifies from the status and headers alone.
    pub const fn error_body_limit(mut self, bytes: usize) -> Self {
        self.config.error_body_limit = bytes;
        self
    }

    /// How many bytes of an event stream to hold back while waiting for its first complete
    /// event. Past this, the response is handed out and an error event that comes later
    /// arrives through the body instead of as the call's `Err`.
    pub const fn first_event_limit(mut self, bytes: usize) -> Self {
        self.config.first_event_limit = bytes;
        self
    }

    /// The largest stream line or event that is inspected. Larger events pass through
    /// untouched and uninspected (and a stream with one is never reported as truncated, since
    /// its end could not be checked). Memory held per stream is bounded by about twice this.
    pub const fn max_event_size(mut self, bytes: usize) -> Self {
        self.config.max_event_size = bytes;
        self
    }

    /// Whether an event stream that ends without its terminal event yields
    /// [`ErrorClass::StreamInterrupted`](crate::ErrorClass::StreamInterrupted) at its end. On
    /// by default.
    ///
    /// The terminal event depends on the API the stream's events show: a chat stream ends with
    /// a final `finish_reason` (native: anything but the string `"null"`), `data: [DONE]`
    /// (OpenAI-compatible) or `message_stop` (Anthropic); a Responses-API stream with
    /// `response.completed` or `response.incomplete`. A `text/event-stream` response without a
    /// single event is truncated too; a stream of any other API is not checked.
    pub const fn detect_truncation(mut self, detect: bool) -> Self {
        self.config.detect_truncation = detect;
        self
    }

    /// Fails a stream with [`ErrorClass::Timeout`](crate::ErrorClass::Timeout) when no chunk
    /// arrives for `timeout` (also while waiting for the first chunk). Off by default. With
    /// `X-DashScope-Wait-Timeout`, make it longer than the wait.
    ///
    /// It also bounds the wait between two chunks of an error body (see
    /// [`error_body_timeout`](Self::error_body_timeout)). A timeout too long to be added to the
    /// current instant (such as `Duration::MAX`) never fires.
    pub const fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// How long to read a non-2xx body before classifying the error from the status and the
    /// bytes that have arrived: a server that sends its headers and then stalls cannot hold
    /// the call (and every retry above it) forever. [`DEFAULT_ERROR_BODY_TIMEOUT`] (10 s) by
    /// default; `Duration::MAX` turns it off. The error keeps its class (a `429` is still rate
    /// limited, and retryable); its `source()` says the body was cut short.
    ///
    /// The timer is made only if the body makes the call wait, so it needs a Tokio runtime
    /// with time enabled only then.
    pub const fn error_body_timeout(mut self, timeout: Duration) -> Self {
        self.config.error_body_timeout = Some(timeout);
        self
    }
}

impl Default for ClassifyDashScopeError {
    fn default() -> Self {
        ClassifyDashScopeError::new()
    }
}

impl<S> Layer<S> for ClassifyDashScopeError {
    type Service = ClassifyDashScopeErrorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClassifyDashScopeErrorService {
            inner,
            config: self.config,
        }
    }
}

/// Service that turns every failure of `S` into a typed [`DashScopeError`]; made by
/// [`ClassifyDashScopeError`], see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ClassifyDashScopeErrorService<S> {
    inner: S,
    config: Config,
}

impl<S> ClassifyDashScopeErrorService<S> {
    /// Wraps `inner` with the default configuration.
    pub const fn new(inner: S) -> Self {
        ClassifyDashScopeErrorService {
            inner,
            config: Config::DEFAULT,
        }
    }

    /// The layer with the default configuration; shorthand for [`ClassifyDashScopeError::new`].
    pub const fn layer() -> ClassifyDashScopeError {
        ClassifyDashScopeError::new()
    }

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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClassifyDashScopeErrorService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = DashScopeError;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(into_dashscope_error)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let wants_stream = asks_for_stream(req.headers());
        let slot = req.extensions().get::<UsageSlot>().cloned();
        ResponseFuture::new(self.inner.call(req), self.config, wants_stream, slot)
    }
}

/// Whether the request asked for a stream: `X-DashScope-SSE: enable` or
/// `Accept: text/event-stream`.
pub(crate) fn asks_for_stream(headers: &HeaderMap) -> bool {
    let sse = headers
        .get(crate::headers::X_DASHSCOPE_SSE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enable"));
    sse || headers.get_all(http::header::ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
    })
}
