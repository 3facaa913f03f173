//! The simulator as a `tower::Service`: reading a request, deciding its fate under the lock,
//! answering it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::Service;

use super::body::{InFlight, MockBody};
use super::burst::BurstRule;
use super::failure::{Failure, Shapes, native_error_frame, response_builder};
use super::fault::Fault;
use super::keys::{Keys, request_host};
use super::model::{Exhausted, ModelConfig};
use super::plan::{CodingPlan, PlanRefusal, PlanState, TokenPlan, month_day_time};
use super::quota::{Over, Quotas};
use super::respond::{self, Ending, Pace};
use super::stats::{MockStats, ModelStats};
use super::{MAX_REQUEST_BODY, MAX_WAIT_TIMEOUT_SECS, MockDashScope};
use crate::api::{Api, Plan, Region};
use crate::error::BoxError;
use crate::headers::{X_DASHSCOPE_WAIT_TIMEOUT, X_REQUEST_ID};
use crate::request::ChatRequest;

/// What every clone of a simulator shares.
pub(crate) struct Shared {
    start: Instant,
    /// For HTTP mode.
    pub(super) header_read_timeout: Duration,
    shapes: Shapes,
    plans: Plans,
    keys: Keys,
    state: Mutex<State>,
    next_id: AtomicU64,
}

/// The plans a simulator serves on the plan hosts, and its calendar.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plans {
    pub(crate) coding: Option<CodingPlan>,
    pub(crate) token: Option<TokenPlan>,
    /// The Unix second the simulator is built at (for reset times in messages).
    pub(crate) epoch: u64,
}

pub(super) struct State {
    pub(super) models: BTreeMap<String, (ModelConfig, ModelState)>,
    coding: PlanState,
    token: PlanState,
    rng: SmallRng,
    pub(super) stats: MockStats,
}

/// What the simulator keeps for one model between requests.
#[derive(Debug)]
pub(super) struct ModelState {
    quotas: Quotas,
    burst: BurstRule,
}

impl Shared {
    pub(super) fn new(
        start: Instant,
        models: BTreeMap<String, ModelConfig>,
        keys: Keys,
        seed: u64,
        header_read_timeout: Duration,
        shapes: Shapes,
        plans: Plans,
    ) -> Self {
        let models = models
            .into_iter()
            .map(|(name, config)| {
                let state = ModelState {
                    quotas: Quotas::new(&config, start),
                    burst: BurstRule::default(),
                };
                (name, (config, state))
            })
            .collect();
        Shared {
            start,
            header_read_timeout,
            shapes,
            plans,
            keys,
            state: Mutex::new(State {
                models,
                coding: PlanState::default(),
                token: PlanState::default(),
                rng: SmallRng::seed_from_u64(seed),
                stats: MockStats::default(),
            }),
            next_id: AtomicU64::new(1),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn finish_in_flight(&self, plan: Plan) {
        let mut state = self.lock();
        state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
        match plan {
            Plan::CodingPlan => state.coding.in_flight = state.coding.in_flight.saturating_sub(1),
            Plan::TokenPlan => state.token.in_flight = state.token.in_flight.saturating_sub(1),
            _ => {}
        }
    }

    /// The whole second since the simulator was built that `now` falls in.
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }
}

enum Decision {
    Answer(Pace),
    Fail(Failure, Option<Duration>),
    /// A fault that answers with an error of its own shape.
    Fault(Fault),
    /// A JSON body of its own (plans).
    Raw(StatusCode, String),
    Reset,
    Burst {
        next_second: Instant,
    },
}

impl MockDashScope {
    fn request_id(&self) -> String {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    /// Answers one request whose body has been read.
    async fn answer(
        self,
        api: Option<Api>,
        host: Option<String>,
        headers: http::HeaderMap,
        body: Result<Bytes, StatusCode>,
    ) -> Result<Response<MockBody>, std::io::Error> {
        let request_id = self.request_id();
        let shapes = self.shared.shapes;
        self.shared.lock().stats.requests += 1;
        let plan = host
            .as_deref()
            .and_then(Region::from_host)
            .map_or(Plan::PayAsYouGo, |(_, plan)| plan);
        // The Coding Plan's own answers (405, its 401) when the simulator serves the plan.
        let coding_plan = plan == Plan::CodingPlan && self.shared.plans.coding.is_some();
        let Some(api) = api.filter(|api| api.base_path(plan).is_some()) else {
            // A wrong base path (or the native API on a plan's host, which has none):
            // DashScope's gateway answers a bare 404.
            return Ok(bare(None, StatusCode::NOT_FOUND, &request_id));
        };
        let body = match body {
            Ok(body) => body,
            Err(status) => return Ok(bare(Some(api), status, &request_id)),
        };
        let sse_header = crate::classify::asks_for_stream(&headers);
        if !self.shared.keys.accept(api, &headers, host.as_deref()) {
            if coding_plan {
                // Coding Plan's own 401: flat, or nested under `error` on `/apps/anthropic`.
                let flat = serde_json::json!({"code": "invalid_api_key", "message": "invalid access token or token expired"});
                let body = if api == Api::Anthropic {
                    serde_json::json!({ "error": flat })
                } else {
                    flat
                };
                return Ok(json_answer(
                    api,
                    StatusCode::UNAUTHORIZED,
                    &request_id,
                    body.to_string(),
                ));
            }
            let failure = Failure::invalid_api_key();
            return Ok(failure.respond(api, sse_header, &request_id, None, shapes));
        }
        if coding_plan && !headers.contains_key(http::header::USER_AGENT) {
            let body = r#"{"error":"Coding Plan is currently only available for Coding Agents"}"#;
            return Ok(json_answer(
                api,
                StatusCode::METHOD_NOT_ALLOWED,
                &request_id,
                body.to_owned(),
            ));
        }
        let Some(chat) = ChatRequest::parse(api, &headers, &body) else {
            let failure = Failure::invalid_parameter("The request body is not valid JSON.");
            return Ok(failure.respond(api, sse_header, &request_id, None, shapes));
        };
        let Some(model) = chat.model().map(str::to_owned) else {
            let failure = Failure::invalid_parameter("Model not specified.");
            return Ok(failure.respond(api, chat.stream(), &request_id, None, shapes));
        };
        let wait = headers
            .get(X_DASHSCOPE_WAIT_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, |secs| {
                Duration::from_secs(secs.min(MAX_WAIT_TIMEOUT_SECS))
            });
        let waited_until = Instant::now() + wait;

        // A request queued for the burst limit is decided again, but counted once.
        let mut queued = false;
        loop {
            let decision = self.decide(&model, &chat, &body, plan, queued);
            match decision {
                Decision::Answer(pace) => {
                    let in_flight = InFlight(self.shared.clone(), plan);
                    let generation = pace.generation();
                    // A zero sleep would still wait for the timer's next tick (1 ms).
                    if !chat.stream() && !generation.is_zero() {
                        tokio::time::sleep(generation).await;
                    }
                    let response = respond::success(api, &chat, &model, &request_id, pace);
                    return Ok(response.map(|b| b.with_in_flight(in_flight)));
                }
                Decision::Raw(status, body) => {
                    return Ok(json_answer(api, status, &request_id, body));
                }
                Decision::Fail(failure, retry_after) => {
                    return Ok(failure.respond(
                        api,
                        chat.stream(),
                        &request_id,
                        retry_after,
                        shapes,
                    ));
                }
                Decision::Fault(Fault::SseFramedErrorBody) => {
                    let failure = Failure::invalid_parameter(
                        "<400> InternalError.Algo.InvalidParameter: An unknown error occurred due to an unsupported input format.",
                    );
                    if api != Api::Native {
                        return Ok(failure.respond(api, chat.stream(), &request_id, None, shapes));
                    }
                    let frame =
                        native_error_frame(1, failure.status, &failure.native_json(&request_id));
                    return Ok(response_builder(api, &request_id)
                        .status(failure.status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(MockBody::full(frame))
                        .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new()))));
                }
                Decision::Fault(_) => {
                    return Ok(bare(Some(api), StatusCode::TOO_MANY_REQUESTS, &request_id));
                }
                Decision::Reset => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "MockDashScope reset the connection (scripted fault)",
                    ));
                }
                Decision::Burst { next_second } if next_second <= waited_until => {
                    let second = self.shared.second(Instant::now());
                    if let Some(stats) = self.shared.lock().stats.models.get_mut(&model) {
                        if !queued {
                            stats.record(second, |c| c.queued += 1);
                        }
                    }
                    tokio::time::sleep_until(next_second).await;
                    queued = true;
                }
                Decision::Burst { .. } => {
                    let second = self.shared.second(Instant::now());
                    let mut state = self.shared.lock();
                    let retry_after = state.models.get(&model).and_then(|(c, _)| c.retry_after);
                    if let Some(stats) = state.stats.models.get_mut(&model) {
                        stats.record(second, |c| c.throttled_burst += 1);
                    }
                    drop(state);
                    let failure = Failure::burst_rate();
                    return Ok(failure.respond(
                        api,
                        chat.stream(),
                        &request_id,
                        retry_after,
                        shapes,
                    ));
                }
            }
        }
    }

    /// Decides, under the lock, what happens to a request for `model` now. `again`: the request
    /// was queued and has been counted already.
    fn decide(
        &self,
        model: &str,
        chat: &ChatRequest,
        body: &[u8],
        plan: Plan,
        again: bool,
    ) -> Decision {
        // The clock is read under the lock, so that no thread applies a time older than one
        // another thread already applied.
        let mut guard = self.shared.lock();
        let now = Instant::now();
        let since_start = now.saturating_duration_since(self.shared.start);
        let second = self.shared.second(now);
        let state = &mut *guard;
        let Some((config, model_state)) = state.models.get_mut(model) else {
            return Decision::Fail(Failure::model_not_found(model), None);
        };
        let stats = state.stats.models.entry(model.to_owned()).or_default();
        if !again {
            stats.record(second, |c| c.requests += 1);
        }
        let fail = |stats: &mut ModelStats, failure: Failure| {
            stats.record(second, |c| c.failed += 1);
            Decision::Fail(failure, None)
        };

        match config.exhausted {
            Some(Exhausted::FreeTier) => return fail(stats, Failure::free_tier_only()),
            Some(Exhausted::Billing) => return fail(stats, Failure::arrearage()),
            None => {}
        }
        if config.outages.iter().any(|w| w.contains(&since_start)) {
            return fail(stats, Failure::model_unavailable());
        }
        let mut fires = |rate: f64| rate >= 1.0 || (rate > 0.0 && state.rng.random_bool(rate));
        if let Some(&(fault, _)) = config
            .faults
            .iter()
            .find(|&&(fault, rate)| fault.is_error_answer() && fires(rate))
        {
            stats.record(second, |c| c.failed += 1);
            return Decision::Fault(fault);
        }
        if config.reset_rate > 0.0 && state.rng.random_bool(config.reset_rate) {
            stats.record(second, |c| c.failed += 1);
            return Decision::Reset;
        }
        if config
            .moderation_marker
            .as_deref()
            .is_some_and(|m| memchr::memmem::find(body, m.as_bytes()).is_some())
        {
            return fail(stats, Failure::input_inspection_failed());
        }
        let input_tokens = respond::input_tokens(chat);
        if input_tokens > config.context_window {
            return fail(stats, Failure::context_overflow(config.context_window));
        }
        if chat.max_tokens_is_malformed()
            || chat
                .max_tokens()
                .is_some_and(|n| n == 0 || n > config.max_output_tokens)
        {
            return fail(
                stats,
                Failure::max_tokens_out_of_range(config.max_output_tokens),
            );
        }

        // Quotas.
        if model_state.burst.exceeded(second, config.burst) {
            let next_second = self.shared.start + Duration::from_secs(second + 1);
            return Decision::Burst { next_second };
        }
        let limit = respond::output_limit(chat, config.max_output_tokens);
        let output_tokens = config.output_length.draw(limit, &mut state.rng);
        let tokens = f64::from(input_tokens) + f64::from(output_tokens);
        match model_state.quotas.check(now, tokens) {
            Ok(()) => {}
            Err(Over::Requests) => {
                stats.record(second, |c| c.throttled_requests += 1);
                return Decision::Fail(Failure::rate_quota(), config.retry_after);
            }
            Err(Over::Tokens) => {
                stats.record(second, |c| c.throttled_tokens += 1);
                return Decision::Fail(Failure::allocation_quota(), config.retry_after);
            }
        }
        // The plan's own windows, shared by every model on it.
        let plans = &self.shared.plans;
        let admitted = match (plan, &plans.coding, &plans.token) {
            (Plan::CodingPlan, Some(limits), _) => {
                state
                    .coding
                    .admit_coding(limits, now, since_start, tokens as u64)
            }
            (Plan::TokenPlan, _, Some(limits)) => {
                state
                    .token
                    .admit_token(limits, since_start, plans.epoch, tokens as u64)
            }
            _ => Ok(()),
        };
        match admitted {
            Ok(()) => {}
            Err(PlanRefusal::Failure(failure)) => return fail(stats, failure),
            Err(PlanRefusal::TokenWeek { resets_at_unix }) => {
                stats.record(second, |c| c.failed += 1);
                let message = format!(
                    "Your token-plan 1-week quota has been exhausted. The quota will reset at {} UTC.",
                    month_day_time(resets_at_unix)
                );
                let body = serde_json::json!({"error": {"message": message}});
                return Decision::Raw(StatusCode::TOO_MANY_REQUESTS, body.to_string());
            }
        }
        if config.error_rate > 0.0 && state.rng.random_bool(config.error_rate) {
            return fail(stats, Failure::internal_error());
        }
        let mut fires = |rate: f64| rate >= 1.0 || (rate > 0.0 && state.rng.random_bool(rate));
        let ending = config
            .faults
            .iter()
            .filter(|(fault, _)| !fault.is_error_answer())
            .find_map(|&(fault, rate)| {
                let ending = match fault {
                    Fault::NoFirstByte => Ending::Silent,
                    Fault::ErrorMidStream {
                        after_tokens,
                        error,
                    } if chat.stream() => Ending::Error(after_tokens, error),
                    Fault::Stall { after_tokens } if chat.stream() => Ending::Stall(after_tokens),
                    _ => return None,
                };
                fires(rate).then_some(ending)
            })
            .or(config.cut_streams_after.map(Ending::Cut))
            .unwrap_or(Ending::Complete);
        // Admitted: pay for it.
        model_state.quotas.charge(tokens);
        model_state.burst.admit();
        stats.record(second, |c| {
            c.succeeded += 1;
            c.tokens += tokens as u64;
        });
        state.stats.in_flight += 1;
        match plan {
            Plan::CodingPlan => state.coding.in_flight += 1,
            Plan::TokenPlan => state.token.in_flight += 1,
            _ => {}
        }
        state.stats.peak_in_flight = state.stats.peak_in_flight.max(state.stats.in_flight);
        Decision::Answer(Pace {
            output_tokens,
            ttft: config.ttft,
            // Any rate, however slow, gives a delay: no overflow, no panic.
            per_token: if config.tokens_per_sec > 0.0 {
                Duration::try_from_secs_f64(1.0 / config.tokens_per_sec).unwrap_or(Duration::MAX)
            } else {
                Duration::ZERO
            },
            ending,
        })
    }
}

/// An answer with a JSON body of its own.
fn json_answer(api: Api, status: StatusCode, request_id: &str, body: String) -> Response<MockBody> {
    response_builder(api, request_id)
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(MockBody::full(body))
        .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())))
}

/// An answer with an empty body. `api`: `None` for a path of no API.
fn bare(api: Option<Api>, status: StatusCode, request_id: &str) -> Response<MockBody> {
    api.map_or_else(
        || Response::builder().header(X_REQUEST_ID, request_id),
        |api| response_builder(api, request_id),
    )
    .status(status)
    .body(MockBody::full(Bytes::new()))
    .unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())))
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<MockBody>, std::io::Error>> + Send>>;

/// Response future of [`MockDashScope`]: `Send` and `Sync`, whatever the request body, so that
/// services stacked over the simulator can be `Sync` too.
#[must_use = "futures do nothing unless polled"]
pub struct MockFuture {
    // The answer reads the request body, which need not be `Sync`. A `Mutex` is `Sync` when what
    // it holds is `Send`, and polling goes through `Mutex::get_mut` (a `&mut` borrow, no lock),
    // so this costs nothing at run time.
    inner: Mutex<Answer>,
}

impl Future for MockFuture {
    type Output = Result<Response<MockBody>, std::io::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `MockFuture` is `Unpin` (the answer is boxed), so the pin can be taken off.
        let answer = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        answer.as_mut().poll(cx)
    }
}

impl fmt::Debug for MockFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockFuture").finish_non_exhaustive()
    }
}

impl<B> Service<Request<B>> for MockDashScope
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<MockBody>;
    /// Only scripted connection resets ([`ModelConfig::reset_rate`]).
    type Error = std::io::Error;
    type Future = MockFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let (parts, body) = req.into_parts();
        let api = respond::route(parts.uri.path());
        let host = request_host(&parts);
        MockFuture {
            inner: Mutex::new(Box::pin(async move {
                let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
                    Ok(collected) => Ok(collected.to_bytes()),
                    Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                        Err(StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    Err(_) => Err(StatusCode::BAD_REQUEST),
                };
                this.answer(api, host, parts.headers, body).await
            })),
        }
    }
}
