//! The inspected body of a successful response: event streams scanned for errors, truncation and
//! usage; JSON bodies scanned for usage when a [`UsageSlot`] asks for it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::Config;
use super::rules::error_from_fields;
use super::sse::{BOM, SseScanner, StreamApi};
use super::usage::{UsageScanner, UsageSlot};
use crate::error::{BoxError, DashScopeError, ErrorClass};
use crate::retry_after::parse_retry_after;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The request asked for a stream but the response did not say it is one: the first
    /// non-blank byte (after a byte-order mark) decides: `{` or `[` is JSON, anything else SSE.
    /// A body with no such byte is not a stream.
    Sniff,
    Sse,
    Json,
}

pin_project! {
    /// State of an inspected body, kept in one `Pin<Box<_>>` so that it can move from the
    /// response future, which reads the first event, into the
    /// [`ResponseBody`](super::ResponseBody): one allocation per inspected response. (A JSON
    /// body read only for its usage, with no idle timeout, is read by [`JsonUsage`] instead,
    /// without one.)
    pub(crate) struct StreamState<B> {
        #[pin]
        body: B,
        #[pin]
        idle: Option<Sleep>,
        scan: Scan,
    }
}

/// Everything about an inspected body that is not pinned.
struct Scan {
    mode: Mode,
    sse: SseScanner,
    json_usage: Option<UsageScanner>,
    slot: Option<UsageSlot>,
    /// Frames already read and scanned, to be yielded before anything else (empty data frames
    /// are not kept).
    replay: VecDeque<Frame<Bytes>>,
    replay_bytes: usize,
    /// Frames read while waiting for the first event, kept or not.
    frames_read: usize,
    /// The response's `content-type` said it is an event stream (rather than the request
    /// asking for one): a stream without a single event is then truncated.
    declared: bool,
    /// An error to yield after the frames before it.
    pending: Option<DashScopeError>,
    /// The inner body is finished (ended, failed or timed out): never poll it again.
    done: bool,
    /// The response has been handed to the caller: a transport failure now interrupts output.
    handed_out: bool,
    idle_timeout: Option<Duration>,
    request_id: Option<HeaderValue>,
    /// The response's `Retry-After`, for errors found in the stream.
    retry_after: Option<Duration>,
    detect_truncation: bool,
}

impl<B> StreamState<B> {
    pub(crate) fn new(
        body: B,
        mode: Mode,
        headers: &HeaderMap,
        slot: Option<UsageSlot>,
        config: &Config,
    ) -> Pin<Box<Self>> {
        let want_usage = slot.is_some();
        Box::pin(StreamState {
            body,
            idle: config
                .idle_timeout
                .and_then(|timeout| Instant::now().checked_add(timeout))
                .map(tokio::time::sleep_until),
            scan: Scan {
                mode,
                sse: SseScanner::new(config.max_event_size, want_usage && mode != Mode::Json),
                json_usage: (want_usage && mode != Mode::Sse).then(UsageScanner::default),
                slot,
                replay: VecDeque::new(),
                replay_bytes: 0,
                frames_read: 0,
                declared: mode == Mode::Sse,
                pending: None,
                done: false,
                handed_out: false,
                idle_timeout: config.idle_timeout,
                request_id: crate::headers::request_id(headers).cloned(),
                retry_after: parse_retry_after(headers),
                detect_truncation: config.detect_truncation,
            },
        })
    }

    pub(crate) fn mode(&self) -> Mode {
        self.scan.mode
    }

    /// Ordinary (non-error) events seen so far.
    pub(crate) fn events(&self) -> u64 {
        self.scan.sse.events()
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.scan.replay_bytes
    }

    /// Frames read so far through [`push_replay`](Self::push_replay).
    pub(crate) fn frames_read(&self) -> usize {
        self.scan.frames_read
    }

    pub(crate) fn is_done(&self) -> bool {
        self.scan.done
    }

    /// An error event was found before any ordinary event: the caller gets it instead of the
    /// response.
    pub(crate) fn take_error_before_first_event(self: Pin<&mut Self>) -> Option<DashScopeError> {
        let scan = self.project().scan;
        if scan.sse.events() == 0 {
            scan.pending.take()
        } else {
            None
        }
    }

    /// Keeps a frame read before the response is handed out, to be replayed. Empty data frames
    /// carry nothing and are dropped (an endless run of them must not cost memory).
    pub(crate) fn push_replay(self: Pin<&mut Self>, frame: Frame<Bytes>) {
        let scan = self.project().scan;
        scan.frames_read += 1;
        if let Some(data) = frame.data_ref() {
            if data.is_empty() {
                return;
            }
            scan.replay_bytes += data.len();
        }
        scan.replay.push_back(frame);
    }

    pub(crate) fn hand_out(self: Pin<&mut Self>) {
        self.project().scan.handed_out = true;
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.scan.replay.is_empty() && self.scan.pending.is_none() && self.scan.done
    }

    pub(crate) fn size_hint(&self) -> SizeHint
    where
        B: Body,
    {
        let buffered = self.scan.replay_bytes as u64;
        if self.scan.done {
            return SizeHint::with_exact(buffered);
        }
        let inner = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(buffered));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}

impl<B> StreamState<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Reads and scans the next frame of the inner body (not the replay queue).
    pub(crate) fn poll_scan(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DashScopeError>>> {
        let mut this = self.project();
        let scan = this.scan;
        if let Some(err) = scan.pending.take() {
            scan.done = true;
            return Poll::Ready(Some(Err(err)));
        }
        if scan.done {
            return Poll::Ready(None);
        }
        let frame = match this.body.poll_frame(cx) {
            Poll::Pending => {
                if let Some(sleep) = this.idle.as_mut().as_pin_mut() {
                    if sleep.poll(cx).is_ready() {
                        scan.done = true;
                        scan.finish_slot();
                        return Poll::Ready(Some(Err(scan.idle_error())));
                    }
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                scan.done = true;
                return Poll::Ready(scan.end().map(Err));
            }
            Poll::Ready(Some(Err(err))) => {
                scan.done = true;
                scan.finish_slot();
                let err: BoxError = err.into();
                let err = if scan.handed_out {
                    DashScopeError::from_body_error(err)
                } else {
                    // Nothing was delivered yet: as retryable as a failed connection.
                    DashScopeError::from(err)
                };
                return Poll::Ready(Some(Err(err)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let (Some(sleep), Some(timeout)) = (this.idle.as_mut().as_pin_mut(), scan.idle_timeout) {
            // A timeout too long to add to now never fires: leave the timer far in the future.
            if let Some(deadline) = Instant::now().checked_add(timeout) {
                sleep.reset(deadline);
            }
        }
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let trailers = frame.into_trailers().unwrap_or_default();
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        };
        let mut bytes = data.copy_to_bytes(data.remaining());
        tracing::trace!(bytes = bytes.len(), "DashScope stream frame");
        match scan.scan(&bytes) {
            None => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some((end, err)) => {
                // Everything up to the end of the error event is delivered, then the error.
                scan.done = true;
                scan.finish_slot();
                bytes.truncate(end);
                if bytes.is_empty() {
                    Poll::Ready(Some(Err(err)))
                } else {
                    scan.pending = Some(err);
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
            }
        }
    }

    /// The next frame for the caller: replayed frames first.
    pub(crate) fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DashScopeError>>> {
        let scan = self.as_mut().project().scan;
        if let Some(frame) = scan.replay.pop_front() {
            if let Some(data) = frame.data_ref() {
                scan.replay_bytes -= data.len();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = self.poll_scan(cx);
        if let Poll::Ready(Some(Err(err))) = &polled {
            super::future::log_classified(err, "stream");
        }
        polled
    }
}

impl Scan {
    fn request_id(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }

    /// Marks the slot complete and lets go of it: nothing more is recorded, and the layer that
    /// put it into the request may then hold the only handle on it (the token budget reuses
    /// such a slot for a later request).
    fn finish_slot(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.mark_complete();
        }
    }

    fn publish_usage(&mut self) {
        let Some(slot) = &self.slot else { return };
        let usage = match self.mode {
            Mode::Sse => self.sse.take_usage(),
            Mode::Json => self.json_usage.as_mut().and_then(UsageScanner::take),
            Mode::Sniff => None,
        };
        if let Some(usage) = usage {
            publish(slot, usage);
        }
    }

    /// Scans one piece of data. Returns where an error event ends in it, and the error.
    fn scan(&mut self, data: &[u8]) -> Option<(usize, DashScopeError)> {
        if self.mode == Mode::Sniff {
            let first = data
                .iter()
                .find(|b| !b.is_ascii_whitespace() && !BOM.contains(b));
            match first {
                None => {
                    // Blank lines and a byte-order mark: the scanner keeps track of the BOM
                    // and of the lines, in case this turns out to be a stream.
                    let found = self.sse.feed(data);
                    debug_assert!(found.is_none(), "blank lines are not an error event");
                    return None;
                }
                Some(b'{' | b'[') => self.mode = Mode::Json,
                Some(_) => self.mode = Mode::Sse,
            }
        }
        let found = match self.mode {
            Mode::Sse => self.sse.feed(data).map(|found| {
                let err =
                    error_from_fields(None, found.fields, self.request_id(), self.retry_after);
                (found.end, err)
            }),
            Mode::Json | Mode::Sniff => {
                if let Some(usage) = &mut self.json_usage {
                    usage.feed(data);
                }
                None
            }
        };
        self.publish_usage();
        found
    }

    /// What the end of the inner body means: an error event left without its blank line, a
    /// truncated stream, or a clean end.
    fn end(&mut self) -> Option<DashScopeError> {
        let err = match self.mode {
            // JSON, or a body with nothing but blank space: not a stream.
            Mode::Json | Mode::Sniff => None,
            Mode::Sse => match self.sse.finish() {
                Some(found) => Some(error_from_fields(
                    None,
                    found.fields,
                    self.request_id(),
                    self.retry_after,
                )),
                None if self.detect_truncation && !self.sse.uninspected() => self.truncation(),
                None => None,
            },
        };
        self.publish_usage();
        self.finish_slot();
        err
    }

    /// The error for a stream that ended cleanly, if its end shows it is incomplete: a chat or
    /// Responses-API stream without its terminal event, or a declared event stream without a
    /// single event. A stream of an API the scanner does not know is taken as complete.
    fn truncation(&self) -> Option<DashScopeError> {
        if self.sse.saw_terminal() {
            return None;
        }
        let message = match self.sse.api() {
            StreamApi::Chat => {
                "the event stream ended without a final finish_reason, [DONE] or message_stop: \
                 the output is incomplete; send the request again"
            }
            StreamApi::Responses => {
                "the event stream ended without response.completed: the output is incomplete; \
                 send the request again"
            }
            StreamApi::Unknown if self.declared && self.sse.events() == 0 => {
                "the event stream ended before its first event: the server sent no output; send \
                 the request again"
            }
            StreamApi::Unknown => return None,
        };
        let mut err = DashScopeError::new(ErrorClass::StreamInterrupted).with_message(message);
        if let Some(id) = self.request_id() {
            err = err.with_request_id(id);
        }
        Some(err)
    }

    fn idle_error(&self) -> DashScopeError {
        let mut err = DashScopeError::new(ErrorClass::Timeout).with_message(format!(
            "no data from the server for {:?} (idle timeout between chunks)",
            self.idle_timeout.unwrap_or_default()
        ));
        if let Some(id) = self.request_id() {
            err = err.with_request_id(id);
        }
        err
    }
}

/// A JSON body read for the `usage` it reports, into a [`UsageSlot`], with no idle timeout: what
/// [`StreamState`] does in [`Mode::Json`], kept inline in the response body instead of boxed
/// (the token budget asks this of every non-streaming chat response).
pub(crate) struct JsonUsage {
    scanner: UsageScanner,
    slot: Option<UsageSlot>,
    done: bool,
}

impl JsonUsage {
    pub(crate) fn new(slot: UsageSlot) -> Self {
        JsonUsage {
            scanner: UsageScanner::default(),
            slot: Some(slot),
            done: false,
        }
    }

    /// The next frame of `body`, its data scanned for usage.
    pub(crate) fn poll_frame<B>(
        &mut self,
        body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DashScopeError>>>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(body.poll_frame(cx)) {
            None => {
                self.done = true;
                self.publish();
                self.finish();
                return Poll::Ready(None);
            }
            Some(Err(err)) => {
                self.done = true;
                self.finish();
                // The response was handed out: part of the output may have been delivered.
                let err = DashScopeError::from_body_error(err.into());
                super::future::log_classified(&err, "stream");
                return Poll::Ready(Some(Err(err)));
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let trailers = frame.into_trailers().unwrap_or_default();
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        };
        let bytes = data.copy_to_bytes(data.remaining());
        tracing::trace!(bytes = bytes.len(), "DashScope stream frame");
        self.scanner.feed(&bytes);
        self.publish();
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.done
    }

    pub(crate) fn size_hint<B: Body>(&self, body: &B) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            body.size_hint()
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    fn publish(&mut self) {
        if let (Some(slot), Some(usage)) = (&self.slot, self.scanner.take()) {
            publish(slot, usage);
        }
    }

    /// Marks the slot complete and lets go of it, as [`Scan`] does.
    fn finish(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.mark_complete();
        }
    }
}

/// Records a usage found in a body.
fn publish(slot: &UsageSlot, usage: crate::extensions::Usage) {
    tracing::trace!(
        gen_ai.usage.input_tokens = usage.input_tokens,
        gen_ai.usage.output_tokens = usage.output_tokens,
        "DashScope usage reported"
    );
    slot.set(usage);
}

impl<B> std::fmt::Debug for StreamState<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("mode", &self.scan.mode)
            .field("events", &self.scan.sse.events())
            .field("buffered", &self.scan.replay_bytes)
            .field("done", &self.scan.done)
            .finish_non_exhaustive()
    }
}
