//! `RetryWithJitter` alone against Alibaba's retry recipe, on a live server that rate-limits.
//!
//! `cargo run --release --example retry_vs_recipe`
//!
//! The simulator serves `qwen-plus` at 300 requests per minute (5 per second, enforced per
//! second), each answer taking 2.7 s; 300 requests arrive at 10 per second, twice what the
//! quota takes. Each request is made either
//!
//! - with **Alibaba's recipe**: openai-python (its own retries off) wrapped in tenacity's
//!   `@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`: up to 6
//!   attempts, the wait after attempt `n` drawn from `uniform(1, clamp(2^(n-1), 1, 60))` s;
//! - or through **`RetryWithJitter::new()`**, its defaults, nothing else in the stack.
//!
//! In-process, in paused tokio time with seeded jitter: about a minute of traffic runs in well
//! under a second and prints the same numbers every time. For each strategy and seed: requests
//! completed, attempts per request, and 429s the server sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tower::{Layer, ServiceExt};
use tower_dashscope::RetryWithJitter;
use tower_dashscope::mock::{MockDashScope, ModelConfig};

#[path = "support/open_loop.rs"]
mod open_loop;
#[path = "support/tenacity.rs"]
mod tenacity;
const REQUESTS: u32 = 300;
const ARRIVAL_GAP: Duration = Duration::from_millis(100);

fn chat() -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[{"role":"user","content":"Hello"}]}"#,
        )))
        .unwrap()
}

/// `qwen-plus` at 300 RPM; 0.7 s to the first token and 16 tokens at 8 per second: 2.7 s.
fn simulator() -> MockDashScope {
    MockDashScope::builder()
        .model(
            "qwen-plus",
            ModelConfig::new()
                .rpm(300)
                .latency(Duration::from_millis(700), 8.0),
        )
        .build()
}

struct Outcome {
    completed: u32,
    attempts: u64,
    throttled: u64,
}

/// Starts one request every `ARRIVAL_GAP`, each with `one`, and counts what it saw.
async fn arrive<F, Fut>(mock: &MockDashScope, one: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let completed = open_loop::open_loop(REQUESTS, ARRIVAL_GAP, one).await;
    let stats = mock.stats();
    Outcome {
        completed,
        attempts: stats.total().requests,
        throttled: stats.throttled(),
    }
}

/// tenacity's `wait_random_exponential(min=1, max=60)` with `stop_after_attempt(6)`.
async fn recipe(seed: u64) -> Outcome {
    let mock = simulator();
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    arrive(&mock, || {
        let (mock, rng) = (mock.clone(), rng.clone());
        async move {
            for attempt in 1..=tenacity::ATTEMPTS {
                let response = mock.clone().oneshot(chat()).await.unwrap();
                if response.status().is_success() {
                    return true;
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

async fn retry_with_jitter(layer: RetryWithJitter) -> Outcome {
    let mock = simulator();
    let service = layer.layer(mock.clone());
    arrive(&mock, || {
        let service = service.clone();
        async move {
            let response = service.oneshot(chat()).await;
            response.is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

fn print(name: &str, seed: u64, outcome: &Outcome) {
    println!(
        "{name:<32} {seed:>4}  {:>5} of {REQUESTS}  {:>18.2}  {:>6}",
        outcome.completed,
        outcome.attempts as f64 / f64::from(REQUESTS),
        outcome.throttled,
    );
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    println!(
        "qwen-plus at 300 RPM, answers in 2.7 s; {REQUESTS} requests arriving at 10 per second"
    );
    println!(
        "{:<32} {:>4}  {:>12}  {:>18}  {:>6}",
        "strategy", "seed", "completed", "attempts/request", "429s"
    );
    let mut totals = [(0u32, 0u64); 2];
    for seed in 1..=5 {
        let baseline = recipe(seed).await;
        let ours = retry_with_jitter(RetryWithJitter::new().seed(seed)).await;
        print("recipe (tenacity, 6 attempts)", seed, &baseline);
        print("RetryWithJitter::new()", seed, &ours);
        for (total, outcome) in totals.iter_mut().zip([&baseline, &ours]) {
            total.0 += outcome.completed;
            total.1 += outcome.attempts;
        }
    }
    let runs = 5.0 * f64::from(REQUESTS);
    println!(
        "mean over 5 seeds: recipe {:.1} of {REQUESTS} at {:.2} attempts/request; \
         RetryWithJitter {:.1} of {REQUESTS} at {:.2} attempts/request",
        f64::from(totals[0].0) / 5.0,
        totals[0].1 as f64 / runs,
        f64::from(totals[1].0) / 5.0,
        totals[1].1 as f64 / runs,
    );
}
