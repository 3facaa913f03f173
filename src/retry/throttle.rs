//! The shared throttle signal: how fast a live, rate-limiting server is taking requests, and how
//! many rate-limited retries are waiting for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::budget::{Seconds, WINDOW_SECS};
use crate::guard::{Ending, Release};

/// Shared by every clone of a layer. Counts successes per second over the last ten seconds (the
/// rate at which the server is taking this client's requests) and the rate-limited retries that
/// are waiting, so that those retries can be spread over the time the server needs to take them
/// all, instead of arriving together and being throttled again.
#[derive(Debug)]
pub(crate) struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Successes in each of the last seconds.
    successes: Seconds<u32>,
    /// Rate-limited retries scheduled and not yet sent (or abandoned).
    waiting: u64,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Throttle {
            state: Mutex::new(State {
                successes: Seconds::new(),
                waiting: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain numbers: a panic elsewhere cannot leave them invalid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt succeeded.
    pub(crate) fn success(&self) {
        let mut state = self.lock();
        let current = state.successes.rotate(Instant::now());
        state.successes.slots[current] = state.successes.slots[current].saturating_add(1);
    }

    /// When the server is live (something succeeded in the last ten seconds): the time it needs
    /// to take every rate-limited retry now waiting, this one included, at the rate it has been
    /// taking requests. Counts this retry as waiting until the returned [`Queued`] is released.
    /// `None` (nothing counted) when nothing succeeded lately: the server may be down, and the
    /// retry budget decides.
    pub(crate) fn enqueue(self: &Arc<Self>) -> Option<(Duration, Queued)> {
        let mut state = self.lock();
        let now = Instant::now();
        state.successes.rotate(now);
        let successes: u64 = state.successes.slots.iter().map(|&s| u64::from(s)).sum();
        if successes == 0 {
            return None;
        }
        // Over the window, or over the throttle's life if that is shorter (at least a second).
        let observed = now.saturating_duration_since(state.successes.start).clamp(
            Duration::from_secs(1),
            Duration::from_secs(WINDOW_SECS as u64),
        );
        state.waiting += 1;
        let spread = observed.mul_f64(state.waiting as f64 / successes as f64);
        Some((spread, Queued(self.clone())))
    }
}

/// A rate-limited retry counted as waiting, until it is sent or abandoned.
pub(crate) struct Queued(Arc<Throttle>);

impl Release for Queued {
    fn release(self, _ending: Ending) {
        let mut state = self.0.lock();
        state.waiting = state.waiting.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spreads_waiting_retries_over_the_observed_throughput() {
        let throttle = Arc::new(Throttle::new());
        assert!(throttle.enqueue().is_none(), "nothing succeeded: not live");
        tokio::time::sleep(Duration::from_secs(10)).await;
        for _ in 0..50 {
            throttle.success(); // 5 per second over the window
        }
        let (first, a) = throttle.enqueue().unwrap();
        assert_eq!(first, Duration::from_millis(200));
        let (second, b) = throttle.enqueue().unwrap();
        assert_eq!(second, Duration::from_millis(400));
        crate::guard::Held::new(a).complete();
        drop(crate::guard::Held::new(b));
        let (again, _c) = throttle.enqueue().unwrap();
        assert_eq!(
            again,
            Duration::from_millis(200),
            "released when sent or dropped"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(throttle.enqueue().is_none(), "successes expire");
    }
}
