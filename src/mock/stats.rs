//! What the simulator has seen: per model, in total and second by second.

use std::collections::BTreeMap;

/// How many whole seconds of [`ModelStats::timeline`] the simulator keeps per model: the last
/// hour, counted back from the latest second recorded. Older seconds are dropped, so a
/// long-running simulator's memory stays bounded.
pub const TIMELINE_SECONDS: usize = 3600;

/// What the simulator has seen so far; [`MockDashScope::stats`](super::MockDashScope::stats).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MockStats {
    /// Requests received, all of them (bad input and unknown models included).
    pub requests: u64,
    /// Requests being answered now: admitted, and their response body not yet finished or
    /// dropped.
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub peak_in_flight: u64,
    /// Per model, for requests that named a configured model.
    pub models: BTreeMap<String, ModelStats>,
}

impl MockStats {
    /// The statistics of one model.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelStats> {
        self.models.get(name)
    }

    /// 429s sent, all models and kinds.
    #[must_use]
    pub fn throttled(&self) -> u64 {
        self.models.values().map(|m| m.total.throttled()).sum()
    }

    /// The counts of all models added up.
    #[must_use]
    pub fn total(&self) -> Counts {
        self.models
            .values()
            .fold(Counts::default(), |sum, m| sum + m.total)
    }
}

/// What the simulator has seen for one model: totals, and the same counts second by second.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ModelStats {
    /// Everything since the simulator was built.
    pub total: Counts,
    /// The counts of each whole second since the simulator was built (the key; second `0` is
    /// the first), for the last [`TIMELINE_SECONDS`] seconds. Seconds without requests are
    /// absent.
    pub timeline: BTreeMap<u64, Counts>,
}

impl ModelStats {
    /// Tokens (input + output) counted against the quota in each second of the timeline.
    pub fn tokens_per_second(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.timeline.iter().map(|(&second, c)| (second, c.tokens))
    }

    pub(super) fn record(&mut self, second: u64, count: impl Fn(&mut Counts)) {
        count(&mut self.total);
        count(self.timeline.entry(second).or_default());
        let oldest = second.saturating_sub(TIMELINE_SECONDS as u64 - 1);
        while self
            .timeline
            .first_key_value()
            .is_some_and(|(&s, _)| s < oldest)
        {
            self.timeline.pop_first();
        }
    }
}

/// What happened to one model's requests, over the simulator's life ([`ModelStats::total`]) or
/// in one second ([`ModelStats::timeline`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Counts {
    /// Requests for this model. A caller that gives up on a request while it is queued leaves
    /// it counted here and as [`queued`](Self::queued), with no outcome.
    pub requests: u64,
    /// Requests admitted: charged to the quotas and answered (or being answered) successfully.
    /// As DashScope bills them, they count even if the caller goes away before the answer
    /// ends.
    pub succeeded: u64,
    /// 429 `Throttling.RateQuota` / `limit_requests`.
    pub throttled_requests: u64,
    /// 429 `Throttling.AllocationQuota` / `insufficient_quota`.
    pub throttled_tokens: u64,
    /// 429 `Throttling.BurstRate` / `limit_burst_rate`.
    pub throttled_burst: u64,
    /// Requests queued by `X-DashScope-Wait-Timeout` instead of throttled (a request queued
    /// and then admitted also counts as a request and a success).
    pub queued: u64,
    /// Other failures: outages, 500s, resets, moderation, context overflow, exhausted quota.
    pub failed: u64,
    /// Tokens (input + output) of the admitted requests, in the second the quota counted them:
    /// with [`OutputCharge::WhenGenerated`](crate::mock::OutputCharge::WhenGenerated) (the
    /// default), the input in the second of admission and the output in the second its answer
    /// was generated.
    pub tokens: u64,
}

impl Counts {
    /// 429s of every kind.
    #[must_use]
    pub fn throttled(&self) -> u64 {
        self.throttled_requests + self.throttled_tokens + self.throttled_burst
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts {
            requests: self.requests + other.requests,
            succeeded: self.succeeded + other.succeeded,
            throttled_requests: self.throttled_requests + other.throttled_requests,
            throttled_tokens: self.throttled_tokens + other.throttled_tokens,
            throttled_burst: self.throttled_burst + other.throttled_burst,
            queued: self.queued + other.queued,
            failed: self.failed + other.failed,
            tokens: self.tokens + other.tokens,
        }
    }
}
