//! How much load retries add during a total outage: attempts per logical request.
//!
//! `cargo run --release --example outage_amplification`
//!
//! A server that answers 503 to everything; `N` concurrent callers, each making one logical
//! request through `RetryWithJitter`. Simulated in paused tokio time, so minutes of backoff take
//! milliseconds and the numbers are the same on every run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use tower_dashscope::RetryWithJitter;

async fn attempts_per_request(layer: RetryWithJitter, requests: u64) -> f64 {
    let attempts = Arc::new(AtomicU64::new(0));
    let counter = attempts.clone();
    let down = service_fn(move |_req: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::Relaxed);
        async {
            let mut response = Response::new(Full::<Bytes>::default());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let service = layer.layer(down);
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(Request::new(Full::default())).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    attempts.load(Ordering::Relaxed) as f64 / requests as f64
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    println!("total outage, every response 503; attempts per logical request:");
    println!(
        "{:>10}  {:>26}  {:>26}",
        "requests", "RetryWithJitter (budget)", "max-attempts only (6)"
    );
    for requests in [10, 100, 1_000, 10_000] {
        let budgeted = attempts_per_request(RetryWithJitter::new().seed(1), requests).await;
        let unbounded =
            attempts_per_request(RetryWithJitter::new().seed(1).without_budget(), requests).await;
        println!("{requests:>10}  {budgeted:>26.2}  {unbounded:>26.2}");
    }
}
