//! The scenarios of `examples/budget_scenarios.rs`, shared with `tests/budget_mock.rs`: a
//! `MockDashScope` with a recorder below the stack that notes when the server admitted each
//! request and what it used, and the numbers the issue asks for, computed from that record.
//!
//! Everything runs in paused tokio time with seeded randomness: the same numbers every run.

use crate::{open_loop, tenacity};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_dashscope::budget::TokenEstimator;
use tower_dashscope::mock::{
    Enforcement, MockBody, MockDashScope, ModelConfig, OutputCharge, OutputLength,
};
use tower_dashscope::request::ChatRequest;
use tower_dashscope::{
    ClassifyDashScopeError, Quota, RetryWithJitter, TokenBudget, UsageSlot, WaitTimeoutHeader,
};

pub const MODEL: &str = "qwen-plus";
const CHAT: &str = "/compatible-mode/v1/chat/completions";

/// A chat request of `input_chars` ASCII characters (`input_chars / 4` tokens, as the simulator
/// counts them) and, if given, `max_tokens`.
pub fn chat(input_chars: usize, max_tokens: Option<u32>) -> Request<Full<Bytes>> {
    let text = "abcd".repeat(input_chars / 4);
    let max = max_tokens.map_or(String::new(), |m| format!(r#","max_tokens":{m}"#));
    let body =
        format!(r#"{{"model":"{MODEL}"{max},"messages":[{{"role":"user","content":"{text}"}}]}}"#);
    Request::post(CHAT)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// One request the server answered: when it decided, how, and (for an admitted request under
/// a budget) the usage the response reported.
#[derive(Clone)]
pub struct Sent {
    pub at: Instant,
    pub status: StatusCode,
    pub usage: Option<UsageSlot>,
}

/// What the recorder saw.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Sent>>>);

impl Log {
    pub fn sent(&self) -> Vec<Sent> {
        self.0.lock().unwrap().clone()
    }

    /// `(when, tokens)` of every request the server admitted.
    pub fn admitted(&self) -> Vec<(Instant, u64)> {
        self.sent()
            .iter()
            .filter(|s| s.status.is_success())
            .map(|s| {
                let tokens = s
                    .usage
                    .as_ref()
                    .and_then(UsageSlot::get)
                    .map_or(0, |u| u.total_tokens);
                (s.at, tokens)
            })
            .collect()
    }
}

/// The simulator with a recorder in front: the time of each call (when the simulator decides:
/// in-process, with a whole body and no burst limit, at once), its status, and the budget's
/// usage slot from the request's extensions.
pub fn recorded(
    mock: &MockDashScope,
    log: &Log,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<MockBody>,
    Error = io::Error,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let (mock, log) = (mock.clone(), log.clone());
    service_fn(move |req: Request<Full<Bytes>>| {
        let at = Instant::now();
        let usage = req.extensions().get::<UsageSlot>().cloned();
        let answer = mock.clone().call(req);
        let log = log.clone();
        async move {
            let response = answer.await;
            if let Ok(response) = &response {
                log.0.lock().unwrap().push(Sent {
                    at,
                    status: response.status(),
                    usage,
                });
            }
            response
        }
    })
}

/// The most requests (`count`) or tokens (sum) the server admitted in any window
/// `[t, t + width)`: sliding windows, starting at each admission.
pub fn max_in_window(admitted: &[(Instant, u64)], width: Duration) -> (usize, u64) {
    let mut points = admitted.to_vec();
    points.sort_by_key(|p| p.0);
    let mut best = (0, 0);
    let mut end = 0;
    let mut tokens = 0u64;
    for start in 0..points.len() {
        while end < points.len() && points[end].0 < points[start].0 + width {
            tokens += points[end].1;
            end += 1;
        }
        best.0 = best.0.max(end - start);
        best.1 = best.1.max(tokens);
        tokens -= points[start].1;
    }
    best
}

/// An estimator that misjudges every input by `factor` (1.5: 50% over; 0.5: 50% under) of the
/// simulator's own count (a token per four characters; the default estimator counts more).
#[derive(Debug, Clone, Copy)]
pub struct Skewed(pub f64);

impl TokenEstimator for Skewed {
    fn input_tokens(&self, chat: &ChatRequest, _body: &Bytes) -> u64 {
        ((chat.input_chars().div_ceil(4) as f64) * self.0)
            .round()
            .max(1.0) as u64
    }
}

/// A saturating workload: the offered load, the server and the client's budget.
#[derive(Debug, Clone, Copy)]
pub struct Saturation {
    pub enforcement: Enforcement,
    pub rpm: u32,
    pub tpm: u32,
    /// Input characters per request (a quarter as many tokens).
    pub input_chars: usize,
    pub max_tokens: u32,
    /// Answers are between this share of `max_tokens` and all of it.
    pub min_output: f64,
    /// Time to first token, and output tokens per second.
    pub ttft: Duration,
    pub tokens_per_sec: f64,
    /// How much more than the quota is offered.
    pub overload: f64,
    /// How long requests keep arriving; goodput is measured over this span.
    pub duration: Duration,
    /// The estimator's factor on input tokens (1.0: exact).
    pub skew: f64,
    /// `TokenBudget::learn_output` (on by default): charge the share of `max_tokens` answers
    /// used so far, rather than all of it.
    pub learn_output: bool,
    /// When the simulator counts answers' output, and the budget charges it (the same on both
    /// sides): `OnAdmission` here, where what the server admits in a second is what the
    /// budget bounds; the default of both is `WhenGenerated`.
    pub output_charge: OutputCharge,
    /// `TokenBudget::detect_output_charge` (on by default).
    pub detect_output_charge: bool,
    pub seed: u64,
}

impl Saturation {
    /// 600 RPM and 60,000 TPM (10 requests and 1,000 tokens a second); requests of 25 input
    /// tokens and `max_tokens` 300, answers of 60 to 300 tokens (mean 205 in all, so the
    /// tokens bind at about 4.9 requests a second) at 0.3 s to the first token and 100 tokens a
    /// second (answers take 0.9 to 3.3 s); four times the quota offered for 60 s.
    pub fn new(enforcement: Enforcement) -> Self {
        Saturation {
            enforcement,
            rpm: 600,
            tpm: 60_000,
            input_chars: 100,
            max_tokens: 300,
            min_output: 0.2,
            ttft: Duration::from_millis(300),
            tokens_per_sec: 100.0,
            overload: 4.0,
            duration: Duration::from_secs(60),
            skew: 1.0,
            learn_output: true,
            output_charge: OutputCharge::OnAdmission,
            detect_output_charge: true,
            seed: 7,
        }
    }

    /// Mean tokens a request really uses.
    pub fn mean_tokens(&self) -> f64 {
        let input = (self.input_chars / 4).max(1) as f64;
        let max = f64::from(self.max_tokens);
        input + max * (1.0 + self.min_output) / 2.0
    }

    /// The requests a second the quota allows, for requests of the mean size.
    pub fn quota_rps(&self) -> f64 {
        (f64::from(self.rpm) / 60.0).min(f64::from(self.tpm) / 60.0 / self.mean_tokens())
    }
}

/// What a saturating run measured.
#[derive(Debug, Clone)]
pub struct SaturationReport {
    pub rps: f64,
    pub tps: f64,
    /// Most requests and tokens the server admitted in any one-second window.
    pub max_requests_1s: usize,
    pub max_tokens_1s: u64,
    /// The same over the second half of the span (after convergence).
    pub max_tokens_1s_late: u64,
    /// The largest amount by which one request's real tokens exceeded its estimate.
    pub max_under_estimate: u64,
    /// Tokens the server admitted while requests arrived, over the quota for that span.
    pub goodput: f64,
    /// The same over the second half of the span (after convergence).
    pub goodput_late: f64,
    /// Tokens the server counted against the quota (by when it counted them, output when
    /// generated or at admission as configured) over the second half of the span, over the
    /// quota for it.
    pub counted_late: f64,
    pub attempts: u64,
    pub throttled: u64,
    /// 429s over the second half of the span (after convergence).
    pub throttled_late: usize,
    /// Requests that got their answer, of those offered.
    pub completed: usize,
    pub offered: usize,
    /// The budget's rate factors at the end.
    pub factors: (f64, f64),
}

impl SaturationReport {
    pub fn throttled_share(&self) -> f64 {
        self.throttled as f64 / self.attempts.max(1) as f64
    }
}

/// Runs `workload` through `RetryWithJitter → TokenBudget → WaitTimeoutHeader →
/// ClassifyDashScopeError` against the simulator, reading every body to its end.
pub async fn saturate(workload: Saturation) -> SaturationReport {
    saturate_with(workload, workload.output_charge).await
}

pub async fn saturate_with(workload: Saturation, server_charge: OutputCharge) -> SaturationReport {
    let w = workload;
    let mock = MockDashScope::builder()
        .model(
            MODEL,
            ModelConfig::new()
                .rpm(w.rpm)
                .tpm(w.tpm)
                .max_output_tokens(w.max_tokens.max(1))
                .output_length(OutputLength::Uniform {
                    min_fraction: w.min_output,
                })
                .latency(w.ttft, w.tokens_per_sec)
                .enforcement(w.enforcement)
                .output_charge(server_charge),
        )
        .seed(w.seed)
        .build();
    let log = Log::default();
    let budget = TokenBudget::new(Quota::per_minute(w.rpm, w.tpm))
        .estimator(Skewed(w.skew))
        .learn_output(w.learn_output)
        .output_charge(w.output_charge)
        .detect_output_charge(w.detect_output_charge);
    let service = ServiceBuilder::new()
        .layer(RetryWithJitter::new().seed(w.seed))
        .layer(budget.clone())
        .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
        .layer(ClassifyDashScopeError::new())
        .service(recorded(&mock, &log));

    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / (w.quota_rps() * w.overload));
    let offered = (w.duration.as_secs_f64() / gap.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(offered);
    for i in 0..offered {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let service = service.clone();
        let request = chat(w.input_chars, Some(w.max_tokens));
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(request).await.ok()?;
            response.into_body().collect().await.ok().map(|_| ())
        }));
    }
    let mut completed = 0;
    for task in tasks {
        completed += usize::from(task.await.unwrap().is_some());
    }

    let admitted = log.admitted();
    let (max_requests_1s, max_tokens_1s) = max_in_window(&admitted, Duration::from_secs(1));
    let late: Vec<_> = admitted
        .iter()
        .copied()
        .filter(|(at, _)| *at >= start + w.duration / 2)
        .collect();
    let max_tokens_1s_late = max_in_window(&late, Duration::from_secs(1)).1;
    let estimate =
        |input: u64| ((input as f64) * w.skew).round().max(1.0) as u64 + u64::from(w.max_tokens);
    let input = (w.input_chars as u64 / 4).max(1);
    let max_under_estimate = admitted
        .iter()
        .map(|&(_, used)| used.saturating_sub(estimate(input)))
        .max()
        .unwrap_or(0);
    let tps = f64::from(w.tpm) / 60.0;
    let served = |from: Duration, to: Duration| {
        admitted
            .iter()
            .filter(|(at, _)| *at >= start + from && *at < start + to)
            .map(|(_, t)| *t)
            .sum::<u64>() as f64
            / (tps * (to - from).as_secs_f64())
    };
    let stats = mock.stats();
    let total = stats.total();
    SaturationReport {
        rps: f64::from(w.rpm) / 60.0,
        tps,
        max_requests_1s,
        max_tokens_1s,
        max_tokens_1s_late,
        max_under_estimate,
        goodput: served(Duration::ZERO, w.duration),
        goodput_late: served(w.duration / 2, w.duration),
        counted_late: {
            let (from, to) = (w.duration.as_secs() / 2, w.duration.as_secs());
            let counted: u64 = stats
                .model(MODEL)
                .map(|m| m.timeline.range(from..to).map(|(_, c)| c.tokens).sum())
                .unwrap_or(0);
            counted as f64 / (tps * (to - from) as f64)
        },
        attempts: total.requests,
        throttled: total.throttled(),
        throttled_late: log
            .sent()
            .iter()
            .filter(|s| s.status == StatusCode::TOO_MANY_REQUESTS && s.at >= start + w.duration / 2)
            .count(),
        completed,
        offered,
        factors: budget.rate_factors(MODEL).unwrap_or((1.0, 1.0)),
    }
}

/// The shared-core issue's scenario: `qwen-plus` at 300 RPM, answers in 2.7 s (0.7 s to the
/// first token, 16 tokens at 8 a second), 300 requests arriving at 10 a second.
pub const REQUESTS: u32 = 300;
pub const ARRIVAL_GAP: Duration = Duration::from_millis(100);
pub const ANSWER: Duration = Duration::from_millis(2700);
pub const RECIPE_RPM: u32 = 300;

fn recipe_simulator(enforcement: Enforcement) -> MockDashScope {
    MockDashScope::builder()
        .model(
            MODEL,
            ModelConfig::new()
                .rpm(RECIPE_RPM)
                .latency(Duration::from_millis(700), 8.0)
                .enforcement(enforcement),
        )
        .build()
}

/// The time the quota alone imposes on the scenario: 300 requests at 5 a second, and the last
/// answer's latency.
pub fn quota_ideal() -> Duration {
    Duration::from_secs_f64(f64::from(REQUESTS) / (f64::from(RECIPE_RPM) / 60.0)) + ANSWER
}

/// How one strategy did on the scenario.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub completed: u32,
    /// Attempts the server saw.
    pub attempts: u64,
    pub throttled: u64,
    /// From the first arrival to the last request's end (answered, or given up).
    pub elapsed: Duration,
    /// Most requests the server admitted in any one-second window.
    pub max_requests_1s: usize,
}

impl ScenarioReport {
    pub fn attempts_per_request(&self) -> f64 {
        self.attempts as f64 / f64::from(REQUESTS)
    }
}

async fn arrive<F, Fut>(mock: &MockDashScope, log: &Log, one: F) -> ScenarioReport
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let completed = open_loop::open_loop(REQUESTS, ARRIVAL_GAP, one).await;
    let elapsed = start.elapsed();
    let stats = mock.stats();
    ScenarioReport {
        completed,
        attempts: stats.total().requests,
        throttled: stats.throttled(),
        elapsed,
        max_requests_1s: max_in_window(&log.admitted(), Duration::from_secs(1)).0,
    }
}

/// Alibaba's recipe: openai-python (its retries off) in tenacity's
/// `@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`.
pub async fn recipe(enforcement: Enforcement, seed: u64) -> ScenarioReport {
    let mock = recipe_simulator(enforcement);
    let log = Log::default();
    let server = recorded(&mock, &log);
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    arrive(&mock, &log, || {
        let (server, rng) = (server.clone(), rng.clone());
        async move {
            for attempt in 1..=tenacity::ATTEMPTS {
                let response = server.clone().oneshot(chat(20, None)).await.unwrap();
                if response.status().is_success() {
                    return response.into_body().collect().await.is_ok();
                }
                if attempt == tenacity::ATTEMPTS {
                    break;
                }
                let wait = tenacity::wait(attempt, &mut *rng.lock().unwrap());
                tokio::time::sleep(wait).await;
            }
            false
        }
    })
    .await
}

/// The recommended stack: `RetryWithJitter → TokenBudget → WaitTimeoutHeader →
/// ClassifyDashScopeError`, the budget told the account's quota (300 RPM, tokens unlimited).
pub async fn recommended(enforcement: Enforcement, seed: u64) -> ScenarioReport {
    let mock = recipe_simulator(enforcement);
    let log = Log::default();
    let service = ServiceBuilder::new()
        .layer(RetryWithJitter::new().seed(seed))
        .layer(TokenBudget::new(Quota::per_minute(RECIPE_RPM, 0)))
        .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
        .layer(ClassifyDashScopeError::new())
        .service(recorded(&mock, &log));
    arrive(&mock, &log, || {
        let service = service.clone();
        async move {
            match service.oneshot(chat(20, None)).await {
                Ok(response) => response.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}
