//! Per-model configuration of the simulator: quotas, context window, latency and faults.

use std::ops::Range;
use std::time::Duration;

use super::fault::Fault;
use crate::budget::OutputCharge;

/// The largest [`ModelConfig::max_output_tokens`]: about 7 MB of simulated text per answer.
pub const MAX_OUTPUT_TOKENS: u32 = 1 << 20;

/// What the simulator does for one model. Every setting is optional; see [`ModelConfig::new`].
///
/// ```
/// use std::time::Duration;
/// use tower_dashscope::mock::ModelConfig;
///
/// let qwen_plus = ModelConfig::new()
///     .rpm(600)
///     .tpm(100_000)
///     .context_window(129_024)
///     .latency(Duration::from_millis(300), 50.0)
///     .outage(Duration::from_secs(10)..Duration::from_secs(20));
/// # let _ = qwen_plus;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ModelConfig {
    pub(crate) rpm: Option<u32>,
    pub(crate) tpm: Option<u32>,
    pub(crate) burst: Option<u32>,
    pub(crate) context_window: u32,
    pub(crate) max_output_tokens: u32,
    pub(crate) ttft: Duration,
    pub(crate) tokens_per_sec: f64,
    pub(crate) outages: Vec<Range<Duration>>,
    pub(crate) error_rate: f64,
    pub(crate) reset_rate: f64,
    pub(crate) cut_streams_after: Option<u32>,
    pub(crate) moderation_marker: Option<String>,
    pub(crate) exhausted: Option<Exhausted>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) enforcement: Enforcement,
    pub(crate) output_length: OutputLength,
    pub(crate) output_charge: OutputCharge,
    pub(crate) faults: Vec<(Fault, f64)>,
}

/// How long the simulated answers are, within each request's limit (its `max_tokens`, or 16
/// when it sets none).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum OutputLength {
    /// Every answer uses its whole limit: quota arithmetic in tests stays exact.
    #[default]
    Limit,
    /// Each answer's length is drawn from the simulator's seeded generator
    /// ([`MockBuilder::seed`](super::MockBuilder::seed)), uniformly between `min_fraction` of
    /// the limit (rounded up, at least one token) and the limit — as real answers stop before
    /// their limit. `min_fraction` is clamped to `0.0..=1.0`. Usage and the tokens-per-minute
    /// quota count what was produced, not the limit.
    Uniform {
        /// The shortest answer, as a share of the limit.
        min_fraction: f64,
    },
}

impl OutputLength {
    /// The length of one answer whose limit is `limit`, drawing from `rng` if needed.
    pub(crate) fn draw(self, limit: u32, rng: &mut impl rand::Rng) -> u32 {
        match self {
            OutputLength::Uniform { min_fraction } if limit > 1 => {
                let fraction = clamp_rate(min_fraction);
                let min = ((f64::from(limit) * fraction).ceil() as u32).clamp(1, limit);
                rng.random_range(min..=limit)
            }
            _ => limit,
        }
    }
}

/// How the per-minute quotas ([`ModelConfig::rpm`], [`ModelConfig::tpm`]) are enforced per
/// second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Enforcement {
    /// A bucket refilled continuously at `limit / 60` a second, holding at most one second's
    /// worth (at least one request): a client that spaces its requests evenly passes, whatever
    /// their phase against the clock.
    #[default]
    Continuous,
    /// Strict fixed windows: at most `limit / 60` (rounded down) in each whole second since the
    /// simulator was built, nothing carried over — below 60 a minute, one in each window of
    /// `60 / limit` seconds. Three requests 490 ms apart at 120 RPM pass a continuous bucket, but
    /// the third falls in the same second as the first two here and gets a 429.
    FixedWindow,
}

/// Why a model's quota is gone for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exhausted {
    /// The free quota is used up and the model is not bought: 403
    /// `AllocationQuota.FreeTierOnly`.
    FreeTier,
    /// The account is overdue: 400 `Arrearage`.
    Billing,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::new()
    }
}

impl ModelConfig {
    /// No quota, a 128 Ki-token context window, at most 16,384 output tokens, no latency, no
    /// faults.
    pub fn new() -> Self {
        ModelConfig {
            rpm: None,
            tpm: None,
            burst: None,
            context_window: 131_072,
            max_output_tokens: 16_384,
            ttft: Duration::ZERO,
            tokens_per_sec: 0.0,
            outages: Vec::new(),
            error_rate: 0.0,
            reset_rate: 0.0,
            cut_streams_after: None,
            moderation_marker: None,
            exhausted: None,
            retry_after: None,
            enforcement: Enforcement::Continuous,
            output_length: OutputLength::Limit,
            output_charge: OutputCharge::WhenGenerated,
            faults: Vec::new(),
        }
    }

    /// Requests per minute, enforced per second as DashScope does — by default a bucket refilled
    /// at `rpm / 60` requests per second holding at most one second's worth (at least one
    /// request); see [`enforcement`](Self::enforcement) for strict fixed windows. Over it: 429
    /// `Throttling.RateQuota` / `limit_requests`.
    pub fn rpm(mut self, rpm: u32) -> Self {
        self.rpm = Some(rpm);
        self
    }

    /// Tokens per minute (input + output), enforced per second like [`rpm`](Self::rpm). Over it:
    /// 429 `Throttling.AllocationQuota` / `insufficient_quota`. A request larger than one
    /// second's worth is admitted when the bucket is full, as a real server must.
    pub fn tpm(mut self, tpm: u32) -> Self {
        self.tpm = Some(tpm);
        self
    }

    /// The growth-rate ("burst") limit: a request beyond the first `floor` of a second that is
    /// also beyond twice the number admitted in the previous second is answered 429
    /// `Throttling.BurstRate` / `limit_burst_rate` — unless it carries
    /// `X-DashScope-Wait-Timeout`, in which case it is queued (up to that many seconds) until
    /// the next second. After an idle second, `floor` requests pass. `floor` is at least 1.
    pub fn burst_limit(mut self, floor: u32) -> Self {
        self.burst = Some(floor.max(1));
        self
    }

    /// The context window: more input tokens are answered 400 `InvalidParameter` "Range of
    /// input length should be [1, N]".
    pub fn context_window(mut self, tokens: u32) -> Self {
        self.context_window = tokens;
        self
    }

    /// The largest `max_tokens` a request may ask for: `0`, more than this, or anything but a
    /// whole number is answered 400 `InvalidParameter` "Range of max_tokens should be [1, N]",
    /// as DashScope does; a request without `max_tokens` gets 16 output tokens, or this many if
    /// fewer. It bounds what one answer makes the simulator generate, so it is itself at most
    /// [`MAX_OUTPUT_TOKENS`] (and at least 1).
    pub fn max_output_tokens(mut self, tokens: u32) -> Self {
        self.max_output_tokens = tokens.clamp(1, MAX_OUTPUT_TOKENS);
        self
    }

    /// Time to first token, and output tokens per second (`0` for instant output).
    pub fn latency(mut self, time_to_first_token: Duration, tokens_per_sec: f64) -> Self {
        self.ttft = time_to_first_token;
        self.tokens_per_sec = if tokens_per_sec.is_finite() {
            tokens_per_sec.max(0.0)
        } else {
            0.0
        };
        self
    }

    /// An outage, from and to these offsets after the simulator was built: 503
    /// `ModelUnavailable`. May be called several times.
    pub fn outage(mut self, window: Range<Duration>) -> Self {
        self.outages.push(window);
        self
    }

    /// The share of admitted requests answered 500 `InternalError` (drawn from the seeded
    /// generator; clamped to `0.0..=1.0`).
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = clamp_rate(rate);
        self
    }

    /// The share of requests whose connection is reset without an answer (HTTP mode: the
    /// connection is closed; in-process: the call fails with a `ConnectionReset` IO error).
    pub fn reset_rate(mut self, rate: f64) -> Self {
        self.reset_rate = clamp_rate(rate);
        self
    }

    /// Streams stop after this many output tokens, without a final `finish_reason` or
    /// `[DONE]`.
    pub fn cut_streams_after(mut self, tokens: u32) -> Self {
        self.cut_streams_after = Some(tokens);
        self
    }

    /// Input containing `marker` is answered 400 `DataInspectionFailed` /
    /// `data_inspection_failed`.
    pub fn moderation_marker(mut self, marker: impl Into<String>) -> Self {
        self.moderation_marker = Some(marker.into());
        self
    }

    /// Every request fails as the account's quota or balance is gone.
    pub fn exhausted(mut self, why: Exhausted) -> Self {
        self.exhausted = Some(why);
        self
    }

    /// Every request shows `fault` (see [`Fault`]). May be called several times; the first
    /// fault that applies wins.
    pub fn fault(self, fault: Fault) -> Self {
        self.fault_rate(fault, 1.0)
    }

    /// A share of the requests (drawn from the seeded generator; clamped to `0.0..=1.0`) shows
    /// `fault`.
    pub fn fault_rate(mut self, fault: Fault, rate: f64) -> Self {
        self.faults.push((fault, clamp_rate(rate)));
        self
    }

    /// How long answers are within each request's limit.
    ///
    /// # Default
    ///
    /// [`OutputLength::Limit`]: the whole limit.
    pub fn output_length(mut self, length: OutputLength) -> Self {
        self.output_length = length;
        self
    }

    /// When an answer's output counts against [`tpm`](Self::tpm).
    ///
    /// - [`OutputCharge::WhenGenerated`] (the default): the input when the request is
    ///   admitted, which needs room for the input only; the output when the answer has been
    ///   generated (after the time to first token and the tokens at
    ///   [`latency`](Self::latency)'s rate; only what was sent, for a stream that is cut
    ///   or stalls). Answers that finish together can take the model's bucket below zero, and
    ///   nothing is admitted until it has refilled: a real server learns an answer's length by
    ///   writing it.
    /// - [`OutputCharge::OnAdmission`]: the whole answer, input and the output it is going to
    ///   have, when the request is admitted, which needs room for all of it — a server that
    ///   knew each answer's length in advance, the hardest case for a client that does not.
    ///   With [`OutputLength::Uniform`], each attempt draws a new length, so a request
    ///   refused for a long answer may pass later with a shorter one.
    pub fn output_charge(mut self, charge: OutputCharge) -> Self {
        self.output_charge = charge;
        self
    }

    /// How [`rpm`](Self::rpm) and [`tpm`](Self::tpm) are enforced per second.
    ///
    /// # Default
    ///
    /// [`Enforcement::Continuous`].
    pub fn enforcement(mut self, enforcement: Enforcement) -> Self {
        self.enforcement = enforcement;
        self
    }

    /// Adds `Retry-After: <float seconds>` to 429 answers, as a gateway in front of DashScope
    /// would.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}
