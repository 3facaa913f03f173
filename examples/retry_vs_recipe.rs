//! calibration draft
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_dashscope::RetryWithJitter;
use tower_dashscope::mock::{MockDashScope, ModelConfig};

const REQUESTS: u32 = 300;

fn chat() -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[{"role":"user","content":"Hello"}]}"#,
        )))
        .unwrap()
}

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

async fn arrive<F, Fut>(one: F) -> u32
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        tokio::time::sleep_until(start + Duration::from_millis(100) * i).await;
        tasks.push(tokio::spawn(one()));
    }
    let mut done = 0;
    for t in tasks {
        if t.await.unwrap() {
            done += 1;
        }
    }
    done
}

async fn recipe(seed: u64) -> Outcome {
    let mock = simulator();
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    let completed = arrive(|| {
        let mock = mock.clone();
        let rng = rng.clone();
        async move {
            for attempt in 1..=6u32 {
                let r = mock.clone().oneshot(chat()).await.unwrap();
                if r.status() == StatusCode::OK {
                    return true;
                }
                if attempt == 6 {
                    return false;
                }
                let high = 2f64.powi(attempt as i32 - 1).clamp(1.0, 60.0);
                let wait = rng.lock().unwrap().random_range(1.0..=high);
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            false
        }
    })
    .await;
    let s = mock.stats();
    Outcome {
        completed,
        attempts: s.total().requests,
        throttled: s.throttled(),
    }
}

async fn layer(retry: RetryWithJitter) -> Outcome {
    let mock = simulator();
    let service = retry.layer(mock.clone());
    let completed = arrive(|| {
        let service = service.clone();
        async move {
            service
                .oneshot(chat())
                .await
                .map(|r| r.status() == StatusCode::OK)
                .unwrap_or(false)
        }
    })
    .await;
    let s = mock.stats();
    Outcome {
        completed,
        attempts: s.total().requests,
        throttled: s.throttled(),
    }
}

fn print(name: &str, o: Outcome) {
    println!(
        "{name:<40} {:>4} / {REQUESTS}  {:>5.2} attempts/request  {:>5} 429s",
        o.completed,
        o.attempts as f64 / f64::from(REQUESTS),
        o.throttled
    );
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    for seed in 1..=5 {
        print("recipe", recipe(seed).await);
        print(
            "RetryWithJitter",
            layer(RetryWithJitter::new().seed(seed)).await,
        );
        print(
            "RetryWithJitter without budget",
            layer(RetryWithJitter::new().seed(seed).without_budget()).await,
        );
    }
}
