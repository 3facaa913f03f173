//! Futures shared by several layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::error::{BoxError, DashScopeError, into_dashscope_error};

pin_project! {
    /// The inner service's future, its error converted into a [`DashScopeError`]: the response
    /// future of every layer that changes only the request (such as
    /// [`WaitTimeoutHeader`](crate::WaitTimeoutHeader)).
    ///
    /// An inner error that already is a `DashScopeError` passes through unchanged; any other
    /// is classified as a transport error (see [`DashScopeError`]).
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ConvertError<F> {
        #[pin]
        inner: F,
    }
}

impl<F> ConvertError<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        ConvertError { inner }
    }
}

impl<F, T, E> Future for ConvertError<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(into_dashscope_error)
    }
}
