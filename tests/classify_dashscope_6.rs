//! DASHSCOPE.md §6 ("Learned from real traffic"), one test per fact, written from the text of
//! that section — the bodies are the ones it quotes — not from captures built to pass.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};
use tower_dashscope::classify::{classify_response, classify_response_at};
use tower_dashscope::{DashScopeError, ErrorClass, QuotaScope, RateLimitKind};

use ErrorClass::*;

fn classify(status: u16, body: &str) -> DashScopeError {
    classify_response(
        StatusCode::from_u16(status).unwrap(),
        &HeaderMap::new(),
        body.as_bytes(),
    )
}

fn classify_at(status: u16, body: &str, now: SystemTime) -> DashScopeError {
    classify_response_at(
        StatusCode::from_u16(status).unwrap(),
        &HeaderMap::new(),
        body.as_bytes(),
        now,
    )
}

/// Seconds since the Unix epoch → a wall-clock time.
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// 2026-09-12 10:40:00 UTC, a Saturday.
const SAT_2026_09_12_1040: u64 = 1_789_209_600;
/// 2026-09-16 12:00:00 UTC, a Wednesday.
const WED_2026_09_16_1200: u64 = 1_789_560_000;
/// 2026-09-20 16:00:00 UTC = Monday 2026-09-21 00:00 UTC+8.
const MON_2026_09_21_0000_UTC8: u64 = 1_789_920_000;

/// The same message in the native flat shape, the nested shape, and Anthropic's envelope.
fn three_shapes(code: Option<&str>, message: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "native flat",
            serde_json::json!({"code": code, "message": message, "request_id": "r-flat"})
                .to_string(),
        ),
        (
            "nested",
            serde_json::json!({"error": {"code": code, "message": message, "type": code}, "request_id": "r-nested"})
                .to_string(),
        ),
        (
            "anthropic envelope",
            serde_json::json!({"type": "error", "error": {"type": code.unwrap_or("api_error"), "message": message}})
                .to_string(),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Plans and their errors
// ---------------------------------------------------------------------------------------------

/// "Coding Plan also answers 429 with `concurrency allocated quota exceeded. please try again
/// later.` … retryable, and the kind is concurrency, not tokens (match it before the generic
/// 'allocated quota exceeded' rule)."
#[test]
fn coding_plan_concurrency_is_retryable_concurrency_not_tokens() {
    let message = "concurrency allocated quota exceeded. please try again later.";
    for code in [
        None,
        Some("throttling"),
        Some("Throttling.AllocationQuota"),
        Some("insufficient_quota"),
    ] {
        for (shape, body) in three_shapes(code, message) {
            let err = classify(429, &body);
            let case = format!("{shape} code {code:?}");
            assert_eq!(
                err.class(),
                RateLimited(RateLimitKind::Concurrency),
                "{case}: {err}"
            );
            assert!(err.is_retryable(), "{case}");
            assert_eq!(err.quota_scope(), Some(QuotaScope::Plan), "{case}");
            assert_eq!(err.message(), Some(message), "{case}");
        }
    }
}

/// "Coding Plan `usage allocated quota exceeded. please try again later.` (429, often with the
/// lowercase code `throttling`, seen from `/apps/anthropic`) … 'usually recovers after about an
/// hour'. A backoff measured in seconds cannot fix it: … quota exhausted, not retried, shared by
/// every model on the plan."
#[test]
fn coding_plan_usage_window_is_plan_wide_quota_exhausted() {
    let now = at(SAT_2026_09_12_1040);
    let message = "usage allocated quota exceeded. please try again later.";
    for code in [Some("throttling"), None, Some("Throttling.AllocationQuota")] {
        for (shape, body) in three_shapes(code, message) {
            let err = classify_at(429, &body, now);
            let case = format!("{shape} code {code:?}");
            assert_eq!(err.class(), QuotaExhausted, "{case}: {err}");
            assert!(!err.is_retryable(), "{case}");
            assert_eq!(err.quota_scope(), Some(QuotaScope::Plan), "{case}");
            assert!(err.is_plan_wide(), "{case}");
            // No seconds-scale retry-after; an estimate of when it comes back instead.
            assert_eq!(err.retry_after(), None, "{case}");
            let reset = err.quota_reset().expect("an estimate");
            assert!(reset.is_estimate(), "{case}");
            assert_eq!(reset.at(), now + Duration::from_secs(3600), "{case}");
            assert!(err.advice().contains("hour"), "{case}: {}", err.advice());
        }
    }
}

/// §2: Coding Plan `hour / week / month allocated quota exceeded`: "5-hour sliding window; week
/// resets Monday 00:00 UTC+8; month on the subscription day".
#[test]
fn coding_plan_windows_know_their_resets() {
    let now = at(WED_2026_09_16_1200);
    for status in [429, 403] {
        let week = classify_at(
            status,
            r#"{"code":"Throttling.AllocationQuota","message":"week allocated quota exceeded"}"#,
            now,
        );
        assert_eq!(week.class(), QuotaExhausted, "{week}");
        assert_eq!(week.quota_scope(), Some(QuotaScope::Plan));
        let reset = week.quota_reset().unwrap();
        assert!(!reset.is_estimate());
        assert_eq!(reset.at(), at(MON_2026_09_21_0000_UTC8));
        assert_eq!(
            week.retry_after(),
            Some(Duration::from_secs(
                MON_2026_09_21_0000_UTC8 - WED_2026_09_16_1200
            ))
        );
        assert!(week.to_string().contains("quota resets at"), "{week}");

        let hour = classify_at(
            status,
            r#"{"error":{"code":"insufficient_quota","message":"hour allocated quota exceeded"}}"#,
            now,
        );
        assert_eq!(hour.class(), QuotaExhausted, "{hour}");
        assert_eq!(hour.quota_scope(), Some(QuotaScope::Plan));
        assert_eq!(hour.retry_after(), None);
        assert!(hour.quota_reset().unwrap().is_estimate());

        let month = classify_at(
            status,
            r#"{"code":"Throttling.AllocationQuota","message":"month allocated quota exceeded"}"#,
            now,
        );
        assert_eq!(month.class(), QuotaExhausted, "{month}");
        assert_eq!(month.quota_scope(), Some(QuotaScope::Plan));
        // The subscription day is not in the response.
        assert_eq!(month.quota_reset(), None);
        assert_eq!(month.retry_after(), None);
    }
}

/// "Coding Plan refuses callers it does not take for a coding agent with `405
/// {"error":"Coding Plan is currently only available for Coding Agents"}` … Not a missing
/// resource: a permission problem. Always send a `User-Agent`."
#[test]
fn coding_plan_refuses_non_agents_with_a_permission_error_naming_user_agent() {
    let err = classify(
        405,
        r#"{"error":"Coding Plan is currently only available for Coding Agents"}"#,
    );
    assert_eq!(err.class(), PermissionDenied, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(err.status(), Some(StatusCode::METHOD_NOT_ALLOWED));
    assert_eq!(
        err.message(),
        Some("Coding Plan is currently only available for Coding Agents")
    );
    assert!(err.advice().contains("User-Agent"), "{}", err.advice());
    assert!(err.to_string().contains("User-Agent"), "{err}");
}

/// "Coding Plan 401 bodies come flat (`{"code":"invalid_api_key","message":"invalid access
/// token or token expired"}`) as well as nested under `error` on `/apps/anthropic`."
#[test]
fn coding_plan_401_flat_and_nested() {
    for body in [
        r#"{"code":"invalid_api_key","message":"invalid access token or token expired"}"#,
        r#"{"error":{"code":"invalid_api_key","message":"invalid access token or token expired"}}"#,
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid access token or token expired"}}"#,
    ] {
        let err = classify(401, body);
        assert_eq!(err.class(), Authentication, "{body}: {err}");
        assert!(!err.is_retryable());
    }
}

/// "Token Plan … says exhaustion in text only, with no code: `429 {"error":{"message":"Your
/// token-plan 1-week quota has been exhausted. The quota will reset at 09-12 11:40:00 UTC."}}` —
/// quota exhausted; the reset time in the text is the real retry-after."
#[test]
fn token_plan_exhaustion_with_reset_time_as_retry_after() {
    let body = r#"{"error":{"message":"Your token-plan 1-week quota has been exhausted. The quota will reset at 09-12 11:40:00 UTC."}}"#;
    let now = at(SAT_2026_09_12_1040);
    let err = classify_at(429, body, now);
    assert_eq!(err.class(), QuotaExhausted, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(err.code(), None);
    assert_eq!(err.quota_scope(), Some(QuotaScope::Plan));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    let reset = err.quota_reset().unwrap();
    assert!(!reset.is_estimate());
    assert_eq!(err.quota_resets_at(), Some(at(SAT_2026_09_12_1040 + 3600)));
    assert!(
        err.to_string()
            .contains("quota resets at Sat, 12 Sep 2026 11:40:00 GMT"),
        "{err}"
    );

    // No year in the text: the next occurrence of that month-day time.
    let a_day_later = at(SAT_2026_09_12_1040 + 2 * 86_400);
    let err = classify_at(429, body, a_day_later);
    let next_year = 1_820_749_200; // 2027-09-12 11:40:00 UTC
    assert_eq!(err.quota_resets_at(), Some(at(next_year)));

    // With the system clock the reset is still read.
    let err = classify(429, body);
    assert_eq!(err.class(), QuotaExhausted);
    assert!(err.quota_resets_at().is_some());
}

// ---------------------------------------------------------------------------------------------
// Codes and statuses the table in §2 misses
// ---------------------------------------------------------------------------------------------

/// "`400 "Model not exist."` (native) means an unknown model name: not found, as for 404s."
#[test]
fn model_not_exist_400_is_not_found() {
    for body in [
        r#"{"code":"InvalidParameter","message":"Model not exist.","request_id":"r"}"#,
        r#"{"message":"Model not exist.","request_id":"r"}"#,
        "Model not exist.",
    ] {
        let err = classify(400, body);
        assert_eq!(err.class(), NotFound, "{body}: {err}");
        assert!(!err.is_retryable());
    }
}

/// "`400 "url error, please check url！"` (full-width `！`, now followed by a documentation
/// link): the model and the endpoint do not match — a routing mistake, not found."
#[test]
fn url_error_400_is_not_found() {
    for message in [
        "url error, please check url！",
        "url error, please check url！ For details, see: https://help.aliyun.com/zh/model-studio/error-code#url-error",
    ] {
        for (shape, body) in three_shapes(Some("InvalidParameter"), message) {
            let err = classify(400, &body);
            assert_eq!(err.class(), NotFound, "{shape} {message}: {err}");
            assert_eq!(err.message(), Some(message));
            assert!(err.advice().contains("endpoint"), "{}", err.advice());
        }
    }
}

/// "`403 Endpoint.AccessDenied` is sent for models that have been taken offline (the fix is the
/// replacement model); `App.AccessDenied` for applications."
#[test]
fn endpoint_access_denied_is_a_retired_model_and_app_access_denied_a_permission() {
    let err = classify(
        403,
        r#"{"code":"Endpoint.AccessDenied","message":"Access denied.","request_id":"r"}"#,
    );
    assert_eq!(err.class(), NotFound, "{err}");
    assert!(err.advice().contains("replacement"), "{}", err.advice());

    let err = classify(
        403,
        r#"{"code":"App.AccessDenied","message":"Access denied.","request_id":"r"}"#,
    );
    assert_eq!(err.class(), PermissionDenied, "{err}");
    assert!(!err.is_retryable());
}

/// "`403 AccessDenied` with "does not support synchronous calls" / "asynchronous calls" is a
/// request mistake (the `X-DashScope-Async: enable` header), not a permission."
#[test]
fn access_denied_for_sync_or_async_calls_is_an_invalid_request_naming_the_header() {
    for message in [
        "current user api does not support synchronous calls",
        "The model does not support asynchronous calls.",
    ] {
        let err = classify(
            403,
            &serde_json::json!({"code": "AccessDenied", "message": message}).to_string(),
        );
        assert_eq!(err.class(), InvalidRequest, "{message}: {err}");
        assert!(
            err.advice().contains("X-DashScope-Async"),
            "{}",
            err.advice()
        );
    }
}

/// "A plain `Access denied.` is either exhausted free quota *or* no access to the model: do not
/// assume quota."
#[test]
fn plain_access_denied_is_not_assumed_to_be_quota() {
    for body in [
        "Access denied.",
        r#"{"message":"Access denied."}"#,
        r#"{"code":"AccessDenied","message":"Access denied."}"#,
    ] {
        let err = classify(403, body);
        assert_eq!(err.class(), PermissionDenied, "{body}: {err}");
        assert_eq!(err.quota_scope(), None, "{body}");
        assert!(
            err.advice().contains("free quota") && err.advice().contains("no access"),
            "{body}: {}",
            err.advice()
        );
    }
}

/// "`Throttling.AllocationQuota` is not always tokens per minute: it also carries
/// batch-capacity and per-feature count limits (e.g. voice clones). Classify by message where
/// it says which. `Throttling` also comes as "Too many requests in route."" (The two messages
/// below paraphrase the kinds of limit the section names; it quotes no text.)
#[test]
fn allocation_quota_is_classified_by_its_message() {
    let err = classify(
        429,
        r#"{"code":"Throttling.AllocationQuota","message":"Batch capacity exceeded, please try again later."}"#,
    );
    assert_eq!(
        err.class(),
        RateLimited(RateLimitKind::Concurrency),
        "{err}"
    );

    let err = classify(
        429,
        r#"{"code":"Throttling.AllocationQuota","message":"The number of voice clones has reached the maximum."}"#,
    );
    assert_eq!(err.class(), QuotaExhausted, "{err}");
    assert!(!err.is_retryable());

    // The documented tokens-per-minute meaning is unchanged.
    let err = classify(
        429,
        r#"{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded, please increase your quota limit."}"#,
    );
    assert_eq!(err.class(), RateLimited(RateLimitKind::Tokens), "{err}");

    for body in [
        r#"{"code":"Throttling","message":"Too many requests in route."}"#,
        r#"{"message":"Too many requests in route."}"#,
    ] {
        let err = classify(429, body);
        assert_eq!(
            err.class(),
            RateLimited(RateLimitKind::Requests),
            "{body}: {err}"
        );
    }
}

/// "Some 500s are deterministic client errors (e.g. `list index out of range` for a malformed
/// message list; invalid tool-call JSON): retrying once is fine, retrying six times is waste."
#[test]
fn client_caused_500s_stay_server_errors_with_advice_to_check_the_request() {
    for message in [
        "list index out of range",
        "The tool_calls arguments are not valid JSON",
    ] {
        let err = classify(
            500,
            &serde_json::json!({"code": "InternalError", "message": message}).to_string(),
        );
        assert_eq!(err.class(), ServerError, "{message}: {err}");
        assert!(err.is_retryable());
        assert!(err.advice().contains("request"), "{}", err.advice());
    }
}

/// "More 5xx names: compat `internal_server_error`, `InternalError.Timeout`, `ResponseTimeout`,
/// `SystemError` bodies that carry their own `status_code` field."
#[test]
fn more_5xx_names() {
    let err = classify(
        500,
        r#"{"error":{"code":"internal_server_error","message":"The server had an error while processing your request.","type":"internal_server_error"}}"#,
    );
    assert_eq!(err.class(), ServerError, "{err}");
    for code in ["InternalError.Timeout", "ResponseTimeout"] {
        let err = classify(
            500,
            &serde_json::json!({"code": code, "message": "timed out"}).to_string(),
        );
        assert_eq!(err.class(), Timeout, "{code}: {err}");
        assert!(err.is_retryable());
    }
    let body = r#"{"status_code":500,"request_id":"r-sys","code":"SystemError","message":"An system error has occured, please try again later."}"#;
    let err = classify(500, body);
    assert_eq!(err.class(), ServerError, "{err}");
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    // On a status line that claims success, the body's own status is the real one.
    let err = classify(200, body);
    assert_eq!(
        err.status(),
        Some(StatusCode::INTERNAL_SERVER_ERROR),
        "{err}"
    );
    assert_eq!(err.class(), ServerError);
}

/// "Messages in Chinese occur (e.g. `parameter.enable_thinking必须设置为false才能进行非流式调用`)."
#[test]
fn chinese_messages_classify_and_never_panic() {
    let message = "parameter.enable_thinking必须设置为false才能进行非流式调用";
    for body in [
        serde_json::json!({"code": "InvalidParameter", "message": message}).to_string(),
        serde_json::json!({"error": {"code": "invalid_parameter_error", "message": format!("<400> InternalError.Algo.InvalidParameter: {message}"), "type": "invalid_request_error"}}).to_string(),
        serde_json::json!({"message": message}).to_string(),
        message.to_owned(),
    ] {
        let err = classify(400, &body);
        assert_eq!(err.class(), InvalidRequest, "{body}: {err}");
        // Cut anywhere, even inside a character: never a panic.
        for cut in 0..=body.len() {
            let _ = classify_response(
                StatusCode::BAD_REQUEST,
                &HeaderMap::new(),
                &body.as_bytes()[..cut],
            );
        }
    }
    let err = classify(
        400,
        &serde_json::json!({"code": "InvalidParameter", "message": message}).to_string(),
    );
    assert_eq!(err.message(), Some(message));
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

/// "The `<NNN> Code.Name: ` prefix can carry a 7-digit number (`<5000202>
/// InternalError.Algo.ModelServingError: …`), and sometimes a nested JSON list after it."
#[test]
fn seven_digit_prefix_with_a_nested_list() {
    let err = classify(
        500,
        r#"{"error":{"code":"InternalError","message":"<5000202> InternalError.Algo.ModelServingError: [{\"code\":\"ModelServingError\",\"message\":\"Too many requests.\"}]","type":"api_error"}}"#,
    );
    // ModelServingError is capacity (§2): unavailable, retryable.
    assert_eq!(err.class(), Unavailable, "{err}");
    assert!(err.is_retryable());
    assert_eq!(
        err.message(),
        Some(r#"[{"code":"ModelServingError","message":"Too many requests."}]"#)
    );
    let err = classify(
        500,
        r#"{"code":"InternalError","message":"<5000202> InternalError.Algo.ModelServingError: The model is busy."}"#,
    );
    assert_eq!(err.message(), Some("The model is busy."), "{err}");
}

/// "The Anthropic-compatible endpoint usually answers errors in the OpenAI-compatible shape …;
/// `param` can be `""`; `id` / `request_id` sometimes sit inside `error`" — and its Anthropic
/// shape's generic `type` must not outrank the code in the message prefix.
#[test]
fn anthropic_endpoint_shapes() {
    let err = classify(
        400,
        r#"{"error":{"code":"invalid_parameter_error","param":"","message":"<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, 16384]","type":"invalid_request_error","request_id":"rid-inside"}}"#,
    );
    assert_eq!(err.class(), InvalidRequest, "{err}");
    assert_eq!(err.request_id(), Some("rid-inside"));

    let err = classify(
        400,
        r#"{"error":{"code":"invalid_parameter_error","param":"","message":"bad","type":"invalid_request_error","id":"chatcmpl-0f1e2d3c"}}"#,
    );
    assert_eq!(err.request_id(), Some("0f1e2d3c"), "{err}");

    for status in [429, 500] {
        let err = classify(
            status,
            r#"{"type":"error","error":{"type":"api_error","message":"<429> Throttling.RateQuota: Requests rate limit exceeded, please try again later."}}"#,
        );
        assert_eq!(
            err.class(),
            RateLimited(RateLimitKind::Requests),
            "{status}: {err}"
        );
    }
    let err = classify(
        429,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"<429> Throttling.AllocationQuota: Allocated quota exceeded, please increase your quota limit."}}"#,
    );
    assert_eq!(err.class(), RateLimited(RateLimitKind::Tokens), "{err}");
}

/// "a 429 with an **empty body** has been seen" — rate limited, retryable, its Retry-After (sent
/// twice, as proxies do) honoured.
#[test]
fn empty_bodied_429() {
    let err = classify(429, "");
    assert_eq!(err.class(), RateLimited(RateLimitKind::Unspecified));
    assert!(err.is_retryable());
    assert_eq!(err.quota_scope(), None);

    let mut headers = HeaderMap::new();
    headers.append("retry-after", HeaderValue::from_static("garbage"));
    headers.append("retry-after", HeaderValue::from_static("2"));
    let err = classify_response(StatusCode::TOO_MANY_REQUESTS, &headers, b"");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("2, 2"));
    let err = classify_response(StatusCode::TOO_MANY_REQUESTS, &headers, b"");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
}

/// "Burst-limit errors (`limit_burst_rate`) also arrive as the first event of an HTTP 200
/// stream; on the compatible path a streaming 429 has been captured as an `event:error` frame
/// inside HTTP 200 too."
#[test]
fn burst_limit_as_an_error_frame_inside_http_200() {
    let body = "event:error\n:HTTP_STATUS/429\ndata:{\"error\":{\"message\":\"Request rate increased too quickly.\",\"type\":\"limit_burst_rate\",\"code\":\"limit_burst_rate\"},\"id\":\"chatcmpl-1\"}\n\n";
    let err = classify(200, body);
    assert_eq!(err.class(), RateLimited(RateLimitKind::Burst), "{err}");
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.quota_scope(), Some(QuotaScope::Model));
}

/// "The compatible 401 for a wrong key reads `{"error":{"message":"Incorrect API key provided.
/// …","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"…"}`
/// (type `invalid_request_error`, not `invalid_api_key`)."
#[test]
fn compat_401_wrong_key() {
    let err = classify(
        401,
        r#"{"error":{"message":"Incorrect API key provided. For details, see: https://www.alibabacloud.com/help/en/model-studio/error-code#apikey-error","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"rid-401"}"#,
    );
    assert_eq!(err.class(), Authentication, "{err}");
    assert_eq!(err.code(), Some("invalid_api_key"));
    assert_eq!(err.request_id(), Some("rid-401"));
}

/// "Anthropic's SDKs read the request id from a `request-id` header; OpenAI's from
/// `x-request-id`."
#[test]
fn request_id_from_either_header() {
    let mut headers = HeaderMap::new();
    headers.insert("request-id", HeaderValue::from_static("anthropic-rid"));
    let err = classify_response(StatusCode::INTERNAL_SERVER_ERROR, &headers, b"");
    assert_eq!(err.request_id(), Some("anthropic-rid"));
    headers.insert("x-request-id", HeaderValue::from_static("openai-rid"));
    let err = classify_response(StatusCode::INTERNAL_SERVER_ERROR, &headers, b"");
    assert_eq!(err.request_id(), Some("openai-rid"));
}

// ---------------------------------------------------------------------------------------------
// Plan-wide or per model (§5 and §6)
// ---------------------------------------------------------------------------------------------

/// §5: limits are "per root account, per model" — another model may answer; §6: Coding Plan and
/// Token Plan quotas are shared by every model on the plan; §2: billing stops the account.
#[test]
fn quota_scope_tells_a_fallback_whether_a_sibling_model_can_help() {
    let cases = [
        (
            429,
            r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later."}"#,
            Some(QuotaScope::Model),
        ),
        (
            429,
            r#"{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded, please increase your quota limit."}"#,
            Some(QuotaScope::Model),
        ),
        (
            429,
            r#"{"code":"Throttling.AllocationQuota","message":"Free allocated quota exceeded."}"#,
            Some(QuotaScope::Model),
        ),
        (
            429,
            r#"{"code":"throttling","message":"usage allocated quota exceeded. please try again later."}"#,
            Some(QuotaScope::Plan),
        ),
        (
            400,
            r#"{"code":"Arrearage","message":"Access denied, please make sure your account is in good standing."}"#,
            Some(QuotaScope::Account),
        ),
        (500, r#"{"code":"InternalError","message":"x"}"#, None),
    ];
    for (status, body, scope) in cases {
        let err = classify(status, body);
        assert_eq!(err.quota_scope(), scope, "{body}: {err}");
        assert_eq!(
            err.is_plan_wide(),
            matches!(scope, Some(QuotaScope::Plan | QuotaScope::Account)),
            "{body}"
        );
    }
}
