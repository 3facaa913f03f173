//! The retry budget: retries may add a fixed share of the requests made recently.

use std::sync::Mutex;

use tokio::time::Instant;

/// How long a request counts towards the budget.
const WINDOW_SECS: usize = 10;

/// Budget amounts are counted in thousandths of a retry, so that any ratio with three decimals
/// is exact (tower's `TpsBudget` rounds `1 / ratio` down to a whole number: 0.4 becomes 50%).
const MILLI: i64 = 1000;

/// A sliding ten-second window of one-second slots. Every request deposits `ratio` of a retry;
/// every retry withdraws one; `min_per_sec` retries per second are always available, so a lone
/// request still gets its retries. Time is `tokio::time`, so paused tests drive it.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Thousandths of a retry deposited per request.
    deposit: i64,
    /// Thousandths of a retry always available over the window.
    reserve: i64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// The balance deposited minus withdrawn in each of the last seconds, in thousandths.
    slots: [i64; WINDOW_SECS],
    /// The second `slots` were last rotated to, counted from `start`.
    second: u64,
    start: Instant,
}

impl RetryBudget {
    /// `ratio` must be finite and in `0.0..=1000.0` (the caller clamps it).
    pub(crate) fn new(min_per_sec: u32, ratio: f32) -> Self {
        RetryBudget {
            deposit: (f64::from(ratio) * MILLI as f64).round() as i64,
            reserve: i64::from(min_per_sec) * WINDOW_SECS as i64 * MILLI,
            window: Mutex::new(Window {
                slots: [0; WINDOW_SECS],
                second: 0,
                start: Instant::now(),
            }),
        }
    }

    /// A request was made.
    pub(crate) fn deposit(&self) {
        let mut window = self.lock();
        let current = window.rotate(Instant::now());
        window.slots[current] = window.slots[current].saturating_add(self.deposit);
    }

    /// Takes one retry if the budget has one.
    pub(crate) fn withdraw(&self) -> bool {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The window holds plain numbers: a panic elsewhere cannot leave it invalid.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Window {
    /// Moves the window to `now`, clearing the seconds that fell out of it; the index of the
    /// current slot.
    fn rotate(&mut self, now: Instant) -> usize {
        let second = now.saturating_duration_since(self.start).as_secs();
        let passed = second.saturating_sub(self.second);
        if passed > 0 {
            for s in 1..=passed.min(WINDOW_SECS as u64) {
                self.slots[((self.second + s) % WINDOW_SECS as u64) as usize] = 0;
            }
            self.second = second;
        }
        (self.second % WINDOW_SECS as u64) as usize
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
