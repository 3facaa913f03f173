//! The response body of [`ClassifyDashScopeErrorService`](super::ClassifyDashScopeErrorService).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::stream::{JsonUsage, StreamState};
use crate::error::{BoxError, DashScopeError};

pin_project! {
    /// The body of a successful response that went through
    /// [`ClassifyDashScopeError`](crate::ClassifyDashScopeError).
    ///
    /// The bytes are exactly the bytes the server sent, in the chunks it sent them (as
    /// [`Bytes`]; for `Bytes`-based bodies such as hyper's, without a copy).
    ///
    /// - **Event streams** are watched as they are read: an error event after the first event
    ///   (native `event:error`, OpenAI-compatible `data: {"error":…}`, Responses-API `error` or
    ///   `response.failed`) makes the body yield `Err(DashScopeError)` once every byte up to
    ///   the end of that event has been yielded; a chat stream that ends without a final
    ///   `finish_reason`, `data: [DONE]` or `message_stop` (a Responses-API stream: without
    ///   `response.completed` or `response.incomplete`) yields
    ///   [`ErrorClass::StreamInterrupted`](crate::ErrorClass::StreamInterrupted) at its end
    ///   (unless [turned off](crate::ClassifyDashScopeError::detect_truncation); streams of
    ///   other APIs are not checked); an optional idle timeout yields
    ///   [`ErrorClass::Timeout`](crate::ErrorClass::Timeout). Empty data frames read while
    ///   the response future waited for the first event are not replayed.
    /// - **Other bodies** pass through untouched, unless the request carried a
    ///   [`UsageSlot`](super::UsageSlot), in which case their `usage` is recorded.
    ///
    /// A failure of the underlying body is [`ErrorClass::Timeout`](crate::ErrorClass::Timeout)
    /// for a timeout, else [`ErrorClass::StreamInterrupted`](crate::ErrorClass::StreamInterrupted)
    /// with the cause as its source: part of the output may already have been delivered.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Plain {
            #[pin]
            body: B,
        },
        Inspected {
            state: Pin<Box<StreamState<B>>>,
        },
        // A JSON body read for its usage (no idle timeout): no box.
        Usage {
            #[pin]
            body: B,
            usage: JsonUsage,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn plain(body: B) -> Self {
        ResponseBody {
            kind: Kind::Plain { body },
        }
    }

    pub(crate) fn inspected(state: Pin<Box<StreamState<B>>>) -> Self {
        ResponseBody {
            kind: Kind::Inspected { state },
        }
    }

    pub(crate) fn usage(body: B, usage: JsonUsage) -> Self {
        ResponseBody {
            kind: Kind::Usage { body, usage },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = DashScopeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx).map(|frame| {
                frame.map(|frame| match frame {
                    Ok(frame) => {
                        Ok(frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
                    }
                    Err(err) => Err(DashScopeError::from_body_error(err.into())),
                })
            }),
            KindProj::Inspected { state } => state.as_mut().poll_frame(cx),
            KindProj::Usage { body, usage } => usage.poll_frame(body, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Inspected { state } => state.is_end_stream(),
            Kind::Usage { usage, .. } => usage.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Inspected { state } => state.size_hint(),
            Kind::Usage { body, usage } => usage.size_hint(body),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Plain { .. } => f.debug_struct("ResponseBody").finish_non_exhaustive(),
            Kind::Inspected { state } => f
                .debug_struct("ResponseBody")
                .field("inspected", state)
                .finish(),
            Kind::Usage { usage, .. } => f
                .debug_struct("ResponseBody")
                .field("usage_done", &usage.is_done())
                .finish_non_exhaustive(),
        }
    }
}
