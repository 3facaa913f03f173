//! Alibaba's retry recipe, as every comparison in this crate models it: openai-python (its own
//! retries off) in tenacity's
//! `@retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))`.
//! Shared by the examples and tests with `#[path]`, so the baseline is defined once.

use std::time::Duration;

use rand::Rng;

/// `stop_after_attempt(6)`: attempts in all, the first included.
pub const ATTEMPTS: u32 = 6;

/// tenacity's `wait_random_exponential(min=1, max=60)` after failed attempt `attempt`
/// (1-based): `uniform(1, clamp(2^(attempt - 1), 1, 60))` seconds. It knows nothing of
/// `Retry-After`.
pub fn wait(attempt: u32, rng: &mut impl Rng) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let high = 2f64.powi(exponent).clamp(1.0, 60.0);
    Duration::from_secs_f64(rng.random_range(1.0..=high))
}
