//! An open-loop workload: requests arrive on a fixed schedule whether or not earlier ones
//! have been answered, as traffic from many independent users does. Shared by the examples and
//! tests with `#[path]`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Starts `one()` every `gap`, `count` times, each on a task of its own, and counts the calls
/// that returned `true` once all have ended.
pub async fn open_loop<F, Fut>(count: u32, gap: Duration, one: F) -> u32
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + gap * i).await;
        tasks.push(tokio::spawn(one()));
    }
    let mut completed = 0;
    for task in tasks {
        completed += u32::from(task.await.expect("a request task panicked"));
    }
    completed
}
