//! Futures shared by several layers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
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

/// A boxed `Send` future that is also `Sync`, so that a response future holding it (the
/// budget's, while a shared store is asked) is `Sync` whenever the inner service's is, as
/// tower's own futures are. The future is only ever reached through `&mut self`, so the
/// `Mutex` is never locked: it costs no synchronisation, only what makes the type `Sync`
/// without `unsafe`.
pub(crate) struct SyncFuture<T>(Mutex<Pin<Box<dyn Future<Output = T> + Send>>>);

impl<T> SyncFuture<T> {
    pub(crate) fn new(future: Pin<Box<dyn Future<Output = T> + Send>>) -> Self {
        SyncFuture(Mutex::new(future))
    }

    /// Polls the future. A panic inside an earlier poll leaves it as it was (no lock was held).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        self.0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .poll(cx)
    }
}

impl<T> std::fmt::Debug for SyncFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncFuture")
    }
}
