//! `RecommendedStack` and `ServiceBuilderExt`: the six layers in DESIGN.md's order over the
//! simulator (`MockDashScope`, in process, paused time) and over a `tower-test` mock.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::{
    Attempts, BoxError, BudgetWait, DashScopeError, ErrorClass, FallbackModel, Quota,
    RecommendedService, RecommendedStack, Region, RegionRouter, RetryWithJitter, ServedModel,
    ServedRegion, ServiceBuilderExt, TokenBudget,
};

const PATH: &str = "/compatible-mode/v1/chat/completions";

fn chat(model: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":8}}"#
    );
    Request::post(PATH)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn host(name: &str) -> Region {
    Region::custom(&format!("http://{name}")).unwrap()
}

/// The simulator as an HTTP client would reach it: `down.test` refuses connections (nothing
/// sent), every other host is the simulator.
fn client(
    mock: &MockDashScope,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<tower_dashscope::mock::MockBody>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let mock = mock.clone();
    service_fn(move |req: Request<Full<Bytes>>| {
        let mock = mock.clone();
        async move {
            if req.uri().host() == Some("down.test") {
                return Err::<_, BoxError>(
                    io::Error::from(io::ErrorKind::ConnectionRefused).into(),
                );
            }
            Ok(mock.oneshot(req).await?)
        }
    })
}

async fn body_text<B>(response: Response<B>) -> String
where
    B: http_body::Body<Data = Bytes, Error = DashScopeError>,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_429_from_the_simulator_is_retried() {
    // One request a second: the second request of the same second gets DashScope's 429.
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new().rpm(60))
        .seed(1)
        .build();
    let service = ServiceBuilder::new()
        .recommended_stack(
            RecommendedStack::new(host("dashscope.test"), "sk-test")
                .retry(RetryWithJitter::new().seed(1)),
        )
        .service(client(&mock));

    let first = service.clone().oneshot(chat("qwen-plus")).await.unwrap();
    assert_eq!(first.extensions().get::<Attempts>(), Some(&Attempts(1)));
    body_text(first).await;

    let second = service.clone().oneshot(chat("qwen-plus")).await.unwrap();
    let attempts = second.extensions().get::<Attempts>().unwrap().0;
    assert!(
        attempts >= 2,
        "the 429 was not retried: {attempts} attempt(s)"
    );
    assert!(body_text(second).await.contains("\"choices\""));

    let stats = mock.stats();
    let plus = stats.model("qwen-plus").unwrap();
    assert_eq!(plus.total.throttled_requests, u64::from(attempts - 1));
    assert_eq!(plus.total.succeeded, 2);
}

#[tokio::test(start_paused = true)]
async fn a_model_that_is_down_falls_back_to_the_next_of_its_chain() {
    let mock = MockDashScope::builder()
        .model(
            "qwen-max",
            ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(3600)),
        )
        .model("qwen-plus", ModelConfig::new())
        .seed(2)
        .build();
    let service = RecommendedStack::new(host("dashscope.test"), "sk-test")
        .fallback(["qwen-max", "qwen-plus"])
        .retry(RetryWithJitter::new().max_attempts(2).seed(2))
        .layer(client(&mock));

    let response = service.oneshot(chat("qwen-max")).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedModel>(),
        Some(&ServedModel("qwen-plus".into()))
    );
    // The body is qwen-plus's own answer.
    assert!(
        body_text(response)
            .await
            .contains("\"model\":\"qwen-plus\"")
    );
    let stats = mock.stats();
    // Retried once on qwen-max (retry is inside the fallback), then qwen-plus.
    assert_eq!(stats.model("qwen-max").unwrap().total.failed, 2);
    assert_eq!(stats.model("qwen-plus").unwrap().total.succeeded, 1);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_a_model_left_goes_to_that_model_without_a_backoff() {
    let mock = MockDashScope::builder()
        .model("qwen-max", ModelConfig::new().rpm(60))
        .model("qwen-plus", ModelConfig::new())
        .seed(3)
        .build();
    let service = RecommendedStack::new(host("dashscope.test"), "sk-test")
        .fallback(["qwen-max", "qwen-plus"])
        .layer(client(&mock));
    body_text(service.clone().oneshot(chat("qwen-max")).await.unwrap()).await;

    let started = tokio::time::Instant::now();
    let response = service.clone().oneshot(chat("qwen-max")).await.unwrap();
    // Handed off, not waited out: no time passed (time is paused; only a sleep moves it).
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        response.extensions().get::<ServedModel>().unwrap().0,
        "qwen-plus"
    );
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(
        mock.stats()
            .model("qwen-max")
            .unwrap()
            .total
            .throttled_requests,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_region_fails_over_to_the_next() {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .api_key("sk-second")
        .build();
    let stack =
        RecommendedStack::new(host("down.test"), "sk-first").failover(host("up.test"), "sk-second");
    let service = stack.layer(client(&mock));

    let response = service.clone().oneshot(chat("qwen-plus")).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(host("up.test")))
    );
    // Failover is inside one attempt: the retry saw a success at once.
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    body_text(response).await;
    // The failed region is remembered by every service made from the stack.
    assert!(!stack.router_ref().is_healthy(0));
    assert_eq!(mock.stats().requests, 1);
}

#[tokio::test(start_paused = true)]
async fn every_layer_reports_in_the_response_extensions() {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .build();
    let service = RecommendedStack::new(host("dashscope.test"), "sk-test")
        // One request a second: the second waits in the budget instead of getting a 429.
        .model_quota("qwen-plus", Quota::per_minute(60, 0))
        .fallback(["qwen-max", "qwen-plus"])
        .layer(client(&mock));

    body_text(service.clone().oneshot(chat("qwen-plus")).await.unwrap()).await;
    let response = service.clone().oneshot(chat("qwen-plus")).await.unwrap();
    let ext = response.extensions();
    assert_eq!(ext.get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(
        ext.get::<ServedModel>(),
        Some(&ServedModel("qwen-plus".into()))
    );
    assert_eq!(
        ext.get::<ServedRegion>(),
        Some(&ServedRegion(host("dashscope.test")))
    );
    let waited = ext
        .get::<BudgetWait>()
        .expect("the budget held the request back")
        .0;
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    body_text(response).await;
    assert_eq!(mock.stats().throttled(), 0);
}

#[tokio::test(start_paused = true)]
async fn by_default_nothing_waits_and_nothing_is_rewritten() {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .build();
    let stack = RecommendedStack::new(host("dashscope.test"), "sk-test");
    let service = stack.layer(client(&mock));

    let calls: Vec<_> = (0..200)
        .map(|_| service.clone().oneshot(chat("qwen-plus")))
        .collect();
    let started = tokio::time::Instant::now();
    for response in futures_join(calls).await {
        let response = response.unwrap();
        assert!(response.extensions().get::<BudgetWait>().is_none());
        body_text(response).await;
    }
    // No quota: the budget never waited (paused time moved only by the simulator's latency).
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        mock.stats().model("qwen-plus").unwrap().total.succeeded,
        200
    );
    assert_eq!(stack.budget_ref().in_flight(), 0);
}

/// Joins futures without an extra dependency: spawned, awaited in order.
async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn tower_test_sees_the_request_and_the_retry() {
    let (http_client, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let service = RecommendedStack::new(Region::Singapore, "sk-test").layer(http_client);
    let call = tokio::spawn(service.oneshot(chat("qwen-plus")));

    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(
        request.uri().to_string(),
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"
    );
    assert_eq!(request.headers()["authorization"], "Bearer sk-test");
    assert_eq!(request.headers()["x-dashscope-wait-timeout"], "10");
    send.send_response(
        Response::builder()
            .status(429)
            .header("content-type", "application/json")
            .body(Full::from(
                r#"{"error":{"message":"Requests rate limit exceeded, please try again later.","type":"limit_requests","param":null,"code":"limit_requests"},"request_id":"r-1"}"#,
            ))
            .unwrap(),
    );

    // The retry, after a backoff that paused time skips.
    let (_request, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Full::from(
        r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
    )));
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn errors_are_typed_and_not_retried_when_retrying_cannot_help() {
    let (http_client, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let service = RecommendedStack::new(Region::Singapore, "sk-test").layer(http_client);
    let call = tokio::spawn(service.oneshot(chat("qwen-plus")));
    let (_request, send) = handle.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .status(401)
            .body(Full::from(
                r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"r-2"}"#,
            ))
            .unwrap(),
    );
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert_eq!(err.request_id(), Some("r-2"));
    // No second request: the service is gone and never sent another.
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn clones_and_layer_calls_share_one_budget() {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .build();
    let stack =
        RecommendedStack::new(host("dashscope.test"), "sk-test").quota(Quota::per_minute(60, 0));
    let a = stack.clone().layer(client(&mock));
    let b = stack.layer(client(&mock));
    body_text(a.oneshot(chat("qwen-plus")).await.unwrap()).await;
    // The other service, from another `layer` call: the same window, so it waits.
    let response = b.oneshot(chat("qwen-plus")).await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_some());
}

#[test]
fn the_builder_methods_compose_the_same_service_type() {
    type Inner =
        tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, BoxError>;
    fn inner() -> Inner {
        tower::util::BoxCloneService::new(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::default()))
        }))
    }
    let by_hand: RecommendedService<Inner> = ServiceBuilder::new()
        .fallback_model(FallbackModel::new(["qwen-max", "qwen-plus"]))
        .retry_with_jitter(RetryWithJitter::new())
        .token_budget(TokenBudget::new(Quota::per_minute(0, 0)))
        .region_router(RegionRouter::new(Region::Singapore, "sk-test"))
        .wait_timeout_header(Duration::from_secs(10))
        .classify_dashscope_error()
        .service(inner());
    let in_one: RecommendedService<Inner> = ServiceBuilder::new()
        .recommended_stack(RecommendedStack::new(Region::Singapore, "sk-test"))
        .service(inner());
    let _ = (by_hand, in_one);
}

#[test]
fn the_stack_and_its_service_are_send_sync_static_and_debug_shows_no_key() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<RecommendedStack>();
    assert_send_sync::<RecommendedService<MockDashScope>>();
    let stack = RecommendedStack::new(Region::Singapore, "sk-secret-123456")
        .failover(Region::Virginia, "sk-other-654321");
    let debug = format!("{stack:?}");
    assert!(
        !debug.contains("secret") && !debug.contains("654321"),
        "{debug}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_service_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let mock = MockDashScope::builder().build();
    let mut service = RecommendedStack::new(host("dashscope.test"), "sk-test").layer(mock);
    std::future::poll_fn(|cx| Service::<Request<Full<Bytes>>>::poll_ready(&mut service, cx))
        .await
        .unwrap();
    let future = service.call(chat("qwen-plus"));
    assert_send(&future);
    drop(future);
}
