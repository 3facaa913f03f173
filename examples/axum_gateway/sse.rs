//! Relays an upstream chat stream to the caller, event by event, and never ends a broken
//! stream as if it were whole.
//!
//! - Each complete `data:` event is sent on as soon as it is in (comments and blank events are
//!   dropped; `event:`/`id:` lines are not part of the OpenAI chat stream).
//! - The gateway always asks upstream for the usage chunk (the budget settles against it). A
//!   caller that did not ask for it does not get the usage-only chunk (empty `choices`, which
//!   code reading `chunk.choices[0]` would trip on): its `usage` goes into the chunk that
//!   carried the `finish_reason` instead, which OpenAI's chunk type has room for.
//! - An upstream error event, a body error (cut, idle timeout) or the gateway's total timeout
//!   ends the stream with one `data: {"error": {...}}` event and no `[DONE]`: the OpenAI SDKs
//!   raise `APIError` on it.
//! - A stream that ends cleanly without `[DONE]` gets one if it had a `finish_reason`, and an
//!   error event if not.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};
use tower_dashscope::{DashScopeError, ErrorClass};

use super::app::{error_message, map_error};
use super::stack::UpstreamBody;

/// The longest event the relay holds while waiting for its end.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// The caller's body: see the [module docs](self).
pub struct SseRelay {
    upstream: UpstreamBody,
    deadline: Pin<Box<Sleep>>,
    buffer: BytesMut,
    out: VecDeque<Bytes>,
    // The chunk with the finish_reason, held to take the usage of the chunk after it.
    held: Option<Value>,
    caller_wants_usage: bool,
    // An error event upstream sent: the body's error should follow; if it does not, this
    // one is reported.
    upstream_error: Option<Value>,
    seen_finish: bool,
    seen_done: bool,
    finished: bool,
    usage: Option<Value>,
    served: String,
}

impl SseRelay {
    /// Relays `upstream` until `deadline`.
    pub fn new(
        upstream: UpstreamBody,
        deadline: Instant,
        caller_wants_usage: bool,
        served: String,
    ) -> Self {
        SseRelay {
            upstream,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            buffer: BytesMut::new(),
            out: VecDeque::new(),
            held: None,
            caller_wants_usage,
            upstream_error: None,
            seen_finish: false,
            seen_done: false,
            finished: false,
            usage: None,
            served,
        }
    }
}

/// `data: <json>\n\n`.
fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The error event for `err`, in OpenAI's shape.
pub fn error_event(err: &DashScopeError) -> Bytes {
    let (_, kind, code) = map_error(err);
    event(&json!({"error": {
        "message": error_message(err),
        "type": kind,
        "param": null,
        "code": code,
    }}))
}

/// Where the first blank line (event end) is in `buf`: (end of event, start of next).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// The `data:` lines of one event, joined with `\n` as the SSE format says.
fn event_data(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_owned()),
            }
        }
    }
    data
}

impl SseRelay {
    /// One complete upstream event.
    fn on_event(&mut self, raw: &[u8]) {
        let Some(data) = event_data(raw) else { return };
        if data.trim() == "[DONE]" {
            self.flush_held();
            if self.upstream_error.is_none() {
                self.seen_done = true;
                self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            return;
        }
        let Ok(value) = serde_json::from_str::<Value>(&data) else {
            // Not JSON: passed on as it came.
            self.flush_held();
            self.out.push_back(data_event(&data));
            return;
        };
        if value.get("error").is_some_and(|e| !e.is_null()) {
            // The classifier below ends the body with this error, typed: reported then, once.
            self.upstream_error = Some(value);
            return;
        }
        if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage.clone());
        }
        let choices_empty = value
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        let usage_only = choices_empty && value.get("usage").is_some_and(|u| !u.is_null());
        if usage_only && !self.caller_wants_usage {
            // Onto the chunk with the finish_reason; with none held, there is nowhere to put it.
            if let Some(mut held) = self.held.take() {
                held["usage"] = value["usage"].clone();
                self.out.push_back(event(&held));
            }
            return;
        }
        self.flush_held();
        let finishes = value
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| !c["finish_reason"].is_null()));
        if finishes {
            self.seen_finish = true;
            if !self.caller_wants_usage {
                self.held = Some(value);
                return;
            }
        }
        self.out.push_back(data_event(&data));
    }

    fn flush_held(&mut self) {
        if let Some(held) = self.held.take() {
            self.out.push_back(event(&held));
        }
    }

    /// Ends the stream with `err`'s error event.
    fn fail(&mut self, err: &DashScopeError) {
        self.flush_held();
        self.out.push_back(error_event(err));
        self.finished = true;
        tracing::warn!(
            gen_ai.response.model = %self.served,
            error.type = err.class().as_str(),
            dashscope.code = err.code().unwrap_or(""),
            "gateway: the stream broke after its first byte reached the caller; ending it \
             with an error event"
        );
    }

    /// The upstream body ended cleanly.
    fn end(&mut self) {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            self.on_event(&rest);
        }
        if let Some(value) = self.upstream_error.take() {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("the upstream stream reported an error")
                .to_owned();
            let err = DashScopeError::new(ErrorClass::StreamInterrupted).with_message(message);
            self.fail(&err);
            return;
        }
        self.flush_held();
        if !self.seen_done {
            if self.seen_finish {
                self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            } else {
                let err = DashScopeError::new(ErrorClass::StreamInterrupted).with_message(
                    "the upstream stream ended before its answer was complete (no \
                     finish_reason and no [DONE]); retry the request",
                );
                self.fail(&err);
                return;
            }
        }
        self.finished = true;
        let usage = self.usage.as_ref();
        tracing::info!(
            gen_ai.response.model = %self.served,
            gen_ai.usage.input_tokens = usage.and_then(|u| u["prompt_tokens"].as_u64()).unwrap_or(0),
            gen_ai.usage.output_tokens = usage.and_then(|u| u["completion_tokens"].as_u64()).unwrap_or(0),
            "gateway: stream complete"
        );
    }
}

/// `data: …\n\n`, one `data:` line per line of `data`.
fn data_event(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                let err = DashScopeError::new(ErrorClass::Timeout).with_message(
                    "the stream did not finish within the gateway's total timeout \
                     (timeouts.total); ask for fewer tokens or raise the timeout",
                );
                this.fail(&err);
                continue;
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.end(),
                Poll::Ready(Some(Err(err))) => {
                    // Whatever the upstream error event said is in this typed error.
                    this.upstream_error = None;
                    let rest = std::mem::take(&mut this.buffer);
                    if !rest.is_empty() {
                        this.on_event(&rest);
                        this.upstream_error = None;
                    }
                    this.fail(&err);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.buffer.extend_from_slice(&data);
                    while let Some((end, next)) = event_end(&this.buffer) {
                        let raw = this.buffer.split_to(next);
                        this.on_event(&raw[..end]);
                    }
                    if this.buffer.len() > MAX_EVENT_BYTES {
                        this.buffer.clear();
                        let err = DashScopeError::new(ErrorClass::StreamInterrupted).with_message(
                            "an upstream event was over 1 MiB without an end; the stream was \
                             cut",
                        );
                        this.fail(&err);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
