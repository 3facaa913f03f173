//! Deciding the [`ErrorClass`] — and who shares the quota, when it comes back, what to do — from
//! what an error body said ([`ErrorFields`]).
//!
//! The order of the rules: moderation; context overflow; plan and quota texts that override
//! throttling-looking codes (Coding Plan's windows and concurrency cap, Token Plan's reset
//! text, Coding Plan's refusal of non-agents); texts that override generic 400/403 codes
//! (unknown model, wrong endpoint, sync/async); then the codes — the body's `code`, the code of
//! a `<NNN> Code.Name: ` message prefix, the compatible `type` — specific codes before generic
//! ones (`api_error`, `invalid_request_error`, `InternalError` …); then message text; then the
//! status alone ([`ErrorClass::from_status`]).
//!
//! Everything here runs on the failure path only; nothing here panics on any input, and text is
//! matched on bytes, so no slicing can fall inside a multi-byte character.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::shapes::{Body, ErrorFields, parse_body, split_message_prefix};
use super::sse::SseScanner;
use crate::error::{DashScopeError, ErrorClass, QuotaReset, QuotaScope, RateLimitKind};
use crate::retry_after::parse_retry_after_at;

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
/// Wall-clock times — an HTTP-date `Retry-After`, a quota reset time in the body — are measured
/// against the system clock; [`classify_response_at`] takes the clock as an argument.
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
    classify_response_at(status, headers, body, SystemTime::now())
}

/// Like [`classify_response`], with wall-clock times measured against `now` instead of the
/// system clock (for tests, and for replaying recorded responses).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, StatusCode};
/// use tower_dashscope::{classify::classify_response_at, ErrorClass, QuotaScope};
///
/// // 2026-09-12 10:40:00 UTC.
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_789_209_600);
/// let body = br#"{"error":{"message":"Your token-plan 1-week quota has been exhausted. The quota will reset at 09-12 11:40:00 UTC."}}"#;
/// let err = classify_response_at(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body, now);
/// assert_eq!(err.class(), ErrorClass::QuotaExhausted);
/// assert_eq!(err.quota_scope(), Some(QuotaScope::Plan));
/// assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
/// ```
#[must_use]
pub fn classify_response_at(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> DashScopeError {
    let request_id = crate::headers::request_id(headers).and_then(|v| v.to_str().ok());
    let fields = match parse_body(body) {
        Body::Fields(fields) => fields,
        Body::Sse(body) => sse_body_fields(body),
    };
    error_from_fields_at(
        Some(status),
        fields,
        request_id,
        parse_retry_after_at(headers, now),
        now,
    )
}

/// Finds the first error event of an SSE-framed error body.
fn sse_body_fields(body: &[u8]) -> ErrorFields {
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

/// Builds the error from what a body said, with wall-clock times against the system clock.
/// The status is the body's own (an SSE `:HTTP_STATUS/NNN`) if it gave one, else
/// `http_status`.
pub(crate) fn error_from_fields(
    http_status: Option<StatusCode>,
    fields: ErrorFields,
    header_request_id: Option<&str>,
    retry_after: Option<Duration>,
) -> DashScopeError {
    error_from_fields_at(
        http_status,
        fields,
        header_request_id,
        retry_after,
        SystemTime::now(),
    )
}

/// [`error_from_fields`] with the clock as an argument.
pub(crate) fn error_from_fields_at(
    http_status: Option<StatusCode>,
    fields: ErrorFields,
    header_request_id: Option<&str>,
    retry_after: Option<Duration>,
    now: SystemTime,
) -> DashScopeError {
    // An SSE comment's status wins; a body's own `status_code` only stands in for a transport
    // status that is missing or claims success.
    let transport = http_status.filter(|s| !s.is_success());
    let status = fields
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .or(transport)
        .or_else(|| {
            fields
                .body_status
                .and_then(|s| StatusCode::from_u16(s).ok())
        })
        .or(http_status);

    let (prefix_code, message) = match fields.message.as_deref() {
        Some(message) => {
            let (code, rest) = split_message_prefix(message);
            (code, Some(rest))
        }
        None => (None, None),
    };

    let verdict = if fields.plain_text {
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

    let mut err = DashScopeError::new(verdict.class);
    if let Some(status) = status {
        err = err.with_status(status);
    }
    if let Some(scope) = verdict.scope {
        err = err.with_quota_scope(scope);
    }
    if let Some(advice) = verdict.advice {
        err = err.with_advice(advice);
    } else if fields.malformed {
        err = err.with_advice(ADVICE_MALFORMED_ERROR_EVENT);
    }
    let mut retry_after = retry_after;
    if let Some(reset) = quota_reset(verdict.reset, message.unwrap_or(""), now) {
        if !reset.is_estimate() {
            // The body's (or the schedule's) reset time is the real retry-after.
            retry_after = Some(reset.at().duration_since(now).unwrap_or(Duration::ZERO));
        }
        err = err.with_quota_reset(reset);
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
        .or(fields.id.as_deref())
        .or(fields.trace_id.as_deref())
        .filter(|id| !id.trim().is_empty());
    if let Some(request_id) = request_id {
        err = err.with_request_id(request_id);
    }
    if let Some(retry_after) = retry_after {
        err = err.with_retry_after(retry_after);
    }
    err
}

// ---------------------------------------------------------------------------------------------
// The verdict
// ---------------------------------------------------------------------------------------------

/// What the rules decided about one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) class: ErrorClass,
    pub(crate) scope: Option<QuotaScope>,
    pub(crate) advice: Option<&'static str>,
    pub(crate) reset: Reset,
}

/// How to find when an exhausted quota comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reset {
    /// Not known.
    Unknown,
    /// The message says: "… will reset at MM-DD hh:mm:ss UTC".
    FromMessage,
    /// Coding Plan's week: Monday 00:00 UTC+8.
    Weekly,
    /// Coding Plan's `usage` and 5-hour windows: "usually recovers after about an hour".
    AboutAnHour,
}

impl Verdict {
    fn of(class: ErrorClass) -> Self {
        Verdict {
            class,
            scope: None,
            advice: None,
            reset: Reset::Unknown,
        }
    }

    fn scope(mut self, scope: QuotaScope) -> Self {
        self.scope = Some(scope);
        self
    }

    fn advice(mut self, advice: &'static str) -> Self {
        self.advice = Some(advice);
        self
    }

    fn reset(mut self, reset: Reset) -> Self {
        self.reset = reset;
        self
    }
}

impl From<ErrorClass> for Verdict {
    fn from(class: ErrorClass) -> Self {
        Verdict::of(class)
    }
}

// Advice particular to one error (its class's advice would mislead).

const ADVICE_CODING_AGENTS: &str = "Coding Plan serves coding agents only and refuses this \
     client: send a `User-Agent` header naming the client (requests without one are refused), \
     or use a pay-as-you-go key and base URL";
const ADVICE_CODING_PLAN_CONCURRENCY: &str = "too many requests in flight for the Coding Plan's \
     concurrency cap (shared by every model on the plan): send fewer at once, then retry";
const ADVICE_CODING_PLAN_USAGE: &str = "the Coding Plan's short-term usage cap is reached; it \
     usually recovers after about an hour and is shared by every model on the plan: a backoff in \
     seconds or another model will not help";
const ADVICE_CODING_PLAN_HOUR: &str = "the Coding Plan's 5-hour window is used up (shared by \
     every model on the plan): wait while older usage leaves the window";
const ADVICE_CODING_PLAN_WEEK: &str = "the Coding Plan's weekly quota is used up (shared by every \
     model on the plan): it resets on Monday 00:00 UTC+8";
const ADVICE_CODING_PLAN_MONTH: &str = "the Coding Plan's monthly quota is used up (shared by \
     every model on the plan): it resets on the subscription day";
const ADVICE_TOKEN_PLAN: &str = "the Token Plan's quota is used up (shared by every model on the \
     plan): wait for the reset time in the message, or buy more";
const ADVICE_RETIRED_MODEL: &str = "this model has been taken offline: switch to its \
     replacement model";
const ADVICE_APP_ACCESS: &str = "check that this key's account or workspace may call this \
     application";
const ADVICE_NEEDS_ASYNC: &str = "this model only takes asynchronous calls: send \
     `X-DashScope-Async: enable` and poll the task";
const ADVICE_NO_ASYNC: &str = "this model does not take asynchronous calls: remove the \
     `X-DashScope-Async` header";
const ADVICE_WRONG_ENDPOINT: &str = "the model and the endpoint do not match: check the path \
     (text, multimodal and other models have their own) and the model name";
const ADVICE_ACCESS_DENIED: &str = "either this model's free quota is used up (buy the model or \
     turn off \"use free tier only\") or the account or workspace has no access to it";
const ADVICE_COUNT_LIMIT: &str = "a count limit of this feature is reached (e.g. stored voice \
     clones): delete unused items or ask for a higher limit; waiting will not help";
const ADVICE_MALFORMED_ERROR_EVENT: &str = "the stream sent an error event that is not valid \
JSON (cut short, or nested too deep), so its code and message are unknown: retry with backoff";
const ADVICE_CLIENT_CAUSED_500: &str = "this 500 looks caused by the request (a malformed \
     message list or tool-call JSON): check it; one retry may help, more will not";

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

/// Plain-text bodies: the texts that decide whatever the code would have said, then the status.
fn classify_plain(status: Option<StatusCode>, message: Option<&str>) -> Verdict {
    let message = message.unwrap_or("").trim();
    if let Some(verdict) = by_overriding_text(status, message) {
        return verdict;
    }
    if is_bare_access_denied(status, message) {
        return Verdict::of(ErrorClass::PermissionDenied).advice(ADVICE_ACCESS_DENIED);
    }
    by_status(status, "")
}

/// Decides from status, code (and `type`, and the code in a `<NNN> Code:` prefix), then
/// message text, then status alone.
pub(crate) fn classify(
    status: Option<StatusCode>,
    code: Option<&str>,
    error_type: Option<&str>,
    prefix_code: Option<&str>,
    message: Option<&str>,
) -> Verdict {
    let message = message.unwrap_or("").trim();
    // The body's code, then the prefix's (specific: `Throttling.RateQuota`), then the `type`
    // (often generic: `api_error`, `invalid_request_error`).
    let codes = [code, prefix_code, error_type];
    let codes = codes
        .iter()
        .flatten()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty());
    let client_side = status.is_none_or(|s| !s.is_server_error());

    // Moderation wins over anything else the body says.
    if codes.clone().any(is_content_filter_code) {
        return ErrorClass::ContentFiltered.into();
    }
    // The context window is reported as an `InvalidParameter` with this text.
    if client_side && is_context_overflow(message) {
        return ErrorClass::ContextLengthExceeded.into();
    }
    if let Some(verdict) = by_overriding_text(status, message) {
        return verdict;
    }
    // Specific codes first, generic ones after.
    for code in codes.clone().filter(|c| !is_generic_code(c)) {
        if let Some(verdict) = by_code(code, status, message) {
            return with_server_hint(verdict, message);
        }
    }
    for code in codes.filter(|c| is_generic_code(c)) {
        if let Some(verdict) = by_code(code, status, message) {
            return with_server_hint(verdict, message);
        }
    }
    if let Some(verdict) = by_text(status, message) {
        return verdict;
    }
    with_server_hint(by_status(status, message), message)
}

/// Texts that decide the class whatever code came with them.
fn by_overriding_text(status: Option<StatusCode>, message: &str) -> Option<Verdict> {
    use ErrorClass::*;
    if message.is_empty() {
        return None;
    }
    // Coding Plan's plan-wide concurrency cap: retryable, and not the tokens limit that the
    // generic "allocated quota exceeded" means. Checked before the windows below.
    if contains_ignore_case(message, "concurrency allocated quota exceeded") {
        return Some(
            Verdict::of(RateLimited(RateLimitKind::Concurrency))
                .scope(QuotaScope::Plan)
                .advice(ADVICE_CODING_PLAN_CONCURRENCY),
        );
    }
    if let Some(window) = coding_plan_window(message) {
        let verdict = Verdict::of(QuotaExhausted).scope(QuotaScope::Plan);
        return Some(match window {
            Window::Usage => verdict
                .advice(ADVICE_CODING_PLAN_USAGE)
                .reset(Reset::AboutAnHour),
            Window::Hour => verdict
                .advice(ADVICE_CODING_PLAN_HOUR)
                .reset(Reset::AboutAnHour),
            Window::Week => verdict.advice(ADVICE_CODING_PLAN_WEEK).reset(Reset::Weekly),
            Window::Month => verdict.advice(ADVICE_CODING_PLAN_MONTH),
        });
    }
    if message == "Free allocated quota exceeded." {
        return Some(Verdict::of(QuotaExhausted).scope(QuotaScope::Model));
    }
    // Token Plan says exhaustion in text only: "Your token-plan 1-week quota has been
    // exhausted. The quota will reset at 09-12 11:40:00 UTC."
    if contains_ignore_case(message, "quota has been exhausted") {
        let verdict = Verdict::of(QuotaExhausted).reset(Reset::FromMessage);
        return Some(if contains_ignore_case(message, "token-plan") {
            verdict.scope(QuotaScope::Plan).advice(ADVICE_TOKEN_PLAN)
        } else {
            verdict
        });
    }
    // The key and URL are right; the plan refuses this client (seen when no User-Agent is
    // sent). Its 405 is not a missing resource.
    if contains_ignore_case(message, "only available for Coding Agents") {
        return Some(Verdict::of(PermissionDenied).advice(ADVICE_CODING_AGENTS));
    }
    let client_side = status.is_none_or(|s| s.is_client_error());
    if !client_side {
        return None;
    }
    // Native 400 for an unknown model name.
    if starts_with_ignore_case(message, "Model not exist") {
        return Some(NotFound.into());
    }
    // "url error, please check url！" (full-width `！`, maybe a documentation link after it):
    // the model and the endpoint do not match.
    if starts_with_ignore_case(message, "url error, please check url") {
        return Some(Verdict::of(NotFound).advice(ADVICE_WRONG_ENDPOINT));
    }
    // A 403 `AccessDenied` that is a request mistake, not a permission.
    if contains_ignore_case(message, "does not support synchronous calls") {
        return Some(Verdict::of(InvalidRequest).advice(ADVICE_NEEDS_ASYNC));
    }
    if contains_ignore_case(message, "does not support asynchronous calls") {
        return Some(Verdict::of(InvalidRequest).advice(ADVICE_NO_ASYNC));
    }
    None
}

/// DashScope's bare `Access denied.` on a 403 (or with no status): exhausted free quota *or* no
/// access to the model. The crate does not guess quota: permission denied, with advice naming
/// both.
fn is_bare_access_denied(status: Option<StatusCode>, message: &str) -> bool {
    message == "Access denied." && status.is_none_or(|s| s == StatusCode::FORBIDDEN)
}

/// Codes that say little beyond the status: a more specific code in the same body wins.
fn is_generic_code(code: &str) -> bool {
    [
        "api_error",
        "invalid_request_error",
        "internal_server_error",
        "InternalError",
        "SystemError",
        "BadRequest",
        "error",
    ]
    .iter()
    .any(|c| c.eq_ignore_ascii_case(code))
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

/// A Coding Plan quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// `usage allocated quota exceeded`: heavy short-term use; recovers in about an hour.
    Usage,
    /// `hour allocated quota exceeded`: the 5-hour sliding window.
    Hour,
    /// `week allocated quota exceeded`: resets Monday 00:00 UTC+8.
    Week,
    /// `month allocated quota exceeded`: resets on the subscription day.
    Month,
}

/// Coding Plan's `usage`, 5-hour, weekly and monthly windows: "`<window>` allocated quota
/// exceeded".
fn coding_plan_window(message: &str) -> Option<Window> {
    let at = find_ignore_case(message, "allocated quota exceeded")?;
    // Compare bytes: the text before the match may end in any character.
    let before = message.as_bytes()[..at].trim_ascii_end();
    [
        ("usage", Window::Usage),
        ("hour", Window::Hour),
        ("week", Window::Week),
        ("month", Window::Month),
    ]
    .into_iter()
    .find(|(word, _)| {
        before.len() >= word.len()
            && before[before.len() - word.len()..].eq_ignore_ascii_case(word.as_bytes())
            // A whole word: "usage", not "overusage".
            && before[..before.len() - word.len()]
                .last()
                .is_none_or(|b| !b.is_ascii_alphanumeric())
    })
    .map(|(_, window)| window)
}

fn by_code(code: &str, status: Option<StatusCode>, message: &str) -> Option<Verdict> {
    use ErrorClass::*;
    let is = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(code));
    let client_status = status.is_some_and(|s| s.is_client_error());

    let verdict = if is(&[
        "Arrearage",
        "PrepaidBillOverdue",
        "PostpaidBillOverdue",
        "billing_error",
    ]) {
        Verdict::of(QuotaExhausted).scope(QuotaScope::Account)
    } else if is(&["CommodityNotPurchased", "AllocationQuota.FreeTierOnly"]) {
        Verdict::of(QuotaExhausted).scope(QuotaScope::Model)
    } else if is(&["APIConnectionError"]) {
        Connection.into()
    } else if is(&[
        "InvalidApiKey",
        "invalid_api_key",
        "authentication_error",
        "NOT AUTHORIZED",
        "Unauthorized",
    ]) {
        Authentication.into()
    } else if is(&["Endpoint.AccessDenied"]) {
        // Sent for models that have been taken offline.
        Verdict::of(NotFound).advice(ADVICE_RETIRED_MODEL)
    } else if is(&["App.AccessDenied"]) {
        Verdict::of(PermissionDenied).advice(ADVICE_APP_ACCESS)
    } else if is(&[
        "AccessDenied",
        "AccessDenied.Unpurchased",
        "Model.AccessDenied",
        "Workspace.AccessDenied",
        "permission_error",
    ]) {
        let verdict = Verdict::of(PermissionDenied);
        if is_bare_access_denied(status, message) {
            verdict.advice(ADVICE_ACCESS_DENIED)
        } else {
            verdict
        }
    } else if is(&[
        "ModelNotFound",
        "model_not_found",
        "model_not_supported",
        "WorkSpaceNotFound",
        "not_found_error",
    ]) {
        NotFound.into()
    } else if is(&["request_too_large", "RequestTooLarge"]) {
        PayloadTooLarge.into()
    } else if is(&["Throttling.AllocationQuota", "insufficient_quota"]) {
        allocation_quota(message)
    } else if is(&["Throttling", "Throttling.RateQuota", "limit_requests"]) {
        Verdict::of(RateLimited(RateLimitKind::Requests)).scope(QuotaScope::Model)
    } else if is(&["Throttling.BurstRate", "limit_burst_rate"]) {
        Verdict::of(RateLimited(RateLimitKind::Burst)).scope(QuotaScope::Model)
    } else if is(&["rate_limit_error", "rate_limit_exceeded"]) {
        match rate_limit_kind_from_text(message) {
            Some(kind) => Verdict::of(RateLimited(kind)).scope(QuotaScope::Model),
            None => RateLimited(RateLimitKind::Unspecified).into(),
        }
    } else if is(&[
        "RequestTimeOut",
        "timeout_error",
        "InternalError.Timeout",
        "ResponseTimeout",
    ]) {
        Timeout.into()
    } else if is(&[
        "ModelServingError",
        "ModelUnavailable",
        "ServiceUnavailable",
        "overloaded_error",
    ]) || ends_with_ignore_case(code, ".ModelServingError")
    {
        Unavailable.into()
    } else if is(&["context_length_exceeded"]) {
        ContextLengthExceeded.into()
    } else if is(&[
        "InternalError",
        "SystemError",
        "ModelServiceFailed",
        "api_error",
        "internal_server_error",
    ]) || starts_with_ignore_case(code, "InternalError.")
    {
        // `InternalError.Algo.*` comes with both 400 and 500: the status decides.
        if client_status {
            InvalidRequest.into()
        } else {
            ServerError.into()
        }
    } else if is(&[
        "InvalidParameter",
        "invalid_parameter_error",
        "invalid_request_error",
        "invalid_value",
        "BadRequest",
    ]) || starts_with_ignore_case(code, "InvalidParameter.")
    {
        InvalidRequest.into()
    } else {
        return None;
    };
    Some(verdict)
}

/// `Throttling.AllocationQuota` / `insufficient_quota`: tokens per minute unless the message
/// says it is another limit (batch capacity, a per-feature count such as voice clones).
fn allocation_quota(message: &str) -> Verdict {
    use ErrorClass::*;
    if contains_ignore_case(message, "clone")
        || contains_ignore_case(message, "maximum number")
        || contains_ignore_case(message, "number of")
    {
        // A count that time does not bring back.
        return Verdict::of(QuotaExhausted).advice(ADVICE_COUNT_LIMIT);
    }
    if contains_ignore_case(message, "batch") {
        // Capacity held by jobs in flight: it comes back as they finish.
        return Verdict::of(RateLimited(RateLimitKind::Concurrency));
    }
    let kind = rate_limit_kind_from_text(message).unwrap_or(RateLimitKind::Tokens);
    Verdict::of(RateLimited(kind)).scope(QuotaScope::Model)
}

/// Message text alone, for bodies whose code (if any) said nothing this crate knows.
fn by_text(status: Option<StatusCode>, message: &str) -> Option<Verdict> {
    use ErrorClass::*;
    if message.is_empty() {
        return None;
    }
    if message == "Connection error." {
        return Some(Connection.into());
    }
    if contains_ignore_case(message, "throttled due to system capacity") {
        return Some(Unavailable.into());
    }
    if contains_ignore_case(message, "NOT AUTHORIZED")
        || contains_ignore_case(message, "invalid access token or token expired")
        || contains_ignore_case(message, "Invalid API-key")
    {
        return Some(Authentication.into());
    }
    if is_bare_access_denied(status, message) {
        return Some(Verdict::of(PermissionDenied).advice(ADVICE_ACCESS_DENIED));
    }
    if status.is_none_or(|s| s == StatusCode::TOO_MANY_REQUESTS) {
        if let Some(kind) = rate_limit_kind_from_text(message) {
            return Some(Verdict::of(RateLimited(kind)).scope(QuotaScope::Model));
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
        || contains_ignore_case(message, "too many requests")
    {
        Some(RateLimitKind::Requests)
    } else if contains_ignore_case(message, "concurren") {
        Some(RateLimitKind::Concurrency)
    } else {
        None
    }
}

/// The last resort: the status code alone (a 429's text may still say which limit).
fn by_status(status: Option<StatusCode>, message: &str) -> Verdict {
    let Some(status) = status else {
        return ErrorClass::ServerError.into();
    };
    match ErrorClass::from_status(status) {
        ErrorClass::RateLimited(RateLimitKind::Unspecified) => {
            match rate_limit_kind_from_text(message) {
                Some(kind) => Verdict::of(ErrorClass::RateLimited(kind)).scope(QuotaScope::Model),
                None => ErrorClass::RateLimited(RateLimitKind::Unspecified).into(),
            }
        }
        class => class.into(),
    }
}

/// A server error whose text shows the request caused it (a malformed message list, invalid
/// tool-call JSON) stays a server error — one retry is harmless — with advice to check the
/// request.
fn with_server_hint(verdict: Verdict, message: &str) -> Verdict {
    let client_caused = contains_ignore_case(message, "list index out of range")
        || ((contains_ignore_case(message, "tool_call")
            || contains_ignore_case(message, "tool call"))
            && contains_ignore_case(message, "json"));
    if verdict.class == ErrorClass::ServerError && verdict.advice.is_none() && client_caused {
        verdict.advice(ADVICE_CLIENT_CAUSED_500)
    } else {
        verdict
    }
}

// ---------------------------------------------------------------------------------------------
// Quota reset times
// ---------------------------------------------------------------------------------------------

const HOUR: u64 = 60 * 60;
const DAY: u64 = 24 * HOUR;

/// How far in the past a stated reset time may lie and still be taken for this occurrence
/// (clock skew, a reset that just happened) rather than next year's.
const PAST_RESET_GRACE: u64 = DAY;

fn quota_reset(reset: Reset, message: &str, now: SystemTime) -> Option<QuotaReset> {
    match reset {
        Reset::Unknown => None,
        Reset::FromMessage => parse_reset_time_at(message, now).map(QuotaReset::exact),
        Reset::Weekly => next_monday_utc8(now).map(QuotaReset::exact),
        Reset::AboutAnHour => now
            .checked_add(Duration::from_secs(HOUR))
            .map(QuotaReset::estimated),
    }
}

/// The next Monday 00:00 UTC+8 strictly after `now` (Coding Plan's weekly reset).
fn next_monday_utc8(now: SystemTime) -> Option<SystemTime> {
    const UTC8: u64 = 8 * HOUR;
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let local_days = secs.checked_add(UTC8)? / DAY;
    // 1970-01-01 was a Thursday: Monday = 0.
    let weekday = (local_days + 3) % 7;
    let next_monday = (local_days + 7 - weekday) * DAY - UTC8;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(next_monday))
}

/// Reads "… reset at 09-12 11:40:00 UTC" (also `YYYY-MM-DD`, `hh:mm`, `GMT`, `UTC+8`) from a
/// message. A time without a year is the next occurrence of that month-day time after `now`
/// (one up to a day in the past counts as now's).
pub(crate) fn parse_reset_time_at(message: &str, now: SystemTime) -> Option<SystemTime> {
    let at = find_ignore_case(message, "reset at")?;
    let text = message.as_bytes()[at + "reset at".len()..].trim_ascii_start();
    let mut p = Cursor(text);

    let first = p.number(1, 4)?;
    p.byte(b'-')?;
    let (year, month) = if first.1 == 4 {
        let month = p.number(1, 2)?.0;
        p.byte(b'-')?;
        (Some(i64::from(first.0)), month)
    } else {
        (None, first.0)
    };
    let day = p.number(1, 2)?.0;
    if p.byte(b'T').is_none() {
        p.spaces(1)?;
    }
    let hour = p.number(1, 2)?.0;
    p.byte(b':')?;
    let minute = p.number(2, 2)?.0;
    let second = if p.byte(b':').is_some() {
        p.number(2, 2)?.0
    } else {
        0
    };
    p.spaces(0);
    let offset = p.zone()?;
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let time_of_day = i64::from(hour * 3600 + minute * 60 + second) - offset;
    let instant = |year: i64| -> Option<i64> {
        (day >= 1 && day <= days_in_month(year, month))
            .then(|| days_from_civil(year, month, day) * DAY as i64 + time_of_day)
    };

    let now_secs =
        i64::try_from(now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs()).ok()?;
    let secs = match year {
        Some(year) => instant(year)?,
        None => {
            let this_year = civil_year(now_secs.div_euclid(DAY as i64));
            // Last year's (a reset just past at new year), this year's, the next ones (a
            // 29 February may be years away).
            (this_year - 1..=this_year + 8)
                .filter_map(instant)
                .find(|&t| t >= now_secs - PAST_RESET_GRACE as i64)?
        }
    };
    let secs = u64::try_from(secs).ok()?;
    let reset = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))?;
    // A stated reset in the past means the quota is back: "now".
    Some(reset.max(now))
}

/// A little reader over the bytes of a date.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    /// `min..=max` ASCII digits: the value and how many digits.
    fn number(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let len = self
            .0
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if len < min {
            return None;
        }
        let value = self.0[..len]
            .iter()
            .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
        self.0 = &self.0[len..];
        Some((value, len))
    }

    fn byte(&mut self, byte: u8) -> Option<()> {
        let rest = self.0.strip_prefix(&[byte])?;
        self.0 = rest;
        Some(())
    }

    /// At least `min` spaces.
    fn spaces(&mut self, min: usize) -> Option<()> {
        let len = self.0.iter().take_while(|b| **b == b' ').count();
        self.0 = &self.0[len..];
        (len >= min).then_some(())
    }

    /// `UTC`, `GMT` or `Z`, optionally followed by `+8`, `-05`, `+08:00`: the offset in
    /// seconds east of UTC.
    fn zone(&mut self) -> Option<i64> {
        let name_len = if self.0.len() >= 3
            && (self.0[..3].eq_ignore_ascii_case(b"UTC")
                || self.0[..3].eq_ignore_ascii_case(b"GMT"))
        {
            3
        } else if self
            .0
            .first()
            .is_some_and(|b| b.eq_ignore_ascii_case(&b'Z'))
        {
            1
        } else {
            return None;
        };
        self.0 = &self.0[name_len..];
        let sign = match self.0.first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Some(0),
        };
        self.0 = &self.0[1..];
        let hours = i64::from(self.number(1, 2)?.0);
        let minutes = if self.byte(b':').is_some() {
            i64::from(self.number(2, 2)?.0)
        } else {
            0
        };
        if hours > 14 || minutes > 59 {
            return None;
        }
        Some(sign * (hours * 3600 + minutes * 60))
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (the "days from civil" algorithm:
/// years start in March, so the leap day is the last of its year; 400-year eras).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The year of a day counted from 1970-01-01.
fn civil_year(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let year = year_of_era + era * 400;
    // January and February belong to the next civil year.
    if month_from_march >= 10 {
        year + 1
    } else {
        year
    }
}

// ---------------------------------------------------------------------------------------------
// Text helpers (on bytes: never a char-boundary panic)
// ---------------------------------------------------------------------------------------------

fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let (&first, rest) = n.split_first()?;
    if n.len() > h.len() {
        return None;
    }
    // Candidates start with the needle's first byte in either case; memchr finds them fast.
    let last_start = h.len() - n.len();
    let mut from = 0;
    while from <= last_start {
        let at = from
            + memchr::memchr2(
                first.to_ascii_lowercase(),
                first.to_ascii_uppercase(),
                &h[from..=last_start],
            )?;
        if h[at + 1..at + n.len()].eq_ignore_ascii_case(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    find_ignore_case(haystack, needle).is_some()
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Seconds from the epoch of a UTC date and time.
    fn utc(year: i64, month: u32, day: u32, h: u64, m: u64, s: u64) -> u64 {
        u64::try_from(days_from_civil(year, month, day)).unwrap() * DAY + h * HOUR + m * 60 + s
    }

    #[test]
    fn coding_plan_windows() {
        assert_eq!(
            coding_plan_window("hour allocated quota exceeded"),
            Some(Window::Hour)
        );
        assert_eq!(
            coding_plan_window("Week allocated quota exceeded, resets Monday"),
            Some(Window::Week)
        );
        assert_eq!(
            coding_plan_window("month allocated quota exceeded."),
            Some(Window::Month)
        );
        assert_eq!(
            coding_plan_window("usage allocated quota exceeded. please try again later."),
            Some(Window::Usage)
        );
        assert_eq!(
            coding_plan_window("Allocated quota exceeded, please increase your quota limit."),
            None
        );
        assert_eq!(coding_plan_window("Free allocated quota exceeded."), None);
        assert_eq!(
            coding_plan_window("concurrency allocated quota exceeded."),
            None
        );
        assert_eq!(coding_plan_window("éaaa allocated quota exceeded"), None);
        assert_eq!(
            coding_plan_window("overusage allocated quota exceeded"),
            None
        );
        assert_eq!(
            coding_plan_window("é hour allocated quota exceeded"),
            Some(Window::Hour)
        );
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
        assert!(!starts_with_ignore_case("模", "Model not exist"));
        assert!(!ends_with_ignore_case("é", ".x"));
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in [
            -800_000i64,
            -1,
            0,
            59,
            60,
            11_016,
            11_017,
            20_000,
            2_932_896,
        ] {
            let year = civil_year(days);
            let jan1 = days_from_civil(year, 1, 1);
            let next = days_from_civil(year + 1, 1, 1);
            assert!(jan1 <= days && days < next, "{days} in {year}");
        }
    }

    #[test]
    fn token_plan_reset_this_year() {
        let now = at(utc(2026, 9, 12, 10, 40, 0));
        let reset = parse_reset_time_at(
            "Your token-plan 1-week quota has been exhausted. The quota will reset at 09-12 11:40:00 UTC.",
            now,
        );
        assert_eq!(reset, Some(at(utc(2026, 9, 12, 11, 40, 0))));
    }

    #[test]
    fn token_plan_reset_year_is_the_next_occurrence() {
        // Late December, a reset in January: next year.
        let now = at(utc(2026, 12, 30, 0, 0, 0));
        assert_eq!(
            parse_reset_time_at("The quota will reset at 01-02 00:00:00 UTC.", now),
            Some(at(utc(2027, 1, 2, 0, 0, 0)))
        );
        // A reset a few minutes past (clock skew) is now, not next year.
        let now = at(utc(2027, 1, 1, 0, 5, 0));
        assert_eq!(
            parse_reset_time_at("The quota will reset at 12-31 23:59:00 UTC.", now),
            Some(now)
        );
        // More than a day past: next year's.
        let now = at(utc(2026, 9, 20, 0, 0, 0));
        assert_eq!(
            parse_reset_time_at("reset at 09-12 11:40:00 UTC", now),
            Some(at(utc(2027, 9, 12, 11, 40, 0)))
        );
        // 29 February: the next leap year.
        let now = at(utc(2026, 3, 1, 0, 0, 0));
        assert_eq!(
            parse_reset_time_at("reset at 02-29 00:00:00 UTC", now),
            Some(at(utc(2028, 2, 29, 0, 0, 0)))
        );
    }

    #[test]
    fn reset_time_variants() {
        let now = at(utc(2026, 9, 12, 0, 0, 0));
        let want = Some(at(utc(2026, 9, 12, 11, 40, 0)));
        for text in [
            "reset at 2026-09-12 11:40:00 UTC",
            "Reset At 09-12 11:40 utc",
            "reset at 2026-09-12T11:40:00Z",
            "reset at 09-12 19:40:00 UTC+8",
            "reset at 09-12 19:40:00 UTC+08:00",
            "reset at 9-12 11:40:00 GMT.",
        ] {
            assert_eq!(parse_reset_time_at(text, now), want, "{text}");
        }
        for text in [
            "reset at 09-12 11:40:00",        // no zone: not guessed
            "reset at 13-12 11:40:00 UTC",    // month
            "reset at 09-31 11:40:00 UTC",    // day
            "reset at 09-12 24:00:00 UTC",    // hour
            "reset at 09-12 11:4 UTC",        // minute digits
            "reset at 09-12 11:40:00 UTC+15", // offset
            "reset at soon",
            "reset at ",
            "reset at 0９-12 11:40:00 UTC",
            "quota exhausted",
        ] {
            assert_eq!(parse_reset_time_at(text, now), None, "{text}");
        }
        // Before the epoch: nothing to say.
        assert_eq!(
            parse_reset_time_at(
                "reset at 09-12 11:40:00 UTC",
                SystemTime::UNIX_EPOCH - Duration::from_secs(1)
            ),
            None
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(2026),
            ..proptest::prelude::ProptestConfig::default()
        })]
        #[test]
        fn reset_parsing_never_panics(text in "\\PC{0,40}", digits in "[0-9 :+T-]{0,30}", secs in 0u64..8_000_000_000) {
            let now = at(secs);
            for message in [format!("reset at {text}"), format!("reset at {digits} UTC"), format!("reset at {digits}")] {
                if let Some(reset) = parse_reset_time_at(&message, now) {
                    proptest::prop_assert!(reset >= now);
                }
            }
        }

        #[test]
        fn rules_never_panic(message in "\\PC{0,60}", code in "\\PC{0,12}", status in 100u16..600) {
            let status = StatusCode::from_u16(status).ok();
            let verdict = classify(status, Some(&code), None, Some(&code), Some(&message));
            let _ = quota_reset(verdict.reset, &message, at(1_789_209_600));
            let _ = classify_plain(status, Some(&message));
        }

        #[test]
        fn find_agrees_with_a_naive_search(h in "[aAbB\u{e9}]{0,12}", n in "[aAbB]{1,3}") {
            let naive = (0..=h.len().saturating_sub(n.len()))
                .find(|&i| h.len() >= n.len() && h.as_bytes()[i..i + n.len()].eq_ignore_ascii_case(n.as_bytes()));
            proptest::prop_assert_eq!(find_ignore_case(&h, &n), naive);
        }
    }

    #[test]
    fn weekly_reset_is_next_monday_midnight_utc8() {
        // Wednesday 2026-09-16 12:00 UTC -> Monday 2026-09-21 00:00 UTC+8 = Sunday 16:00 UTC.
        let now = at(utc(2026, 9, 16, 12, 0, 0));
        assert_eq!(next_monday_utc8(now), Some(at(utc(2026, 9, 20, 16, 0, 0))));
        // Sunday 2026-09-20 16:00 UTC is Monday 00:00 UTC+8 exactly: the next one.
        let now = at(utc(2026, 9, 20, 16, 0, 0));
        assert_eq!(next_monday_utc8(now), Some(at(utc(2026, 9, 27, 16, 0, 0))));
        // Sunday 15:59:59 UTC: one second.
        let now = at(utc(2026, 9, 20, 15, 59, 59));
        assert_eq!(next_monday_utc8(now), Some(at(utc(2026, 9, 20, 16, 0, 0))));
        assert_eq!(
            next_monday_utc8(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            None
        );
    }
}
