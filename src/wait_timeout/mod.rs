//! Ask DashScope to queue burst-throttled requests instead of answering 429.
//!
//! [`WaitTimeoutHeader`] sets `X-DashScope-Wait-Timeout: <seconds>` on every request that does
//! not carry one already. When a request hits DashScope's **burst** (growth-rate) limit,
//! `Throttling.BurstRate` / `limit_burst_rate`, the server then holds it for up to that many
//! seconds before giving up, instead of answering 429 at once.
//!
//! It helps against the burst limit only: plain requests-per-minute and tokens-per-minute
//! throttling still answers 429 at once. DashScope documents it for `/compatible-mode/v1` and
//! recommends 3 to 120 seconds; `0` turns queueing off.
//!
//! **Grow your own timeout by the same amount.** A request may now spend the wait in the
//! server's queue before it starts: a client-side timeout must be the usual timeout plus the
//! wait ([`WaitTimeoutHeader::wait`]); for streaming, the time-to-first-chunk timeout must exceed
//! the wait.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, WaitTimeoutHeader};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let base_timeout = Duration::from_secs(60);
//! let wait = WaitTimeoutHeader::new(Duration::from_secs(30));
//!
//! let client = service_fn(|req: Request<Full<Bytes>>| async move {
//!     // What the server sees:
//!     assert_eq!(req.headers()["x-dashscope-wait-timeout"], "30");
//!     Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
//! });
//!
//! let service = ServiceBuilder::new()
//!     // The client's own timeout grows by the time the server may queue the request.
//!     .timeout(base_timeout + wait.wait())
//!     .layer(wait)
//!     .service(client);
//!
//! service.oneshot(Request::new(Full::default())).await.unwrap();
//! # }
//! ```
//!
//! Fractions of a second round up (`1.5 s` is sent as `2`), and a value the caller set on the
//! request is kept:
//!
//! ```
//! # use std::time::Duration;
//! # use tower_dashscope::WaitTimeoutHeader;
//! let layer = WaitTimeoutHeader::new(Duration::from_millis(1500));
//! assert_eq!(layer.header_value(), "2");
//! ```

pub mod future;

use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request};
use tower::{Layer, Service};

use self::future::ResponseFuture;
use crate::error::{BoxError, DashScopeError, into_dashscope_error};

pub use crate::headers::X_DASHSCOPE_WAIT_TIMEOUT;

/// Layer that sets `X-DashScope-Wait-Timeout` on every request; see the [module docs](self).
///
/// Cloning is cheap: the header value is made once, at construction.
#[derive(Debug, Clone)]
#[must_use]
pub struct WaitTimeoutHeader {
    wait: Duration,
    value: HeaderValue,
}

impl WaitTimeoutHeader {
    /// Sets the header to `wait` in whole seconds, rounded up (`1.5 s` → `2`, zero → `0`).
    pub fn new(wait: Duration) -> Self {
        let seconds = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        WaitTimeoutHeader {
            wait,
            value: HeaderValue::from(seconds),
        }
    }

    /// The wait this layer asks for, as given to [`new`](Self::new). Add it to the client's own
    /// timeout.
    #[must_use]
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The header value sent: whole seconds, rounded up.
    #[must_use]
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }
}

impl<S> Layer<S> for WaitTimeoutHeader {
    type Service = WaitTimeoutHeaderService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WaitTimeoutHeaderService {
            inner,
            value: self.value.clone(),
        }
    }
}

/// Service that sets `X-DashScope-Wait-Timeout`; made by [`WaitTimeoutHeader`], see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct WaitTimeoutHeaderService<S> {
    inner: S,
    value: HeaderValue,
}

impl<S> WaitTimeoutHeaderService<S> {
    /// Wraps `inner`, asking the server to queue for up to `wait` (see [`WaitTimeoutHeader::new`]).
    pub fn new(inner: S, wait: Duration) -> Self {
        WaitTimeoutHeader::new(wait).layer(inner)
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

impl<S, B> Service<Request<B>> for WaitTimeoutHeaderService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = DashScopeError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(into_dashscope_error)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let http::header::Entry::Vacant(entry) =
            req.headers_mut().entry(X_DASHSCOPE_WAIT_TIMEOUT)
        {
            entry.insert(self.value.clone());
            tracing::debug!(
                dashscope.wait_timeout_s = self.value.to_str().unwrap_or_default(),
                "X-DashScope-Wait-Timeout set"
            );
        }
        ResponseFuture::new(self.inner.call(req))
    }
}
