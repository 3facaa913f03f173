//! Every row of DashScope's error table and every body shape, written from the documented facts
//! (DashScope's error-code pages, Alibaba's SDKs and captured traffic), not from the fixtures.

use http::{HeaderMap, StatusCode};
use tower_dashscope::classify::classify_response;
use tower_dashscope::{DashScopeError, ErrorClass, RateLimitKind};

use ErrorClass::*;

fn classify_with(status: u16, headers: &HeaderMap, body: &[u8]) -> DashScopeError {
    classify_response(StatusCode::from_u16(status).unwrap(), headers, body)
}

fn classify(status: u16, body: &str) -> DashScopeError {
    classify_with(status, &HeaderMap::new(), body.as_bytes())
}

fn native(code: &str, message: &str) -> String {
    serde_json::json!({"code": code, "message": message, "request_id": "rid-native"}).to_string()
}

fn compat(code: &str, ty: &str, message: &str) -> String {
    serde_json::json!({
        "error": {"code": code, "param": null, "message": message, "type": ty},
        "id": "chatcmpl-rid-compat",
        "request_id": "rid-compat"
    })
    .to_string()
}

/// Checks class, code and that retryability follows the class.
#[track_caller]
fn check(case: &str, err: &DashScopeError, class: ErrorClass, code: Option<&str>) {
    assert_eq!(err.class(), class, "{case}: {err}");
    assert_eq!(err.code(), code, "{case}");
    let retryable = matches!(
        class,
        RateLimited(_) | ServerError | Unavailable | Timeout | Connection
    );
    assert_eq!(err.is_retryable(), retryable, "{case}");
}

/// (status, native code, message, class)
const NATIVE_ROWS: &[(u16, &str, &str, ErrorClass)] = &[
    (
        400,
        "InvalidParameter",
        "Required parameter(s) missing or invalid.",
        InvalidRequest,
    ),
    (
        400,
        "InvalidParameter",
        "Range of input length should be [1, 30720]",
        ContextLengthExceeded,
    ),
    (
        400,
        "InvalidParameter",
        "Range of max_tokens should be [1, 16384]",
        InvalidRequest,
    ),
    (
        400,
        "DataInspectionFailed",
        "Input data may contain inappropriate content.",
        ContentFiltered,
    ),
    (
        400,
        "FaqRuleBlocked",
        "Input or output data is blocked by faq rule.",
        ContentFiltered,
    ),
    (
        400,
        "CustomRoleBlocked",
        "Input or output data may contain inappropriate content with custom rule.",
        ContentFiltered,
    ),
    (
        400,
        "IPInfringementSuspect",
        "Input data is suspected of being involved in IP infringement.",
        ContentFiltered,
    ),
    (
        400,
        "Arrearage",
        "Access denied, please make sure your account is in good standing.",
        QuotaExhausted,
    ),
    (400, "APIConnectionError", "Connection error.", Connection),
    (
        400,
        "InternalError.Algo.InvalidParameter",
        "The input is invalid.",
        InvalidRequest,
    ),
    (
        401,
        "InvalidApiKey",
        "Invalid API-key provided.",
        Authentication,
    ),
    (401, "NOT AUTHORIZED", "Not authorized.", Authentication),
    (
        401,
        "Unauthorized",
        "invalid access token or token expired",
        Authentication,
    ),
    (403, "AccessDenied", "Access denied.", PermissionDenied),
    (
        403,
        "AccessDenied.Unpurchased",
        "Access to model denied. Please make sure you are eligible for using the model.",
        PermissionDenied,
    ),
    (
        403,
        "Model.AccessDenied",
        "Model access denied.",
        PermissionDenied,
    ),
    (
        403,
        "Workspace.AccessDenied",
        "Workspace access denied.",
        PermissionDenied,
    ),
    (
        403,
        "AllocationQuota.FreeTierOnly",
        "The free tier of the model has been exhausted.",
        QuotaExhausted,
    ),
    (404, "ModelNotFound", "Model can not be found.", NotFound),
    (
        404,
        "WorkSpaceNotFound",
        "WorkSpace can not be found.",
        NotFound,
    ),
    (
        429,
        "Throttling",
        "Requests throttling triggered.",
        RateLimited(RateLimitKind::Requests),
    ),
    (
        429,
        "Throttling.RateQuota",
        "Requests rate limit exceeded, please try again later.",
        RateLimited(RateLimitKind::Requests),
    ),
    (
        429,
        "Throttling.AllocationQuota",
        "Allocated quota exceeded, please increase your quota limit.",
        RateLimited(RateLimitKind::Tokens),
    ),
    (
        429,
        "Throttling.BurstRate",
        "Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time.",
        RateLimited(RateLimitKind::Burst),
    ),
    (
        429,
        "Throttling.AllocationQuota",
        "Free allocated quota exceeded.",
        QuotaExhausted,
    ),
    (
        429,
        "CommodityNotPurchased",
        "Commodity has not purchased yet.",
        QuotaExhausted,
    ),
    (
        429,
        "PrepaidBillOverdue",
        "The prepaid bill is overdue.",
        QuotaExhausted,
    ),
    (
        429,
        "PostpaidBillOverdue",
        "The postpaid bill is overdue.",
        QuotaExhausted,
    ),
    (
        429,
        "Throttling.AllocationQuota",
        "hour allocated quota exceeded",
        QuotaExhausted,
    ),
    (
        429,
        "Throttling.AllocationQuota",
        "week allocated quota exceeded",
        QuotaExhausted,
    ),
    (
        403,
        "Throttling.AllocationQuota",
        "month allocated quota exceeded",
        QuotaExhausted,
    ),
    (
        500,
        "InternalError",
        "An internal error has occured, try again later or contact service support.",
        ServerError,
    ),
    (
        500,
        "InternalError.Algo",
        "An internal error has occured during execution, please try again later or contact service support.",
        ServerError,
    ),
    (
        500,
        "SystemError",
        "An system error has occured, please try again later.",
        ServerError,
    ),
    (
        500,
        "ModelServiceFailed",
        "Failed to request model service.",
        ServerError,
    ),
    (
        500,
        "RequestTimeOut",
        "Request timed out, please try again later.",
        Timeout,
    ),
    (
        500,
        "ModelServingError",
        "Too many requests. Your requests are being throttled due to system capacity limits. Please try again later.",
        Unavailable,
    ),
    (
        503,
        "ModelServingError",
        "Too many requests. Your requests are being throttled due to system capacity limits. Please try again later.",
        Unavailable,
    ),
    (
        503,
        "ModelUnavailable",
        "Model is unavailable, please try again later.",
        Unavailable,
    ),
];

#[test]
fn every_native_row() {
    for &(status, code, message, class) in NATIVE_ROWS {
        let err = classify(status, &native(code, message));
        check(
            &format!("{status} {code} {message:?}"),
            &err,
            class,
            Some(code),
        );
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(err.request_id(), Some("rid-native"));
        assert_eq!(err.message(), Some(message));
    }
}

/// (status, compat code, type, message, class)
const COMPAT_ROWS: &[(u16, &str, &str, &str, ErrorClass)] = &[
    (
        400,
        "invalid_parameter_error",
        "invalid_request_error",
        "<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 129024]",
        ContextLengthExceeded,
    ),
    (
        400,
        "invalid_parameter_error",
        "invalid_request_error",
        "<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, 16384]",
        InvalidRequest,
    ),
    (
        400,
        "data_inspection_failed",
        "data_inspection_failed",
        "Input data may contain inappropriate content.",
        ContentFiltered,
    ),
    (
        400,
        "Arrearage",
        "Arrearage",
        "Access denied, please make sure your account is in good standing.",
        QuotaExhausted,
    ),
    (
        401,
        "invalid_api_key",
        "invalid_request_error",
        "Incorrect API key provided.",
        Authentication,
    ),
    (
        404,
        "model_not_found",
        "invalid_request_error",
        "The model `qwen-nope` does not exist or you do not have access to it.",
        NotFound,
    ),
    (
        404,
        "model_not_supported",
        "invalid_request_error",
        "Unsupported model `qwen-vl` for OpenAI compatibility mode.",
        NotFound,
    ),
    (
        429,
        "limit_requests",
        "limit_requests",
        "You have exceeded your current request limit.",
        RateLimited(RateLimitKind::Requests),
    ),
    (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
        RateLimited(RateLimitKind::Tokens),
    ),
    (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "Allocated quota exceeded, please increase your quota limit.",
        RateLimited(RateLimitKind::Tokens),
    ),
    (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "Free allocated quota exceeded.",
        QuotaExhausted,
    ),
    (
        429,
        "limit_burst_rate",
        "limit_burst_rate",
        "Request rate increased too quickly.",
        RateLimited(RateLimitKind::Burst),
    ),
    (
        503,
        "ServiceUnavailable",
        "ServiceUnavailable",
        "<503> ServiceUnavailable: Service temporarily unavailable.",
        Unavailable,
    ),
    (
        500,
        "internal_error",
        "api_error",
        "<500> InternalError.Algo: An internal error has occured.",
        ServerError,
    ),
];

#[test]
fn every_compatible_row() {
    for &(status, code, ty, message, class) in COMPAT_ROWS {
        let err = classify(status, &compat(code, ty, message));
        check(
            &format!("{status} {code} {message:?}"),
            &err,
            class,
            Some(code),
        );
        assert_eq!(err.request_id(), Some("rid-compat"));
        let stripped = message
            .split_once(": ")
            .filter(|_| message.starts_with('<'))
            .map_or(message, |(_, rest)| rest);
        assert_eq!(err.message(), Some(stripped), "prefix stripped");
    }
}

#[test]
fn compatible_code_missing_falls_back_to_type() {
    let body = r#"{"error":{"code":null,"message":"You exceeded your current quota.","type":"insufficient_quota"}}"#;
    let err = classify(429, body);
    check(
        "null code",
        &err,
        RateLimited(RateLimitKind::Tokens),
        Some("insufficient_quota"),
    );
}

#[test]
fn customer_facing_names() {
    for (status, name, class) in [
        (401, "authentication_error", Authentication),
        (403, "permission_error", PermissionDenied),
        (404, "not_found_error", NotFound),
        (413, "request_too_large", PayloadTooLarge),
        (
            429,
            "rate_limit_error",
            RateLimited(RateLimitKind::Unspecified),
        ),
        (402, "billing_error", QuotaExhausted),
        (500, "api_error", ServerError),
        (529, "overloaded_error", Unavailable),
        (504, "timeout_error", Timeout),
    ] {
        let anthropic =
            serde_json::json!({"type": "error", "error": {"type": name, "message": "something"}})
                .to_string();
        check(name, &classify(status, &anthropic), class, Some(name));
        check(
            name,
            &classify(status, &native(name, "something")),
            class,
            Some(name),
        );
    }
    // A rate_limit_error whose text says which limit.
    let err = classify(429, &native("rate_limit_error", "Allocated quota exceeded"));
    assert_eq!(err.class(), RateLimited(RateLimitKind::Tokens));
}

#[test]
fn status_only_rows() {
    for (status, class) in [
        (413, PayloadTooLarge),
        (404, NotFound),
        (400, InvalidRequest),
        (401, Authentication),
        (403, PermissionDenied),
        (408, Timeout),
        (429, RateLimited(RateLimitKind::Unspecified)),
        (500, ServerError),
        (502, ServerError),
        (503, Unavailable),
        (504, Timeout),
        (301, NotFound),
    ] {
        let err = classify(status, "");
        check(&format!("{status} empty body"), &err, class, None);
        assert_eq!(err.message(), None);
    }
}

#[test]
fn plain_access_denied_on_403_is_exhausted_free_quota() {
    check(
        "plain text",
        &classify(403, "Access denied."),
        QuotaExhausted,
        None,
    );
    check(
        "json, no code",
        &classify(403, r#"{"message":"Access denied."}"#),
        QuotaExhausted,
        None,
    );
    // With the AccessDenied code it is a permission problem.
    check(
        "coded",
        &classify(403, &native("AccessDenied", "Access denied.")),
        PermissionDenied,
        Some("AccessDenied"),
    );
}

#[test]
fn all_body_shapes() {
    // 1. native flat
    let err = classify(
        429,
        &native("Throttling.RateQuota", "Requests rate limit exceeded"),
    );
    assert_eq!(err.request_id(), Some("rid-native"));
    // native nested error object (Alibaba's Java SDK accepts it)
    let body = r#"{"error":{"code":"Throttling.BurstRate","message":"Request rate increased too quickly."},"request_id":"rid-nested"}"#;
    let err = classify(429, body);
    check(
        "nested",
        &err,
        RateLimited(RateLimitKind::Burst),
        Some("Throttling.BurstRate"),
    );
    assert_eq!(err.request_id(), Some("rid-nested"));
    // 2. compatible (above). 3. Anthropic style, message prefix stripped, code from the prefix decides
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","traceId":"trace-1","message":"<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, 16384]"}}"#;
    let err = classify(400, body);
    check(
        "anthropic",
        &err,
        InvalidRequest,
        Some("invalid_request_error"),
    );
    assert_eq!(
        err.message(),
        Some("Range of max_tokens should be [1, 16384]")
    );
    assert_eq!(
        err.request_id(),
        Some("trace-1"),
        "traceId when nothing better"
    );
    let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 98304]"}}"#;
    check(
        "anthropic overflow",
        &classify(400, body),
        ContextLengthExceeded,
        Some("invalid_request_error"),
    );
    // native envelope on the Anthropic endpoint
    check(
        "anthropic native",
        &classify(401, &native("InvalidApiKey", "Invalid API-key provided.")),
        Authentication,
        Some("InvalidApiKey"),
    );
    // 4. SSE-framed error on HTTP 200 with the real status in the comment line
    let sse = "id:1\nevent:error\n:HTTP_STATUS/429\ndata:{\"request_id\":\"rid-sse\",\"code\":\"Throttling.RateQuota\",\"message\":\"Requests rate limit exceeded, please try again later.\"}\n\n";
    let err = classify(200, sse);
    check(
        "sse 200",
        &err,
        RateLimited(RateLimitKind::Requests),
        Some("Throttling.RateQuota"),
    );
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.request_id(), Some("rid-sse"));
    // SSE-framed body on an HTTP 400 whose content-type says JSON
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let sse = "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"request_id\":\"rid\",\"code\":\"InvalidParameter\",\"message\":\"Range of input length should be [1, 6000]\"}";
    let err = classify_with(400, &headers, sse.as_bytes());
    check(
        "sse 400 json",
        &err,
        ContextLengthExceeded,
        Some("InvalidParameter"),
    );
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    // \r\n line endings
    let crlf = sse
        .replace('\n', "\r\n")
        .replace("400", "500")
        .replace("InvalidParameter", "InternalError");
    let err = classify(200, &crlf);
    check("crlf", &err, ServerError, Some("InternalError"));
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
}

#[test]
fn request_id_falls_back_to_the_header() {
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", "hdr-1".parse().unwrap());
    let body =
        r#"{"error":{"code":"limit_requests","message":"slow down","type":"limit_requests"}}"#;
    assert_eq!(
        classify_with(429, &headers, body.as_bytes()).request_id(),
        Some("hdr-1")
    );
    // The body wins when it has one.
    let body = native("Throttling", "x");
    assert_eq!(
        classify_with(429, &headers, body.as_bytes()).request_id(),
        Some("rid-native")
    );
}

#[test]
fn retry_after_is_read_from_the_headers() {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", "1.5".parse().unwrap());
    let err = classify_with(429, &headers, b"");
    assert_eq!(
        err.retry_after(),
        Some(std::time::Duration::from_millis(1500))
    );
}

#[test]
fn garbage_bodies_are_classified_from_the_status() {
    let deep = "[".repeat(10_000);
    let huge_message = native("Whatever", &"x".repeat(60_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        br#"{"code":"Throttling.Rat"#.to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"[1,2,3]".to_vec(),
        b"null".to_vec(),
        deep.into_bytes(),
        b"<html><body>502 Bad Gateway</body></html>".to_vec(),
    ];
    for body in &bodies {
        for (status, class) in [
            (500, ServerError),
            (401, Authentication),
            (503, Unavailable),
        ] {
            let err = classify_with(status, &HeaderMap::new(), body);
            assert_eq!(
                err.class(),
                class,
                "{status} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(20)])
            );
            assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        }
        assert!(matches!(
            classify_with(429, &HeaderMap::new(), body).class(),
            RateLimited(_)
        ));
    }
    let err = classify(500, &huge_message);
    assert_eq!(err.class(), ServerError);
    assert_eq!(err.message().unwrap().len(), 60_000);
}

#[test]
fn display_is_one_lowercase_line_with_the_facts() {
    let err = classify(
        400,
        &compat(
            "invalid_parameter_error",
            "invalid_request_error",
            "<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 129024]\nsecond line",
        ),
    );
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(line.starts_with(|c: char| c.is_ascii_lowercase()), "{line}");
    assert!(line.contains("invalid_parameter_error"), "{line}");
    assert!(line.contains("rid-compat"), "{line}");
    assert!(
        line.contains("Range of input length should be [1, 129024]"),
        "{line}"
    );
    assert!(!line.contains("<400>"), "{line}");
    assert!(
        line.contains("shorten the input"),
        "says what to do: {line}"
    );
}
