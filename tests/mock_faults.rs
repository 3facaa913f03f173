//! Every error shape of DashScope the simulator can script, read through
//! `ClassifyDashScopeError` (a `ServiceBuilder` over the in-process simulator).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{
    AnthropicErrorShape, Fault, MidStreamError, MockBuilder, MockDashScope, ModelConfig,
};
use tower_dashscope::{ClassifyDashScopeError, DashScopeError, ErrorClass, RateLimitKind};

const COMPAT: &str = "/compatible-mode/v1/chat/completions";
const NATIVE: &str = "/api/v1/services/aigc/text-generation/generation";
const ANTHROPIC: &str = "/apps/anthropic/v1/messages";

fn chat(path: &str, model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = if path == NATIVE {
        serde_json::json!({"model": model, "input": {"messages": [{"role": "user", "content": "hi"}]}, "parameters": {"max_tokens": 6}})
    } else {
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": stream})
    };
    let mut request = Request::post(path);
    if stream && path == NATIVE {
        request = request.header("x-dashscope-sse", "enable");
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn mock_with(builder: MockBuilder, fault: Fault) -> MockDashScope {
    builder.model("m", ModelConfig::new().fault(fault)).build()
}

/// What the classifier makes of one call: the call's error, or the body's, with the bytes read
/// before it.
async fn classify(
    mock: &MockDashScope,
    classifier: ClassifyDashScopeError,
    request: Request<Full<Bytes>>,
) -> (Vec<u8>, Result<(), DashScopeError>) {
    let client = ServiceBuilder::new()
        .layer(classifier)
        .service(mock.clone());
    let response = match client.oneshot(request).await {
        Ok(response) => response,
        Err(err) => return (Vec::new(), Err(err)),
    };
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => seen.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Err(err) => return (seen, Err(err)),
        }
    }
    (seen, Ok(()))
}

#[tokio::test(start_paused = true)]
async fn errors_after_tokens_started_on_each_api() {
    let cases = [
        (
            MidStreamError::DataInspection,
            ErrorClass::ContentFiltered,
            400,
            [
                "data_inspection_failed",
                "DataInspectionFailed",
                "invalid_request_error",
            ],
        ),
        (
            MidStreamError::Internal,
            ErrorClass::ServerError,
            500,
            ["internal_error", "InternalError", "api_error"],
        ),
    ];
    for (error, class, status, codes) in cases {
        let mock = mock_with(
            MockDashScope::builder(),
            Fault::ErrorMidStream {
                after_tokens: 3,
                error,
            },
        );
        for (path, code) in [COMPAT, NATIVE, ANTHROPIC].into_iter().zip(codes) {
            let (seen, result) =
                classify(&mock, ClassifyDashScopeError::new(), chat(path, "m", true)).await;
            let err = result.expect_err(path);
            assert_eq!(err.class(), class, "{path}: {err}");
            assert!(!seen.is_empty(), "{path}: tokens came first");
            let text = String::from_utf8(seen).unwrap();
            match path {
                COMPAT => {
                    assert_eq!(text.matches("\"delta\"").count(), 3, "{text}");
                    assert!(
                        text.contains(r#""type":"data_inspection_failed""#)
                            || error != MidStreamError::DataInspection,
                        "{text}"
                    );
                    assert!(!text.contains("finish_reason\":\"stop"), "{text}");
                }
                NATIVE => {
                    assert!(
                        text.contains(&format!("id:4\nevent:error\n:HTTP_STATUS/{status}\ndata:")),
                        "{text}"
                    );
                    assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{path}");
                }
                _ => {
                    let data = text.split("event: error\ndata: ").nth(1).expect(&text);
                    let value: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
                    assert_eq!(value["type"], "error", "{text}");
                    assert_eq!(text.matches("content_block_delta").count(), 3 * 2, "{text}");
                }
            }
            if path != ANTHROPIC {
                assert_eq!(err.code(), Some(code), "{path}");
            }
        }
        let stats = mock.stats();
        assert_eq!(
            stats.model("m").unwrap().total.succeeded,
            3,
            "admitted and billed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_native_sse_framed_error_under_application_json() {
    let mock = mock_with(MockDashScope::builder(), Fault::SseFramedErrorBody);
    let response = mock
        .clone()
        .oneshot(chat(NATIVE, "m", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.starts_with(b"id:1\nevent:error\n:HTTP_STATUS/400\ndata:{"),
        "{body:?}"
    );

    let (_, result) = classify(
        &mock,
        ClassifyDashScopeError::new(),
        chat(NATIVE, "m", false),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.class(), ErrorClass::InvalidRequest, "{err}");
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(err.code(), Some("InvalidParameter"));
    assert!(err.request_id().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_compatible_streaming_429_inside_an_http_200() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new().rpm(60))
        .compat_stream_throttle_as_event(true)
        .build();
    let (_, first) = classify(
        &mock,
        ClassifyDashScopeError::new(),
        chat(COMPAT, "m", true),
    )
    .await;
    first.unwrap();
    let response = mock.clone().oneshot(chat(COMPAT, "m", true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.starts_with(b"event:error\n:HTTP_STATUS/429\ndata:{\"error\""),
        "{body:?}"
    );

    let (_, result) = classify(
        &mock,
        ClassifyDashScopeError::new(),
        chat(COMPAT, "m", true),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::RateLimited(RateLimitKind::Requests),
        "{err}"
    );
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.code(), Some("limit_requests"));
    // Not streaming: an HTTP 429 as usual.
    let response = mock
        .clone()
        .oneshot(chat(COMPAT, "m", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn the_three_anthropic_error_shapes_and_its_request_id_header() {
    for shape in [
        AnthropicErrorShape::Anthropic,
        AnthropicErrorShape::OpenAi,
        AnthropicErrorShape::Native,
    ] {
        let mock = MockDashScope::builder()
            .model("m", ModelConfig::new().rpm(60))
            .anthropic_error_shape(shape)
            .build();
        let ok = mock
            .clone()
            .oneshot(chat(ANTHROPIC, "m", false))
            .await
            .unwrap();
        let id = ok.headers()["request-id"].clone();
        assert_eq!(ok.headers()["x-request-id"], id);
        let throttled = mock
            .clone()
            .oneshot(chat(ANTHROPIC, "m", false))
            .await
            .unwrap();
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(throttled.headers().contains_key("request-id"), "{shape:?}");
        let body = throttled.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        match shape {
            AnthropicErrorShape::Anthropic => {
                assert_eq!(value["type"], "error");
                assert!(
                    value["error"]["message"]
                        .as_str()
                        .unwrap()
                        .starts_with("<429> Throttling.RateQuota: ")
                );
            }
            AnthropicErrorShape::OpenAi => assert_eq!(value["error"]["code"], "limit_requests"),
            _ => assert_eq!(value["code"], "Throttling.RateQuota"),
        }

        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = mock
            .clone()
            .oneshot(chat(ANTHROPIC, "m", false))
            .await
            .unwrap();
        let (_, result) = classify(
            &mock,
            ClassifyDashScopeError::new(),
            chat(ANTHROPIC, "m", false),
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(
            err.class(),
            ErrorClass::RateLimited(RateLimitKind::Requests),
            "{shape:?}: {err}"
        );
        assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(err.request_id().is_some(), "{shape:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_real_compatible_401_body() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .api_key("sk-right")
        .build();
    let response = mock
        .clone()
        .oneshot(chat(COMPAT, "m", false))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"error": {"message": "Incorrect API key provided. For details, see: https://www.alibabacloud.com/help/en/model-studio/error-code#apikey-error", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}, "id": format!("chatcmpl-{id}"), "request_id": id})
    );
    let (_, result) = classify(
        &mock,
        ClassifyDashScopeError::new(),
        chat(COMPAT, "m", false),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.code(), Some("invalid_api_key"));
}

#[tokio::test(start_paused = true)]
async fn empty_bodied_429s_on_each_api() {
    let mock = mock_with(MockDashScope::builder(), Fault::EmptyThrottle);
    for path in [COMPAT, NATIVE, ANTHROPIC] {
        for stream in [false, true] {
            let response = mock.clone().oneshot(chat(path, "m", stream)).await.unwrap();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body.is_empty());
            let (_, result) = classify(
                &mock,
                ClassifyDashScopeError::new(),
                chat(path, "m", stream),
            )
            .await;
            let err = result.unwrap_err();
            assert_eq!(
                err.class(),
                ErrorClass::RateLimited(RateLimitKind::Unspecified),
                "{path}"
            );
            assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
            assert!(err.is_retryable());
            assert!(err.request_id().is_some(), "{path}: from the header");
        }
    }
    assert_eq!(mock.stats().model("m").unwrap().total.failed, 12);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_stalls_after_some_events() {
    let mock = mock_with(MockDashScope::builder(), Fault::Stall { after_tokens: 2 });
    for path in [COMPAT, NATIVE, ANTHROPIC] {
        let classifier = ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(30));
        let (seen, result) = classify(&mock, classifier, chat(path, "m", true)).await;
        let err = result.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Timeout, "{path}: {err}");
        assert!(!seen.is_empty(), "{path}: two tokens first");
    }
    // Without an idle timeout, nothing ends it: the caller's own deadline must.
    let (_, result) = tokio::time::timeout(
        Duration::from_secs(3600),
        classify(
            &mock,
            ClassifyDashScopeError::new(),
            chat(COMPAT, "m", true),
        ),
    )
    .await
    .map_or((Vec::new(), Ok(())), |r| r);
    assert!(result.is_ok(), "still open after an hour");
    // Answers that do not stream are not affected.
    let (_, result) = classify(
        &mock,
        ClassifyDashScopeError::new(),
        chat(COMPAT, "m", false),
    )
    .await;
    assert!(result.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_never_sends_a_first_byte() {
    let mock = mock_with(MockDashScope::builder(), Fault::NoFirstByte);
    let response = mock.clone().oneshot(chat(COMPAT, "m", true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), body.frame())
            .await
            .is_err(),
        "silent for an hour"
    );
    for path in [COMPAT, NATIVE, ANTHROPIC] {
        let classifier = ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(30));
        let outcome = tokio::time::timeout(
            Duration::from_secs(3600),
            classify(&mock, classifier, chat(path, "m", true)),
        )
        .await;
        let (seen, result) = outcome.expect("the idle timeout ends a stream that never starts");
        assert!(seen.is_empty());
        let err = result.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Timeout, "{path}: {err}");
    }
}
