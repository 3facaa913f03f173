//! Per-model requests- and tokens-per-minute quotas, enforced per second — by a continuous
//! bucket or by fixed windows ([`Enforcement`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::time::Instant;

use super::model::{Enforcement, ModelConfig};

/// A bucket refilled continuously, holding at most one second's worth: DashScope's per-second
/// enforcement of a per-minute limit.
#[derive(Debug)]
pub(super) struct Bucket {
    per_sec: f64,
    capacity: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn per_minute(per_minute: u32, now: Instant) -> Self {
        let per_sec = f64::from(per_minute) / 60.0;
        let capacity = per_sec.max(1.0);
        Bucket {
            per_sec,
            capacity,
            level: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.capacity);
        self.at = now;
    }

    /// Whether `amount` may be taken now: there is that much — or the bucket is full, so that a
    /// request larger than one second's worth can ever pass.
    fn has(&mut self, amount: f64, now: Instant) -> bool {
        self.refill(now);
        self.level >= amount || self.level >= self.capacity
    }

    fn take(&mut self, amount: f64) {
        self.level -= amount;
    }

    /// Takes `amount` as of `at` (not before the last time seen): the level may go below zero,
    /// a debt the refill pays off before anything else fits.
    fn take_at(&mut self, amount: f64, at: Instant) {
        self.refill(at);
        self.level -= amount;
    }
}

/// Fixed windows: at most `per_minute / 60` in each whole second since the simulator was built
/// (below 60 a minute, one in each window of `60 / per_minute` seconds). Nothing carries over
/// from one window to the next.
#[derive(Debug)]
pub(super) struct Window {
    start: Instant,
    length: Duration,
    allowance: f64,
    index: u64,
    used: f64,
}

impl Window {
    pub(super) fn per_minute(per_minute: u32, start: Instant) -> Self {
        let per_sec = f64::from(per_minute) / 60.0;
        let (length, allowance) = if per_sec >= 1.0 {
            (Duration::from_secs(1), per_sec)
        } else {
            // Zero a minute: no window ever ends, and one request passes.
            let length = Duration::try_from_secs_f64(1.0 / per_sec).unwrap_or(Duration::MAX);
            (length, 1.0)
        };
        Window {
            start,
            length,
            allowance,
            index: 0,
            used: 0.0,
        }
    }

    /// Whether `amount` fits in the window `now` falls in: the window has that much left — or
    /// is untouched, so that a request larger than a whole window can ever pass.
    fn has(&mut self, amount: f64, now: Instant) -> bool {
        self.roll(now);
        self.used + amount <= self.allowance || self.used == 0.0
    }

    /// Moves to the window `now` falls in.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        let index = (elapsed.as_nanos() / self.length.as_nanos().max(1)) as u64;
        if index != self.index {
            self.index = index;
            self.used = 0.0;
        }
    }

    fn take(&mut self, amount: f64) {
        self.used += amount;
    }

    /// Counts `amount` in the window `at` falls in (not before the last time seen), even past
    /// its allowance; the next window starts empty all the same.
    fn take_at(&mut self, amount: f64, at: Instant) {
        self.roll(at);
        self.used += amount;
    }
}

/// One per-minute limit, enforced as configured.
#[derive(Debug)]
enum Limit {
    Continuous(Bucket),
    Window(Window),
}

impl Limit {
    fn new(per_minute: u32, enforcement: Enforcement, start: Instant) -> Self {
        match enforcement {
            Enforcement::FixedWindow => Limit::Window(Window::per_minute(per_minute, start)),
            _ => Limit::Continuous(Bucket::per_minute(per_minute, start)),
        }
    }

    fn has(&mut self, amount: f64, now: Instant) -> bool {
        match self {
            Limit::Continuous(bucket) => bucket.has(amount, now),
            Limit::Window(window) => window.has(amount, now),
        }
    }

    fn take(&mut self, amount: f64) {
        match self {
            Limit::Continuous(bucket) => bucket.take(amount),
            Limit::Window(window) => window.take(amount),
        }
    }

    fn take_at(&mut self, amount: f64, at: Instant) {
        match self {
            Limit::Continuous(bucket) => bucket.take_at(amount, at),
            Limit::Window(window) => window.take_at(amount, at),
        }
    }
}

/// Which quota a request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Over {
    Requests,
    Tokens,
}

/// One model's quotas.
#[derive(Debug)]
pub(super) struct Quotas {
    requests: Option<Limit>,
    tokens: Option<Limit>,
    /// Output tokens to count when they have been generated: (when, tokens), soonest first.
    /// One entry per answer still being generated, so bounded by the answers in flight.
    later: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Quotas {
    /// `now`: when the simulator was built (fixed windows start there).
    pub(super) fn new(config: &ModelConfig, now: Instant) -> Self {
        Quotas {
            requests: config
                .rpm
                .map(|rpm| Limit::new(rpm, config.enforcement, now)),
            tokens: config
                .tpm
                .map(|tpm| Limit::new(tpm, config.enforcement, now)),
            later: BinaryHeap::new(),
        }
    }

    /// Counts the output generated by `now`, in the order it was generated, telling `counted`
    /// each amount and when it was generated.
    pub(super) fn count_generated(&mut self, now: Instant, mut counted: impl FnMut(Instant, u64)) {
        while let Some(&Reverse((at, tokens))) = self.later.peek() {
            if at > now {
                break;
            }
            self.later.pop();
            if let Some(limit) = &mut self.tokens {
                limit.take_at(tokens as f64, at);
            }
            counted(at, tokens);
        }
    }

    /// Counts `tokens` of output at `at`, when they will have been generated
    /// ([`OutputCharge::WhenGenerated`](crate::budget::OutputCharge::WhenGenerated)).
    pub(super) fn charge_when_generated(&mut self, tokens: u64, at: Instant) {
        // Kept without a token quota too: the statistics count it when it is generated.
        if tokens > 0 {
            self.later.push(Reverse((at, tokens)));
        }
    }

    /// Whether one request of `tokens` tokens fits now; nothing is taken.
    /// Output still to be counted ([`count_generated`](Self::count_generated)) must have been
    /// counted up to `now` first.
    pub(super) fn check(&mut self, now: Instant, tokens: f64) -> Result<(), Over> {
        if let Some(bucket) = &mut self.requests {
            if !bucket.has(1.0, now) {
                return Err(Over::Requests);
            }
        }
        if let Some(bucket) = &mut self.tokens {
            if !bucket.has(tokens, now) {
                return Err(Over::Tokens);
            }
        }
        Ok(())
    }

    /// Charges an admitted request of `tokens` tokens (after [`check`](Self::check)).
    pub(super) fn charge(&mut self, tokens: f64) {
        if let Some(bucket) = &mut self.requests {
            bucket.take(1.0);
        }
        if let Some(bucket) = &mut self.tokens {
            bucket.take(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_do_not_carry_over() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // 120 a minute: two in each whole second.
        let mut window = Window::per_minute(120, start);
        for ms in [0, 400] {
            assert!(window.has(1.0, at(ms)));
            window.take(1.0);
        }
        assert!(!window.has(1.0, at(999)));
        assert!(window.has(1.0, at(1000)));
        // 30 a minute: one in each two seconds.
        let mut slow = Window::per_minute(30, start);
        assert!(slow.has(1.0, at(0)));
        slow.take(1.0);
        assert!(!slow.has(1.0, at(1500)));
        assert!(slow.has(1.0, at(2000)));
        // A request larger than a window passes in an empty one.
        let mut tokens = Window::per_minute(600, start);
        assert!(tokens.has(50.0, at(0)));
        tokens.take(50.0);
        assert!(!tokens.has(1.0, at(10)));
        // Zero a minute: one, ever.
        let mut none = Window::per_minute(0, start);
        assert!(none.has(1.0, at(0)));
        none.take(1.0);
        assert!(!none.has(1.0, at(3_600_000)));
    }
}
