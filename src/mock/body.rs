//! The simulator's response body: whole, or event-stream frames paced over (tokio) time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::Shared;
use super::respond::Script;
use crate::api::Plan;

/// Response body of [`MockDashScope`](super::MockDashScope).
///
/// Streaming answers yield one frame per event, each after its delay (time to first token, then
/// one token per `1 / tokens_per_sec`), measured with `tokio::time`: paused time drives it.
pub struct MockBody {
    kind: Kind,
    _in_flight: Option<InFlight>,
}

enum Kind {
    Full(Option<Bytes>),
    /// Never sends a byte, never ends.
    Silent,
    Stream {
        script: Script,
        /// The next frame, once made, and the time to wait before it.
        next: Option<(Duration, Bytes)>,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

/// Counts a request as in flight until its body is finished or dropped.
pub(crate) struct InFlight(pub(crate) Arc<Shared>, pub(crate) Plan);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finish_in_flight(self.1);
    }
}

impl MockBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        MockBody {
            kind: Kind::Full(Some(bytes.into())).normalise(),
            _in_flight: None,
        }
    }

    pub(crate) fn silent() -> Self {
        MockBody {
            kind: Kind::Silent,
            _in_flight: None,
        }
    }

    pub(crate) fn stream(mut script: Script) -> Self {
        let next = script.next_frame();
        MockBody {
            kind: Kind::Stream {
                script,
                next,
                sleep: None,
            },
            _in_flight: None,
        }
    }

    pub(crate) fn with_in_flight(mut self, in_flight: InFlight) -> Self {
        self._in_flight = Some(in_flight);
        self
    }
}

impl Kind {
    fn normalise(self) -> Self {
        match self {
            Kind::Full(Some(bytes)) if bytes.is_empty() => Kind::Full(None),
            other => other,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            // Scripted silence: nothing will ever wake this body. Dropping it ends it.
            Kind::Silent => return Poll::Pending,
            Kind::Stream {
                script,
                next,
                sleep,
            } => match next {
                None if script.stalled() => return Poll::Pending,
                None => None,
                Some((delay, _)) => {
                    if !delay.is_zero() {
                        let timer =
                            sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*delay)));
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        *sleep = None;
                    }
                    let following = script.next_frame();
                    std::mem::replace(next, following).map(|(_, bytes)| Ok(Frame::data(bytes)))
                }
            },
        };
        if frame.is_none() {
            this._in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Silent => false,
            Kind::Stream { next, script, .. } => next.is_none() && !script.stalled(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream { .. } | Kind::Silent => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for MockBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(bytes) => f
                .debug_struct("MockBody")
                .field("bytes", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream { script, .. } => {
                f.debug_struct("MockBody").field("stream", script).finish()
            }
            Kind::Silent => f.debug_struct("MockBody").field("silent", &true).finish(),
        }
    }
}
