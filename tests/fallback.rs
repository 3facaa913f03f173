//! `FallbackModel`: triggers and non-triggers, the rewrite, context windows, cooldowns, waiting,
//! the half-open probe, silent models, streams, and the order with retry. All in paused time.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_dashscope::body::ReplayBody;
use tower_dashscope::fallback::{FallbackAvailable, default_switch};
use tower_dashscope::{
    Attempts, BoxError, DashScopeError, ErrorClass, FallbackModel, FallbackModelService,
    QuotaScope, RateLimitKind, RetryWithJitter, ServedModel,
};

const PATH: &str = "/compatible-mode/v1/chat/completions";

/// One step of a scripted response body.
#[derive(Debug, Clone)]
enum Step {
    Data(Bytes),
    Fail(&'static str),
    Hang,
}

/// A step that yields `text`.
fn data(text: &'static str) -> Step {
    Step::Data(Bytes::from_static(text.as_bytes()))
}

/// A response body that plays its steps.
#[derive(Debug)]
struct TestBody(VecDeque<Step>);

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.0.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Step::Fail(m)) => Poll::Ready(Some(Err(m.into()))),
            Some(Step::Hang) => {
                self.0.push_front(Step::Hang);
                Poll::Pending
            }
        }
    }
}

/// What a model answers.
#[derive(Clone)]
enum Answer {
    /// This status; a 2xx echoes the request body.
    Status(u16, &'static [(&'static str, &'static str)]),
    /// The call fails with this error (as a classifier below would make it).
    Fail(DashScopeError),
    /// Never answers.
    Silent,
    /// A 200 whose body plays these steps.
    Stream(Vec<Step>),
    /// The answer, after a delay.
    After(Duration, Box<Answer>),
}

use Answer::*;

fn ok() -> Answer {
    Status(200, &[])
}

fn fail(class: ErrorClass) -> Answer {
    Fail(DashScopeError::new(class))
}

type Req = Request<Full<Bytes>>;
type Fut = Pin<Box<dyn Future<Output = Result<Response<TestBody>, BoxError>> + Send>>;

/// Models answering from scripts (the last answer repeats), recording each call. Panics when
/// called without a successful `poll_ready` on the same clone.
#[derive(Clone)]
struct Models {
    scripts: Arc<Mutex<HashMap<String, VecDeque<Answer>>>>,
    calls: Arc<Mutex<Vec<(String, Instant, Req)>>>,
    ready: bool,
}

impl Models {
    fn new(scripts: &[(&str, Vec<Answer>)]) -> Self {
        Models {
            scripts: Arc::new(Mutex::new(
                scripts
                    .iter()
                    .map(|(m, s)| (m.to_string(), s.iter().cloned().collect()))
                    .collect(),
            )),
            calls: Arc::default(),
            ready: false,
        }
    }

    fn models_called(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }

    fn call_times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|c| c.1).collect()
    }
}

fn model_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["model"].as_str().map(String::from))
        .unwrap_or_default()
}

impl Service<Req> for Models {
    type Response = Response<TestBody>;
    type Error = BoxError;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Fut {
        assert!(self.ready, "called without poll_ready on this clone");
        self.ready = false;
        let body = req.body().bytes().unwrap();
        let model = model_of(&body);
        let answer = {
            let mut scripts = self.scripts.lock().unwrap();
            let script = scripts
                .get_mut(&model)
                .unwrap_or_else(|| panic!("no script for {model:?}"));
            if script.len() > 1 {
                script.pop_front().unwrap()
            } else {
                script[0].clone()
            }
        };
        let mut copy = Request::new(req.body().clone());
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        self.calls
            .lock()
            .unwrap()
            .push((model, Instant::now(), copy));
        Box::pin(play(answer, body))
    }
}

async fn play(answer: Answer, body: Bytes) -> Result<Response<TestBody>, BoxError> {
    let mut answer = answer;
    loop {
        return match answer {
            After(delay, next) => {
                tokio::time::sleep(delay).await;
                answer = *next;
                continue;
            }
            Status(status, headers) => {
                let mut response = Response::new(TestBody(VecDeque::new()));
                if (200..300).contains(&status) {
                    response = Response::new(TestBody(VecDeque::from([Step::Data(body)])));
                }
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                for (name, value) in headers {
                    response.headers_mut().insert(*name, value.parse().unwrap());
                }
                Ok(response)
            }
            Fail(err) => Err(err.into()),
            Silent => std::future::pending().await,
            Stream(steps) => Ok(Response::new(TestBody(steps.into()))),
        };
    }
}

fn chat(model: &str) -> Req {
    chat_body(&format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
    ))
}

fn chat_body(body: &str) -> Req {
    Request::post(PATH)
        .header("x-test", "kept")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn stream_chat(model: &str) -> Req {
    chat_body(&format!(
        r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#
    ))
}

fn served<B>(response: &Response<B>) -> &str {
    &response.extensions().get::<ServedModel>().unwrap().0
}

async fn body_text<B: Body>(response: Response<B>) -> Result<String, B::Error> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec()).unwrap())
}

fn ab() -> FallbackModel {
    FallbackModel::new(["a", "b"])
}

#[tokio::test(start_paused = true)]
async fn the_rewrite_changes_only_the_model_and_the_next_model_serves() {
    let models = Models::new(&[
        ("qwen-max", vec![Status(429, &[])]),
        ("qwen-plus", vec![ok()]),
    ]);
    let service = FallbackModel::new(["qwen-max", "qwen-plus"]).layer(models.clone());
    // Odd spacing, key order, escapes, unicode, and a nested "model" key.
    let original = "{ \"messages\":[{\"role\":\"user\",\"content\":\"\\\"model\\\": 你好\",\"model\":\"x\"}],\n  \"model\" :\t\"qwen-max\", \"max_tokens\":5 }";
    let mut request = chat_body(original);
    request
        .headers_mut()
        .insert("content-length", original.len().into());
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(served(&response), "qwen-plus");
    let sent = body_text(response).await.unwrap();
    assert_eq!(sent, original.replace("\"qwen-max\"", "\"qwen-plus\""));
    let calls = models.calls.lock().unwrap();
    assert_eq!(calls[0].2.body().bytes().unwrap(), original.as_bytes());
    assert_eq!(
        calls[1].2.headers()["content-length"],
        sent.len().to_string()
    );
    assert_eq!(calls[1].2.headers()["x-test"], "kept");
}

#[tokio::test(start_paused = true)]
async fn each_trigger_switches() {
    let triggers = [
        ErrorClass::RateLimited(RateLimitKind::Requests),
        ErrorClass::RateLimited(RateLimitKind::Tokens),
        ErrorClass::RateLimited(RateLimitKind::Burst),
        ErrorClass::RateLimited(RateLimitKind::Concurrency),
        ErrorClass::RateLimited(RateLimitKind::Local),
        ErrorClass::RateLimited(RateLimitKind::Unspecified),
        ErrorClass::Unavailable,
        ErrorClass::ServerError,
        ErrorClass::Timeout,
        ErrorClass::StreamInterrupted,
        ErrorClass::QuotaExhausted,
    ];
    for class in triggers {
        let models = Models::new(&[("a", vec![fail(class)]), ("b", vec![ok()])]);
        let response = ab().layer(models.clone()).oneshot(chat("a")).await;
        let response = response.unwrap_or_else(|e| panic!("{class:?}: {e}"));
        assert_eq!(served(&response), "b", "{class:?}");
        assert_eq!(models.models_called(), ["a", "b"], "{class:?}");
    }
    // A quota of this model only switches too.
    let per_model =
        DashScopeError::new(ErrorClass::QuotaExhausted).with_quota_scope(QuotaScope::Model);
    let models = Models::new(&[("a", vec![Fail(per_model)]), ("b", vec![ok()])]);
    let response = ab().layer(models).oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b");
}

#[tokio::test(start_paused = true)]
async fn non_triggers_are_returned_as_they_are() {
    let plan_wide_quota =
        DashScopeError::new(ErrorClass::QuotaExhausted).with_quota_scope(QuotaScope::Plan);
    let account =
        DashScopeError::new(ErrorClass::QuotaExhausted).with_quota_scope(QuotaScope::Account);
    let plan_wide_concurrency =
        DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Concurrency))
            .with_quota_scope(QuotaScope::Plan);
    let errors = [
        DashScopeError::new(ErrorClass::Authentication),
        DashScopeError::new(ErrorClass::PermissionDenied),
        DashScopeError::new(ErrorClass::InvalidRequest),
        DashScopeError::new(ErrorClass::ContentFiltered),
        DashScopeError::new(ErrorClass::NotFound),
        DashScopeError::new(ErrorClass::Connection),
        DashScopeError::new(ErrorClass::PayloadTooLarge),
        // No context windows declared: nothing to switch to.
        DashScopeError::new(ErrorClass::ContextLengthExceeded),
        plan_wide_quota,
        account,
        plan_wide_concurrency,
    ];
    for err in errors {
        let models = Models::new(&[("a", vec![Fail(err.clone())]), ("b", vec![ok()])]);
        let got = ab()
            .layer(models.clone())
            .oneshot(chat("a"))
            .await
            .unwrap_err();
        assert_eq!(got.class(), err.class(), "{err:?}");
        assert_eq!(got.quota_scope(), err.quota_scope());
        assert_eq!(got.advice(), err.advice(), "returned unchanged");
        assert_eq!(models.models_called(), ["a"], "{err:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn content_filtered_and_not_found_are_opt_in() {
    for (class, layer) in [
        (
            ErrorClass::ContentFiltered,
            ab().switch_on_content_filtered(true),
        ),
        (ErrorClass::NotFound, ab().switch_on_not_found(true)),
    ] {
        let models = Models::new(&[("a", vec![fail(class)]), ("b", vec![ok()])]);
        let response = layer.layer(models).oneshot(chat("a")).await.unwrap();
        assert_eq!(served(&response), "b", "{class:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_predicate_replaces_the_defaults() {
    // (A fresh layer for each case: clones share the cooldowns.)
    let layer = || ab().switch_if(|err| err.class() == ErrorClass::InvalidRequest);
    let models = Models::new(&[
        ("a", vec![fail(ErrorClass::InvalidRequest)]),
        ("b", vec![ok()]),
    ]);
    let response = layer().layer(models).oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b");
    let models = Models::new(&[("a", vec![Status(429, &[])]), ("b", vec![ok()])]);
    let response = layer()
        .layer(models.clone())
        .oneshot(chat("a"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(models.models_called(), ["a"]);
    // Composable with the defaults.
    let layer = ab().switch_if(|err| default_switch(err) && err.class() != ErrorClass::Timeout);
    let models = Models::new(&[("a", vec![fail(ErrorClass::Timeout)]), ("b", vec![ok()])]);
    let err = layer.layer(models).oneshot(chat("a")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
}

#[tokio::test(start_paused = true)]
async fn without_a_classifier_statuses_decide_and_the_last_response_comes_back() {
    for status in [429, 500, 502, 503, 504] {
        let models = Models::new(&[("a", vec![Status(status, &[])]), ("b", vec![ok()])]);
        let response = ab().layer(models).oneshot(chat("a")).await.unwrap();
        assert_eq!(response.status(), 200, "{status}");
        assert_eq!(served(&response), "b");
    }
    let models = Models::new(&[("a", vec![Status(400, &[])]), ("b", vec![ok()])]);
    let response = ab().layer(models.clone()).oneshot(chat("a")).await.unwrap();
    assert_eq!((response.status().as_u16(), served(&response)), (400, "a"));
    assert_eq!(models.models_called(), ["a"]);
    // Exhausted: the last response, as it was.
    let models = Models::new(&[
        ("a", vec![Status(503, &[])]),
        ("b", vec![Status(429, &[("x-request-id", "r-b")])]),
    ]);
    let response = ab().layer(models).oneshot(chat("a")).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-request-id"], "r-b");
    assert_eq!(served(&response), "b");
}

#[tokio::test(start_paused = true)]
async fn the_chain_is_walked_in_order_and_exhaustion_names_the_models_tried() {
    let models = Models::new(&[
        ("a", vec![fail(ErrorClass::Unavailable)]),
        ("b", vec![fail(ErrorClass::ServerError)]),
        (
            "c",
            vec![fail(ErrorClass::RateLimited(RateLimitKind::Tokens))],
        ),
    ]);
    let layer = FallbackModel::new(["a", "b", "c"]);
    let err = layer
        .layer(models.clone())
        .oneshot(chat("a"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Tokens));
    assert!(err.advice().contains("tried a, b, c"), "{}", err.advice());
    assert!(err.to_string().contains("tried a, b, c"), "{err}");
    assert_eq!(models.models_called(), ["a", "b", "c"]);

    // A request for a later model starts there.
    let models = Models::new(&[
        ("a", vec![ok()]),
        ("b", vec![fail(ErrorClass::Unavailable)]),
        ("c", vec![ok()]),
    ]);
    let response = FallbackModel::new(["a", "b", "c"])
        .layer(models.clone())
        .oneshot(chat("b"))
        .await
        .unwrap();
    assert_eq!(served(&response), "c");
    assert_eq!(models.models_called(), ["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn models_in_no_chain_and_bodies_that_cannot_be_rewritten_pass_through() {
    let models = Models::new(&[("z", vec![Status(429, &[])]), ("b", vec![ok()])]);
    let response = ab().layer(models.clone()).oneshot(chat("z")).await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.extensions().get::<ServedModel>().is_none());
    assert_eq!(models.models_called(), ["z"]);

    // Not a chat path, not JSON, no string model: sent once, unchanged.
    for request in [
        Request::post("/v1/other")
            .body(Full::from(r#"{"model":"a"}"#))
            .unwrap(),
        chat_body("not json"),
        chat_body(r#"{"model":["a"]}"#),
    ] {
        let models = Models::new(&[
            ("", vec![Status(429, &[])]),
            ("a", vec![Status(429, &[])]),
            ("b", vec![ok()]),
        ]);
        let sent = request.body().bytes().unwrap();
        let response = ab().layer(models.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 429);
        let calls = models.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].2.body().bytes().unwrap(), sent);
    }
}

#[tokio::test(start_paused = true)]
async fn the_context_chain_goes_to_a_window_that_fits() {
    // ~2,500 tokens of input + 4,000 of output: small (4k) and mid (6k) cannot take it.
    let text = "x".repeat(10_000);
    let body = format!(
        r#"{{"model":"a","max_tokens":4000,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    );
    let layer = ab()
        .context_window("a", 2_000)
        .context_window("mid", 6_000)
        .context_window("small", 4_000)
        .context_window("big", 32_000)
        .context_window("huge", 1_000_000);
    let models = Models::new(&[
        ("a", vec![fail(ErrorClass::ContextLengthExceeded)]),
        ("b", vec![ok()]),
        ("big", vec![ok()]),
    ]);
    let response = layer
        .clone()
        .layer(models.clone())
        .oneshot(chat_body(&body))
        .await
        .unwrap();
    assert_eq!(served(&response), "big", "the smallest window that fits");
    assert_eq!(
        models.models_called(),
        ["a", "big"],
        "no round trip to small or mid"
    );

    // The next window up fails too: the one after it.
    let models = Models::new(&[
        ("a", vec![fail(ErrorClass::ContextLengthExceeded)]),
        ("big", vec![fail(ErrorClass::ContextLengthExceeded)]),
        ("huge", vec![ok()]),
    ]);
    let response = layer
        .clone()
        .layer(models.clone())
        .oneshot(chat_body(&body))
        .await
        .unwrap();
    assert_eq!(served(&response), "huge");

    // None fits: the original error.
    let layer = ab()
        .context_window("a", 2_000)
        .context_window("small", 4_000);
    let models = Models::new(&[(
        "a",
        vec![Fail(
            DashScopeError::new(ErrorClass::ContextLengthExceeded)
                .with_message("Range of input length should be [1, 2000]"),
        )],
    )]);
    let err = layer
        .layer(models.clone())
        .oneshot(chat_body(&body))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::ContextLengthExceeded);
    assert_eq!(
        err.message(),
        Some("Range of input length should be [1, 2000]")
    );
    assert_eq!(models.models_called(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_cooling_model_is_skipped_and_renewal_only_extends() {
    let models = Models::new(&[
        (
            "a",
            vec![
                After(
                    Duration::from_secs(1),
                    Box::new(Status(429, &[("retry-after", "30")])),
                ),
                After(
                    Duration::from_secs(2),
                    Box::new(Status(429, &[("retry-after", "1")])),
                ),
                ok(),
            ],
        ),
        ("b", vec![ok()]),
    ]);
    let service = ab().layer(models.clone());
    let t0 = Instant::now();
    // Two requests in flight on `a`: the first cools it for 30 s, the second's 1 s must not
    // shorten that.
    let (first, second) = tokio::join!(
        service.clone().oneshot(chat("a")),
        service.clone().oneshot(chat("a"))
    );
    assert_eq!(served(&first.unwrap()), "b");
    assert_eq!(served(&second.unwrap()), "b");
    tokio::time::sleep_until(t0 + Duration::from_secs(10)).await;
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b", "still cooling at 10 s");
    assert_eq!(
        models.models_called(),
        ["a", "a", "b", "b", "b"],
        "no round trip to a"
    );
    // After the 30 s, `a` is probed and back.
    tokio::time::sleep_until(t0 + Duration::from_secs(32)).await;
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "a");
}

#[tokio::test(start_paused = true)]
async fn when_every_model_is_cooling_the_request_waits_for_the_first_back() {
    let models = Models::new(&[
        ("a", vec![Status(503, &[("retry-after", "3")]), ok()]),
        ("b", vec![Status(503, &[("retry-after", "2")]), ok()]),
    ]);
    let service = ab().layer(models.clone());
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(response.status(), 503, "both failed: the last response");
    let t0 = Instant::now();
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b", "b is back first");
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));

    // Past max_wait: an error saying when the first is back, and nothing sent.
    let models = Models::new(&[
        ("a", vec![Status(503, &[("retry-after", "30")])]),
        ("b", vec![Status(503, &[("retry-after", "20")])]),
    ]);
    let service = ab().max_wait(Duration::from_secs(5)).layer(models.clone());
    service.clone().oneshot(chat("a")).await.unwrap();
    let err = service.clone().oneshot(chat("a")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(20)));
    assert!(err.message().unwrap().contains("cooling down"), "{err}");
    assert_eq!(models.models_called(), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn half_open_one_probe_at_a_time_then_back_to_the_primary() {
    let models = Models::new(&[
        (
            "a",
            vec![
                Status(503, &[]),
                After(Duration::from_secs(1), Box::new(ok())),
                ok(),
            ],
        ),
        ("b", vec![ok()]),
    ]);
    let service = ab().cooldown(Duration::from_secs(5)).layer(models.clone());
    let t0 = Instant::now();
    assert_eq!(
        served(&service.clone().oneshot(chat("a")).await.unwrap()),
        "b"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        served(&service.clone().oneshot(chat("a")).await.unwrap()),
        "b"
    );
    tokio::time::sleep_until(t0 + Duration::from_secs(5)).await;
    // The cooldown is over: one request probes `a` (it takes 1 s), the other goes to `b`
    // meanwhile instead of piling onto a model that may still be down.
    let (probe, other) = tokio::join!(service.clone().oneshot(chat("a")), async {
        tokio::task::yield_now().await;
        service.clone().oneshot(chat("a")).await
    });
    assert_eq!(served(&probe.unwrap()), "a");
    assert_eq!(served(&other.unwrap()), "b");
    // The probe answered: traffic is back on `a`.
    assert_eq!(
        served(&service.clone().oneshot(chat("a")).await.unwrap()),
        "a"
    );
    assert_eq!(models.models_called(), ["a", "b", "b", "a", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_model_times_out_and_the_next_answers() {
    let models = Models::new(&[("a", vec![Silent]), ("b", vec![ok()])]);
    let service = ab()
        .first_byte_timeout(Duration::from_secs(2))
        .layer(models.clone());
    let t0 = Instant::now();
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b");
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    // The timeout cooled `a`: the next request goes straight to `b`.
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b");
    assert_eq!(models.models_called(), ["a", "b", "b"]);

    // Every model silent: a typed timeout that names the model.
    let models = Models::new(&[("a", vec![Silent]), ("b", vec![Silent])]);
    let err = ab()
        .first_byte_timeout(Duration::from_secs(2))
        .layer(models)
        .oneshot(chat("a"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert!(
        err.message()
            .unwrap()
            .starts_with("b sent no response headers"),
        "{err}"
    );
    assert!(err.advice().contains("tried a, b"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_huge_first_byte_timeout_does_not_panic_on_the_next_attempt() {
    // `Duration::MAX` reads as "no timeout"; the timer of a later attempt must not overflow.
    let models = Models::new(&[
        ("a", vec![fail(ErrorClass::Unavailable)]),
        ("b", vec![ok()]),
    ]);
    let service = ab().first_byte_timeout(Duration::MAX).layer(models.clone());
    let response = service.oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b");
    assert_eq!(models.models_called(), ["a", "b"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_fails_before_its_first_byte_falls_back() {
    let models = Models::new(&[
        (
            "a",
            vec![Stream(vec![data(""), Step::Fail("connection reset")])],
        ),
        (
            "b",
            vec![Stream(vec![data("data: b1\n\n"), data("data: b2\n\n")])],
        ),
    ]);
    let response = ab()
        .layer(models.clone())
        .oneshot(stream_chat("a"))
        .await
        .unwrap();
    assert_eq!(served(&response), "b");
    assert_eq!(
        body_text(response).await.unwrap(),
        "data: b1\n\ndata: b2\n\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_fails_after_its_first_byte_ends_with_the_typed_error() {
    let models = Models::new(&[
        (
            "a",
            vec![Stream(vec![
                data("data: a1\n\n"),
                Step::Fail("connection reset"),
            ])],
        ),
        ("b", vec![ok()]),
    ]);
    let response = ab()
        .layer(models.clone())
        .oneshot(stream_chat("a"))
        .await
        .unwrap();
    assert_eq!(served(&response), "a");
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: a1\n\n");
    let err: DashScopeError = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.class(), ErrorClass::StreamInterrupted);
    assert_eq!(
        models.models_called(),
        ["a"],
        "never spliced with another model"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_with_headers_and_no_first_event_times_out() {
    let models = Models::new(&[
        ("a", vec![Stream(vec![Step::Hang])]),
        ("b", vec![Stream(vec![data("data: b\n\n")])]),
    ]);
    let service = ab()
        .first_byte_timeout(Duration::from_secs(3))
        .layer(models.clone());
    let t0 = Instant::now();
    let response = service.oneshot(stream_chat("a")).await.unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(served(&response), "b");
    assert_eq!(body_text(response).await.unwrap(), "data: b\n\n");

    // A stall after the first byte is the caller's to time: the answer has begun.
    let models = Models::new(&[
        ("a", vec![Stream(vec![data("data: a\n\n"), Step::Hang])]),
        ("b", vec![ok()]),
    ]);
    let response = ab()
        .first_byte_timeout(Duration::from_secs(3))
        .layer(models.clone())
        .oneshot(stream_chat("a"))
        .await
        .unwrap();
    assert_eq!(served(&response), "a");
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    let stalled = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
    assert!(stalled.is_err());
    assert_eq!(models.models_called(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn in_the_recommended_stack_a_429_switches_without_a_backoff() {
    let models = Models::new(&[
        ("a", vec![Status(429, &[])]),
        ("b", vec![Status(429, &[]), ok()]),
    ]);
    let service = ServiceBuilder::new()
        .layer(ab())
        .layer(RetryWithJitter::new().seed(1))
        .service(models.clone());
    let t0 = Instant::now();
    let response = service.oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "b");
    // `a` once, at once; then `b`, the last model, retried with a backoff as usual.
    assert_eq!(models.models_called(), ["a", "b", "b"]);
    let times = models.call_times();
    assert_eq!(times[0], t0);
    assert_eq!(times[1], t0, "no backoff before switching");
    assert!(times[2] > t0);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let calls = models.calls.lock().unwrap();
    assert!(calls[0].2.extensions().get::<FallbackAvailable>().is_some());
    assert!(calls[1].2.extensions().get::<FallbackAvailable>().is_none());
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_on_the_primary_and_plan_wide_limits_are_not_handed_off() {
    // Fallback outside retry: a 503 is retried on `a` first.
    let models = Models::new(&[("a", vec![Status(503, &[]), ok()]), ("b", vec![ok()])]);
    let service = ServiceBuilder::new()
        .layer(ab())
        .layer(RetryWithJitter::new().seed(1))
        .service(models.clone());
    let response = service.oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "a");
    assert_eq!(models.models_called(), ["a", "a"]);

    // A plan-wide rate limit is no model's: retried, not switched.
    let plan = DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Concurrency))
        .with_quota_scope(QuotaScope::Plan);
    let models = Models::new(&[("a", vec![Fail(plan), ok()]), ("b", vec![ok()])]);
    let service = ServiceBuilder::new()
        .layer(ab())
        .layer(RetryWithJitter::new().seed(1))
        .service(models.clone());
    let response = service.oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "a");
    assert_eq!(models.models_called(), ["a", "a"]);

    // hand_off_rate_limits(false): retry waits out the 429 on `a`.
    let models = Models::new(&[("a", vec![Status(429, &[]), ok()]), ("b", vec![ok()])]);
    let service = ServiceBuilder::new()
        .layer(ab().hand_off_rate_limits(false))
        .layer(RetryWithJitter::new().seed(1))
        .service(models.clone());
    let response = service.oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "a");
    assert_eq!(models.models_called(), ["a", "a"]);
}

#[tokio::test(start_paused = true)]
async fn fallback_inside_retry_switches_at_once_and_retry_walks_the_chain_again() {
    let models = Models::new(&[
        ("a", vec![Status(503, &[("retry-after", "1")]), ok()]),
        ("b", vec![Status(503, &[("retry-after", "1")]), ok()]),
    ]);
    let service = ServiceBuilder::new()
        .layer(RetryWithJitter::new().seed(1))
        .layer(ab())
        .service(models.clone());
    let response = service.oneshot(chat("a")).await.unwrap();
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(served(&response), "a");
    assert_eq!(models.models_called(), ["a", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_leaves_the_model_half_open() {
    let models = Models::new(&[
        ("a", vec![Status(503, &[]), Silent, ok()]),
        ("b", vec![ok()]),
    ]);
    let service = ab().cooldown(Duration::from_secs(5)).layer(models.clone());
    service.clone().oneshot(chat("a")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The probe is cancelled by the caller's own timeout.
    let probe =
        tokio::time::timeout(Duration::from_secs(1), service.clone().oneshot(chat("a"))).await;
    assert!(probe.is_err());
    let response = service.clone().oneshot(chat("a")).await.unwrap();
    assert_eq!(served(&response), "a", "the next request probes again");
}

#[test]
fn services_and_futures_are_send_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    assert_send_sync::<FallbackModel>();
    assert_send_sync::<FallbackModelService<Models>>();
    assert_send::<tower_dashscope::fallback::future::ResponseFuture<Models, Full<Bytes>, TestBody>>(
    );
    assert_send_sync::<tower_dashscope::fallback::future::ResponseBody<Full<Bytes>>>();
}

#[tokio::test(start_paused = true)]
async fn retry_hands_rate_limits_back_for_a_request_marked_fallback_available() {
    let models = Models::new(&[("a", vec![Status(429, &[]), Status(503, &[]), ok()])]);
    let retry = RetryWithJitter::new().seed(1).layer(models.clone());
    let mut request = chat("a");
    request.extensions_mut().insert(FallbackAvailable);
    let response = retry.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 429, "handed back");
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    // Other failures are retried as usual, marked or not.
    let mut request = chat("a");
    request.extensions_mut().insert(FallbackAvailable);
    let response = retry.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
}
