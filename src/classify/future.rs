//! The response future of [`ClassifyDashScopeErrorService`](super::ClassifyDashScopeErrorService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::Config;
use super::body::ResponseBody;
use super::rules::classify_response;
use super::stream::{JsonUsage, Mode, StreamState};
use super::usage::UsageSlot;
use crate::error::{BoxError, DashScopeError, into_dashscope_error};

pin_project! {
    /// Response future of [`ClassifyDashScopeErrorService`](super::ClassifyDashScopeErrorService).
    ///
    /// - A non-2xx response: reads the body up to the configured bound in bytes, frames and
    ///   time ([`error_body_timeout`](super::ClassifyDashScopeError::error_body_timeout)), and
    ///   resolves to the [`DashScopeError`] classified from what arrived.
    /// - A 2xx event stream: reads until the first complete event (bounded by
    ///   [`first_event_limit`](super::ClassifyDashScopeError::first_event_limit), by
    ///   [`FIRST_EVENT_FRAME_LIMIT`](super::FIRST_EVENT_FRAME_LIMIT) frames and by the end of
    ///   the body); an error event there resolves to `Err`, anything else to the response,
    ///   whose body replays the bytes read so far.
    /// - Any other 2xx response (also one without a body, to a request that asked for a
    ///   stream): resolves to it at once.
    ///
    /// However many frames the body has ready, one poll reads at most a few dozen of them
    /// before yielding to the executor (having woken the task), so that one response cannot
    /// monopolise the thread it runs on.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        config: Config,
        wants_stream: bool,
        slot: Option<UsageSlot>,
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
            // Frames that brought no bytes (empty data frames, trailers).
            empty_frames: usize,
            started: Instant,
            last_frame: Instant,
            // Made only once the body makes us wait.
            #[pin]
            timer: Option<Sleep>,
        },
        FirstEvent {
            parts: Option<Parts>,
            stream: Option<Pin<Box<StreamState<B>>>>,
        },
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(
        future: F,
        config: Config,
        wants_stream: bool,
        slot: Option<UsageSlot>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            config,
            wants_stream,
            slot,
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
                            log_classified(&err, "transport");
                            return Poll::Ready(Err(err));
                        }
                    };
                    let (parts, body) = response.into_parts();
                    if !parts.status.is_success() {
                        let now = Instant::now();
                        // Reserve what the body announces, never more than the bound.
                        let hint = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
                        let buf = Vec::with_capacity(
                            hint.min(this.config.error_body_limit).min(8 * 1024),
                        );
                        this.state.set(State::ReadingError {
                            body,
                            status: parts.status,
                            headers: parts.headers,
                            buf,
                            empty_frames: 0,
                            started: now,
                            last_frame: now,
                            timer: None,
                        });
                        continue;
                    }
                    let mode = if has_no_body(parts.status, &body) {
                        // Nothing to scan, whatever the request asked for; a usage slot is
                        // still completed when the (empty) body is read.
                        this.slot.is_some().then_some(Mode::Json)
                    } else if is_event_stream(&parts.headers) {
                        Some(Mode::Sse)
                    } else if *this.wants_stream {
                        Some(Mode::Sniff)
                    } else if this.slot.is_some() {
                        Some(Mode::Json)
                    } else {
                        None
                    };
                    let Some(mode) = mode else {
                        // The success path: no allocation, no copy.
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ResponseBody::plain(body),
                        )));
                    };
                    if mode == Mode::Json && this.config.idle_timeout.is_none() {
                        if let Some(slot) = this.slot.take() {
                            // Read for its usage, in the body itself: no allocation.
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                ResponseBody::usage(body, JsonUsage::new(slot)),
                            )));
                        }
                    }
                    let stream =
                        StreamState::new(body, mode, &parts.headers, this.slot.take(), this.config);
                    if mode == Mode::Json {
                        this.state.set(State::Done);
                        let mut stream = stream;
                        stream.as_mut().hand_out();
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ResponseBody::inspected(stream),
                        )));
                    }
                    this.state.set(State::FirstEvent {
                        parts: Some(parts),
                        stream: Some(stream),
                    });
                }
                StateProj::FirstEvent { parts, stream } => {
                    let Some(state) = stream.as_mut() else {
                        panic!("ClassifyDashScopeError's ResponseFuture polled after completion");
                    };
                    let mut polled = 0;
                    loop {
                        if polled == FRAMES_PER_POLL {
                            // Plenty more may be ready: let other tasks run first.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        polled += 1;
                        match ready!(state.as_mut().poll_scan(cx)) {
                            Some(Ok(frame)) => state.as_mut().push_replay(frame),
                            Some(Err(err)) => {
                                // Before the first event: an error event, a transport failure,
                                // or a stream that ended with no event at all.
                                log_classified(&err, "stream before its first event");
                                this.state.set(State::Done);
                                return Poll::Ready(Err(err));
                            }
                            None => {}
                        }
                        if let Some(err) = state.as_mut().take_error_before_first_event() {
                            log_classified(&err, "stream before its first event");
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err));
                        }
                        let ready = state.events() > 0
                            || state.mode() == Mode::Json
                            || state.buffered_bytes() >= this.config.first_event_limit
                            || state.frames_read() >= super::FIRST_EVENT_FRAME_LIMIT
                            || state.is_done();
                        if ready {
                            break;
                        }
                    }
                    let (Some(parts), Some(mut state)) = (parts.take(), stream.take()) else {
                        unreachable!("both are present until the response is handed out");
                    };
                    state.as_mut().hand_out();
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::inspected(state),
                    )));
                }
                StateProj::ReadingError {
                    mut body,
                    status,
                    headers,
                    buf,
                    empty_frames,
                    started,
                    last_frame,
                    mut timer,
                } => {
                    let config = *this.config;
                    let mut body_error = None;
                    let mut timed_out = false;
                    let mut polled = 0;
                    while buf.len() < config.error_body_limit
                        && *empty_frames < ERROR_BODY_EMPTY_FRAME_LIMIT
                    {
                        let deadline = error_body_deadline(&config, *started, *last_frame);
                        if polled == FRAMES_PER_POLL {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                timed_out = true;
                                break;
                            }
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        polled += 1;
                        match body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if config.idle_timeout.is_some() {
                                    *last_frame = Instant::now();
                                }
                                match frame.into_data() {
                                    Ok(mut data) if data.has_remaining() => {
                                        copy_bounded(&mut data, buf, config.error_body_limit);
                                    }
                                    _ => *empty_frames += 1,
                                }
                            }
                            Poll::Ready(Some(Err(err))) => {
                                body_error = Some(err.into());
                                break;
                            }
                            Poll::Ready(None) => break,
                            Poll::Pending => {
                                // No deadline (or one too far to compute): wait for the body.
                                let Some(deadline) = deadline else {
                                    return Poll::Pending;
                                };
                                match timer.as_mut().as_pin_mut() {
                                    Some(sleep) if sleep.deadline() == deadline => {}
                                    Some(sleep) => sleep.reset(deadline),
                                    None => timer.set(Some(tokio::time::sleep_until(deadline))),
                                }
                                let Some(sleep) = timer.as_mut().as_pin_mut() else {
                                    unreachable!("the timer was just set");
                                };
                                ready!(sleep.poll(cx));
                                timed_out = true;
                                break;
                            }
                        }
                    }
                    let mut err = classify_response(*status, headers, buf);
                    if let Some(source) = body_error {
                        err = err.with_source(source);
                    } else if timed_out {
                        err = err.with_source(format!(
                            "the error body was still incomplete after {} bytes; classified \
                             from the status and the bytes that had arrived (see \
                             ClassifyDashScopeError::error_body_timeout)",
                            buf.len()
                        ));
                    }
                    log_classified(&err, "error response");
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

/// One `tracing` event for every classified failure.
pub(crate) fn log_classified(err: &DashScopeError, phase: &'static str) {
    tracing::debug!(
        phase,
        error.type = err.class().as_str(),
        http.response.status_code = err.status().map(|s| s.as_u16()),
        dashscope.code = err.code(),
        dashscope.request_id = err.request_id(),
        error = %err,
        "DashScope error classified"
    );
}

/// How many frames one poll reads before yielding to the executor.
const FRAMES_PER_POLL: usize = 64;

/// How many frames without bytes (empty data frames, trailers) an error body may send before
/// the error is classified from what has arrived: such frames make no progress towards the
/// byte limit.
const ERROR_BODY_EMPTY_FRAME_LIMIT: usize = 4096;

/// When reading an error body must stop: `error_body_timeout` after it began, or `idle_timeout`
/// after its last frame, whichever is first. `None` if neither applies (or neither can be
/// represented: a timeout too long to add to an instant never fires).
fn error_body_deadline(config: &Config, started: Instant, last_frame: Instant) -> Option<Instant> {
    let total = config
        .error_body_timeout
        .and_then(|timeout| started.checked_add(timeout));
    let idle = config
        .idle_timeout
        .and_then(|timeout| last_frame.checked_add(timeout));
    match (total, idle) {
        (Some(total), Some(idle)) => Some(total.min(idle)),
        (total, idle) => total.or(idle),
    }
}

/// Whether a successful response has no body to scan: `204 No Content`, `205 Reset Content`,
/// or a body that says it is empty.
fn has_no_body(status: StatusCode, body: &impl Body) -> bool {
    status == StatusCode::NO_CONTENT
        || status == StatusCode::RESET_CONTENT
        || body.is_end_stream()
        || body.size_hint().exact() == Some(0)
}

/// Whether the response says it is an event stream.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..17)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream"))
    })
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
            .field("config", &self.config)
            .field("wants_stream", &self.wants_stream)
            .finish_non_exhaustive()
    }
}
