//! Reading DashScope's four error body shapes and mapping them to an [`ErrorClass`].
//!
//! Everything here runs on the failure path only, over a body already cut to the configured
//! bound; nothing here panics on any input.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::sse::SseScanner;
use crate::error::{DashScopeError, ErrorClass, RateLimitKind};
use crate::retry_after::parse_retry_after;

pub(crate) use crate::headers::X_REQUEST_ID;

/// Plain-text bodies longer than this are not kept as the message (they are HTML error pages
/// and the like, not a message a person wants in a log line).
const MAX_PLAIN_TEXT_MESSAGE: usize = 256;

/// Classifies a failed response from its status, headers and (bounded) body.
///
/// This is what [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) runs on every non-2xx
/// response; it is public so that other layers, tests and benchmarks can classify a response
/// they already hold. It reads all four of DashScope's error shapes — native flat
/// (`{"code","message","request_id"}`), nested `{"error":{…}}` (native and OpenAI-compatible),
/// Anthropic-style `{"type":"error","error":{…}}`, and SSE-framed error events, whose
/// `:HTTP_STATUS/NNN` comment line gives the real status even on an HTTP 200 — then decides the
/// class by status, then code, then message text, following DashScope's error-code
/// documentation and its traps. A body that is not JSON,
/// is truncated, empty or not UTF-8 is classified from the status alone.
///
/// The response is taken to be a failure: a 2xx status with no error in its body still gives an
/// error (of class [`ErrorClass::ServerError`]).
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_dashscope::{classify::classify_response, ErrorClass, RateLimitKind};
///
/// let body = br#"{"error":{"message":"You exceeded your current quota, please check your plan.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
/// let err = classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
/// // Despite the wording, this is tokens-per-minute throttling: retry later.
/// assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Tokens));
/// assert!(err.is_retryable());
/// ```
#[must_use]
pub fn classify_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> DashScopeError {
    let request_id = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok());
    error_from_fields(
        Some(status),
        parse_body(body),
        request_id,
        parse_retry_after(headers),
    )
}

/// Builds the error from what a body said. The status is the body's own (an SSE
/// `:HTTP_STATUS/NNN`) if it gave one, else `http_status`.
pub(crate) fn error_from_fields(
    http_status: Option<StatusCode>,
    fields: ErrorFields,
    header_request_id: Option<&str>,
    retry_after: Option<Duration>,
) -> DashScopeError {
    let status = fields
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .or(http_status);

    let (prefix_code, message) = match fields.message.as_deref() {
        Some(message) => {
            let (code, rest) = split_message_prefix(message);
            (code, Some(rest))
        }
        None => (None, None),
    };

    let class = if fields.plain_text {
        classify_plain(status, message)
    } else {
        classify(
            status,
            fields.code.as_deref(),
            fields.error_type.as_deref(),
            prefix_code,
            message,
        )
    };

    let mut err = DashScopeError::new(class);
    if let Some(status) = status {
        err = err.with_status(status);
    }
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        err = err.with_message(message);
    }
    if let Some(code) = fields.code.or(fields.error_type) {
        err = err.with_code(code);
    }
    let request_id = fields
        .request_id
        .as_deref()
        .or(header_request_id)
        .or(fields.trace_id.as_deref())
        .filter(|id| !id.is_empty());
    if let Some(request_id) = request_id {
        err = err.with_request_id(request_id);
    }
    if let Some(retry_after) = retry_after {
        err = err.with_retry_after(retry_after);
    }
    err
}

/// What an error body said, in whichever shape it came.
#[derive(Debug, Default)]
pub(crate) struct ErrorFields {
    /// The status from an SSE `:HTTP_STATUS/NNN` comment line.
    pub(crate) status: Option<u16>,
    pub(crate) code: Option<String>,
    pub(crate) error_type: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) trace_id: Option<String>,
    /// The body was short plain text (not JSON, not SSE), kept only as the message.
    pub(crate) plain_text: bool,
}

fn parse_body(body: &[u8]) -> ErrorFields {
    let trimmed = trim_start(body);
    match trimmed.first() {
        None => ErrorFields::default(),
        Some(b'{') => parse_json(trimmed).unwrap_or_default(),
        Some(_) if looks_like_sse(trimmed) => parse_sse(trimmed),
        Some(_) => parse_plain(trimmed),
    }
}

fn trim_start(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(body)
        .trim_ascii_start()
}

fn looks_like_sse(body: &[u8]) -> bool {
    [&b"id:"[..], b"event:", b"data:", b":", b"retry:"]
        .iter()
        .any(|p| body.starts_with(p))
}

fn parse_plain(body: &[u8]) -> ErrorFields {
    let message = std::str::from_utf8(body)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_PLAIN_TEXT_MESSAGE && !t.starts_with('<'))
        .map(sanitize);
    ErrorFields {
        message,
        plain_text: true,
        ..ErrorFields::default()
    }
}

/// Parses one JSON error object in any of the JSON shapes. `None` when it is not a JSON object.
fn parse_json(json: &[u8]) -> Option<ErrorFields> {
    let value: Value = serde_json::from_slice(json).ok()?;
    let top = value.as_object()?;
    Some(fields_from_object(top))
}

pub(crate) fn fields_from_object(top: &Map<String, Value>) -> ErrorFields {
    let error = top.get("error");
    let nested = error.and_then(Value::as_object);
    let get = |key: &str| nested.and_then(|e| e.get(key)).and_then(as_text);
    let get_top = |key: &str| top.get(key).and_then(as_text);

    // The Anthropic envelope's top-level `type` is always "error": not a code.
    let code = get("code").or_else(|| get_top("code"));
    let error_type = get("type");
    let message = get("message")
        .or_else(|| get_top("message"))
        .or_else(|| error.and_then(Value::as_str).map(str::to_owned));
    ErrorFields {
        status: None,
        code,
        error_type,
        message: message.map(|m| sanitize(&m)),
        request_id: get_top("request_id").or_else(|| get("request_id")),
        trace_id: get("traceId").or_else(|| get_top("traceId")),
        plain_text: false,
    }
}

/// Whether a JSON object from an event stream reports an error rather than output.
pub(crate) fn object_is_error(top: &Map<String, Value>) -> bool {
    top.get("error").is_some_and(|e| !e.is_null())
        || (top.get("code").and_then(as_text).is_some() && !top.contains_key("output"))
}

/// A non-empty string, or a number written out; anything else is `None`.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Replaces control characters so that a message stays one log line.
fn sanitize(message: &str) -> String {
    if message.chars().any(char::is_control) {
        message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        message.to_owned()
    }
}

/// Finds the first error event of an SSE-framed error body.
fn parse_sse(body: &[u8]) -> ErrorFields {
    let mut scanner = SseScanner::new(body.len().saturating_add(1), false);
    match scanner.feed(body).or_else(|| scanner.finish()) {
        Some(found) => found.fields,
        // No error event: report the status a comment line gave, if any.
        None => ErrorFields {
            status: scanner.last_status(),
            ..ErrorFields::default()
        },
    }
}

/// `HTTP_STATUS/429` → `429`.
pub(crate) fn parse_status_comment(comment: &[u8]) -> Option<u16> {
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
pub(crate) fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// Splits DashScope's `<400> InternalError.Algo.InvalidParameter: ` prefix off a message,
/// returning the code it names (if any) and the rest.
pub(crate) fn split_message_prefix(message: &str) -> (Option<&str>, &str) {
    let trimmed = message.trim_start();
    let Some(rest) = trimmed.strip_prefix('<') else {
        return (None, message);
    };
    let Some(close) = rest.find('>') else {
        return (None, message);
    };
    let digits = &rest[..close];
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return (None, message);
    }
    let after = rest[close + 1..].trim_start();
    if let Some(colon) = after.find(": ") {
        let code = &after[..colon];
        if !code.is_empty() && !code.contains(char::is_whitespace) {
            return (Some(code), after[colon + 2..].trim_start());
        }
    }
    (None, after)
}

/// Plain-text bodies are classified from the status alone, but for DashScope's bare
/// `Access denied.` on a 403, which it sends when the free quota is gone.
fn classify_plain(status: Option<StatusCode>, message: Option<&str>) -> ErrorClass {
    if status == Some(StatusCode::FORBIDDEN) && message.map(str::trim) == Some("Access denied.") {
        return ErrorClass::QuotaExhausted;
    }
    by_status(status, "")
}

/// Decides the class from status, code (and `type`, and the code in a `<NNN> Code:` prefix),
/// then message text, then status alone.
pub(crate) fn classify(
    status: Option<StatusCode>,
    code: Option<&str>,
    error_type: Option<&str>,
    prefix_code: Option<&str>,
    message: Option<&str>,
) -> ErrorClass {
    let message = message.unwrap_or("").trim();
    let codes = [code, error_type, prefix_code];
    let codes = codes.iter().flatten().map(|c| c.trim());
    let client_side = status.is_none_or(|s| !s.is_server_error());

    // Moderation wins over anything else the body says.
    if codes.clone().any(is_content_filter_code) {
        return ErrorClass::ContentFiltered;
    }
    // The context window is reported as an `InvalidParameter` with this text.
    if client_side && is_context_overflow(message) {
        return ErrorClass::ContextLengthExceeded;
    }
    // Quota messages that override throttling-looking codes.
    if message == "Free allocated quota exceeded." || is_coding_plan_quota(message) {
        return ErrorClass::QuotaExhausted;
    }
    for code in codes {
        if let Some(class) = by_code(code, status, message) {
            return class;
        }
    }
    if let Some(class) = by_text(status, message) {
        return class;
    }
    by_status(status, message)
}

fn is_content_filter_code(code: &str) -> bool {
    [
        "DataInspectionFailed",
        "data_inspection_failed",
        "FaqRuleBlocked",
        "CustomRoleBlocked",
        "IPInfringementSuspect",
    ]
    .iter()
    .any(|c| c.eq_ignore_ascii_case(code))
}

fn is_context_overflow(message: &str) -> bool {
    message.contains("Range of input length should be")
        || contains_ignore_case(message, "maximum context length")
        || contains_ignore_case(message, "context length exceeded")
        || contains_ignore_case(message, "context_length_exceeded")
}

/// Coding Plan's 5-hour, weekly and monthly windows.
fn is_coding_plan_quota(message: &str) -> bool {
    ["hour", "week", "month"].iter().any(|window| {
        find_ignore_case(message, "allocated quota exceeded").is_some_and(|at| {
            // Compare bytes: the text before the match may end in any character.
            let before = message.as_bytes()[..at].trim_ascii_end();
            before.len() >= window.len()
                && before[before.len() - window.len()..].eq_ignore_ascii_case(window.as_bytes())
        })
    })
}

fn by_code(code: &str, status: Option<StatusCode>, message: &str) -> Option<ErrorClass> {
    use ErrorClass::*;
    let is = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(code));
    let client_status = status.is_some_and(|s| s.is_client_error());

    let class = if is(&[
        "Arrearage",
        "CommodityNotPurchased",
        "PrepaidBillOverdue",
        "PostpaidBillOverdue",
        "billing_error",
        "AllocationQuota.FreeTierOnly",
    ]) {
        QuotaExhausted
    } else if is(&["APIConnectionError"]) {
        Connection
    } else if is(&[
        "InvalidApiKey",
        "invalid_api_key",
        "authentication_error",
        "NOT AUTHORIZED",
        "Unauthorized",
    ]) {
        Authentication
    } else if is(&[
        "AccessDenied",
        "AccessDenied.Unpurchased",
        "Model.AccessDenied",
        "Workspace.AccessDenied",
        "permission_error",
    ]) {
        PermissionDenied
    } else if is(&[
        "ModelNotFound",
        "model_not_found",
        "model_not_supported",
        "WorkSpaceNotFound",
        "not_found_error",
    ]) {
        NotFound
    } else if is(&["request_too_large", "RequestTooLarge"]) {
        PayloadTooLarge
    } else if is(&["Throttling.AllocationQuota", "insufficient_quota"]) {
        RateLimited(RateLimitKind::Tokens)
    } else if is(&["Throttling", "Throttling.RateQuota", "limit_requests"]) {
        RateLimited(RateLimitKind::Requests)
    } else if is(&["Throttling.BurstRate", "limit_burst_rate"]) {
        RateLimited(RateLimitKind::Burst)
    } else if is(&["rate_limit_error", "rate_limit_exceeded"]) {
        RateLimited(rate_limit_kind_from_text(message).unwrap_or(RateLimitKind::Unspecified))
    } else if is(&["RequestTimeOut", "timeout_error"]) {
        Timeout
    } else if is(&[
        "ModelServingError",
        "ModelUnavailable",
        "ServiceUnavailable",
        "overloaded_error",
    ]) {
        Unavailable
    } else if is(&["context_length_exceeded"]) {
        ContextLengthExceeded
    } else if is(&[
        "InternalError",
        "SystemError",
        "ModelServiceFailed",
        "api_error",
    ]) || starts_with_ignore_case(code, "InternalError.")
    {
        // `InternalError.Algo.*` comes with both 400 and 500: the status decides.
        if client_status {
            InvalidRequest
        } else {
            ServerError
        }
    } else if is(&[
        "InvalidParameter",
        "invalid_parameter_error",
        "invalid_request_error",
        "invalid_value",
        "BadRequest",
    ]) || starts_with_ignore_case(code, "InvalidParameter.")
    {
        InvalidRequest
    } else {
        return None;
    };
    Some(class)
}

/// Message text alone, for bodies whose code (if any) said nothing this crate knows.
fn by_text(status: Option<StatusCode>, message: &str) -> Option<ErrorClass> {
    use ErrorClass::*;
    if message.is_empty() {
        return None;
    }
    if message == "Connection error." {
        return Some(Connection);
    }
    if contains_ignore_case(message, "throttled due to system capacity") {
        return Some(Unavailable);
    }
    if contains_ignore_case(message, "NOT AUTHORIZED")
        || contains_ignore_case(message, "invalid access token or token expired")
        || contains_ignore_case(message, "Invalid API-key")
    {
        return Some(Authentication);
    }
    if message == "Access denied." && status.is_none_or(|s| s == StatusCode::FORBIDDEN) {
        return Some(QuotaExhausted);
    }
    if status.is_none_or(|s| s == StatusCode::TOO_MANY_REQUESTS) {
        if let Some(kind) = rate_limit_kind_from_text(message) {
            return Some(RateLimited(kind));
        }
    }
    None
}

fn rate_limit_kind_from_text(message: &str) -> Option<RateLimitKind> {
    if contains_ignore_case(message, "increased too quickly") {
        Some(RateLimitKind::Burst)
    } else if contains_ignore_case(message, "allocated quota exceeded")
        || contains_ignore_case(message, "exceeded your current quota")
        || contains_ignore_case(message, "tokens per minute")
    {
        Some(RateLimitKind::Tokens)
    } else if contains_ignore_case(message, "rate limit exceeded")
        || contains_ignore_case(message, "request limit")
        || contains_ignore_case(message, "requests per minute")
    {
        Some(RateLimitKind::Requests)
    } else if contains_ignore_case(message, "concurren") {
        Some(RateLimitKind::Concurrency)
    } else {
        None
    }
}

/// The last resort: the status code alone (a 429's text may still say which limit).
fn by_status(status: Option<StatusCode>, message: &str) -> ErrorClass {
    let Some(status) = status else {
        return ErrorClass::ServerError;
    };
    match ErrorClass::from_status(status) {
        ErrorClass::RateLimited(RateLimitKind::Unspecified) => ErrorClass::RateLimited(
            rate_limit_kind_from_text(message).unwrap_or(RateLimitKind::Unspecified),
        ),
        class => class,
    }
}

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.len() > h.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    find_ignore_case(haystack, needle).is_some()
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_split() {
        assert_eq!(
            split_message_prefix(
                "<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 129024]"
            ),
            (
                Some("InternalError.Algo.InvalidParameter"),
                "Range of input length should be [1, 129024]"
            )
        );
        assert_eq!(split_message_prefix("<500> boom"), (None, "boom"));
        assert_eq!(split_message_prefix("plain: text"), (None, "plain: text"));
        assert_eq!(split_message_prefix("<abc> x: y"), (None, "<abc> x: y"));
        assert_eq!(split_message_prefix("<4"), (None, "<4"));
    }

    #[test]
    fn status_comment() {
        assert_eq!(parse_status_comment(b"HTTP_STATUS/429"), Some(429));
        assert_eq!(parse_status_comment(b"HTTP_STATUS/429\r"), Some(429));
        assert_eq!(parse_status_comment(b" HTTP_STATUS/400"), Some(400));
        assert_eq!(parse_status_comment(b"HTTP_STATUS/4299"), None);
        assert_eq!(parse_status_comment(b"HTTP_STATUS/"), None);
        assert_eq!(parse_status_comment(b"keep-alive"), None);
    }

    #[test]
    fn coding_plan_windows() {
        assert!(is_coding_plan_quota("hour allocated quota exceeded"));
        assert!(is_coding_plan_quota(
            "Week allocated quota exceeded, resets Monday"
        ));
        assert!(is_coding_plan_quota("month allocated quota exceeded."));
        assert!(!is_coding_plan_quota(
            "Allocated quota exceeded, please increase your quota limit."
        ));
        assert!(!is_coding_plan_quota("Free allocated quota exceeded."));
        assert!(!is_coding_plan_quota("éaaa allocated quota exceeded"));
        assert!(is_coding_plan_quota("é hour allocated quota exceeded"));
    }

    #[test]
    fn case_insensitive_search_handles_non_ascii() {
        assert!(contains_ignore_case(
            "配额 Allocated QUOTA exceeded",
            "allocated quota exceeded"
        ));
        assert!(!contains_ignore_case("短", "longer needle"));
        // A match that would start inside a multi-byte character is still found on bytes.
        assert_eq!(find_ignore_case("ééhour", "hour"), Some(4));
    }
}
