//! Coding Plan and Token Plan: hosts of their own, plan-wide windows, and the errors they send
//! (DashScope's texts, exactly).

use std::collections::VecDeque;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::failure::Failure;

/// Limits of a Coding Plan subscription, shared by every model and key on the Coding Plan
/// hosts (`coding.dashscope.aliyuncs.com`, `coding-intl.dashscope.aliyuncs.com`). Every limit
/// is optional; see [`MockBuilder::coding_plan`](super::MockBuilder::coding_plan).
///
/// Requests on these hosts without a `User-Agent` get `405 {"error":"Coding Plan is currently
/// only available for Coding Agents"}`, as DashScope answers clients it does not take for a
/// coding agent.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CodingPlan {
    pub(crate) per_5_hours: Option<u32>,
    pub(crate) per_week: Option<u32>,
    pub(crate) per_month: Option<u32>,
    pub(crate) concurrency: Option<u32>,
    pub(crate) usage_tokens_per_hour: Option<u64>,
}

impl CodingPlan {
    /// No limits.
    pub fn new() -> Self {
        CodingPlan::default()
    }

    /// Requests in any 5 hours (a sliding window); over it: 429 `hour allocated quota
    /// exceeded`.
    pub fn requests_per_5_hours(mut self, requests: u32) -> Self {
        self.per_5_hours = Some(requests);
        self
    }

    /// Requests per week (fixed 7-day windows from when the simulator was built); over it: 429
    /// `week allocated quota exceeded`.
    pub fn requests_per_week(mut self, requests: u32) -> Self {
        self.per_week = Some(requests);
        self
    }

    /// Requests per month (fixed 30-day windows from when the simulator was built); over it:
    /// 429 `month allocated quota exceeded`.
    pub fn requests_per_month(mut self, requests: u32) -> Self {
        self.per_month = Some(requests);
        self
    }

    /// Requests in flight at once; over it: 429 `concurrency allocated quota exceeded. please
    /// try again later.`
    pub fn max_concurrency(mut self, requests: u32) -> Self {
        self.concurrency = Some(requests);
        self
    }

    /// Tokens (input + output) in each whole hour; over it: 429 `usage allocated quota
    /// exceeded. please try again later.` with the lowercase code `throttling`.
    pub fn usage_tokens_per_hour(mut self, tokens: u64) -> Self {
        self.usage_tokens_per_hour = Some(tokens);
        self
    }
}

/// Limits of a Token Plan subscription, shared by every model and key on the Token Plan hosts
/// (`token-plan.{cn-beijing,ap-southeast-1}.maas.aliyuncs.com`); see
/// [`MockBuilder::token_plan`](super::MockBuilder::token_plan).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TokenPlan {
    pub(crate) tokens_per_week: Option<u64>,
}

impl TokenPlan {
    /// No limits.
    pub fn new() -> Self {
        TokenPlan::default()
    }

    /// Tokens (input + output) per week (fixed 7-day windows from when the simulator was
    /// built); over it: `429 {"error":{"message":"Your token-plan 1-week quota has been
    /// exhausted. The quota will reset at MM-DD HH:MM:SS UTC."}}`, the reset time on the
    /// simulator's calendar ([`MockBuilder::epoch`](super::MockBuilder::epoch)).
    pub fn tokens_per_week(mut self, tokens: u64) -> Self {
        self.tokens_per_week = Some(tokens);
        self
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
const MONTH: Duration = Duration::from_secs(30 * 24 * 3600);

/// A count in fixed windows of `length` from the simulator's start.
#[derive(Debug, Default)]
struct Fixed {
    index: u64,
    used: u64,
}

impl Fixed {
    fn used(&mut self, since_start: Duration, length: Duration) -> u64 {
        let index = since_start.as_secs() / length.as_secs();
        if index != self.index {
            self.index = index;
            self.used = 0;
        }
        self.used
    }
}

/// What a plan keeps between requests.
#[derive(Debug, Default)]
pub(super) struct PlanState {
    /// Admission times in the last 5 hours (at most `per_5_hours` of them).
    five_hours: VecDeque<Instant>,
    week: Fixed,
    month: Fixed,
    usage_hour: Fixed,
    token_week: Fixed,
    pub(super) in_flight: u64,
}

/// Why a plan refuses a request.
pub(super) enum PlanRefusal {
    /// A JSON error answer.
    Failure(Failure),
    /// Token Plan's exhausted week, with the calendar second it resets at.
    TokenWeek { resets_at_unix: u64 },
}

impl PlanState {
    /// Whether a Coding Plan request of `tokens` may start now; counts it if so.
    pub(super) fn admit_coding(
        &mut self,
        plan: &CodingPlan,
        now: Instant,
        since_start: Duration,
        tokens: u64,
    ) -> Result<(), PlanRefusal> {
        let refuse = |message: &'static str, code: &'static str| {
            Err(PlanRefusal::Failure(Failure::plan_quota(message, code)))
        };
        if plan
            .concurrency
            .is_some_and(|cap| self.in_flight >= u64::from(cap))
        {
            return refuse(
                "concurrency allocated quota exceeded. please try again later.",
                "Throttling",
            );
        }
        while self
            .five_hours
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= 5 * HOUR)
        {
            self.five_hours.pop_front();
        }
        if plan
            .per_5_hours
            .is_some_and(|cap| self.five_hours.len() as u64 >= u64::from(cap))
        {
            return refuse(
                "hour allocated quota exceeded",
                "Throttling.AllocationQuota",
            );
        }
        if plan
            .per_week
            .is_some_and(|cap| self.week.used(since_start, WEEK) >= u64::from(cap))
        {
            return refuse(
                "week allocated quota exceeded",
                "Throttling.AllocationQuota",
            );
        }
        if plan
            .per_month
            .is_some_and(|cap| self.month.used(since_start, MONTH) >= u64::from(cap))
        {
            return refuse(
                "month allocated quota exceeded",
                "Throttling.AllocationQuota",
            );
        }
        if plan
            .usage_tokens_per_hour
            .is_some_and(|cap| self.usage_hour.used(since_start, HOUR) >= cap)
        {
            return refuse(
                "usage allocated quota exceeded. please try again later.",
                "throttling",
            );
        }
        if plan.per_5_hours.is_some() {
            self.five_hours.push_back(now);
        }
        self.week.used += 1;
        self.month.used += 1;
        self.usage_hour.used = self.usage_hour.used.saturating_add(tokens);
        Ok(())
    }

    /// Whether a Token Plan request of `tokens` may start now; counts it if so. `epoch`: the
    /// calendar second (Unix) the simulator was built at.
    pub(super) fn admit_token(
        &mut self,
        plan: &TokenPlan,
        since_start: Duration,
        epoch: u64,
        tokens: u64,
    ) -> Result<(), PlanRefusal> {
        if let Some(cap) = plan.tokens_per_week {
            if self.token_week.used(since_start, WEEK) >= cap {
                let resets_at_unix = epoch + (self.token_week.index + 1) * WEEK.as_secs();
                return Err(PlanRefusal::TokenWeek { resets_at_unix });
            }
        }
        self.token_week.used = self.token_week.used.saturating_add(tokens);
        Ok(())
    }
}

impl Failure {
    /// A Coding Plan refusal: 429 with DashScope's text.
    pub(crate) fn plan_quota(message: &'static str, code: &'static str) -> Self {
        Failure {
            status: StatusCode::TOO_MANY_REQUESTS,
            native_code: code,
            compat_code: code,
            compat_type: code,
            anthropic_type: "rate_limit_error",
            message: message.into(),
            compat_message: None,
        }
    }
}

/// `MM-DD HH:MM:SS` of a Unix time, in UTC.
pub(super) fn month_day_time(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (_, month, day) = civil_from_days(days);
    format!(
        "{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days are whole; the era
/// arithmetic of the usual civil-from-days derivation, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2026-01-01 and 2024-02-29.
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(
            month_day_time(1_767_225_600 + 7 * 86_400 + 3661),
            "01-08 01:01:01"
        );
    }
}
