//! Turn every failure into one typed [`DashScopeError`].
//!
//! [`ClassifyDashScopeError`] sits innermost, right above the HTTP client, so that every layer
//! above it sees typed errors:
//!
//! - a non-2xx response becomes `Err(DashScopeError)`: the body is read up to a bound (64 KiB by
//!   default; a 100 MiB error body costs at most the bound), parsed in any of DashScope's four
//!   shapes — native, OpenAI-compatible, Anthropic-compatible, SSE-framed — and classified by
//!   status, code and message ([`classify_response`] is the function that does it);
//! - a transport error from the client becomes `Err(DashScopeError)` of class
//!   [`Timeout`](crate::ErrorClass::Timeout) or [`Connection`](crate::ErrorClass::Connection),
//!   the original kept as its `source()`;
//! - a 2xx response passes through untouched: no copy, no allocation; its body is wrapped in
//!   [`ResponseBody`], whose errors are `DashScopeError`s too.
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
mod parse;

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service};

pub use self::body::ResponseBody;
use self::future::ResponseFuture;
pub use self::parse::classify_response;
use crate::error::{BoxError, DashScopeError, into_dashscope_error};

/// How many bytes of an error body are read by default: 64 KiB.
pub const DEFAULT_ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Layer that turns every failure into a typed [`DashScopeError`]; see the [module
/// docs](self).
///
/// # Default
///
/// - error bodies are read up to [`DEFAULT_ERROR_BODY_LIMIT`] (64 KiB).
#[derive(Debug, Clone)]
#[must_use]
pub struct ClassifyDashScopeError {
    error_body_limit: usize,
}

impl ClassifyDashScopeError {
    /// The layer with its defaults.
    pub const fn new() -> Self {
        ClassifyDashScopeError {
            error_body_limit: DEFAULT_ERROR_BODY_LIMIT,
        }
    }

    /// How many bytes of a non-2xx body to read before classifying. The rest of the body is
    /// never polled. `0` classifies from the status and headers alone.
    pub const fn error_body_limit(mut self, bytes: usize) -> Self {
        self.error_body_limit = bytes;
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
            error_body_limit: self.error_body_limit,
        }
    }
}

/// Service that turns every failure of `S` into a typed [`DashScopeError`]; made by
/// [`ClassifyDashScopeError`], see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ClassifyDashScopeErrorService<S> {
    inner: S,
    error_body_limit: usize,
}

impl<S> ClassifyDashScopeErrorService<S> {
    /// Wraps `inner` with the default configuration.
    pub const fn new(inner: S) -> Self {
        ClassifyDashScopeErrorService {
            inner,
            error_body_limit: DEFAULT_ERROR_BODY_LIMIT,
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
        ResponseFuture::new(self.inner.call(req), self.error_body_limit)
    }
}
