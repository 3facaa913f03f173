//! N replicas' `TokenBudget`s sharing one quota through Redis: the rate the fleet admits, and
//! what one admission costs.
//!
//! ```text
//! cargo run --release --features redis --example redis_fleet      # REDIS_URL overrides
//! ```
//!
//! Each replica is a `TokenBudget` with its own `RedisStore` (its own connection) and the same
//! prefix, in front of one `MockDashScope` that enforces the same quota (100 requests a
//! second) and records when requests arrive. Every replica keeps 32 requests waiting at all
//! times for 4 s; the admitted rate is measured in seconds 1 to 4 (after the first window's
//! burst), with the 429s the simulator sent. N local budgets would admit N times the quota.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_dashscope::budget::{Admission, BudgetKey, BudgetStore, Limits, RedisStore, StoreFuture};
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::{BoxError, Quota, TokenBudget};

const RPM: u32 = 6_000; // 100 requests a second between all replicas

fn chat() -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","max_tokens":1,"messages":[{"role":"user","content":"abc"}]}"#,
        )))
        .unwrap()
}

fn prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("redis_fleet:{name}:{}-{nanos}", std::process::id())
}

/// The simulator with the fleet's quota, recording when each request reached it.
fn simulator(
    arrivals: Arc<Mutex<Vec<Instant>>>,
) -> (
    MockDashScope,
    impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<tower_dashscope::mock::MockBody>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send,
) {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new().rpm(RPM).tpm(100_000_000))
        .build();
    let inner = mock.clone();
    let service = tower::ServiceBuilder::new()
        .map_request(move |req: Request<Full<Bytes>>| {
            arrivals.lock().unwrap().push(Instant::now());
            req
        })
        .service(inner)
        .map_err(BoxError::from);
    (mock, service)
}

async fn fleet(url: &str, replicas: usize) -> (f64, u64) {
    let prefix = prefix(&format!("n{replicas}"));
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (mock, server) = simulator(arrivals.clone());
    let start = Instant::now();
    let end = start + Duration::from_secs(4);
    let mut workers = Vec::new();
    for _ in 0..replicas {
        let store = RedisStore::new(url)
            .expect("REDIS_URL is a Redis URL")
            .prefix(prefix.clone());
        let budget = TokenBudget::new(Quota::per_minute(RPM, 0))
            .adaptive(false)
            .store(store);
        let service = budget.layer(server.clone());
        for _ in 0..32 {
            let service = service.clone();
            workers.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let call = service.clone().oneshot(chat());
                    // A request still waiting at the end is cancelled.
                    let left = end.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, call).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    let steady = arrivals
        .iter()
        .filter(|t| t.duration_since(start) >= Duration::from_secs(1))
        .count();
    (steady as f64 / 3.0, mock.stats().throttled())
}

async fn admission_cost(url: &str) -> (Duration, Duration, Duration) {
    let store = RedisStore::new(url).unwrap().prefix(prefix("cost"));
    let key = BudgetKey::new(None, "qwen-plus");
    let limits = Limits {
        requests: u64::MAX - 1,
        tokens: 1 << 52,
        window: Duration::from_secs(1),
    };
    let mut samples = Vec::new();
    for i in 0..5_100 {
        let started = Instant::now();
        let answer = match store.try_take(&key, limits, 1_000) {
            StoreFuture::Pending(answer) => answer.await,
            StoreFuture::Ready(answer) => answer.unwrap(),
        };
        let took = started.elapsed();
        assert!(matches!(answer, Ok(Admission::Taken(_))), "{answer:?}");
        if i >= 100 {
            samples.push(took);
        }
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    (median, p99, mean)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let quota = f64::from(RPM) / 60.0;
    println!("quota: {quota:.0} requests/s shared by the fleet (Redis at {url})");
    println!("replicas  admitted/s  vs quota  simulator 429s  (N local budgets: N x quota)");
    for replicas in [1, 4, 16] {
        let (rate, throttled) = fleet(&url, replicas).await;
        println!(
            "{replicas:>8}  {rate:>10.1}  {:>+7.1}%  {throttled:>14}",
            (rate / quota - 1.0) * 100.0
        );
    }
    let (median, p99, mean) = admission_cost(&url).await;
    println!(
        "one admission through Redis (loopback, sequential, 5,000 samples): median {:.0} us, \
         p99 {:.0} us, mean {:.0} us",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}
