//! The response body of [`ClassifyDashScopeErrorService`](super::ClassifyDashScopeErrorService).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::{BoxError, DashScopeError};

pin_project! {
    /// The body of a successful response that went through
    /// [`ClassifyDashScopeError`](crate::ClassifyDashScopeError).
    ///
    /// Frames pass through as the inner body yields them — same bytes, same chunks, no copy.
    /// A failure while reading is a [`DashScopeError`]: a timeout is
    /// [`ErrorClass::Timeout`](crate::ErrorClass::Timeout), any other failure
    /// [`ErrorClass::StreamInterrupted`](crate::ErrorClass::StreamInterrupted) with the cause as
    /// its source, since part of the output may already have been delivered.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B) -> Self {
        ResponseBody { inner }
    }

    /// A reference to the inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes the wrapper, returning the inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = DashScopeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project()
            .inner
            .poll_frame(cx)
            .map_err(|err| DashScopeError::from_body_error(err.into()))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}
