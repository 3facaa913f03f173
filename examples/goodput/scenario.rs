//! The scenarios: a simulator, a workload, and what the quota alone would allow; one run of a
//! strategy through a scenario, and the numbers it yields.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{Service, service_fn};
use tower_dashscope::Quota;
use tower_dashscope::mock::{
    Enforcement, Fault, MockBody, MockDashScope, ModelConfig, OutputCharge, OutputLength,
};

use super::harness;
use super::strategy::{Outcome, Req, Setup, Strategy, client};

pub const PRIMARY: &str = harness::MODEL;
pub const SECONDARY: &str = "qwen-flash";

/// A request that never ends is given up after this long (the run must end; no strategy's own
/// timeout is this long).
const HORIZON: Duration = Duration::from_secs(2 * 3600);

/// In batch mode (`--resubmit`), the most times the application sends one request through the
/// strategy before it gives up on it.
pub const MAX_SUBMISSIONS: u32 = 100;

/// In batch mode, how long the application waits before it sends a failed request again.
pub const RESUBMIT_AFTER: Duration = Duration::from_secs(1);

/// Which scenario, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// The quota scenario, in one enforcement model, with answers' output counted as the
    /// simulator is told.
    Quota(Enforcement, OutputCharge),
    Burst,
    Outage,
    Flap,
    Silent,
    TotalOutage,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Quota(Enforcement::Continuous, OutputCharge::WhenGenerated),
        Kind::Quota(Enforcement::FixedWindow, OutputCharge::WhenGenerated),
        Kind::Quota(Enforcement::Continuous, OutputCharge::OnAdmission),
        Kind::Quota(Enforcement::FixedWindow, OutputCharge::OnAdmission),
        Kind::Burst,
        Kind::Outage,
        Kind::Flap,
        Kind::Silent,
        Kind::TotalOutage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Quota(..) => "quota",
            Kind::Burst => "burst",
            Kind::Outage => "outage",
            Kind::Flap => "flap",
            Kind::Silent => "silent",
            Kind::TotalOutage => "total-outage",
        }
    }

    pub fn enforcement(self) -> Enforcement {
        match self {
            Kind::Quota(e, _) => e,
            _ => Enforcement::Continuous,
        }
    }

    /// When the simulator counts an answer's output against the quota.
    pub fn output_charge(self) -> OutputCharge {
        match self {
            Kind::Quota(_, charge) => charge,
            _ => OutputCharge::WhenGenerated,
        }
    }

    /// The name with the simulator's model, for tables and file names.
    pub fn label(self) -> String {
        match self {
            Kind::Quota(e, OutputCharge::OnAdmission) => {
                format!("quota-{}-on-admission", enforcement_name(e))
            }
            Kind::Quota(e, _) => format!("quota-{}", enforcement_name(e)),
            other => other.name().to_owned(),
        }
    }
}

pub fn output_charge_name(c: OutputCharge) -> &'static str {
    match c {
        OutputCharge::OnAdmission => "on-admission",
        _ => "when-generated",
    }
}

pub fn enforcement_name(e: Enforcement) -> &'static str {
    match e {
        Enforcement::FixedWindow => "fixed-window",
        _ => "continuous",
    }
}

/// One request of a workload.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: Duration,
    input_tokens: u32,
    max_tokens: u32,
}

/// A scenario, ready to run with any strategy.
pub struct Scenario {
    pub kind: Kind,
    rpm: u32,
    tpm: u32,
    /// The expected output as a share of `max_tokens` (the simulator's uniform draw).
    output_share: f64,
    ttft: Duration,
    tokens_per_sec: f64,
    arrivals: Vec<Arrival>,
    /// When the primary is back (flap, outage, total outage).
    pub recovery: Option<Duration>,
}

impl Scenario {
    /// The scenario `kind`; `quick` shrinks the workload to run in seconds in a debug build.
    pub fn new(kind: Kind, quick: bool, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
        // Quick: a fifth of the requests where that keeps the scenario's shape.
        let scale = |n: usize| if quick { n / 5 } else { n };
        let steady = |count: usize, per_sec: f64, size: (u32, u32)| -> Vec<Arrival> {
            (0..count)
                .map(|i| Arrival {
                    at: Duration::from_secs_f64(i as f64 / per_sec),
                    input_tokens: size.0,
                    max_tokens: size.1,
                })
                .collect()
        };
        let base = Scenario {
            kind,
            rpm: 600,
            tpm: 200_000,
            output_share: 0.6,
            ttft: Duration::from_millis(500),
            tokens_per_sec: 60.0,
            arrivals: Vec::new(),
            recovery: None,
        };
        match kind {
            Kind::Quota(..) => {
                // Prompts of 50 to 750 tokens, max_tokens 256, 512 or 1024, answers 20% to
                // 100% of max_tokens: 758 tokens a request on average, so the TPM binds at
                // about 4.4 requests a second (RPM would allow 10). Offered at twice that.
                let count = scale(2000);
                let mut arrivals: Vec<Arrival> = (0..count)
                    .map(|_| Arrival {
                        at: Duration::ZERO,
                        input_tokens: rng.random_range(50..=750),
                        max_tokens: [256, 512, 1024][rng.random_range(0..3)],
                    })
                    .collect();
                let mut s = Scenario {
                    arrivals: Vec::new(),
                    ..base
                };
                let per_sec = 2.0 * s.quota_rps_of(&arrivals);
                for (i, a) in arrivals.iter_mut().enumerate() {
                    a.at = Duration::from_secs_f64(i as f64 / per_sec);
                }
                s.arrivals = arrivals;
                s
            }
            // 20 requests a second (the RPM quota, 1200) from a cold start, small requests.
            Kind::Burst => Scenario {
                rpm: 1200,
                tpm: 1_000_000,
                arrivals: steady(scale(600), 20.0, (100, 100)),
                ..base
            },
            // 5 requests a second for three minutes; the primary answers 503 from 30 s to 150 s.
            Kind::Outage => Scenario {
                arrivals: steady(900, 5.0, (200, 200)),
                recovery: Some(Duration::from_secs(150)),
                ..base
            },
            // The primary is down for the first 60 s (from 10 s), then healthy; 5 a second.
            Kind::Flap => Scenario {
                arrivals: steady(600, 5.0, (200, 200)),
                recovery: Some(Duration::from_secs(70)),
                ..base
            },
            // The primary takes every request and never sends a byte; 20 requests, 1 a second.
            Kind::Silent => Scenario {
                arrivals: steady(20, 1.0, (200, 200)),
                ..base
            },
            // Every model answers 503 for a minute; 200 requests a second meanwhile
            // (a retry budget's floor of 10 retries a second is small beside that).
            Kind::TotalOutage => Scenario {
                rpm: 60_000,
                tpm: 100_000_000,
                arrivals: steady(if quick { 1200 } else { 12_000 }, 200.0, (200, 200)),
                recovery: Some(Duration::from_secs(60)),
                ..base
            },
        }
    }

    fn mean_tokens_of(&self, arrivals: &[Arrival]) -> f64 {
        arrivals
            .iter()
            .map(|a| f64::from(a.input_tokens) + self.output_share * f64::from(a.max_tokens))
            .sum::<f64>()
            / arrivals.len().max(1) as f64
    }

    fn quota_rps_of(&self, arrivals: &[Arrival]) -> f64 {
        (f64::from(self.rpm) / 60.0).min(self.tps() / self.mean_tokens_of(arrivals))
    }

    /// The TPM quota per second.
    pub fn tps(&self) -> f64 {
        f64::from(self.tpm) / 60.0
    }

    /// The tokens a second the quota lets this workload use: the TPM quota, or the RPM quota
    /// times the mean request when requests bind first (burst, outages).
    pub fn quota_tokens_per_sec(&self) -> f64 {
        self.quota_rps_of(&self.arrivals) * self.mean_tokens_of(&self.arrivals)
    }

    pub fn requests(&self) -> usize {
        self.arrivals.len()
    }

    /// The time the quota alone imposes: the workload's requests and expected tokens at the
    /// quota's rate (or the arrivals' span, if longer), then one mean answer.
    pub fn ideal(&self) -> Duration {
        let n = self.arrivals.len() as f64;
        let by_quota = n / self.quota_rps_of(&self.arrivals);
        let span = self.arrivals.last().map_or(0.0, |a| a.at.as_secs_f64());
        let mean_output = self.output_share
            * self
                .arrivals
                .iter()
                .map(|a| f64::from(a.max_tokens))
                .sum::<f64>()
            / n.max(1.0);
        let answer = self.ttft.as_secs_f64() + mean_output / self.tokens_per_sec;
        Duration::from_secs_f64(by_quota.max(span) + answer)
    }

    fn model(&self) -> ModelConfig {
        ModelConfig::new()
            .rpm(self.rpm)
            .tpm(self.tpm)
            .max_output_tokens(4096)
            .output_length(OutputLength::Uniform {
                min_fraction: 2.0 * self.output_share - 1.0,
            })
            .latency(self.ttft, self.tokens_per_sec)
            .enforcement(self.kind.enforcement())
            .output_charge(self.kind.output_charge())
    }

    fn simulator(&self, seed: u64) -> MockDashScope {
        let secs = Duration::from_secs;
        let (primary, secondary) = match self.kind {
            Kind::Quota(..) => (self.model(), None),
            Kind::Burst => (self.model().burst_limit(4), None),
            Kind::Outage => (self.model().outage(secs(30)..secs(150)), Some(self.model())),
            Kind::Flap => (self.model().outage(secs(10)..secs(70)), Some(self.model())),
            Kind::Silent => (self.model().fault(Fault::NoFirstByte), Some(self.model())),
            Kind::TotalOutage => (
                self.model().outage(secs(0)..secs(60)),
                Some(self.model().outage(secs(0)..secs(60))),
            ),
        };
        let mut builder = MockDashScope::builder().seed(seed).model(PRIMARY, primary);
        if let Some(secondary) = secondary {
            builder = builder.model(SECONDARY, secondary);
        }
        builder.build()
    }

    /// The models a fallback chain would use.
    pub fn chain(&self) -> Vec<&'static str> {
        match self.kind {
            Kind::Quota(..) | Kind::Burst => vec![PRIMARY],
            _ => vec![PRIMARY, SECONDARY],
        }
    }

    /// Runs `strategy` through the scenario in paused time. With `resubmit` (batch mode), the
    /// application sends a request that failed through the strategy again, a second later, until it
    /// succeeds (at most [`MAX_SUBMISSIONS`] times): every strategy has the same work to finish.
    /// `budget_charge`: how the recommended stack's `TokenBudget` charges output.
    pub async fn run(
        &self,
        strategy: Strategy,
        seed: u64,
        resubmit: bool,
        budget_charge: OutputCharge,
    ) -> Run {
        let mock = self.simulator(seed);
        let log = Log::default();
        let setup = Setup {
            quota: Quota::per_minute(self.rpm, self.tpm),
            chain: self.chain(),
            seed,
            budget_charge,
        };
        let call = client(strategy, recorded(&mock, &log), &setup);
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(self.arrivals.len());
        let submissions = if resubmit { MAX_SUBMISSIONS } else { 1 };
        for arrival in &self.arrivals {
            tokio::time::sleep_until(start + arrival.at).await;
            let (chars, max_tokens) = (4 * arrival.input_tokens as usize, arrival.max_tokens);
            let call = call.clone();
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                let submit = async {
                    let mut sent = 0;
                    loop {
                        sent += 1;
                        let outcome = call(harness::chat(chars, Some(max_tokens))).await;
                        if outcome != Outcome::Failed || sent >= submissions {
                            return (outcome, sent);
                        }
                        tokio::time::sleep(RESUBMIT_AFTER).await;
                    }
                };
                let (outcome, sent) = tokio::time::timeout(HORIZON, submit)
                    .await
                    .unwrap_or((Outcome::Failed, submissions));
                (outcome, began.elapsed(), Instant::now(), sent)
            }));
        }
        let mut ends = Vec::with_capacity(tasks.len());
        let mut submitted = 0u64;
        for task in tasks {
            let (outcome, took, end, sent) = task.await.unwrap();
            submitted += u64::from(sent);
            ends.push((outcome, took, end));
        }
        let stats = mock.stats();
        let timeline = |model: &str| -> BTreeMap<u64, u64> {
            stats
                .model(model)
                .map(|m| m.tokens_per_second().collect())
                .unwrap_or_default()
        };
        let mut total = timeline(PRIMARY);
        for (second, tokens) in timeline(SECONDARY) {
            *total.entry(second).or_default() += tokens;
        }
        Run {
            strategy,
            start,
            ends,
            submitted,
            attempts: log.0.lock().unwrap().clone(),
            server_attempts: stats.total().requests,
            throttled: stats.throttled(),
            charged_tokens: stats.total().tokens,
            tokens_per_second: total,
            primary_tokens_per_second: timeline(PRIMARY),
        }
    }
}

/// One attempt the server saw.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    pub model: String,
    /// `None`: the call failed without an answer.
    pub status: Option<u16>,
    pub input_tokens: u64,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Attempt>>>);

/// The simulator with a recorder in front: every attempt's time, model, status and prompt size.
fn recorded(
    mock: &MockDashScope,
    log: &Log,
) -> impl Service<Req, Response = Response<MockBody>, Error = io::Error, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let (mock, log) = (mock.clone(), log.clone());
    service_fn(move |req: Request<Full<Bytes>>| {
        let at = Instant::now();
        let (model, input_tokens) = describe(req.body());
        let answer = mock.clone().call(req);
        let log = log.clone();
        async move {
            let response = answer.await;
            log.0.lock().unwrap().push(Attempt {
                at,
                model,
                status: response.as_ref().ok().map(|r| r.status().as_u16()),
                input_tokens,
            });
            response
        }
    })
}

/// The model a request names and its prompt tokens as the simulator counts them (a token per
/// four characters of message text).
fn describe(body: &Full<Bytes>) -> (String, u64) {
    let Some(data) = full_bytes(body) else {
        return (String::new(), 0);
    };
    let json: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
    let model = json["model"].as_str().unwrap_or_default().to_owned();
    let chars: usize = json["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.chars().count())
                .sum()
        })
        .unwrap_or(0);
    (model, chars.div_ceil(4) as u64)
}

/// The bytes of a `Full` body without consuming it (a clone of the body is polled once).
fn full_bytes(body: &Full<Bytes>) -> Option<Bytes> {
    use http_body::Body;
    let mut body = body.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
        _ => Some(Bytes::new()),
    }
}

/// What one run of a strategy through a scenario recorded.
pub struct Run {
    pub strategy: Strategy,
    pub start: Instant,
    /// Per request: what the caller got, how long it took, and when it ended.
    pub ends: Vec<(Outcome, Duration, Instant)>,
    /// Times the application sent a request through the strategy (more than the requests
    /// only in batch mode, `--resubmit`).
    pub submitted: u64,
    pub attempts: Vec<Attempt>,
    pub server_attempts: u64,
    pub throttled: u64,
    pub charged_tokens: u64,
    /// Tokens the server admitted in each second (all models; the primary alone).
    pub tokens_per_second: BTreeMap<u64, u64>,
    pub primary_tokens_per_second: BTreeMap<u64, u64>,
}
