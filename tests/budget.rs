//! TokenBudget: shaping, settlement, waits, concurrency, cancellation and adaptation, in paused
//! time against scripted inner services.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_dashscope::{
    BoxError, BudgetWait, ClassifyDashScopeError, ClassifyDashScopeErrorService, ErrorClass,
    OutputCharge, Quota, RateLimitKind, TokenBudget, TokenBudgetService,
};

#[path = "support/store.rs"]
mod store;

use store::ScriptedStore;

const CHAT: &str = "/compatible-mode/v1/chat/completions";

/// A chat request whose input is estimated at one token (three ASCII characters).
fn chat(model: &str, max_tokens: u32) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"abc"}}]}}"#
    );
    Request::post(CHAT)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A server that answers every request at once with `usage` of `total` tokens (input 1), and
/// records when each request arrived.
#[derive(Clone)]
struct Server {
    arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
    output_tokens: Arc<AtomicU32>,
    status: Arc<AtomicU32>,
    /// A 429 says the tokens quota, not the requests one.
    tokens_429: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    fn new(output_tokens: u32) -> Self {
        Server {
            arrivals: Arc::default(),
            output_tokens: Arc::new(AtomicU32::new(output_tokens)),
            status: Arc::new(AtomicU32::new(200)),
            tokens_429: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + use<> {
        serve(self.clone())
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().iter().map(|a| a.0).collect()
    }
}

fn serve(
    server: Server,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync {
    service_fn(move |req: Request<Full<Bytes>>| {
        let server = server.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            let model = value["model"].as_str().unwrap_or("").to_owned();
            server
                .arrivals
                .lock()
                .unwrap()
                .push((Instant::now(), model));
            let status = server.status.load(Ordering::SeqCst) as u16;
            let answer = if status == 200 {
                let out = server.output_tokens.load(Ordering::SeqCst);
                format!(
                    r#"{{"choices":[{{"message":{{"content":"x"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":{out},"total_tokens":{}}}}}"#,
                    out + 1
                )
            } else if server.tokens_429.load(Ordering::SeqCst) {
                r#"{"error":{"code":"insufficient_quota","message":"Allocated quota exceeded, please increase your quota limit.","type":"insufficient_quota"}}"#.to_owned()
            } else {
                r#"{"error":{"code":"limit_requests","message":"Requests rate limit exceeded","type":"limit_requests"}}"#.to_owned()
            };
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(answer)))
                    .unwrap(),
            )
        }
    })
}

/// `budget` over a classifier over `server`: the budget settles against the usage it reads.
#[allow(clippy::type_complexity)] // the service's type, spelled out once here
fn classified(
    budget: &TokenBudget,
    server: &Server,
) -> TokenBudgetService<
    ClassifyDashScopeErrorService<
        impl Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + use<>,
    >,
> {
    budget.layer(ClassifyDashScopeError::new().layer(server.service()))
}

/// The most arrivals in any window of `width`.
fn max_in_window(times: &[Instant], width: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + width)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn send_and_read<S>(
    service: S,
    request: Request<Full<Bytes>>,
) -> Result<Response<Bytes>, tower_dashscope::DashScopeError>
where
    S: Service<Request<Full<Bytes>>, Error = tower_dashscope::DashScopeError>,
    S::Response: Into<
        Response<
            tower_dashscope::budget::BudgetBody<
                tower_dashscope::classify::ResponseBody<Full<Bytes>>,
            >,
        >,
    >,
{
    let response: Response<_> = service.oneshot(request).await?.into();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, bytes))
}

#[tokio::test(start_paused = true)]
async fn requests_are_shaped_per_second() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(300, 0)); // 5 a second
    let service = classified(&budget, &server);
    let start = Instant::now();
    let tasks: Vec<_> = (0..30)
        .map(|_| tokio::spawn(send_and_read(service.clone(), chat("qwen-plus", 10))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let arrivals = server.arrivals();
    assert_eq!(arrivals.len(), 30);
    assert!(max_in_window(&arrivals, Duration::from_secs(1)) <= 5);
    // And it does not dawdle: 30 requests at 5 a second take about six seconds, not more.
    assert!(
        start.elapsed() < Duration::from_millis(6_100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(budget.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn tokens_weigh_and_models_are_independent() {
    // Usage as estimated (1 + 4), so settling changes nothing.
    let server = Server::new(4);
    // 600 tokens a minute = 10 a second; each request is 1 input (4 chars) + 4 output = 5.
    let budget =
        TokenBudget::new(Quota::per_minute(0, 600)).model("qwen-max", Quota::per_minute(0, 6000));
    let service = classified(&budget, &server);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let model = if i % 2 == 0 { "qwen-plus" } else { "qwen-max" };
        tasks.push(tokio::spawn(send_and_read(service.clone(), chat(model, 4))));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let arrivals = server.arrivals.lock().unwrap().clone();
    let plus: Vec<_> = arrivals
        .iter()
        .filter(|a| a.1 == "qwen-plus")
        .map(|a| a.0)
        .collect();
    let max: Vec<_> = arrivals
        .iter()
        .filter(|a| a.1 == "qwen-max")
        .map(|a| a.0)
        .collect();
    // Two of qwen-plus a second (10 tokens); qwen-max has room for all six at once.
    assert!(max_in_window(&plus, Duration::from_secs(1)) <= 2);
    assert_eq!(max_in_window(&max, Duration::from_millis(1)), 6);
}

#[tokio::test(start_paused = true)]
async fn a_bogus_usage_is_owed_for_at_most_a_minute_of_quota() {
    // 60 tokens a second; the answer claims four billion tokens (a proxy's bug, a hostile
    // upstream). Owed in full, the model would be blocked for more than two years.
    let server = Server::new(u32::MAX - 1);
    let budget = TokenBudget::new(Quota::per_minute(0, 3600))
        .adaptive(false)
        .max_wait(Duration::from_secs(3600));
    let service = classified(&budget, &server);
    send_and_read(service.clone(), chat("m", 10)).await.unwrap();
    server.output_tokens.store(1, Ordering::SeqCst);
    let next = send_and_read(service.clone(), chat("m", 10))
        .await
        .expect("a bogus usage must not block the model past max_wait");
    let waited = next.extensions().get::<BudgetWait>().unwrap().0;
    assert!(
        waited >= Duration::from_secs(50),
        "the minute is owed: {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(62),
        "only a minute is owed: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn usage_settles_both_ways() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(0, 60_000)).adaptive(false);
    let service = classified(&budget, &server);

    // Estimated 1 + 100 tokens; used 2: 99 come back once the body is read.
    send_and_read(service.clone(), chat("m", 100))
        .await
        .unwrap();
    assert_eq!(budget.tokens_in_window("m"), 2);

    // Estimated 1 + 10; used 1 + 500: the difference is owed.
    server.output_tokens.store(500, Ordering::SeqCst);
    send_and_read(service.clone(), chat("m", 10)).await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 2 + 501);

    // Usage missing (no classifier below to read it): the estimate stays.
    let plain = TokenBudget::new(Quota::per_minute(0, 60_000));
    let unread = plain.clone().layer(server.service());
    let response = unread.oneshot(chat("m", 10)).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(plain.tokens_in_window("m"), 11);
}

/// The budget reuses the usage slot of a finished request for the next one, but never a slot
/// anyone else still holds: the caller's own slot keeps its request's usage.
#[tokio::test(start_paused = true)]
async fn a_usage_slot_someone_still_holds_is_not_reused() {
    use tower_dashscope::classify::{Usage, UsageSlot};

    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(0, 60_000)).adaptive(false);
    let service = classified(&budget, &server);

    let slot = UsageSlot::new();
    let mut request = chat("m", 100);
    request.extensions_mut().insert(slot.clone());
    send_and_read(service.clone(), request).await.unwrap();
    assert_eq!(slot.get(), Some(Usage::new(1, 1)));
    assert_eq!(budget.tokens_in_window("m"), 2);

    // Later requests, with slots of the budget's own (reused from one to the next), settle
    // against their own usage and leave the caller's slot alone.
    for (out, total) in [(500, 2 + 501), (7, 2 + 501 + 8)] {
        server.output_tokens.store(out, Ordering::SeqCst);
        send_and_read(service.clone(), chat("m", 10)).await.unwrap();
        assert_eq!(budget.tokens_in_window("m"), total);
    }
    assert_eq!(slot.get(), Some(Usage::new(1, 1)));
    assert!(slot.is_complete());
}

#[tokio::test(start_paused = true)]
async fn the_output_charged_is_learned_from_the_answers() {
    // Every answer uses half of max_tokens.
    let server = Server::new(50);
    let charged_after_answers = |budget: TokenBudget| {
        let server = server.clone();
        async move {
            let service = classified(&budget, &server);
            for _ in 0..40 {
                send_and_read(service.clone(), chat("m", 100))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            // The next request's charge, while its answer is unread.
            let response = service.oneshot(chat("m", 100)).await.unwrap();
            let charged = budget.tokens_in_window("m");
            drop(response);
            charged
        }
    };
    let quota = Quota::per_minute(0, 60_000);
    // Learned (the default): about half of max_tokens, plus a margin for its spread.
    let reserved = TokenBudget::new(quota).output_charge(OutputCharge::OnAdmission);
    let learned = charged_after_answers(reserved.adaptive(false)).await;
    assert!((1 + 50..=1 + 60).contains(&learned), "{learned}");
    // Off: the whole of max_tokens, as before.
    let whole = TokenBudget::new(quota)
        .output_charge(OutputCharge::OnAdmission)
        .adaptive(false)
        .learn_output(false);
    assert_eq!(charged_after_answers(whole).await, 1 + 100);
}

#[tokio::test(start_paused = true)]
async fn by_default_the_input_is_charged_before_sending_and_the_output_when_it_is_reported() {
    let server = Server::new(50);
    let budget = TokenBudget::new(Quota::per_minute(0, 60_000)).adaptive(false);
    let service = classified(&budget, &server);
    // Sent: the input only (1 token estimated), however large max_tokens is.
    let response = service.clone().oneshot(chat("m", 1000)).await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 1);
    // Read to its end: the 50 output tokens it reported are charged then.
    response.into_body().collect().await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 1 + 50);
    // The same with the output reserved up front: 1 + 1000, settled down to 1 + 50.
    let reserved = TokenBudget::new(Quota::per_minute(0, 60_000))
        .adaptive(false)
        .learn_output(false)
        .output_charge(OutputCharge::OnAdmission);
    let service = reserved
        .clone()
        .layer(ClassifyDashScopeError::new().layer(server.service()));
    let response = service.oneshot(chat("m", 1000)).await.unwrap();
    assert_eq!(reserved.tokens_in_window("m"), 1 + 1000);
    response.into_body().collect().await.unwrap();
    assert_eq!(reserved.tokens_in_window("m"), 1 + 50);
}

#[tokio::test(start_paused = true)]
async fn output_reported_beyond_the_window_is_debt_that_holds_back_the_next_request() {
    // 60 tokens a second; answers of 200 output tokens.
    let server = Server::new(200);
    let budget = TokenBudget::new(Quota::per_minute(0, 3600)).adaptive(false);
    let service = classified(&budget, &server);
    // Sent at once (its input fits), and its 201 tokens are owed when read: 60 fill the
    // window, 141 are carried (counted in the window too).
    send_and_read(service.clone(), chat("m", 500))
        .await
        .unwrap();
    assert_eq!(budget.tokens_in_window("m"), 201);
    assert_eq!(server.arrivals().len(), 1);
    // The next request waits until the debt has moved through the window: a second and more
    // for each 60 tokens owed.
    let start = Instant::now();
    let response = service.clone().oneshot(chat("m", 1)).await.unwrap();
    let waited = Instant::now() - start;
    assert!(response.extensions().get::<BudgetWait>().is_some());
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_without_usage_is_charged_its_expected_output() {
    // No classifier below reads the usage: what answers are expected to use is charged when
    // the body ends, as the server counted what it generated.
    let server = Server::new(50);
    let budget = TokenBudget::new(Quota::per_minute(0, 60_000)).adaptive(false);
    let service = budget.clone().layer(server.service());
    let response = service.clone().oneshot(chat("m", 100)).await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 1);
    response.into_body().collect().await.unwrap();
    // Nothing learned yet: the whole of max_tokens.
    assert_eq!(budget.tokens_in_window("m"), 1 + 100);
    // A refused request owes nothing.
    server.status.store(429, Ordering::SeqCst);
    let refused = service.oneshot(chat("m", 100)).await.unwrap();
    assert_eq!(refused.status(), 429);
    drop(refused);
    assert_eq!(budget.tokens_in_window("m"), 1 + 100);
}

#[tokio::test(start_paused = true)]
async fn an_over_estimate_settled_after_the_window_is_set_against_later_debt() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(0, 60_000))
        .output_charge(OutputCharge::OnAdmission)
        .adaptive(false)
        .learn_output(false);
    let service = classified(&budget, &server);
    // Charged 1 + 100, used 2, settled two seconds later: the window no longer holds the
    // charge, so the 99 over-estimated are kept as credit.
    let response = service.clone().oneshot(chat("m", 100)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    response.into_body().collect().await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 0);
    // Charged 1 + 10, used 1 + 500: the 490 owed less the 99 of credit.
    server.output_tokens.store(500, Ordering::SeqCst);
    send_and_read(service.clone(), chat("m", 10)).await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 11 + 490 - 99);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_gets_its_tokens_back_and_lowers_the_rate() {
    let server = Server::new(1);
    server.status.store(429, Ordering::SeqCst);
    let budget = TokenBudget::new(Quota::per_minute(600, 60_000));
    let service = classified(&budget, &server);
    let err = service.clone().oneshot(chat("m", 100)).await.unwrap_err();
    assert_eq!(
        err.class(),
        ErrorClass::RateLimited(RateLimitKind::Requests)
    );
    assert_eq!(budget.tokens_in_window("m"), 0);
    let (requests, tokens) = budget.rate_factors("m").unwrap();
    assert!(requests < 1.0 && tokens == 1.0, "{requests} {tokens}");

    // Successes raise it back, additively.
    server.status.store(200, Ordering::SeqCst);
    for _ in 0..20 {
        send_and_read(service.clone(), chat("m", 1)).await.unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
    }
    assert_eq!(budget.rate_factors("m"), Some((1.0, 1.0)));
}

#[tokio::test(start_paused = true)]
async fn a_request_bigger_than_a_second_waits_then_goes_into_debt() {
    let server = Server::new(1);
    // 60 tokens a second; the big one estimates 1 + 200, all reserved before sending.
    let budget = TokenBudget::new(Quota::per_minute(0, 3600))
        .output_charge(OutputCharge::OnAdmission)
        .adaptive(false);
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .service(server.service());
    let small = service.clone().oneshot(chat("m", 20)).await.unwrap();
    drop(small);
    let start = Instant::now();
    let big = service.clone().oneshot(chat("m", 200)).await.unwrap();
    assert!(
        big.extensions().get::<BudgetWait>().is_some(),
        "waited for an empty window"
    );
    drop(big);
    // The next small request pays the debt: about three more seconds.
    let next = service.clone().oneshot(chat("m", 1)).await.unwrap();
    let waited = next.extensions().get::<BudgetWait>().unwrap().0;
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "never waits forever: {:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn max_wait_fails_fast_with_the_wait_as_retry_after() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(60, 0)).max_wait(Duration::ZERO);
    let service = ServiceBuilder::new()
        .layer(budget)
        .service(server.service());
    service.clone().oneshot(chat("m", 1)).await.unwrap();
    let err = service.clone().oneshot(chat("m", 1)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
    let retry_after = err.retry_after().unwrap();
    // A second, and one slot (5 ms) of the window's bookkeeping at most.
    assert!(
        retry_after > Duration::from_millis(900) && retry_after <= Duration::from_millis(1010),
        "{retry_after:?}"
    );
    assert!(err.to_string().contains("max_wait"), "{err}");
    assert_eq!(
        server.arrivals().len(),
        1,
        "the refused request was not sent"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_held_until_the_body_ends_or_drops() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(0, 0)).max_concurrency(2);
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .service(server.service());
    let first = service.clone().oneshot(chat("m", 1)).await.unwrap();
    let second = service.clone().oneshot(chat("m", 1)).await.unwrap();
    assert_eq!(budget.in_flight(), 2);
    let mut third = tokio_test::task::spawn(service.clone().oneshot(chat("m", 1)));
    assert!(third.poll().is_pending());
    // Reading a body to its end frees a permit; the third goes.
    first.into_body().collect().await.unwrap();
    assert!(third.is_woken());
    let third = match third.poll() {
        std::task::Poll::Ready(result) => result.unwrap(),
        std::task::Poll::Pending => panic!("admitted once a permit was free"),
    };
    drop(second);
    drop(third);
    assert_eq!(budget.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_while_waiting_leaves_no_trace() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(60, 600)).adaptive(false);
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .service(server.service());
    service.clone().oneshot(chat("m", 1)).await.unwrap();
    let used = budget.tokens_in_window("m");
    // Waiting: holds nothing; dropped, it is as if it never came.
    let waiting = tokio::time::timeout(
        Duration::from_millis(100),
        service.clone().oneshot(chat("m", 5)),
    );
    assert!(waiting.await.is_err());
    assert_eq!(budget.tokens_in_window("m"), used);
    assert_eq!(budget.in_flight(), 0);
    // And it does not block the queue for the next one.
    tokio::time::advance(Duration::from_secs(1)).await;
    let next = tokio::time::timeout(
        Duration::from_millis(10),
        service.clone().oneshot(chat("m", 1)),
    );
    assert!(next.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn cancelled_after_sending_keeps_the_charge_and_frees_the_permit() {
    let budget = TokenBudget::new(Quota::per_minute(0, 6000)).max_concurrency(1);
    let slow = service_fn(|_req: Request<Full<Bytes>>| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::new())))
    });
    let service = budget.clone().layer(slow);
    let sent = tokio::time::timeout(
        Duration::from_secs(1),
        service.clone().oneshot(chat("m", 10)),
    );
    assert!(sent.await.is_err());
    assert_eq!(
        budget.tokens_in_window("m"),
        11,
        "the server may have billed it"
    );
    assert_eq!(budget.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_budget_and_non_chat_requests_pass() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(60, 0));
    let a = budget.clone().layer(server.service());
    let b = budget.clone().layer(server.service());
    a.oneshot(chat("m", 1)).await.unwrap();
    let response = b.oneshot(chat("m", 1)).await.unwrap();
    assert!(
        response.extensions().get::<BudgetWait>().is_some(),
        "the second clone waited"
    );

    // A request of no chat API is not counted.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let other = budget
        .clone()
        .layer(service_fn(move |_req: Request<Full<Bytes>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::new(Full::new(Bytes::new()))) }
        }));
    let embeddings = Request::post("/compatible-mode/v1/embeddings")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    let response = other.oneshot(embeddings).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.extensions().get::<BudgetWait>().is_none());
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_whatever_the_model_names() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(6000, 0)).max_models(8);
    let service = budget.clone().layer(server.service());
    for i in 0..100 {
        service
            .clone()
            .oneshot(chat(&format!("model-{i}"), 1))
            .await
            .unwrap();
    }
    assert!(budget.tracked_models() <= 9, "{}", budget.tracked_models());
}

#[test]
fn services_and_futures_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let server = Server::new(1);
    let service = TokenBudget::new(Quota::per_minute(1, 1)).layer(server.service());
    assert_send_sync(&service);
}

/// A store across a (pretend) network: every answer takes 50 ms, then comes from `local`;
/// `asked` counts the questions.
fn slow_store(
    local: Arc<tower_dashscope::budget::LocalStore>,
    asked: Arc<AtomicU32>,
) -> ScriptedStore {
    use tower_dashscope::budget::BudgetStore as _;
    ScriptedStore::new(local, move |local, key, limits, tokens| {
        asked.fetch_add(1, Ordering::SeqCst);
        let (local, key) = (local.clone(), key.clone());
        tower_dashscope::budget::StoreFuture::Pending(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            local
                .try_take(&key, limits, tokens)
                .ready()
                .expect("local answers at once")
        }))
    })
}

#[tokio::test(start_paused = true)]
async fn a_store_that_answers_later_is_awaited_and_cancelling_it_frees_the_permit() {
    use tower_dashscope::budget::BudgetStore as _;
    let inner = Arc::new(tower_dashscope::budget::LocalStore::new());
    let asked = Arc::new(AtomicU32::new(0));
    let budget = TokenBudget::new(Quota::per_minute(60, 0))
        .max_concurrency(1)
        .store(slow_store(inner.clone(), asked.clone()));
    let server = Server::new(1);
    let service = budget.clone().layer(server.service());

    let response = service.clone().oneshot(chat("m", 1)).await.unwrap();
    drop(response);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(server.arrivals().len(), 1);

    // Cancelled while the store is being asked: the permit comes back.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(10),
        service.clone().oneshot(chat("m", 1)),
    );
    assert!(cancelled.await.is_err());
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    assert_eq!(budget.in_flight(), 0);

    // The windows are the store's: one request counted there.
    let key = tower_dashscope::budget::BudgetKey::new(None, "m");
    let limits = tower_dashscope::budget::Limits {
        requests: 1000,
        tokens: u64::MAX,
        window: Duration::from_secs(1),
    };
    assert!(!inner.is_idle(&key, limits));
    // Later it has room again, and the next request goes through the slow store.
    tokio::time::advance(Duration::from_secs(2)).await;
    let response = service.clone().oneshot(chat("m", 1)).await.unwrap();
    drop(response);
    assert_eq!(server.arrivals().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_future_polled_after_completion_returns_an_error_not_a_panic() {
    let server = Server::new(1);
    let mut service = TokenBudget::new(Quota::per_minute(60, 0)).layer(server.service());
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let mut future = Box::pin(service.call(chat("m", 1)));
    future.as_mut().await.unwrap();
    let again = std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
    let err = again.unwrap_err();
    assert!(err.to_string().contains("after it completed"), "{err}");
}

/// A store across a (pretend) network that never answers: a hung Redis.
struct HungStore;

impl tower_dashscope::budget::BudgetStore for HungStore {
    fn try_take(
        &self,
        _key: &tower_dashscope::budget::BudgetKey,
        _limits: tower_dashscope::budget::Limits,
        _tokens: u64,
    ) -> tower_dashscope::budget::StoreFuture<Result<tower_dashscope::budget::Admission, BoxError>>
    {
        tower_dashscope::budget::StoreFuture::Pending(Box::pin(std::future::pending()))
    }

    fn adjust(
        &self,
        _key: &tower_dashscope::budget::BudgetKey,
        _limits: tower_dashscope::budget::Limits,
        _taken: tower_dashscope::budget::Taken,
        _delta: i64,
    ) {
    }

    fn tokens_used(
        &self,
        _key: &tower_dashscope::budget::BudgetKey,
        _limits: tower_dashscope::budget::Limits,
    ) -> u64 {
        0
    }

    fn forget(&self, _key: &tower_dashscope::budget::BudgetKey) {}

    fn is_idle(
        &self,
        _key: &tower_dashscope::budget::BudgetKey,
        _limits: tower_dashscope::budget::Limits,
    ) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn max_wait_also_bounds_a_store_that_does_not_answer() {
    let budget = TokenBudget::new(Quota::per_minute(60, 0))
        .max_concurrency(1)
        .max_wait(Duration::from_secs(1))
        .store(HungStore);
    let server = Server::new(1);
    let service = budget.clone().layer(server.service());
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        service.clone().oneshot(chat("m", 1)),
    )
    .await
    .expect("max_wait bounds the wait for the store's answer too");
    let err = outcome.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection);
    assert!(err.to_string().contains("max_wait"), "{err}");
    assert_eq!(server.arrivals().len(), 0, "not sent");
    assert_eq!(budget.in_flight(), 0, "the permit came back");

    // Failing fast still lets a store across the network answer (50 ms here).
    let budget = TokenBudget::new(Quota::per_minute(60, 0))
        .max_wait(Duration::ZERO)
        .store(slow_store(
            Arc::new(tower_dashscope::budget::LocalStore::new()),
            Arc::new(AtomicU32::new(0)),
        ));
    let service = budget.layer(server.service());
    service.oneshot(chat("m", 1)).await.unwrap();
    assert_eq!(server.arrivals().len(), 1);
}

/// A server whose every answer is a 429 with `body`.
fn throttling(
    body: &'static str,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ Sync {
    service_fn(move |_req: Request<Full<Bytes>>| async move {
        Ok::<_, BoxError>(
            Response::builder()
                .status(429)
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
    })
}

#[tokio::test(start_paused = true)]
async fn each_kind_of_429_lowers_its_own_rate() {
    // Tokens per minute: the token rate goes down, the request rate stays.
    let budget = TokenBudget::new(Quota::per_minute(600, 60_000));
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .layer(ClassifyDashScopeError::new())
        .service(throttling(
            r#"{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded, please increase your quota limit."}"#,
        ));
    let err = service.clone().oneshot(chat("m", 10)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Tokens));
    let (requests, tokens) = budget.rate_factors("m").unwrap();
    assert!(requests == 1.0 && tokens < 1.0, "{requests} {tokens}");

    // One 429 burst is one signal: a second 429 within the window changes nothing more.
    service.clone().oneshot(chat("m", 10)).await.unwrap_err();
    assert_eq!(budget.rate_factors("m").unwrap().1, tokens);

    // The growth-rate limit: both rates restart a slow ramp from a quarter.
    let budget = TokenBudget::new(Quota::per_minute(600, 60_000));
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .layer(ClassifyDashScopeError::new())
        .service(throttling(
            r#"{"code":"Throttling.BurstRate","message":"Request rate increased too quickly"}"#,
        ));
    service.clone().oneshot(chat("m", 10)).await.unwrap_err();
    assert_eq!(budget.rate_factors("m"), Some((0.25, 0.25)));

    // The budget's own RateLimited(Local) is not the server's: nothing changes.
    let budget = TokenBudget::new(Quota::per_minute(60, 0)).max_wait(Duration::ZERO);
    let service = budget.clone().layer(Server::new(1).service());
    service.clone().oneshot(chat("m", 1)).await.unwrap();
    let err = service.clone().oneshot(chat("m", 1)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
    assert_eq!(budget.rate_factors("m"), Some((1.0, 1.0)));
}

#[tokio::test(start_paused = true)]
async fn a_warm_up_ramps_a_cold_start() {
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(600, 0))
        .adaptive(false)
        .warm_up(0.2, Duration::from_secs(10));
    let service = budget.clone().layer(server.service());
    let tasks: Vec<_> = (0..12)
        .map(|_| tokio::spawn(service.clone().oneshot(chat("m", 1))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // A fifth of 10 a second at first: two in the first second, not ten.
    let arrivals = server.arrivals();
    let first = arrivals.iter().min().copied().unwrap();
    let in_first_second = arrivals
        .iter()
        .filter(|t| **t < first + Duration::from_secs(1))
        .count();
    assert!(in_first_second <= 2, "{in_first_second}");
    let (requests, _) = budget.rate_factors("m").unwrap();
    assert!(requests < 1.0, "still warming: {requests}");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(budget.rate_factors("m"), Some((1.0, 1.0)));
}

/// A body that yields one chunk, then fails: a stream cut after it started.
struct CutBody {
    sent: bool,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if self.sent {
            return std::task::Poll::Ready(Some(Err("connection reset".into())));
        }
        self.sent = true;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"data: {\"choices\":[]}\n\n",
        )))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_fails_part_way_keeps_its_charge_and_frees_its_permit() {
    let budget = TokenBudget::new(Quota::per_minute(0, 6000)).max_concurrency(1);
    let failing = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(CutBody { sent: false }))
    });
    let service = budget.clone().layer(failing);
    let response = service.clone().oneshot(chat("m", 10)).await.unwrap();
    assert_eq!(budget.in_flight(), 1);
    assert!(response.into_body().collect().await.is_err());
    assert_eq!(budget.in_flight(), 0, "the permit is free");
    assert_eq!(
        budget.tokens_in_window("m"),
        11,
        "the server billed what it sent"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_quota_does_not_hold_the_inner_services_readiness() {
    // One request in flight at most below the budget: a request waiting for its model's quota
    // must not keep that slot from a request of another model that has room.
    let server = Server::new(1);
    let budget = TokenBudget::new(Quota::per_minute(60, 0));
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .concurrency_limit(1)
        .service(server.service());
    service.clone().oneshot(chat("a", 1)).await.unwrap();
    // The second request of model `a` waits about a second for its quota.
    let mut waiting = tokio_test::task::spawn(service.clone().oneshot(chat("a", 1)));
    assert!(waiting.poll().is_pending());
    // Model `b` has room: it goes now, not after `a`'s wait.
    // (Holding the slot would deadlock here: the waiting request is not being polled.)
    let start = Instant::now();
    let other = tokio::time::timeout(
        Duration::from_millis(500),
        service.clone().oneshot(chat("b", 1)),
    )
    .await
    .expect("blocked behind a request waiting for quota")
    .unwrap();
    drop(other);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // And the waiting one is readied again and sent once admitted.
    tokio::time::advance(Duration::from_millis(1100)).await;
    let response = waiting.await.unwrap();
    assert!(response.extensions().get::<BudgetWait>().is_some());
    assert_eq!(server.arrivals().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn headroom_counts_down_in_the_window_and_comes_back_after_it() {
    let server = Server::new(9);
    // 180 requests and 6,000 tokens a minute: 3 requests and 100 tokens a second.
    let budget = TokenBudget::new(Quota::per_minute(180, 6_000))
        .model("unlimited", Quota::per_minute(0, 0))
        .adaptive(false);
    let service = classified(&budget, &server);

    let room = budget.headroom("m");
    assert_eq!(room.quota, Quota::per_minute(180, 6_000));
    assert_eq!(room.window, Duration::from_secs(1));
    assert_eq!((room.requests, room.tokens), (Some(3), Some(100)));

    // Used 1 + 9 tokens (the estimate of 1 + 50 is settled when the body is read).
    send_and_read(service.clone(), chat("m", 50)).await.unwrap();
    let room = budget.headroom("m");
    assert_eq!((room.requests, room.tokens), (Some(2), Some(90)));
    // Another model's room is its own.
    assert_eq!(budget.headroom("other").requests, Some(3));
    assert_eq!(
        (
            budget.headroom("unlimited").requests,
            budget.headroom("unlimited").tokens
        ),
        (None, None)
    );

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let room = budget.headroom("m");
    assert_eq!((room.requests, room.tokens), (Some(3), Some(100)));
}

/// A budget of 60 tokens a second where a request costs exactly its `max_tokens`: no input
/// counted, the whole output reserved before sending and kept (no usage is read).
fn sized_budget(backfill: usize) -> TokenBudget {
    TokenBudget::new(Quota::per_minute(0, 3600))
        .adaptive(false)
        .backfill(backfill)
        .output_charge(OutputCharge::OnAdmission)
        .learn_output(false)
        .estimator(|_: &tower_dashscope::request::ChatRequest, _: &Bytes| 0)
}

#[tokio::test(start_paused = true)]
async fn a_smaller_request_behind_one_that_does_not_fit_takes_the_room_left() {
    // (backfill, a store in this process, whether the small request goes first)
    for (backfill, local, overtakes) in [(8, true, true), (0, true, false), (8, false, false)] {
        let server = Server::new(1);
        let mut budget = sized_budget(backfill);
        if !local {
            // A store that does not say it answers locally (as a store across the network
            // would not): only the first in line asks it.
            budget = budget.store(ScriptedStore::new(
                Arc::new(tower_dashscope::budget::LocalStore::new()),
                |local, key, limits, tokens| {
                    tower_dashscope::budget::BudgetStore::try_take(&**local, key, limits, tokens)
                },
            ));
        }
        let service = budget.clone().layer(server.service());
        // 40 of the second's 60 taken; the next needs 40 and waits for room.
        let first = service.clone().oneshot(chat("m", 40)).await.unwrap();
        drop(first);
        let mut big = tokio::spawn(service.clone().oneshot(chat("m", 40)));
        tokio::task::yield_now().await;
        // A request of 10 behind it fits in the 20 left.
        let small = tokio::time::timeout(
            Duration::from_millis(100),
            service.clone().oneshot(chat("m", 10)),
        )
        .await;
        assert_eq!(
            small.is_ok(),
            overtakes,
            "backfill({backfill}), local {local}"
        );
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut big)
                .await
                .is_err(),
            "backfill({backfill}): the first in line is still waiting"
        );
        // The first in line gets its room when the first request leaves the window.
        let big = tokio::time::timeout(Duration::from_secs(2), big).await;
        assert!(big.is_ok(), "backfill({backfill})");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_behind_stop_taking_room_once_the_first_has_waited_a_window() {
    let server = Server::new(1);
    let budget = sized_budget(8);
    let service = budget.clone().layer(server.service());
    // The window filled by small requests spread over a second: room comes back 5 at a time.
    for _ in 0..12 {
        let small = service.clone().oneshot(chat("m", 5)).await.unwrap();
        drop(small);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // The first in line needs the whole window; small requests keep arriving behind it, each
    // of which fits in the room one leaving request frees.
    let start = Instant::now();
    let big = tokio::spawn(service.clone().oneshot(chat("m", 60)));
    tokio::task::yield_now().await;
    let mut smalls = Vec::new();
    for _ in 0..60 {
        smalls.push(tokio::spawn(service.clone().oneshot(chat("m", 5))));
        tokio::time::sleep(Duration::from_millis(80)).await;
        if big.is_finished() {
            break;
        }
    }
    big.await.unwrap().unwrap();
    let waited = Instant::now() - start;
    // Without the bound, the small ones would take every bit of room as it came back, for as
    // long as they kept coming (4.8 s here). With it, they stop after the first has waited a
    // window, and it gets the whole window one window later.
    assert!(waited <= Duration::from_millis(2200), "{waited:?}");
    for small in smalls {
        small.await.unwrap().unwrap();
    }
}

#[test]
fn budget_keys_are_equal_by_their_names_and_hash_alike() {
    use std::collections::HashSet;
    use tower_dashscope::budget::BudgetKey;
    let a = BudgetKey::new(Some("acct"), "qwen-plus");
    assert_eq!(a, BudgetKey::new(Some("acct"), "qwen-plus"));
    assert_ne!(a, BudgetKey::new(None, "qwen-plus"));
    assert_ne!(a, BudgetKey::new(Some("acct"), "qwen-max"));
    // The account and the model are not run together: ("ab", "c") is not ("a", "bc").
    assert_ne!(
        BudgetKey::new(Some("ab"), "c"),
        BudgetKey::new(Some("a"), "bc")
    );
    let set: HashSet<BudgetKey> = [
        a.clone(),
        BudgetKey::new(Some("acct"), "qwen-plus"),
        BudgetKey::new(None, "qwen-plus"),
    ]
    .into_iter()
    .collect();
    assert_eq!(set.len(), 2);
    assert!(set.contains(&a));
    assert_eq!(
        format!("{a:?}"),
        r#"BudgetKey { account: Some("acct"), model: "qwen-plus" }"#
    );
}

#[tokio::test(start_paused = true)]
async fn token_429s_the_budget_had_room_for_switch_a_model_to_reserving_its_output() {
    for detect in [true, false] {
        let server = Server::new(50);
        let budget = TokenBudget::new(Quota::per_minute(0, 60_000))
            .adaptive(false)
            .detect_output_charge(detect);
        let service = classified(&budget, &server);
        // Three token 429s among the first requests: the server counts answers on admission.
        server.status.store(429, Ordering::SeqCst);
        server.tokens_429.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let err = service.clone().oneshot(chat("m", 100)).await.unwrap_err();
            assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Tokens));
        }
        server.status.store(200, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The next request's charge while its answer is unread: its input alone when the
        // charge stays as set, input and expected output (all of max_tokens, nothing learned
        // yet) once switched.
        let response = service.clone().oneshot(chat("m", 100)).await.unwrap();
        let charged = budget.tokens_in_window("m");
        assert_eq!(charged, if detect { 1 + 100 } else { 1 }, "detect {detect}");
        response.into_body().collect().await.unwrap();
        assert_eq!(budget.tokens_in_window("m"), 1 + 50, "detect {detect}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rare_token_429_does_not_switch_the_output_charge() {
    let server = Server::new(50);
    let budget = TokenBudget::new(Quota::per_minute(0, 6_000_000)).adaptive(false);
    let service = classified(&budget, &server);
    // Two token 429s in every hundred outcomes, for three hundred: under the threshold.
    for i in 0..300 {
        let refuse = i % 100 < 2;
        server
            .status
            .store(if refuse { 429 } else { 200 }, Ordering::SeqCst);
        server.tokens_429.store(refuse, Ordering::SeqCst);
        let answer = send_and_read(service.clone(), chat("m", 100)).await;
        assert_eq!(answer.is_err(), refuse, "request {i}");
    }
    server.status.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = service.clone().oneshot(chat("m", 100)).await.unwrap();
    assert_eq!(
        budget.tokens_in_window("m"),
        1,
        "still charged when reported"
    );
    drop(response);
}

/// An inner service whose readiness can be switched: ready, failing, or never ready.
#[derive(Clone)]
struct Switchable {
    server: Server,
    /// 0: ready; 1: poll_ready fails; 2: poll_ready stays pending.
    mode: Arc<AtomicU32>,
}

impl Service<Request<Full<Bytes>>> for Switchable {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self.mode.load(Ordering::SeqCst) {
            0 => std::task::Poll::Ready(Ok(())),
            1 => std::task::Poll::Ready(Err("inner service gone".into())),
            _ => std::task::Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        Box::pin(self.server.service().oneshot(request))
    }
}

/// A budget of one request a second over a [`Switchable`] inner service, after one request
/// was answered: the next waits about a second. No classifier below, so the usage is unknown
/// and the first request owes its expected output (10).
async fn one_answered_at_one_a_second() -> (
    Server,
    Arc<AtomicU32>,
    TokenBudget,
    TokenBudgetService<Switchable>,
) {
    let server = Server::new(1);
    let mode = Arc::new(AtomicU32::new(0));
    let budget = TokenBudget::new(Quota::per_minute(60, 60_000)).adaptive(false);
    let service = budget.clone().layer(Switchable {
        server: server.clone(),
        mode: mode.clone(),
    });
    let response = service.clone().oneshot(chat("m", 10)).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 11);
    (server, mode, budget, service)
}

/// A request admitted after a wait whose inner service then fails to become ready was never
/// sent: nothing of it is charged, not even the output an answer would have used.
#[tokio::test(start_paused = true)]
async fn a_request_never_sent_because_the_inner_service_failed_is_not_charged_output() {
    let (server, mode, budget, service) = one_answered_at_one_a_second().await;

    // The next request waits about a second for the request rate; meanwhile the inner service
    // breaks.
    let mut waiting = tokio_test::task::spawn(service.clone().oneshot(chat("m", 10)));
    assert!(waiting.poll().is_pending());
    mode.store(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert!(waiting.await.is_err());
    assert_eq!(server.arrivals().len(), 1, "not sent");
    // The first request's charge has left the one-second window by now.
    assert_eq!(
        budget.tokens_in_window("m"),
        0,
        "a request never sent is not charged an answer's output"
    );
    assert_eq!(budget.in_flight(), 0);
}

/// A request admitted after a wait and dropped while its inner service is being readied was
/// never sent: it is not charged the output an answer would have used.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_before_it_was_sent_is_not_charged_output() {
    let (server, mode, budget, service) = one_answered_at_one_a_second().await;

    let mut waiting = tokio_test::task::spawn(service.clone().oneshot(chat("m", 10)));
    assert!(waiting.poll().is_pending());
    mode.store(2, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1100)).await;
    // Admitted, readying the inner service (which never becomes ready).
    assert!(waiting.poll().is_pending());
    assert_eq!(budget.in_flight(), 1);
    drop(waiting);
    assert_eq!(server.arrivals().len(), 1, "not sent");
    assert_eq!(budget.in_flight(), 0);
    // The first request's charge has left the one-second window by now. The input stays
    // charged as for any cancelled admission; no answer's output is owed.
    assert_eq!(budget.tokens_in_window("m"), 1);
}

/// A request whose budget was asked for before the model switched to reserving output, and
/// granted after, was charged its input alone: its output is still owed when no usage comes.
#[tokio::test(start_paused = true)]
async fn a_request_admitted_across_the_output_charge_switch_still_owes_its_output() {
    let inner = Arc::new(tower_dashscope::budget::LocalStore::new());
    let asked = Arc::new(AtomicU32::new(0));
    let server = Server::new(50);
    let budget = TokenBudget::new(Quota::per_minute(0, 6_000_000))
        .adaptive(false)
        .store(slow_store(inner, asked.clone()));
    // The server answers 20 ms after a request; the store 50 ms after it is asked.
    let slow_server = {
        let server = server.service();
        service_fn(move |request: Request<Full<Bytes>>| {
            let server = server.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                server.oneshot(request).await
            }
        })
    };
    let service = budget
        .clone()
        .layer(ClassifyDashScopeError::new().layer(slow_server));
    server.status.store(429, Ordering::SeqCst);
    server.tokens_429.store(true, Ordering::SeqCst);
    // In line: three requests the server refuses for tokens, then one it answers. The store
    // is asked for the last one at 150 ms, before the third refusal (170 ms) switches the
    // model to reserving output, and grants it at 200 ms, after.
    let refused: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(chat("m", 100))))
        .collect();
    let pending = tokio::spawn(service.clone().oneshot(chat("m", 100)));
    tokio::time::sleep(Duration::from_millis(175)).await;
    assert_eq!(asked.load(Ordering::SeqCst), 4);
    server.status.store(200, Ordering::SeqCst);
    server.tokens_429.store(false, Ordering::SeqCst);
    for refused in refused {
        let err = refused.await.unwrap().unwrap_err();
        assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Tokens));
    }
    let response = pending.await.unwrap().unwrap();
    assert_eq!(budget.tokens_in_window("m"), 1, "asked for its input alone");
    // Its answer is never read: the output it was not charged up front is owed now.
    drop(response);
    assert_eq!(budget.tokens_in_window("m"), 1 + 100);
    // The model did switch: the next request reserves its output up front.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = service.clone().oneshot(chat("m", 100)).await.unwrap();
    assert_eq!(budget.tokens_in_window("m"), 1 + 100);
    drop(response);
}
