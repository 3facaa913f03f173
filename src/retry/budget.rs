//! The retry budget: retries may add a fixed share of the requests made recently.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::guard::{Ending, Release};

/// A budget of retries shared by every clone of a [`RetryWithJitter`](super::RetryWithJitter)
/// layer: it is told of every request, and asked before every retry that it pays for.
///
/// The built-in one is [`RetryBudget`]; plug another (one shared by a fleet through Redis, one
/// that also counts another layer's requests) with
/// [`budget_with`](super::RetryWithJitter::budget_with). Implementations are called on the
/// request path: keep them fast and never block for long.
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use tower_dashscope::RetryWithJitter;
/// use tower_dashscope::retry::Budget;
///
/// /// At most 100 retries over the life of the process.
/// #[derive(Debug)]
/// struct Hundred(AtomicI64);
///
/// impl Budget for Hundred {
///     fn deposit(&self) {}
///     fn withdraw(&self) -> bool {
///         self.0.fetch_sub(1, Ordering::SeqCst) > 0
///     }
///     fn refund(&self) {
///         self.0.fetch_add(1, Ordering::SeqCst);
///     }
/// }
///
/// let retry = RetryWithJitter::new().budget_with(Hundred(AtomicI64::new(100)));
/// # let _ = retry;
/// ```
pub trait Budget: fmt::Debug + Send + Sync + 'static {
    /// A request was made (called once per call, not per attempt).
    fn deposit(&self);

    /// Takes one retry if the budget has one; `false` means "do not retry".
    fn withdraw(&self) -> bool;

    /// Gives back a retry that was withdrawn but never sent: the caller went away (a timeout
    /// around the call, a dropped future) while the retry was waiting for its backoff or for the
    /// inner service.
    fn refund(&self);
}

impl<B: Budget + ?Sized> Budget for Arc<B> {
    fn deposit(&self) {
        (**self).deposit();
    }

    fn withdraw(&self) -> bool {
        (**self).withdraw()
    }

    fn refund(&self) {
        (**self).refund();
    }
}

impl<B: Budget + ?Sized> Budget for Box<B> {
    fn deposit(&self) {
        (**self).deposit();
    }

    fn withdraw(&self) -> bool {
        (**self).withdraw()
    }

    fn refund(&self) {
        (**self).refund();
    }
}

/// A retry withdrawn from a budget for a retry that has not been sent yet: kept once the retry
/// is sent ([`Ending::Completed`]), refunded if the future is dropped first.
pub(crate) struct Withdrawn(pub(crate) Arc<dyn Budget>);

impl Release for Withdrawn {
    fn release(self, ending: Ending) {
        if ending == Ending::Dropped {
            self.0.refund();
        }
    }
}

/// How long a request counts towards the budget.
pub(crate) const WINDOW_SECS: usize = 10;

/// Budget amounts are counted in thousandths of a retry, so that any ratio with three decimals
/// is exact (tower's `TpsBudget` rounds `1 / ratio` down to a whole number: 0.4 becomes 50%).
const MILLI: i64 = 1000;

/// The built-in [`Budget`]: retries may add `retry_ratio` of the requests made in the last 10
/// seconds, plus `min_per_sec` retries per second so that a lone request still gets its retries.
///
/// A sliding ten-second window of one-second slots: every request deposits `retry_ratio` of a
/// retry, every retry withdraws one, and a refund puts one back. The ratio is exact to a
/// thousandth (tower's `TpsBudget` rounds `1 / ratio` down, so that 0.4 gives 50%). Time is
/// `tokio::time`, so paused tests drive it.
///
/// ```
/// use std::sync::Arc;
/// use tower_dashscope::RetryWithJitter;
/// use tower_dashscope::retry::RetryBudget;
///
/// // One budget for two differently configured layers.
/// let budget = Arc::new(RetryBudget::new(5, 0.1));
/// let chat = RetryWithJitter::new().budget_with(budget.clone());
/// let embeddings = RetryWithJitter::new().max_attempts(3).budget_with(budget);
/// # let _ = (chat, embeddings);
/// ```
pub struct RetryBudget {
    /// Thousandths of a retry deposited per request.
    deposit: i64,
    /// Thousandths of a retry always available over the window.
    reserve: i64,
    min_per_sec: u32,
    retry_ratio: f32,
    window: Mutex<Seconds<i64>>,
}

/// Ten one-second slots on the tokio clock: the window of the retry budget and of the
/// throttle.
#[derive(Debug)]
pub(crate) struct Seconds<T> {
    /// One amount per second of the window.
    pub(crate) slots: [T; WINDOW_SECS],
    /// The second `slots` were last rotated to, counted from `start`.
    second: u64,
    pub(crate) start: Instant,
}

impl<T: Copy + Default> Seconds<T> {
    pub(crate) fn new() -> Self {
        Seconds {
            slots: [T::default(); WINDOW_SECS],
            second: 0,
            start: Instant::now(),
        }
    }

    /// Moves the window to `now`, clearing the seconds that fell out of it; the index of the
    /// current slot.
    pub(crate) fn rotate(&mut self, now: Instant) -> usize {
        let second = now.saturating_duration_since(self.start).as_secs();
        let passed = second.saturating_sub(self.second);
        if passed > 0 {
            for s in 1..=passed.min(WINDOW_SECS as u64) {
                self.slots[((self.second + s) % WINDOW_SECS as u64) as usize] = T::default();
            }
            self.second = second;
        }
        (self.second % WINDOW_SECS as u64) as usize
    }
}

impl RetryBudget {
    /// `min_per_sec` retries per second plus `retry_ratio` (e.g. `0.2` for 20%) of the requests
    /// of the last 10 seconds. `retry_ratio` is clamped to `0.0 ..= 1000.0` (NaN is `0.0`).
    ///
    /// Its clock is `tokio::time`: call it inside a runtime (or with time paused, in tests).
    #[must_use]
    pub fn new(min_per_sec: u32, retry_ratio: f32) -> Self {
        // Keep the inputs in the documented range instead of overflowing.
        let retry_ratio = if retry_ratio.is_finite() {
            retry_ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let min_per_sec = min_per_sec.min(i32::MAX as u32 / 10);
        RetryBudget {
            deposit: (f64::from(retry_ratio) * MILLI as f64).round() as i64,
            reserve: i64::from(min_per_sec) * WINDOW_SECS as i64 * MILLI,
            min_per_sec,
            retry_ratio,
            window: Mutex::new(Seconds::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seconds<i64>> {
        // The window holds plain numbers: a panic elsewhere cannot leave it invalid.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, amount: i64) {
        let mut window = self.lock();
        let current = window.rotate(Instant::now());
        window.slots[current] = window.slots[current].saturating_add(amount);
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        self.add(self.deposit);
    }

    fn withdraw(&self) -> bool {
        let mut window = self.lock();
        let current = window.rotate(Instant::now());
        let balance = window
            .slots
            .iter()
            .fold(self.reserve, |sum, &slot| sum.saturating_add(slot));
        if balance < MILLI {
            return false;
        }
        window.slots[current] -= MILLI;
        true
    }

    fn refund(&self) {
        self.add(MILLI);
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("min_per_sec", &self.min_per_sec)
            .field("retry_ratio", &self.retry_ratio)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WINDOW: Duration = Duration::from_secs(WINDOW_SECS as u64);

    /// Retries granted after `requests` requests, asking for as many as it gives.
    fn granted(budget: &RetryBudget, requests: u32) -> u32 {
        for _ in 0..requests {
            budget.deposit();
        }
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
        }
        granted
    }

    #[tokio::test(start_paused = true)]
    async fn ratios_are_exact() {
        for (ratio, expected) in [(0.2, 200), (0.4, 400), (0.3, 300), (0.15, 150), (1.0, 1000)] {
            assert_eq!(
                granted(&RetryBudget::new(0, ratio), 1000),
                expected,
                "{ratio}"
            );
        }
        assert_eq!(granted(&RetryBudget::new(0, 0.0), 1000), 0);
        assert_eq!(granted(&RetryBudget::new(0, 2.5), 10), 25);
    }

    #[tokio::test(start_paused = true)]
    async fn refunds_give_a_retry_back() {
        let budget = RetryBudget::new(0, 1.0);
        budget.deposit();
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        budget.refund();
        assert!(budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserve_is_per_second_over_the_window() {
        let budget = RetryBudget::new(3, 0.0);
        assert_eq!(granted(&budget, 0), 30, "3 per second for 10 s");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(granted(&budget, 0), 0, "withdrawals stay in the window");
        tokio::time::sleep(WINDOW).await;
        assert_eq!(granted(&budget, 0), 30, "and leave it after 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let budget = RetryBudget::new(0, 0.5);
        for _ in 0..100 {
            budget.deposit();
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The first hundred are 10 s old now: only the last ten count.
        assert_eq!(granted(&budget, 0), 5);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(granted(&budget, 0), 0, "a long pause clears everything");
    }
}
