//! Coding Plan and Token Plan hosts, keys, windows and error texts, read through the
//! classifier; native `result_format: "text"`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_dashscope::api::Plan;
use tower_dashscope::mock::{CodingPlan, MockDashScope, ModelConfig, TokenPlan};
use tower_dashscope::{
    Api, ClassifyDashScopeError, DashScopeError, ErrorClass, RateLimitKind, Region,
};

const KEY: &str = "sk-sp-coding";
const TOKEN_KEY: &str = "sk-token";

fn url(plan: Plan, api: Api) -> String {
    let base = Region::Singapore.base_url(plan, api).unwrap();
    format!("{base}{}", api.chat_path())
}

fn chat(plan: Plan, api: Api, key: &str, user_agent: bool) -> Request<Full<Bytes>> {
    let body = r#"{"model":"qwen3-coder-plus","messages":[{"role":"user","content":"12345678"}],"max_tokens":2}"#;
    let mut request =
        Request::post(url(plan, api)).header("authorization", format!("Bearer {key}"));
    if user_agent {
        request = request.header("user-agent", "claude-cli/2.0");
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

async fn send(
    mock: &MockDashScope,
    request: Request<Full<Bytes>>,
) -> Result<Bytes, DashScopeError> {
    let response = ClassifyDashScopeError::new()
        .layer(mock.clone())
        .oneshot(request)
        .await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

async fn raw(mock: &MockDashScope, request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = mock.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn coding(plan: CodingPlan) -> MockDashScope {
    MockDashScope::builder()
        .model("qwen3-coder-plus", ModelConfig::new())
        .api_key_for_plan(&Region::Singapore, Plan::CodingPlan, KEY)
        .api_key_for_plan(&Region::Singapore, Plan::TokenPlan, TOKEN_KEY)
        .api_key_for_plan(&Region::Singapore, Plan::PayAsYouGo, "sk-payg")
        .coding_plan(plan)
        .build()
}

#[tokio::test(start_paused = true)]
async fn keys_work_only_on_their_plans_host() {
    let mock = coding(CodingPlan::new());
    for api in [Api::OpenAiCompatible, Api::Anthropic] {
        assert!(
            send(&mock, chat(Plan::CodingPlan, api, KEY, true))
                .await
                .is_ok(),
            "{api}"
        );
        for (plan, key) in [
            (Plan::CodingPlan, "sk-payg"),
            (Plan::CodingPlan, TOKEN_KEY),
            (Plan::PayAsYouGo, KEY),
            (Plan::TokenPlan, KEY),
        ] {
            let err = send(&mock, chat(plan, api, key, true)).await.unwrap_err();
            assert_eq!(
                err.class(),
                ErrorClass::Authentication,
                "{api} {plan:?} {key}"
            );
            assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        }
    }
    // The Coding Plan's own 401 bodies: flat, nested under `error` on /apps/anthropic.
    let (status, body) = raw(
        &mock,
        chat(Plan::CodingPlan, Api::OpenAiCompatible, "sk-payg", true),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        r#"{"code":"invalid_api_key","message":"invalid access token or token expired"}"#
    );
    let (_, body) = raw(
        &mock,
        chat(Plan::CodingPlan, Api::Anthropic, "sk-payg", true),
    )
    .await;
    assert_eq!(
        body,
        r#"{"error":{"code":"invalid_api_key","message":"invalid access token or token expired"}}"#
    );
    // No native API on a plan's host.
    let native = Request::post(format!(
        "https://{}/api/v1/services/aigc/text-generation/generation",
        Region::Singapore.host(Plan::CodingPlan).unwrap()
    ))
    .header("authorization", format!("Bearer {KEY}"))
    .header("user-agent", "x")
    .body(Full::new(Bytes::from(
        r#"{"model":"qwen3-coder-plus","input":{"messages":[]}}"#,
    )))
    .unwrap();
    assert_eq!(raw(&mock, native).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn coding_plan_windows_say_which_window() {
    for (plan, text) in [
        (
            CodingPlan::new().requests_per_5_hours(2),
            "hour allocated quota exceeded",
        ),
        (
            CodingPlan::new().requests_per_week(2),
            "week allocated quota exceeded",
        ),
        (
            CodingPlan::new().requests_per_month(2),
            "month allocated quota exceeded",
        ),
    ] {
        let mock = coding(plan);
        for _ in 0..2 {
            send(
                &mock,
                chat(Plan::CodingPlan, Api::OpenAiCompatible, KEY, true),
            )
            .await
            .unwrap();
        }
        let err = send(
            &mock,
            chat(Plan::CodingPlan, Api::OpenAiCompatible, KEY, true),
        )
        .await
        .unwrap_err();
        assert_eq!(err.class(), ErrorClass::QuotaExhausted, "{text}: {err}");
        assert_eq!(err.message(), Some(text));
        assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(!err.is_retryable());
    }
    // The 5-hour window slides.
    let mock = coding(CodingPlan::new().requests_per_5_hours(1));
    send(&mock, chat(Plan::CodingPlan, Api::Anthropic, KEY, true))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4 * 3600)).await;
    assert!(
        send(&mock, chat(Plan::CodingPlan, Api::Anthropic, KEY, true))
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        send(&mock, chat(Plan::CodingPlan, Api::Anthropic, KEY, true))
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn coding_plan_refuses_clients_without_a_user_agent() {
    let mock = coding(CodingPlan::new());
    let (status, body) = raw(
        &mock,
        chat(Plan::CodingPlan, Api::OpenAiCompatible, KEY, false),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        body,
        r#"{"error":"Coding Plan is currently only available for Coding Agents"}"#
    );
}

#[tokio::test(start_paused = true)]
async fn coding_plan_405_is_a_permission_problem() {
    let mock = coding(CodingPlan::new());
    let err = send(
        &mock,
        chat(Plan::CodingPlan, Api::OpenAiCompatible, KEY, false),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::PermissionDenied, "{err}");
    assert_eq!(err.status(), Some(StatusCode::METHOD_NOT_ALLOWED));
}

#[tokio::test(start_paused = true)]
async fn coding_plan_concurrency_and_usage_texts() {
    let mock = MockDashScope::builder()
        .model(
            "qwen3-coder-plus",
            ModelConfig::new().latency(Duration::from_secs(1), 1.0),
        )
        .coding_plan(
            CodingPlan::new()
                .max_concurrency(1)
                .usage_tokens_per_hour(8),
        )
        .build();
    let request = || {
        let mut request = chat(Plan::CodingPlan, Api::Anthropic, "any", true);
        let body = r#"{"model":"qwen3-coder-plus","messages":[{"role":"user","content":"12345678"}],"max_tokens":2,"stream":true}"#;
        *request.body_mut() = Full::new(Bytes::from(body));
        request
    };
    // One stream open: a second request is over the concurrency cap.
    let open = mock.clone().oneshot(request()).await.unwrap();
    let (status, body) = raw(&mock, request()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body.contains("concurrency allocated quota exceeded. please try again later."),
        "{body}"
    );
    let _ = open.into_body().collect().await.unwrap();
    // 2 + 2 tokens each: the third request of the hour is over 8.
    let (status, body) = raw(&mock, request()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the second request of the hour fits: {body}"
    );
    let (status, body) = raw(&mock, request()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        body.contains("usage allocated quota exceeded. please try again later."),
        "{body}"
    );
    assert!(body.contains(r#""type":"rate_limit_error""#), "{body}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(raw(&mock, request()).await.0, StatusCode::OK, "a new hour");
}

#[tokio::test(start_paused = true)]
async fn coding_plan_concurrency_is_classified_as_concurrency() {
    let mock = MockDashScope::builder()
        .model(
            "qwen3-coder-plus",
            ModelConfig::new().latency(Duration::from_secs(1), 1.0),
        )
        .coding_plan(CodingPlan::new().max_concurrency(1))
        .build();
    let mut open = chat(Plan::CodingPlan, Api::OpenAiCompatible, "any", true);
    *open.body_mut() = Full::new(Bytes::from(
        r#"{"model":"qwen3-coder-plus","messages":[],"stream":true}"#,
    ));
    let _open = mock.clone().oneshot(open).await.unwrap();
    let err = send(
        &mock,
        chat(Plan::CodingPlan, Api::OpenAiCompatible, "any", true),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::RateLimited(RateLimitKind::Concurrency),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn coding_plan_usage_is_quota_exhausted() {
    let mock = MockDashScope::builder()
        .model("qwen3-coder-plus", ModelConfig::new())
        .coding_plan(CodingPlan::new().usage_tokens_per_hour(1))
        .build();
    send(&mock, chat(Plan::CodingPlan, Api::Anthropic, "any", true))
        .await
        .unwrap();
    let err = send(&mock, chat(Plan::CodingPlan, Api::Anthropic, "any", true))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::QuotaExhausted, "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn token_plan_week_with_its_reset_time() {
    let mock = MockDashScope::builder()
        .model("qwen3-coder-plus", ModelConfig::new())
        .api_key_for_plan(&Region::Singapore, Plan::TokenPlan, TOKEN_KEY)
        .token_plan(TokenPlan::new().tokens_per_week(8))
        // 2026-09-05 11:40:00 UTC.
        .epoch(1_788_608_400)
        .build();
    for _ in 0..2 {
        send(
            &mock,
            chat(Plan::TokenPlan, Api::OpenAiCompatible, TOKEN_KEY, true),
        )
        .await
        .unwrap();
    }
    let (status, body) = raw(
        &mock,
        chat(Plan::TokenPlan, Api::OpenAiCompatible, TOKEN_KEY, true),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        r#"{"error":{"message":"Your token-plan 1-week quota has been exhausted. The quota will reset at 09-12 11:40:00 UTC."}}"#
    );
    tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
    assert!(
        send(
            &mock,
            chat(Plan::TokenPlan, Api::Anthropic, TOKEN_KEY, true)
        )
        .await
        .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn token_plan_exhaustion_is_classified() {
    let mock = MockDashScope::builder()
        .model("qwen3-coder-plus", ModelConfig::new())
        .token_plan(TokenPlan::new().tokens_per_week(1))
        .build();
    send(
        &mock,
        chat(Plan::TokenPlan, Api::OpenAiCompatible, "any", true),
    )
    .await
    .unwrap();
    let err = send(
        &mock,
        chat(Plan::TokenPlan, Api::OpenAiCompatible, "any", true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::QuotaExhausted, "{err}");
}

#[tokio::test(start_paused = true)]
async fn native_result_format_text() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    for stream in [false, true] {
        let mut request = Request::post("/api/v1/services/aigc/text-generation/generation");
        if stream {
            request = request.header("x-dashscope-sse", "enable");
        }
        let request = request
            .body(Full::new(Bytes::from(
                r#"{"model":"m","input":{"prompt":"hi"},"parameters":{"max_tokens":3,"result_format":"text"}}"#,
            )))
            .unwrap();
        let body = send(&mock, request).await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .next_back()
            .unwrap_or(text);
        let value: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(value["output"]["text"], "Qwen answers your", "{text}");
        assert_eq!(value["output"]["finish_reason"], "stop");
        assert!(value["output"].get("choices").is_none());
    }
}
