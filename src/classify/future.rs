//! The response future of [`ClassifyDashScopeErrorService`](super::ClassifyDashScopeErrorService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::parse::classify_response;
use crate::error::{BoxError, DashScopeError, into_dashscope_error};

pin_project! {
    /// Response future of [`ClassifyDashScopeErrorService`](super::ClassifyDashScopeErrorService).
    ///
    /// Resolves to the response, body wrapped, for a 2xx status; for any other status it reads
    /// the body up to the configured bound and resolves to the classified [`DashScopeError`].
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        limit: usize,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Calling {
            #[pin]
            future: F,
        },
        ReadingError {
            #[pin]
            body: B,
            status: StatusCode,
            headers: HeaderMap,
            buf: Vec<u8>,
        },
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(future: F, limit: usize) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            limit,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(err) => {
                            this.state.set(State::Done);
                            let err = into_dashscope_error(err);
                            tracing::debug!(
                                class = err.class().as_str(),
                                error = %err,
                                "transport error classified"
                            );
                            return Poll::Ready(Err(err));
                        }
                    };
                    if response.status().is_success() {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response.map(ResponseBody::new)));
                    }
                    let (parts, body) = response.into_parts();
                    // Reserve what the body announces, never more than the bound.
                    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
                    let buf = Vec::with_capacity(hint.min(*this.limit).min(8 * 1024));
                    this.state.set(State::ReadingError {
                        body,
                        status: parts.status,
                        headers: parts.headers,
                        buf,
                    });
                }
                StateProj::ReadingError {
                    mut body,
                    status,
                    headers,
                    buf,
                } => {
                    let mut body_error = None;
                    while buf.len() < *this.limit {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(mut data) = frame.into_data() {
                                    copy_bounded(&mut data, buf, *this.limit);
                                }
                            }
                            Some(Err(err)) => {
                                body_error = Some(err.into());
                                break;
                            }
                            None => break,
                        }
                    }
                    let mut err = classify_response(*status, headers, buf);
                    if let Some(source) = body_error {
                        err = err.with_source(source);
                    }
                    tracing::debug!(
                        class = err.class().as_str(),
                        status = err.status().map(|s| s.as_u16()),
                        code = err.code(),
                        request_id = err.request_id(),
                        "error response classified"
                    );
                    this.state.set(State::Done);
                    return Poll::Ready(Err(err));
                }
                StateProj::Done => {
                    panic!("ClassifyDashScopeError's ResponseFuture polled after completion")
                }
            }
        }
    }
}

/// Appends `data` to `buf` without letting `buf` grow past `limit`.
fn copy_bounded(data: &mut impl Buf, buf: &mut Vec<u8>, limit: usize) {
    while data.has_remaining() && buf.len() < limit {
        let chunk = data.chunk();
        let n = chunk.len().min(limit - buf.len());
        buf.extend_from_slice(&chunk[..n]);
        data.advance(n);
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}
