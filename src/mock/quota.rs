//! Per-model requests- and tokens-per-minute quotas, enforced per second.

use tokio::time::Instant;

use super::model::ModelConfig;

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
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Quotas {
    pub(super) fn new(config: &ModelConfig, now: Instant) -> Self {
        Quotas {
            requests: config.rpm.map(|rpm| Bucket::per_minute(rpm, now)),
            tokens: config.tpm.map(|tpm| Bucket::per_minute(tpm, now)),
        }
    }

    /// Whether one request of `tokens` tokens fits now; nothing is taken.
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
