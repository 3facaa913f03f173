//! A scripted inner service and a scripted response body for the hardening tests. Included with
//! `#[path]`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Full;
use tower::Service;
use tower_dashscope::{BoxError, Region, ServedModel, ServedRegion};

/// How a [`TestBody`] goes on after its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It ends cleanly.
    Done,
    /// It never ends (and never wakes its task).
    Never,
    /// It fails with an I/O error.
    Fail,
}

/// A response body made of the given parts, yielded one frame each; a part may repeat one
/// chunk many times (a cheap 10 MiB line: the chunk is shared, never copied).
#[derive(Debug)]
pub struct TestBody {
    parts: VecDeque<(Bytes, usize)>,
    end: End,
    /// Bytes yielded so far.
    pub yielded: usize,
}

impl TestBody {
    pub fn new<I: IntoIterator<Item = C>, C: Into<Bytes>>(chunks: I, end: End) -> Self {
        TestBody {
            parts: chunks.into_iter().map(|c| (c.into(), 1)).collect(),
            end,
            yielded: 0,
        }
    }

    pub fn full(body: impl Into<Bytes>) -> Self {
        TestBody::new([body.into()], End::Done)
    }

    /// Adds `chunk`, `times` times over.
    pub fn repeat(mut self, chunk: Bytes, times: usize) -> Self {
        self.parts.push_back((chunk, times));
        self
    }

    pub fn then(mut self, chunk: impl Into<Bytes>) -> Self {
        self.parts.push_back((chunk.into(), 1));
        self
    }

    pub fn end(mut self, end: End) -> Self {
        self.end = end;
        self
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        while let Some((chunk, times)) = this.parts.front_mut() {
            if *times == 0 {
                this.parts.pop_front();
                continue;
            }
            *times -= 1;
            let chunk = chunk.clone();
            this.yielded += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.end {
            End::Done => Poll::Ready(None),
            End::Never => Poll::Pending,
            End::Fail => {
                this.end = End::Done;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by the test",
                ))))
            }
        }
    }
}

/// A response of `status` with `headers` and `body`.
pub fn response(status: u16, headers: &[(&str, &[u8])], body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    response
}

/// A chat completion that finished.
pub fn ok_json() -> Response<TestBody> {
    response(
        200,
        &[("content-type", b"application/json")],
        TestBody::full(
            r#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},"model":"qwen-plus"}"#,
        ),
    )
}

/// A non-streaming chat body for `qwen-plus` asking for ten tokens.
pub const PLUS: &str =
    r#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}],"max_tokens":10}"#;

/// A 429 with DashScope's rate-quota code.
pub fn throttled() -> Response<TestBody> {
    response(
        429,
        &[],
        TestBody::full(
            r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}"#,
        ),
    )
}

/// A 503 with DashScope's `ServiceUnavailable` code.
pub fn unavailable() -> Response<TestBody> {
    response(
        503,
        &[],
        TestBody::full(r#"{"code":"ServiceUnavailable","message":"busy"}"#),
    )
}

/// The model a request asked for, read from its body.
pub fn model_of(req: &Request<Full<Bytes>>) -> String {
    use tower_dashscope::body::ReplayBody;
    let body = req.body().bytes().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    value["model"].as_str().unwrap_or_default().to_owned()
}

/// Whether `req` goes to the primary region of the tests' routers (Singapore).
pub fn is_primary(req: &Request<Full<Bytes>>) -> bool {
    req.uri()
        .host()
        .unwrap_or_default()
        .contains("dashscope-intl")
}

/// A script for [`Inner::fallible`]: the primary region refuses the connection, any other
/// answers [`ok_json`].
pub fn refuse_primary(
    _: usize,
    req: &Request<Full<Bytes>>,
) -> Result<Response<TestBody>, BoxError> {
    if is_primary(req) {
        Err(refused())
    } else {
        Ok(ok_json())
    }
}

/// `response` was served by `model`.
#[track_caller]
pub fn assert_model<B>(response: &Response<B>, model: &str) {
    assert_eq!(
        response.extensions().get::<ServedModel>(),
        Some(&ServedModel(model.into()))
    );
}

/// `response` was served from `region`.
#[track_caller]
pub fn assert_region<B>(response: &Response<B>, region: Region) {
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(region))
    );
}

/// An event-stream response of `body`.
pub fn sse(body: TestBody) -> Response<TestBody> {
    response(200, &[("content-type", b"text/event-stream")], body)
}

type Reply = Option<Result<Response<TestBody>, BoxError>>;
type Script = dyn Fn(usize, &Request<Full<Bytes>>) -> Reply + Send + Sync;

/// An inner service that answers call `n` with `script(n, &request)`, records every request it
/// gets, and is always ready.
#[derive(Clone)]
pub struct Inner {
    script: Arc<Script>,
    pub seen: Arc<Mutex<Vec<Request<Full<Bytes>>>>>,
}

impl Inner {
    pub fn new(
        script: impl Fn(usize, &Request<Full<Bytes>>) -> Response<TestBody> + Send + Sync + 'static,
    ) -> Self {
        Inner::fallible(move |n, req| Ok(script(n, req)))
    }

    /// Answers call `n` with `script(n, &request)`, a response or a transport error.
    pub fn fallible(
        script: impl Fn(usize, &Request<Full<Bytes>>) -> Result<Response<TestBody>, BoxError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Inner::hanging(move |n, req| Some(script(n, req)))
    }

    /// Answers call `n` with `script(n, &request)`; `None` is a call that never answers (its
    /// future stays pending).
    pub fn hanging(
        script: impl Fn(usize, &Request<Full<Bytes>>) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Inner {
            script: Arc::new(script),
            seen: Arc::default(),
        }
    }

    /// Always answers `ok_json()`.
    pub fn ok() -> Self {
        Inner::new(|_, _| ok_json())
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The body bytes of the `n`th request, as the inner service got them.
    pub fn body(&self, n: usize) -> Bytes {
        use tower_dashscope::body::ReplayBody;
        self.seen.lock().unwrap()[n].body().bytes().unwrap()
    }
}

impl Service<Request<Full<Bytes>>> for Inner {
    type Response = Response<TestBody>;
    type Error = BoxError;
    type Future = InnerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let mut seen = self.seen.lock().unwrap();
        let response = (self.script)(seen.len(), &req);
        seen.push(req);
        InnerFuture(response)
    }
}

/// The future of [`Inner`]: its reply at once, or never.
#[derive(Debug)]
pub struct InnerFuture(Reply);

impl std::future::Future for InnerFuture {
    type Output = Result<Response<TestBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.take() {
            Some(reply) => Poll::Ready(reply),
            None => Poll::Pending,
        }
    }
}

/// A connection refused: never reached the server.
pub fn refused() -> BoxError {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused by the test",
    )
    .into()
}

/// An inner service that panics when it is called without a `poll_ready` that returned
/// `Ready` since its last call, and whose clones start unready: a clone's first `poll_ready`
/// returns `Pending` (and wakes its task), as a `Buffer` or a pool of connections does.
pub struct Strict<S> {
    inner: S,
    ready: bool,
    polled: bool,
}

impl<S> Strict<S> {
    pub fn new(inner: S) -> Self {
        // The original starts unready too.
        Strict {
            inner,
            ready: false,
            polled: false,
        }
    }
}

impl<S: Clone> Clone for Strict<S> {
    fn clone(&self) -> Self {
        Strict::new(self.inner.clone())
    }
}

impl<S, R> Service<R> for Strict<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.polled {
            self.polled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let ready = self.inner.poll_ready(cx);
        if let Poll::Ready(Ok(())) = ready {
            self.ready = true;
        }
        ready
    }

    fn call(&mut self, req: R) -> S::Future {
        assert!(
            self.ready,
            "the inner service was called without poll_ready"
        );
        self.ready = false;
        self.inner.call(req)
    }
}

/// A chat request for `body` on the OpenAI-compatible path.
pub fn chat(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Reads `body` to its end: the bytes it yielded and the error it ended with, if any.
pub async fn drain<B>(body: B) -> (usize, Option<B::Error>)
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes += frame.data_ref().map_or(0, Bytes::len),
            Err(err) => return (bytes, Some(err)),
        }
    }
    (bytes, None)
}
