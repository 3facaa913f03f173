//! Request bodies: what the layers need from them, and a way in for any body type.
//!
//! Retry and fallback send a request again, the token budget and fallback read its JSON, and
//! fallback rebuilds it with another `model`. [`ReplayBody`] is what they ask of a body: a copy
//! ([`try_clone_body`](ReplayBody::try_clone_body)), its bytes ([`bytes`](ReplayBody::bytes)),
//! and the same type made from new bytes ([`from_bytes`](ReplayBody::from_bytes)). The
//! idiomatic body, `http_body_util::Full<Bytes>`, does all three.
//!
//! Bodies of other crates — axum's and hyper's `Incoming`, reqwest's `Body`, a stream, a boxed
//! body — cannot be replayed. Two ways in:
//!
//! - **Buffer once** with [`BufferRequestBody`] (or [`buffer_request`] in a handler): the body
//!   is read into a `Full<Bytes>`, up to a limit, beyond which the call fails with a
//!   [`PayloadTooLarge`](crate::ErrorClass::PayloadTooLarge) error that says so. Every layer
//!   above the client can then replay and read it.
//! - **Send once** with [`SendOnce`]: the body passes through untouched and the request is not
//!   retried, rewritten or read.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, RetryWithJitter};
//! use tower_dashscope::body::BufferRequestBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // A boxed body, as a proxy or an axum handler holds it: not replayable as it is.
//! let body = Full::new(Bytes::from_static(br#"{"model":"qwen-plus"}"#)).boxed();
//! let request = Request::post("/compatible-mode/v1/chat/completions").body(body).unwrap();
//!
//! let client = service_fn(|req: Request<Full<Bytes>>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     Ok::<_, BoxError>(Response::new(Full::new(body)))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(BufferRequestBody::new(1024 * 1024)) // read once, up to 1 MiB
//!     .layer(RetryWithJitter::new())               // can now replay it
//!     .service(client);
//! let response = service.oneshot(request).await.unwrap();
//! let echoed = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(echoed, r#"{"model":"qwen-plus"}"#);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Request, request::Parts};
use http_body::Body;
use http_body_util::combinators;
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::{BoxError, DashScopeError, ErrorClass, into_dashscope_error};

/// A request body that can be sent again.
///
/// Implemented for the bodies that are cheap to clone: `Full<D>` and `Empty<D>` of
/// http-body-util (with a cloneable buffer such as [`Bytes`]), `Bytes`, `String`, `Vec<u8>`,
/// `&'static str`, `&'static [u8]` and `()`, and `Either` of two such bodies. Boxed bodies
/// (`BoxBody`, `UnsyncBoxBody`) and [`SendOnce`] return `None`: such requests are sent once,
/// never failed. Implement it for your own body type to make it retryable; wrap a body type of
/// another crate (hyper's `Incoming`, a stream) in [`SendOnce`] to pass it through.
pub trait ReplayBody: Sized {
    /// A copy of the body for another attempt, or `None` if it cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;

    /// The whole body as bytes, without consuming it, if it is held in memory. Layers that read
    /// the request's JSON ([`ChatRequest::of`](crate::request::ChatRequest::of)) use it; `None`
    /// (the default) means "unknown", and such layers pass the request on unread.
    fn bytes(&self) -> Option<Bytes> {
        None
    }

    /// A body of the same type holding `bytes`, for a layer that rewrites a request (fallback's
    /// `model`). `None` (the default) when the type cannot hold arbitrary bytes; such a
    /// request is not rewritten.
    fn from_bytes(bytes: Bytes) -> Option<Self> {
        let _ = bytes;
        None
    }
}

impl<D: Buf + Clone + From<Bytes>> ReplayBody for Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn bytes(&self) -> Option<Bytes> {
        // `Full` keeps its buffer private; a clone yields it as its one frame, at once.
        let mut copy = std::pin::pin!(self.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match copy.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let mut data = frame.into_data().ok()?;
                Some(data.copy_to_bytes(data.remaining()))
            }
            Poll::Ready(None) => Some(Bytes::new()),
            _ => None,
        }
    }

    fn from_bytes(bytes: Bytes) -> Option<Self> {
        Some(Full::new(D::from(bytes)))
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }

    fn bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

impl<D, E> ReplayBody for combinators::BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for combinators::UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

macro_rules! replay_by_clone {
    ($($ty:ty => |$b:ident| $from:expr),* $(,)?) => {$(
        impl ReplayBody for $ty {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }

            fn bytes(&self) -> Option<Bytes> {
                Some(Bytes::copy_from_slice(AsRef::<[u8]>::as_ref(self)))
            }

            fn from_bytes($b: Bytes) -> Option<Self> {
                $from
            }
        }
    )*};
}

replay_by_clone!(
    String => |b| String::from_utf8(b.into()).ok(),
    Vec<u8> => |b| Some(b.into()),
    &'static str => |_b| None,
    &'static [u8] => |_b| None,
);

impl ReplayBody for Bytes {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn bytes(&self) -> Option<Bytes> {
        Some(self.clone())
    }

    fn from_bytes(bytes: Bytes) -> Option<Self> {
        Some(bytes)
    }
}

impl ReplayBody for () {
    fn try_clone_body(&self) -> Option<Self> {
        Some(())
    }

    fn bytes(&self) -> Option<Bytes> {
        Some(Bytes::new())
    }
}

impl<L: ReplayBody, R: ReplayBody> ReplayBody for http_body_util::Either<L, R> {
    fn try_clone_body(&self) -> Option<Self> {
        match self {
            http_body_util::Either::Left(body) => body.try_clone_body().map(Self::Left),
            http_body_util::Either::Right(body) => body.try_clone_body().map(Self::Right),
        }
    }

    fn bytes(&self) -> Option<Bytes> {
        match self {
            http_body_util::Either::Left(body) => body.bytes(),
            http_body_util::Either::Right(body) => body.bytes(),
        }
    }

    fn from_bytes(bytes: Bytes) -> Option<Self> {
        L::from_bytes(bytes.clone())
            .map(Self::Left)
            .or_else(|| R::from_bytes(bytes).map(Self::Right))
    }
}

pin_project_lite::pin_project! {
    /// Any body, sent once: [`RetryWithJitter`](crate::RetryWithJitter) passes requests with this body through without
    /// retrying them. For body types that cannot be replayed and are not this crate's to
    /// implement [`ReplayBody`] for, such as hyper's `Incoming` in a proxy, or a stream.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::Full;
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_dashscope::{BoxError, RetryWithJitter};
    /// use tower_dashscope::body::SendOnce;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let counter = calls.clone();
    /// // Always unavailable: a replayable request would be tried six times.
    /// let client = service_fn(move |_req: Request<SendOnce<Full<Bytes>>>| {
    ///     counter.fetch_add(1, Ordering::SeqCst);
    ///     async { Ok::<_, BoxError>(Response::builder().status(503).body(Full::<Bytes>::default()).unwrap()) }
    /// });
    /// let request = Request::new(SendOnce::new(Full::new(Bytes::from("{}"))));
    /// let response = RetryWithJitter::new().layer(client).oneshot(request).await.unwrap();
    /// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once");
    /// # }
    /// ```
    #[derive(Debug, Clone, Default)]
    pub struct SendOnce<B> {
        #[pin]
        inner: B,
    }
}

impl<B> SendOnce<B> {
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        SendOnce { inner: body }
    }

    /// The body inside.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: http_body::Body> http_body::Body for SendOnce<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> ReplayBody for SendOnce<B> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

/// Reads `request`'s body into memory, so that every layer can replay and read it.
///
/// # Errors
///
/// A [`DashScopeError`] of class [`PayloadTooLarge`](ErrorClass::PayloadTooLarge) when the body
/// is longer than `limit` bytes (nothing beyond the limit is kept), or of class
/// [`Connection`](ErrorClass::Connection) when reading it failed, its cause as the source.
///
/// ```
/// use bytes::Bytes;
/// use http::Request;
/// use http_body_util::{BodyExt, Full};
/// use tower_dashscope::ErrorClass;
/// use tower_dashscope::body::buffer_request;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let request = Request::new(Full::new(Bytes::from("x".repeat(2048))).boxed());
/// let err = buffer_request(request, 1024).await.unwrap_err();
/// assert_eq!(err.class(), ErrorClass::PayloadTooLarge);
/// # }
/// ```
pub async fn buffer_request<B>(
    request: Request<B>,
    limit: usize,
) -> Result<Request<Full<Bytes>>, DashScopeError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let bytes = collect_bounded(body, limit).await?;
    Ok(Request::from_parts(parts, Full::new(bytes)))
}

async fn collect_bounded<B>(body: B, limit: usize) -> Result<Bytes, DashScopeError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(buffer_error(err, limit)),
    }
}

fn buffer_error(err: BoxError, limit: usize) -> DashScopeError {
    if err.is::<http_body_util::LengthLimitError>() {
        DashScopeError::new(ErrorClass::PayloadTooLarge).with_message(format!(
            "the request body is over the {limit}-byte limit of BufferRequestBody; raise the \
             limit or send less"
        ))
    } else {
        into_dashscope_error(err).with_message("reading the request body failed")
    }
}

/// Layer that reads each request's body into a `Full<Bytes>` (up to a limit) so the layers
/// above the client can replay and read it; see the [module docs](self).
///
/// Put it outermost: `Request<B>` for any body `B` goes in, `Request<Full<Bytes>>` goes down.
///
/// # Default
///
/// No default: the limit is given to [`new`](Self::new). DashScope refuses bodies over 16 MiB
/// ([`DASHSCOPE_BODY_LIMIT`]).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct BufferRequestBody {
    limit: usize,
}

/// DashScope's own request body limit, 16 MiB: a larger body is answered 413.
pub const DASHSCOPE_BODY_LIMIT: usize = 16 * 1024 * 1024;

impl BufferRequestBody {
    /// Buffers bodies of up to `limit` bytes; a longer one fails the call with
    /// [`ErrorClass::PayloadTooLarge`] without reaching the inner service.
    pub fn new(limit: usize) -> Self {
        BufferRequestBody { limit }
    }

    /// The limit in bytes.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl<S> Layer<S> for BufferRequestBody {
    type Service = BufferRequestBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferRequestBodyService {
            inner,
            limit: self.limit,
        }
    }
}

/// Service that buffers request bodies; made by [`BufferRequestBody`].
#[derive(Debug, Clone)]
pub struct BufferRequestBodyService<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferRequestBodyService<S> {
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

impl<S, B> Service<Request<B>> for BufferRequestBodyService<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = DashScopeError;
    type Future = BufferFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(into_dashscope_error)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The readied service goes into the future and is called once the body is in.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        BufferFuture {
            state: BufferState::Reading {
                collect: Limited::new(body, self.limit).collect(),
                parts: Some(parts),
                inner: Some(inner),
                limit: self.limit,
            },
        }
    }
}

pin_project! {
    /// Response future of [`BufferRequestBodyService`]: reads the body, then calls the inner
    /// service.
    #[must_use = "futures do nothing unless polled"]
    pub struct BufferFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: BufferState<S, B>,
    }
}

pin_project! {
    #[project = BufferStateProj]
    enum BufferState<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Reading {
            #[pin]
            collect: http_body_util::combinators::Collect<Limited<B>>,
            parts: Option<Parts>,
            inner: Option<S>,
            limit: usize,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, B> Future for BufferFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                BufferStateProj::Reading {
                    collect,
                    parts,
                    inner,
                    limit,
                } => {
                    let bytes = match ready!(collect.poll(cx)) {
                        Ok(collected) => collected.to_bytes(),
                        Err(err) => return Poll::Ready(Err(buffer_error(err, *limit))),
                    };
                    let (Some(parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        unreachable!("taken only here, once");
                    };
                    let future = inner.call(Request::from_parts(parts, Full::new(bytes)));
                    this.state.set(BufferState::Calling { future });
                }
                BufferStateProj::Calling { future } => {
                    return future.poll(cx).map_err(into_dashscope_error);
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for BufferFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferFuture").finish_non_exhaustive()
    }
}
