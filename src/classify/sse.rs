//! An incremental scanner for DashScope's server-sent events.
//!
//! It is fed the bytes of an event stream in whatever pieces they arrive, and reports the first
//! error event (with the offset in the piece where that event ends), which API the stream speaks
//! (a chat stream — native, OpenAI-compatible chat completions, Anthropic messages — or the
//! OpenAI Responses API), whether that API's terminal event (a final `finish_reason`,
//! `data: [DONE]`, Anthropic's `message_stop`, `response.completed` / `response.incomplete`) was
//! seen, and the usage events declared. One leading UTF-8 byte-order mark is skipped, as the SSE
//! specification says. Lines wholly inside a piece are scanned in place; only a line split across
//! pieces is copied, into a buffer that is reused. Event data is parsed as JSON only when it
//! looks like an error; nothing allocates in the steady state.

use memchr::memmem;

use super::shapes::{ErrorFields, fields_from_object, object_is_error, parse_error_object};
use super::usage::{Usage, UsageScanner};

/// `HTTP_STATUS/429` → `429`.
fn parse_status_comment(comment: &[u8]) -> Option<u16> {
    let digits = comment
        .trim_ascii()
        .strip_prefix(b"HTTP_STATUS/")?
        .trim_ascii();
    if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The value of an SSE field line `name:value` (one leading space removed), if `line` is one.
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

#[cfg(test)]
#[test]
fn status_comment() {
    assert_eq!(parse_status_comment(b"HTTP_STATUS/429"), Some(429));
    assert_eq!(parse_status_comment(b"HTTP_STATUS/429\r"), Some(429));
    assert_eq!(parse_status_comment(b" HTTP_STATUS/400"), Some(400));
    assert_eq!(parse_status_comment(b"HTTP_STATUS/4299"), None);
    assert_eq!(parse_status_comment(b"HTTP_STATUS/"), None);
    assert_eq!(parse_status_comment(b"keep-alive"), None);
}

/// An error event found in the stream.
#[derive(Debug)]
pub(crate) struct ScanError {
    /// Offset, in the piece just fed, of the first byte after the error event.
    pub(crate) end: usize,
    /// What the event said; `status` is its `:HTTP_STATUS/NNN`, if it had one.
    pub(crate) fields: ErrorFields,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    /// `message`, `result`, any other name, or no `event:` line.
    Data,
    Error,
    /// Anthropic's start of message: the stream is a chat stream.
    MessageStart,
    /// Anthropic's end of message.
    MessageStop,
    /// Any other `response.*` event of the OpenAI Responses API.
    Response,
    /// `response.completed` or `response.incomplete`: the Responses API's terminal events.
    ResponseEnd,
    /// `response.failed`: the Responses API's failure, its error under `response.error`.
    ResponseFailed,
}

impl EventKind {
    /// The kind an event name (an `event:` line, or a JSON `"type"`) gives.
    fn from_name(name: &[u8]) -> EventKind {
        match name {
            b"error" => EventKind::Error,
            b"message_start" => EventKind::MessageStart,
            b"message_stop" => EventKind::MessageStop,
            b"response.completed" | b"response.incomplete" => EventKind::ResponseEnd,
            b"response.failed" => EventKind::ResponseFailed,
            name if name.starts_with(b"response.") => EventKind::Response,
            _ => EventKind::Data,
        }
    }
}

/// Which API a stream speaks, as far as its events have told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamApi {
    /// Nothing recognisable yet: the end of the stream cannot be checked.
    Unknown,
    /// A chat stream (native, OpenAI-compatible chat completions or Anthropic messages): it ends
    /// with a final `finish_reason`, `data: [DONE]` or `message_stop`.
    Chat,
    /// The OpenAI Responses API: it ends with `response.completed` or `response.incomplete`.
    Responses,
}

/// The UTF-8 byte-order mark.
pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug)]
pub(crate) struct SseScanner {
    /// The part of a line that began in an earlier piece.
    line: Vec<u8>,
    line_overflow: bool,
    /// The current event's data lines, joined with `\n`.
    data: Vec<u8>,
    data_overflow: bool,
    kind: EventKind,
    status: Option<u16>,
    /// The most recent `:HTTP_STATUS/NNN` seen in any event.
    last_status: Option<u16>,
    /// Limit on one line and on one event's data.
    max_event_size: usize,
    events: u64,
    terminal: bool,
    /// An event was too large to inspect, so `terminal` may be wrong.
    uninspected: bool,
    api: StreamApi,
    /// `Some(n)`: still at the start of the stream, its first `n` bytes a prefix of a BOM.
    bom: Option<u8>,
    usage: Option<UsageScanner>,
}

impl SseScanner {
    pub(crate) fn new(max_event_size: usize, want_usage: bool) -> Self {
        SseScanner {
            line: Vec::new(),
            line_overflow: false,
            data: Vec::new(),
            data_overflow: false,
            kind: EventKind::Data,
            status: None,
            last_status: None,
            max_event_size,
            events: 0,
            terminal: false,
            uninspected: false,
            api: StreamApi::Unknown,
            bom: Some(0),
            usage: want_usage.then(UsageScanner::default),
        }
    }

    /// Ordinary (non-error) events dispatched so far.
    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// Whether the stream declared its end: a final `finish_reason`, `[DONE]`, `message_stop`,
    /// `response.completed` or `response.incomplete`.
    pub(crate) fn saw_terminal(&self) -> bool {
        self.terminal
    }

    /// Which API the stream's events showed it speaks.
    pub(crate) fn api(&self) -> StreamApi {
        self.api
    }

    /// Whether an event was too large to inspect (so the absence of a terminal event proves
    /// nothing).
    pub(crate) fn uninspected(&self) -> bool {
        self.uninspected
    }

    /// The most recent `:HTTP_STATUS/NNN` value seen.
    pub(crate) fn last_status(&self) -> Option<u16> {
        self.status.or(self.last_status)
    }

    /// The usage declared since the last call, if any.
    pub(crate) fn take_usage(&mut self) -> Option<Usage> {
        self.usage.as_mut().and_then(UsageScanner::take)
    }

    /// Scans the next piece. Stops at, and returns, the first error event.
    pub(crate) fn feed(&mut self, piece: &[u8]) -> Option<ScanError> {
        let mut start = self.skip_bom(piece);
        while let Some(newline) = memchr::memchr(b'\n', &piece[start..]) {
            let end = start + newline;
            let found = if self.line.is_empty() && !self.line_overflow {
                let line = &piece[start..end];
                if line.len() > self.max_event_size {
                    // The same limit as for a line that spans pieces, so that the verdict
                    // does not depend on where the stream was split.
                    self.data_overflow = true;
                    None
                } else {
                    self.line(line)
                }
            } else {
                self.push_line_part(&piece[start..end]);
                let line = std::mem::take(&mut self.line);
                let found = if self.line_overflow {
                    self.data_overflow = true;
                    None
                } else {
                    self.line(&line)
                };
                self.line = line;
                self.line.clear();
                self.line_overflow = false;
                found
            };
            start = end + 1;
            if let Some(fields) = found {
                return Some(ScanError { end: start, fields });
            }
        }
        self.push_line_part(&piece[start..]);
        None
    }

    /// The stream ended: dispatches an event left without its closing blank line.
    pub(crate) fn finish(&mut self) -> Option<ScanError> {
        if !self.line.is_empty() && !self.line_overflow {
            let line = std::mem::take(&mut self.line);
            let found = self.line(&line);
            if found.is_some() {
                return found.map(|fields| ScanError { end: 0, fields });
            }
        }
        self.line.clear();
        self.dispatch().map(|fields| ScanError { end: 0, fields })
    }

    /// At the start of the stream: how many bytes of `piece` belong to a leading BOM (possibly
    /// split across pieces). Bytes held back as a BOM prefix that turn out not to be one are
    /// given back to the first line.
    fn skip_bom(&mut self, piece: &[u8]) -> usize {
        let Some(matched) = self.bom else { return 0 };
        let want = &BOM[usize::from(matched)..];
        let n = want.len().min(piece.len());
        if piece[..n] == want[..n] {
            self.bom = if n == want.len() {
                None
            } else {
                Some(matched + n as u8)
            };
            return n;
        }
        self.bom = None;
        self.push_line_part(&BOM[..usize::from(matched)]);
        0
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.line.len() + part.len() > self.max_event_size {
            self.line_overflow = true;
            self.line.clear();
        } else if !self.line_overflow {
            self.line.extend_from_slice(part);
        }
    }

    /// One complete line, without its `\n`.
    fn line(&mut self, line: &[u8]) -> Option<ErrorFields> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if let Some(comment) = line.strip_prefix(b":") {
            if let Some(status) = parse_status_comment(comment) {
                self.status = Some(status);
            }
        } else if let Some(value) = field_value(line, b"data") {
            if self.data.len() + value.len() + 1 > self.max_event_size {
                self.data_overflow = true;
            } else if !self.data_overflow {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
        } else if let Some(value) = field_value(line, b"event") {
            self.kind = EventKind::from_name(value);
        }
        None
    }

    /// The end of an event (a blank line, or the end of the stream).
    fn dispatch(&mut self) -> Option<ErrorFields> {
        let kind = std::mem::replace(&mut self.kind, EventKind::Data);
        let status = self.status.take();
        if status.is_some() {
            self.last_status = status;
        }
        let overflow = std::mem::take(&mut self.data_overflow);
        if self.data.is_empty() && !overflow && kind != EventKind::Error {
            // Comments only (keep-alives): no event.
            return None;
        }
        let found = if overflow {
            self.uninspected = true;
            None
        } else {
            self.inspect(kind, status)
        };
        if found.is_none() {
            self.events += 1;
        }
        self.data.clear();
        found
    }

    fn inspect(&mut self, kind: EventKind, status: Option<u16>) -> Option<ErrorFields> {
        let data = &self.data[..];
        // Without an `event:` line, the JSON's own `"type"` names the event (Anthropic and the
        // Responses API put it in both places).
        let kind = match kind {
            EventKind::Data => match json_type(data).map(EventKind::from_name) {
                Some(EventKind::Error) | None => EventKind::Data,
                Some(kind) => kind,
            },
            kind => kind,
        };
        let failed = matches!(kind, EventKind::Error | EventKind::ResponseFailed);
        let status_is_error = status.is_some_and(|s| !(200..300).contains(&s));
        let looks_like_error =
            memmem::find(data, b"\"error\"").is_some() || memmem::find(data, b"\"code\"").is_some();
        if failed || status_is_error || looks_like_error {
            let parsed = parse_candidate(data, kind == EventKind::ResponseFailed);
            // Data that opens an error object but is not valid JSON (cut short, or nested past
            // the parser's limit) is a failure whose fields cannot be read, not output.
            let is_error = failed
                || status_is_error
                || match &parsed {
                    Some((_, is_error)) => *is_error,
                    None => opens_error_object(data),
                };
            if is_error {
                let mut fields = parsed
                    .map(|(fields, _)| fields)
                    .unwrap_or_else(|| ErrorFields {
                        malformed: !failed && !status_is_error,
                        ..ErrorFields::default()
                    });
                fields.status = status;
                return Some(fields);
            }
        }
        match kind {
            EventKind::MessageStart | EventKind::MessageStop => self.api = StreamApi::Chat,
            EventKind::Response | EventKind::ResponseEnd => self.api = StreamApi::Responses,
            EventKind::Data | EventKind::Error | EventKind::ResponseFailed => {
                if self.api == StreamApi::Unknown && is_chat_event(data) {
                    self.api = StreamApi::Chat;
                }
            }
        }
        if matches!(kind, EventKind::MessageStop | EventKind::ResponseEnd)
            || data == b"[DONE]"
            || has_final_finish_reason(data)
        {
            self.terminal = true;
        }
        if let Some(usage) = &mut self.usage {
            usage.reset_partial();
            usage.feed(data);
        }
        None
    }
}

/// Whether `data` has a `"finish_reason"` whose value is a string other than `"null"`.
/// (Native streams send the string `"null"` until the end; compatible streams send `null`.)
fn has_final_finish_reason(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"finish_reason\"";
    let mut rest = data;
    while let Some(at) = memmem::find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let value = rest.trim_ascii_start();
        let Some(value) = value.strip_prefix(b":") else {
            continue;
        };
        let Some(value) = value.trim_ascii_start().strip_prefix(b"\"") else {
            continue; // null, or not a string
        };
        let end = memchr::memchr(b'"', value).unwrap_or(value.len());
        let reason = &value[..end];
        if !reason.is_empty() && reason != b"null" {
            return true;
        }
    }
    false
}

/// Whether `data` is an event of a chat stream: it has a `"finish_reason"` key (native and
/// OpenAI-compatible chunks carry one, `null` until the end) or is a `chat.completion.chunk`
/// (the compatible API's final usage chunk has no choices).
///
/// A key cannot be faked by content: inside a JSON string its quotes are escaped.
fn is_chat_event(data: &[u8]) -> bool {
    memmem::find(data, b"\"finish_reason\"").is_some()
        || memmem::find(data, b"\"chat.completion.chunk\"").is_some()
}

/// The string value of the first `"type"` key in `data`, if it is a string.
fn json_type(data: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"type\"";
    let at = memmem::find(data, KEY)?;
    let value = data[at + KEY.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?;
    let value = value.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', value)?;
    Some(&value[..end])
}

/// Parses an error candidate: its fields, and whether the object really reports an error. For
/// a Responses-API `response.failed`, the fields are those of its `response` object.
/// Whether `data` begins an object whose first key is `"error"`: `{"error":`, whitespace allowed.
fn opens_error_object(data: &[u8]) -> bool {
    data.trim_ascii_start()
        .strip_prefix(b"{")
        .map(<[u8]>::trim_ascii_start)
        .and_then(|rest| rest.strip_prefix(b"\"error\""))
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(b":"))
}

fn parse_candidate(data: &[u8], response_failed: bool) -> Option<(ErrorFields, bool)> {
    let value = parse_error_object(data)?;
    let top = &value;
    let top = if response_failed {
        top.get("response")
            .and_then(serde_json::Value::as_object)
            .unwrap_or(top)
    } else {
        top
    };
    Some((fields_from_object(top), object_is_error(top)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATIVE_OK: &str = "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"Hel\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]},\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"total_tokens\":11},\"request_id\":\"r1\"}\n\nid:2\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"Hello\",\"role\":\"assistant\"},\"finish_reason\":\"stop\"}]},\"usage\":{\"input_tokens\":10,\"output_tokens\":2,\"total_tokens\":12},\"request_id\":\"r1\"}\n\n";

    fn scan_all(body: &[u8], cuts: &[usize]) -> (SseScanner, Option<(usize, ErrorFields)>) {
        let mut scanner = SseScanner::new(1 << 20, true);
        let mut offset = 0;
        let mut pieces = Vec::new();
        let mut last = 0;
        for &cut in cuts {
            pieces.push(&body[last..cut]);
            last = cut;
        }
        pieces.push(&body[last..]);
        for piece in pieces {
            if let Some(err) = scanner.feed(piece) {
                return (scanner, Some((offset + err.end, err.fields)));
            }
            offset += piece.len();
        }
        let err = scanner.finish().map(|e| (body.len(), e.fields));
        (scanner, err)
    }

    #[test]
    fn native_stream_terminal_and_usage() {
        let (mut scanner, err) = scan_all(NATIVE_OK.as_bytes(), &[]);
        assert!(err.is_none());
        assert_eq!(scanner.events(), 2);
        assert!(scanner.saw_terminal());
        assert_eq!(scanner.take_usage(), Some(Usage::new(10, 2)));
    }

    #[test]
    fn native_null_string_is_not_terminal() {
        let first_event = &NATIVE_OK[..NATIVE_OK.find("id:2").unwrap()];
        let (scanner, err) = scan_all(first_event.as_bytes(), &[]);
        assert!(err.is_none());
        assert_eq!(scanner.events(), 1);
        assert!(!scanner.saw_terminal());
    }

    #[test]
    fn split_anywhere_gives_the_same_answer() {
        let body = NATIVE_OK.replace('\n', "\r\n");
        for body in [NATIVE_OK.to_owned(), body] {
            for cut in 0..=body.len() {
                let (mut scanner, err) = scan_all(body.as_bytes(), &[cut]);
                assert!(err.is_none(), "cut {cut}");
                assert_eq!(scanner.events(), 2, "cut {cut}");
                assert!(scanner.saw_terminal(), "cut {cut}");
                assert_eq!(scanner.take_usage(), Some(Usage::new(10, 2)), "cut {cut}");
            }
        }
    }

    #[test]
    fn error_event_with_status_comment() {
        let body = "id:1\nevent:error\n:HTTP_STATUS/429\ndata:{\"request_id\":\"r\",\"code\":\"Throttling.AllocationQuota\",\"message\":\"Allocated quota exceeded, please increase your quota limit.\"}\n\ntrailing";
        let (_, err) = scan_all(body.as_bytes(), &[]);
        let (end, fields) = err.unwrap();
        assert_eq!(end, body.find("trailing").unwrap());
        assert_eq!(fields.status, Some(429));
        assert_eq!(fields.code.as_deref(), Some("Throttling.AllocationQuota"));
    }

    #[test]
    fn compatible_error_chunk_after_tokens() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"error\":{\"message\":\"Output data may contain inappropriate content.\",\"type\":\"data_inspection_failed\",\"code\":\"data_inspection_failed\"},\"id\":\"chatcmpl-1\"}\n\n";
        let (scanner, err) = scan_all(body.as_bytes(), &[]);
        let (end, fields) = err.unwrap();
        assert_eq!(end, body.len());
        assert_eq!(fields.code.as_deref(), Some("data_inspection_failed"));
        assert_eq!(scanner.events(), 1, "one ordinary event before the error");
        assert!(!scanner.saw_terminal());
    }

    #[test]
    fn content_that_mentions_errors_is_not_an_error() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"the \\\"error\\\" and \\\"code\\\" keys\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let (scanner, err) = scan_all(body.as_bytes(), &[]);
        assert!(err.is_none());
        assert!(scanner.saw_terminal());
    }

    #[test]
    fn multi_line_data_and_comments() {
        let body = ": keep-alive\n\ndata: {\"error\":\ndata: {\"code\":\"x\",\"message\":\"two lines\"}}\n\n";
        let (scanner, err) = scan_all(body.as_bytes(), &[]);
        let (_, fields) = err.unwrap();
        assert_eq!(fields.message.as_deref(), Some("two lines"));
        assert_eq!(scanner.events(), 0, "the keep-alive is not an event");
    }

    #[test]
    fn an_event_without_its_blank_line_is_dispatched_at_the_end() {
        let body = "event:error\n:HTTP_STATUS/500\ndata:{\"code\":\"InternalError\"}";
        let (_, err) = scan_all(body.as_bytes(), &[]);
        assert_eq!(err.unwrap().1.status, Some(500));
    }

    #[test]
    fn oversized_events_are_not_inspected() {
        let mut scanner = SseScanner::new(64, false);
        let body = format!("data: {{\"x\":\"{}\"}}\n\n", "y".repeat(200));
        assert!(scanner.feed(body.as_bytes()).is_none());
        assert_eq!(scanner.events(), 1);
        assert!(scanner.uninspected());
        // Split so that the long line spans pieces.
        let mut scanner = SseScanner::new(64, false);
        let (a, b) = body.split_at(10);
        assert!(scanner.feed(a.as_bytes()).is_none());
        assert!(scanner.feed(b.as_bytes()).is_none());
        assert!(scanner.uninspected());
        assert!(scanner.line.capacity() <= 64);
    }

    /// Found by the `sse_chunks` fuzz target: a line longer than the limit was inspected when
    /// it arrived in one piece and not when it spanned pieces, so whether a stream was reported
    /// truncated (or an error found) depended on where the network split it.
    #[test]
    fn a_line_over_the_limit_is_uninspected_wherever_the_pieces_split() {
        // A comment line, and a data line whose value fits the limit but whose line does not.
        let comment = format!(":{}\n\n", "c".repeat(80));
        let data = format!("data:{{\"error\":{{\"code\":\"{}\"}}}}\n\n", "x".repeat(40));
        assert!(data.find('\n').unwrap() > 64 && data.find('\n').unwrap() - 5 < 64);
        for body in [comment, data] {
            let expect = {
                let mut scanner = SseScanner::new(64, false);
                let found = scanner.feed(body.as_bytes()).is_some() || scanner.finish().is_some();
                (found, scanner.uninspected(), scanner.events())
            };
            for cut in 0..=body.len() {
                let mut scanner = SseScanner::new(64, false);
                let (a, b) = body.split_at(cut);
                let found = scanner.feed(a.as_bytes()).is_some()
                    || scanner.feed(b.as_bytes()).is_some()
                    || scanner.finish().is_some();
                assert_eq!(
                    (found, scanner.uninspected(), scanner.events()),
                    expect,
                    "cut {cut} of {body:?}"
                );
            }
            assert_eq!(expect, (false, true, 1), "{body:?}");
        }
    }

    #[test]
    fn one_leading_bom_is_skipped_wherever_the_pieces_split() {
        let body = "\u{feff}data: {\"error\":{\"code\":\"x\",\"message\":\"m\"}}\n\n";
        for cut in 0..=body.len() {
            let (_, err) = scan_all(body.as_bytes(), &[cut]);
            assert_eq!(err.unwrap().1.code.as_deref(), Some("x"), "cut {cut}");
        }
        let cuts: Vec<usize> = (1..body.len()).collect();
        let (_, err) = scan_all(body.as_bytes(), &cuts);
        assert!(err.is_some());
        // Only the first: a second BOM makes the first line an unknown field.
        let body = format!("\u{feff}{body}");
        let (scanner, err) = scan_all(body.as_bytes(), &[1, 2, 4]);
        assert!(err.is_none());
        assert_eq!(scanner.events(), 0);
        // A BOM prefix that is not a BOM is given back to the line.
        let mut scanner = SseScanner::new(64, false);
        assert!(scanner.feed(b"\xEF").is_none());
        assert!(scanner.feed(b"data: x\n\n").is_none());
        assert_eq!(
            scanner.events(),
            0,
            "the line was `\\xEFdata: x`, not a data field"
        );
    }

    #[test]
    fn which_api_a_stream_speaks() {
        let (scanner, _) = scan_all(NATIVE_OK.as_bytes(), &[]);
        assert_eq!(scanner.api(), StreamApi::Chat);
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n";
        let (scanner, _) = scan_all(anthropic.as_bytes(), &[]);
        assert_eq!(scanner.api(), StreamApi::Chat);
        assert!(!scanner.saw_terminal());
        // The Responses API, with or without `event:` lines.
        for body in [
            "event: response.created\ndata: {}\n\nevent: response.completed\ndata: {}\n\n",
            "data: {\"type\":\"response.created\"}\n\ndata: {\"type\" : \"response.incomplete\"}\n\n",
        ] {
            let (scanner, err) = scan_all(body.as_bytes(), &[]);
            assert!(err.is_none());
            assert_eq!(scanner.api(), StreamApi::Responses, "{body}");
            assert!(scanner.saw_terminal(), "{body}");
        }
        let failed = "data: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\n";
        let (_, err) = scan_all(failed.as_bytes(), &[]);
        assert_eq!(err.unwrap().1.message.as_deref(), Some("boom"));
        // Content cannot fake a key: its quotes are escaped.
        let unknown =
            "data: {\"text\":\"\\\"finish_reason\\\" \\\"type\\\":\\\"response.created\\\"\"}\n\n";
        let (scanner, _) = scan_all(unknown.as_bytes(), &[]);
        assert_eq!(scanner.api(), StreamApi::Unknown);
    }

    #[test]
    fn json_type_forms() {
        assert_eq!(json_type(br#"{"type":"a.b"}"#), Some(&b"a.b"[..]));
        assert_eq!(json_type(br#"{ "type" : "x" }"#), Some(&b"x"[..]));
        assert_eq!(json_type(br#"{"type":1}"#), None);
        assert_eq!(json_type(br#"{"type":"unterminated"#), None);
        assert_eq!(json_type(b"[DONE]"), None);
    }

    #[test]
    fn finish_reason_forms() {
        assert!(has_final_finish_reason(br#"{"finish_reason":"stop"}"#));
        assert!(has_final_finish_reason(br#"{"finish_reason" : "length"}"#));
        assert!(has_final_finish_reason(
            br#"{"a":{"finish_reason":null},"b":{"finish_reason":"tool_calls"}}"#
        ));
        assert!(!has_final_finish_reason(br#"{"finish_reason":"null"}"#));
        assert!(!has_final_finish_reason(br#"{"finish_reason":null}"#));
        assert!(!has_final_finish_reason(br#"{"finish_reason":""}"#));
        assert!(!has_final_finish_reason(br#"{"finish_reason""#));
    }
}
