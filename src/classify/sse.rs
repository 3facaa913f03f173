//! An incremental scanner for DashScope's server-sent events.
//!
//! It is fed the bytes of an event stream in whatever pieces they arrive, and reports the first
//! error event (with the offset in the piece where that event ends), whether a terminal event
//! (a final `finish_reason`, `data: [DONE]`, Anthropic's `message_stop`) was seen, and the usage
//! events declared. Lines wholly inside a piece are scanned in place; only a line split across
//! pieces is copied, into a buffer that is reused. Event data is parsed as JSON only when it
//! looks like an error; nothing allocates in the steady state.

use memchr::memmem;

use super::shapes::{ErrorFields, fields_from_object, object_is_error};
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
    /// `message`, `result` or no `event:` line.
    Data,
    Error,
    /// Anthropic's end of message.
    MessageStop,
}

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
            usage: want_usage.then(UsageScanner::default),
        }
    }

    /// Ordinary (non-error) events dispatched so far.
    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// Whether the stream declared its end: a final `finish_reason`, `[DONE]` or `message_stop`.
    pub(crate) fn saw_terminal(&self) -> bool {
        self.terminal
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
        let mut start = 0;
        while let Some(newline) = memchr::memchr(b'\n', &piece[start..]) {
            let end = start + newline;
            let found = if self.line.is_empty() && !self.line_overflow {
                self.line(&piece[start..end])
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
            self.kind = match value {
                b"error" => EventKind::Error,
                b"message_stop" => EventKind::MessageStop,
                _ => EventKind::Data,
            };
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
        let status_is_error = status.is_some_and(|s| !(200..300).contains(&s));
        let looks_like_error =
            memmem::find(data, b"\"error\"").is_some() || memmem::find(data, b"\"code\"").is_some();
        if kind == EventKind::Error || status_is_error || looks_like_error {
            let parsed = parse_candidate(data);
            let is_error = kind == EventKind::Error
                || status_is_error
                || parsed.as_ref().is_some_and(|(_, is_error)| *is_error);
            if is_error {
                let mut fields = parsed.map(|(fields, _)| fields).unwrap_or_default();
                fields.status = status;
                return Some(fields);
            }
        }
        if kind == EventKind::MessageStop || data == b"[DONE]" || has_final_finish_reason(data) {
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

/// Parses an error candidate: its fields, and whether the object really reports an error.
fn parse_candidate(data: &[u8]) -> Option<(ErrorFields, bool)> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let top = value.as_object()?;
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
