//! The public names of DESIGN.md, used as an external crate would use them: this file fails to
//! compile if one is renamed, moved or changes its shape.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_dashscope::{
    Api, Attempts, BoxError, BudgetWait, ClassifyDashScopeError, DashScopeError, ErrorClass,
    FallbackModel, Quota, RateLimitKind, Region, RegionRouter, RetryWithJitter, ServedModel,
    ServedRegion, TokenBudget, WaitTimeoutHeader,
};

#[test]
fn builders_enums_and_accessors_have_the_contracts_shapes() {
    let _retry = RetryWithJitter::new()
        .max_attempts(4)
        .base_delay(Duration::from_millis(500))
        .max_delay(Duration::from_secs(20))
        .deadline(Duration::from_secs(45));
    let _wait = WaitTimeoutHeader::new(Duration::from_secs(30));
    let _budget = TokenBudget::new(Quota::per_minute(600, 1_000_000))
        .model("qwen-max", Quota::per_minute(60, 100_000))
        .max_concurrency(8);
    let _fallback =
        FallbackModel::new(["qwen-plus", "qwen-flash"]).cooldown(Duration::from_secs(5));
    let _router = RegionRouter::new(Region::Singapore, "sk-contract")
        .failover(Region::Virginia, "sk-contract-us")
        .api(Api::OpenAiCompatible);
    let _classify = ClassifyDashScopeError::new();

    for region in [
        Region::Beijing,
        Region::Singapore,
        Region::Virginia,
        Region::HongKong,
    ] {
        assert!(!region.to_string().is_empty());
    }
    assert!(Region::custom("http://127.0.0.1:8080").is_ok());
    assert!(Region::custom("not a url").is_err());
    let _apis = [Api::OpenAiCompatible, Api::Native, Api::Anthropic];

    let classes = [
        ErrorClass::Authentication,
        ErrorClass::PermissionDenied,
        ErrorClass::QuotaExhausted,
        ErrorClass::RateLimited(RateLimitKind::Requests),
        ErrorClass::RateLimited(RateLimitKind::Tokens),
        ErrorClass::RateLimited(RateLimitKind::Burst),
        ErrorClass::RateLimited(RateLimitKind::Concurrency),
        ErrorClass::RateLimited(RateLimitKind::Local),
        ErrorClass::RateLimited(RateLimitKind::Unspecified),
        ErrorClass::InvalidRequest,
        ErrorClass::ContextLengthExceeded,
        ErrorClass::ContentFiltered,
        ErrorClass::NotFound,
        ErrorClass::PayloadTooLarge,
        ErrorClass::ServerError,
        ErrorClass::Unavailable,
        ErrorClass::Timeout,
        ErrorClass::Connection,
        ErrorClass::StreamInterrupted,
    ];
    let retryable: Vec<bool> = classes.iter().map(|c| c.is_retryable()).collect();
    assert_eq!(
        retryable.iter().filter(|r| **r).count(),
        10,
        "{retryable:?}"
    );

    let err = DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Tokens))
        .with_status(StatusCode::TOO_MANY_REQUESTS)
        .with_code("Throttling.AllocationQuota")
        .with_message("Allocated quota exceeded")
        .with_request_id("r-1")
        .with_retry_after(Duration::from_secs(2));
    let _: ErrorClass = err.class();
    let _: Option<StatusCode> = err.status();
    let _: Option<&str> = err.code();
    let _: Option<&str> = err.message();
    let _: Option<&str> = err.request_id();
    let _: Option<Duration> = err.retry_after();
    assert!(err.is_retryable());
    let _boxed: BoxError = Box::new(err);

    let _extensions = (
        Attempts(1),
        ServedModel("qwen-plus".to_owned()),
        ServedRegion(Region::Singapore),
        BudgetWait(Duration::ZERO),
    );
}

#[tokio::test(start_paused = true)]
async fn the_recommended_stack_reports_what_each_layer_did() {
    let http_client = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let client = ServiceBuilder::new()
        .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
        .layer(RetryWithJitter::new())
        .layer(TokenBudget::new(Quota::per_minute(600, 1_000_000)))
        .layer(RegionRouter::new(Region::Singapore, "sk-contract"))
        .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
        .layer(ClassifyDashScopeError::new())
        .service(http_client);
    let request = Request::post("/compatible-mode/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(
        response.extensions().get::<ServedModel>(),
        Some(&ServedModel("qwen-plus".to_owned()))
    );
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(Region::Singapore))
    );
    assert!(
        response.extensions().get::<BudgetWait>().is_none(),
        "sent at once"
    );
}

/// The one-call stack and the `ServiceBuilder` extension, as other code relies on them.
#[test]
fn the_recommended_stack_and_service_builder_ext_have_their_shapes() {
    use tower_dashscope::{RecommendedService, RecommendedStack, ServiceBuilderExt};

    let stack = RecommendedStack::new(Region::Singapore, "sk-contract")
        .failover(Region::Virginia, "sk-contract-us")
        .api(Api::OpenAiCompatible)
        .quota(Quota::per_minute(600, 1_000_000))
        .model_quota("qwen-max", Quota::per_minute(60, 100_000))
        .max_concurrency(8)
        .fallback(["qwen-max", "qwen-plus"])
        .retry(RetryWithJitter::new().max_attempts(3))
        .budget(TokenBudget::new(Quota::per_minute(600, 1_000_000)))
        .fallback_layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
        .router(RegionRouter::new(Region::Singapore, "sk-contract"))
        .wait_timeout(Duration::from_secs(5))
        .classify(ClassifyDashScopeError::new());
    let _ = format!("{:?}", stack.clone());
    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::<Bytes>::default()))
    });
    let _service: RecommendedService<_> = ServiceBuilder::new()
        .recommended_stack(stack)
        .service(inner);
    let _builder = ServiceBuilder::new()
        .fallback_model(FallbackModel::new(["qwen-plus"]))
        .retry_with_jitter(RetryWithJitter::new())
        .token_budget(TokenBudget::new(Quota::per_minute(0, 0)))
        .region_router(RegionRouter::new(Region::Singapore, "sk-contract"))
        .wait_timeout_header(Duration::from_secs(5))
        .classify_dashscope_error();
}
