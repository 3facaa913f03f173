//! The strategies the goodput example compares: models of the clients people run today, and
//! this crate's layers, each over the same recorded simulator.

use crate::tenacity;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_dashscope::mock::MockBody;
use tower_dashscope::{
    ClassifyDashScopeError, FallbackModel, OutputCharge, Quota, RetryWithJitter, TokenBudget,
    WaitTimeoutHeader,
};

/// A request as every strategy sends it.
pub type Req = Request<Full<Bytes>>;

/// What the caller got in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer, read to its end, that used this many tokens (its `usage.total_tokens`).
    Answered { tokens: u64 },
    /// An error, a non-2xx answer handed back, or a body that broke.
    Failed,
}

/// One logical request, start to end, through a strategy.
pub type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The recorded simulator every strategy calls: a cloneable service.
pub trait Server:
    Service<Req, Response = Response<MockBody>, Error = io::Error, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Server for T where
    T: Service<Req, Response = Response<MockBody>, Error = io::Error, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The strategies, in the order the tables list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    None,
    Tenacity,
    OpenAiSdk,
    Litellm,
    RetryOnly,
    TowerDashScope,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::None,
        Strategy::Tenacity,
        Strategy::OpenAiSdk,
        Strategy::Litellm,
        Strategy::RetryOnly,
        Strategy::TowerDashScope,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::None => "none",
            Strategy::Tenacity => "tenacity",
            Strategy::OpenAiSdk => "openai-sdk",
            Strategy::Litellm => "litellm",
            Strategy::RetryOnly => "retry-only",
            Strategy::TowerDashScope => "tower-dashscope",
        }
    }
}

/// What the recommended stack is told about the scenario: the account's quota per model and
/// the fallback chain (when the scenario has a second model).
#[derive(Debug, Clone)]
pub struct Setup {
    pub quota: Quota,
    pub chain: Vec<&'static str>,
    pub seed: u64,
    /// How `TokenBudget` charges answers' output (`--budget-on-admission`).
    pub budget_charge: OutputCharge,
}

/// The client of `strategy` over `server`: a function from a request to its outcome.
pub fn client<S: Server>(
    strategy: Strategy,
    server: S,
    setup: &Setup,
) -> Arc<dyn Fn(Req) -> Call + Send + Sync> {
    match strategy {
        Strategy::None => scheduled(server, Schedule::none(), setup.seed),
        Strategy::Tenacity => scheduled(server, Schedule::tenacity(), setup.seed),
        Strategy::OpenAiSdk => scheduled(server, Schedule::openai_sdk(), setup.seed),
        Strategy::Litellm => scheduled(server, Schedule::litellm(), setup.seed),
        Strategy::RetryOnly => tower_client(
            ServiceBuilder::new()
                .layer(RetryWithJitter::new().seed(setup.seed))
                .service(server),
        ),
        Strategy::TowerDashScope => recommended(server, setup),
    }
}

/// The crate's recommended stack, outermost first: FallbackModel → RetryWithJitter →
/// TokenBudget → WaitTimeoutHeader → ClassifyDashScopeError, all defaults but the quota, the
/// chain, and a first-byte timeout of 10 s on the fallback (its default is none; a silent
/// model needs one). FallbackModel is there when the scenario has a second model to fall back
/// to. RegionRouter is left out: one simulated region, nothing to route (its cost is in
/// `benches/overhead.rs`).
fn recommended<S: Server>(server: S, setup: &Setup) -> Arc<dyn Fn(Req) -> Call + Send + Sync> {
    let below = ServiceBuilder::new()
        .layer(RetryWithJitter::new().seed(setup.seed))
        .layer(TokenBudget::new(setup.quota).output_charge(setup.budget_charge))
        .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
        .layer(ClassifyDashScopeError::new())
        .service(server);
    if setup.chain.len() > 1 {
        tower_client(
            FallbackModel::new(setup.chain.iter().copied())
                .first_byte_timeout(FIRST_BYTE_TIMEOUT)
                .layer(below),
        )
    } else {
        tower_client(below)
    }
}

/// The recommended stack's first-byte timeout.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// A tower service as a client: one `oneshot` per request, the body read to its end.
fn tower_client<T, B>(service: T) -> Arc<dyn Fn(Req) -> Call + Send + Sync>
where
    T: Service<Req, Response = Response<B>, Future: Send + 'static> + Clone + Send + Sync + 'static,
    T::Error: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    Arc::new(move |req| {
        let service = service.clone();
        Box::pin(async move {
            match service.oneshot(req).await {
                Ok(response) if response.status().is_success() => read(response).await,
                _ => Outcome::Failed,
            }
        })
    })
}

/// Reads an answer to its end and takes its `usage.total_tokens`.
async fn read<B: http_body::Body<Data = Bytes>>(response: Response<B>) -> Outcome {
    match response.into_body().collect().await {
        Ok(body) => Outcome::Answered {
            tokens: total_tokens(&body.to_bytes()),
        },
        Err(_) => Outcome::Failed,
    }
}

fn total_tokens(body: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["usage"]["total_tokens"].as_u64())
        .unwrap_or(0)
}

/// What one attempt of a scheduled (Python-style) client ended in.
enum Attempt {
    Answered(Outcome),
    Status(StatusCode, HeaderMap),
    /// A connection error, a body that broke, or the client's own request timeout.
    Connection,
}

/// How a retry loop in the style of the Python clients behaves.
#[derive(Clone, Copy)]
struct Schedule {
    /// Attempts in all (retries + 1).
    attempts: u32,
    /// The HTTP client's request timeout, each attempt.
    timeout: Duration,
    retry_on: fn(StatusCode) -> bool,
    /// The wait before retry `n` (0 for the first retry), given the failed attempt's headers.
    wait: fn(u32, Option<&HeaderMap>, &mut SmallRng) -> Duration,
}

/// openai-python's default timeout (600 s), also what the tenacity recipe's client and litellm
/// run with unless told otherwise.
const OPENAI_TIMEOUT: Duration = Duration::from_secs(600);

impl Schedule {
    /// One attempt, the HTTP client's timeout.
    fn none() -> Self {
        Schedule {
            attempts: 1,
            timeout: OPENAI_TIMEOUT,
            retry_on: |_| false,
            wait: |_, _, _| Duration::ZERO,
        }
    }

    /// Alibaba's recipe: openai-python (its own retries off) in tenacity's
    /// `@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`,
    /// retrying 429, 5xx and connection errors (timeouts included). tenacity's
    /// `wait_random_exponential` draws `uniform(min, clamp(2^(n-1), min, max))` after attempt
    /// `n`; it knows nothing of `Retry-After`.
    fn tenacity() -> Self {
        Schedule {
            attempts: tenacity::ATTEMPTS,
            timeout: OPENAI_TIMEOUT,
            retry_on: |s| s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error(),
            wait: |retry, _, rng| tenacity::wait(retry + 1, rng),
        }
    }

    /// openai-python's own retries: 2, on 408, 409, 429, 5xx and connection errors, after
    /// `min(0.5 s · 2^n, 8 s) · (1 − 0.25 · uniform[0, 1))`, or `retry-after-ms` /
    /// `Retry-After` (seconds or HTTP date) when it is over 0 and at most 60 s.
    fn openai_sdk() -> Self {
        Schedule {
            attempts: 3,
            timeout: OPENAI_TIMEOUT,
            retry_on: openai_retryable,
            wait: |retry, headers, rng| {
                let after = headers.and_then(openai_retry_after);
                if let Some(after) = after.filter(|a| *a > Duration::ZERO && *a <= MAX_AFTER) {
                    return after;
                }
                let sleep = (0.5 * 2f64.powi(retry as i32)).min(8.0);
                Duration::from_secs_f64(sleep * (1.0 - 0.25 * rng.random::<f64>()))
            },
        }
    }

    /// litellm's retries (`num_retries=2`): `min(0.5 s · 2^n, 8 s) + uniform(0, 0.75 s)`, or an
    /// integer `Retry-After` over 0 and at most 60 s; the same statuses as openai-python.
    fn litellm() -> Self {
        Schedule {
            attempts: 3,
            timeout: OPENAI_TIMEOUT,
            retry_on: openai_retryable,
            wait: |retry, headers, rng| {
                let integer = headers
                    .and_then(|h| h.get(http::header::RETRY_AFTER))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(after) = integer.filter(|a| (1..=60).contains(a)) {
                    return Duration::from_secs(after);
                }
                let sleep = (0.5 * 2f64.powi(retry as i32)).min(8.0);
                Duration::from_secs_f64(sleep + 0.75 * rng.random::<f64>())
            },
        }
    }
}

/// The longest `Retry-After` openai-python and litellm follow.
const MAX_AFTER: Duration = Duration::from_secs(60);

fn openai_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// openai-python's reading of the headers: `retry-after-ms`, then `Retry-After` as a float or
/// an HTTP date.
fn openai_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A Python-style retry loop over the server.
fn scheduled<S: Server>(
    server: S,
    schedule: Schedule,
    seed: u64,
) -> Arc<dyn Fn(Req) -> Call + Send + Sync> {
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    Arc::new(move |req: Req| {
        let (server, rng) = (server.clone(), rng.clone());
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            for attempt in 0..schedule.attempts {
                let request = Request::from_parts(parts.clone(), Full::new(bytes.clone()));
                let once = async {
                    match server.clone().oneshot(request).await {
                        Err(_) => Attempt::Connection,
                        Ok(response) if response.status().is_success() => {
                            match read(response).await {
                                Outcome::Failed => Attempt::Connection,
                                answered => Attempt::Answered(answered),
                            }
                        }
                        Ok(response) => {
                            Attempt::Status(response.status(), response.headers().clone())
                        }
                    }
                };
                let result = tokio::time::timeout(schedule.timeout, once)
                    .await
                    .unwrap_or(Attempt::Connection);
                let headers = match &result {
                    Attempt::Answered(outcome) => return *outcome,
                    Attempt::Status(status, _) if !(schedule.retry_on)(*status) => {
                        return Outcome::Failed;
                    }
                    Attempt::Status(_, headers) => Some(headers),
                    Attempt::Connection if schedule.attempts == 1 => return Outcome::Failed,
                    Attempt::Connection => None,
                };
                if attempt + 1 == schedule.attempts {
                    break;
                }
                let wait = (schedule.wait)(attempt, headers, &mut rng.lock().unwrap());
                tokio::time::sleep(wait).await;
            }
            Outcome::Failed
        })
    })
}
