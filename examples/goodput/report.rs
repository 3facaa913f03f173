//! The numbers of one run, as a table row and as one JSON object.

use super::scenario::{Kind, PRIMARY, Run, Scenario, enforcement_name, output_charge_name};
use super::strategy::Outcome;
use std::fmt::Write as _;

/// The issue's fields for one (scenario, strategy).
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub enforcement: &'static str,
    /// When the simulator counted answers' output: `when-generated` or `on-admission`.
    pub output_charge: &'static str,
    pub label: String,
    pub strategy: &'static str,
    pub requests: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Whether every request was answered: the batch was completed.
    pub completed: bool,
    /// Times the application submitted a request through the strategy, per request (1.0
    /// unless `--resubmit`).
    pub submissions_per_request: f64,
    pub completion_s: f64,
    pub ideal_s: f64,
    pub goodput_ratio: f64,
    /// The tokens the server counted per second over the middle 80% of the busy period, over
    /// the quota's rate: the rate sustained once saturated, without the ramp at the start and
    /// the tail of answers still being written after the last admission.
    pub steady_goodput_ratio: f64,
    pub attempts_per_request: f64,
    pub throttled_attempt_pct: f64,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub wasted_tokens: u64,
    /// flap: from the primary's recovery to its first admitted attempt after it.
    pub recovered_after_s: Option<f64>,
    /// silent: the longest time to an answer.
    pub answer_s: Option<f64>,
}

impl Report {
    pub fn new(scenario: &Scenario, run: &Run) -> Self {
        let kind = scenario.kind;
        let requests = scenario.requests();
        let mut answered: Vec<f64> = Vec::new();
        let mut useful = 0u64;
        for (outcome, took, _) in &run.ends {
            if let Outcome::Answered { tokens } = outcome {
                answered.push(took.as_secs_f64());
                useful += tokens;
            }
        }
        answered.sort_by(f64::total_cmp);
        let succeeded = answered.len();
        let completion = run
            .ends
            .iter()
            .map(|(_, _, end)| end.duration_since(run.start))
            .max()
            .unwrap_or_default();
        // The busy period: from the first arrival to the end of the last second in which the
        // server admitted anything.
        let busy = run
            .tokens_per_second
            .keys()
            .next_back()
            .map_or(1, |last| last + 1) as f64;
        let refused_input: u64 = run
            .attempts
            .iter()
            .filter(|a| !a.status.is_some_and(|s| (200..300).contains(&s)))
            .map(|a| a.input_tokens)
            .sum();
        let quantile = |q: f64| -> Option<f64> {
            if answered.is_empty() {
                return None;
            }
            let i = ((answered.len() as f64 * q).ceil() as usize).clamp(1, answered.len()) - 1;
            Some(answered[i])
        };
        let recovered_after_s = match (kind, scenario.recovery) {
            (Kind::Flap, Some(recovery)) => run
                .attempts
                .iter()
                .filter(|a| {
                    a.model == PRIMARY
                        && a.status.is_some_and(|s| (200..300).contains(&s))
                        && a.at >= run.start + recovery
                })
                .map(|a| (a.at - (run.start + recovery)).as_secs_f64())
                .reduce(f64::min),
            _ => None,
        };
        let attempts = run.server_attempts.max(1);
        Report {
            scenario: kind.name(),
            enforcement: enforcement_name(kind.enforcement()),
            output_charge: output_charge_name(kind.output_charge()),
            label: kind.label(),
            strategy: run.strategy.name(),
            requests,
            succeeded,
            failed: requests - succeeded,
            completed: succeeded == requests,
            submissions_per_request: run.submitted as f64 / requests.max(1) as f64,
            completion_s: completion.as_secs_f64(),
            ideal_s: scenario.ideal().as_secs_f64(),
            goodput_ratio: useful as f64 / busy / scenario.quota_tokens_per_sec(),
            steady_goodput_ratio: {
                let (from, to) = ((busy * 0.1) as u64, (busy * 0.9) as u64);
                let counted: u64 = run.tokens_per_second.range(from..to).map(|(_, t)| t).sum();
                counted as f64 / (to - from).max(1) as f64 / scenario.quota_tokens_per_sec()
            },
            attempts_per_request: run.server_attempts as f64 / requests.max(1) as f64,
            throttled_attempt_pct: 100.0 * run.throttled as f64 / attempts as f64,
            p50_s: quantile(0.5),
            p99_s: quantile(0.99),
            wasted_tokens: run.charged_tokens.saturating_sub(useful) + refused_input,
            recovered_after_s,
            answer_s: (kind == Kind::Silent)
                .then(|| answered.last().copied())
                .flatten(),
        }
    }

    /// One JSON object, on one line.
    pub fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.3}"));
        let mut line = format!(
            r#"{{"scenario":"{}","enforcement":"{}","output_charge":"{}","strategy":"{}","requests":{},"succeeded":{},"failed":{},"completed":{},"submissions_per_request":{:.3},"completion_s":{:.3},"ideal_s":{:.3},"goodput_ratio":{:.4},"steady_goodput_ratio":{:.4},"attempts_per_request":{:.3},"throttled_attempt_pct":{:.3},"p50_s":{},"p99_s":{},"wasted_tokens":{}"#,
            self.scenario,
            self.enforcement,
            self.output_charge,
            self.strategy,
            self.requests,
            self.succeeded,
            self.failed,
            self.completed,
            self.submissions_per_request,
            self.completion_s,
            self.ideal_s,
            self.goodput_ratio,
            self.steady_goodput_ratio,
            self.attempts_per_request,
            self.throttled_attempt_pct,
            num(self.p50_s),
            num(self.p99_s),
            self.wasted_tokens,
        );
        match self.scenario {
            "flap" => {
                let _ = write!(
                    line,
                    r#","recovered_after_s":{}"#,
                    num(self.recovered_after_s)
                );
            }
            "silent" => {
                let _ = write!(line, r#","answer_s":{}"#, num(self.answer_s));
            }
            _ => {}
        }
        line.push('}');
        line
    }

    pub fn header() -> String {
        format!(
            "{:<31} {:<16} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>8} {:>8} {:>9} {:>8}",
            "scenario",
            "strategy",
            "succeeded",
            "of",
            "subm/req",
            "done s",
            "ideal s",
            "goodput",
            "steady",
            "att/req",
            "429 %",
            "p50 s",
            "p99 s",
            "wasted tk",
            "extra s",
        )
    }

    pub fn row(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let extra = match self.scenario {
            "flap" => opt(self.recovered_after_s),
            "silent" => opt(self.answer_s),
            _ => String::new(),
        };
        format!(
            "{:<31} {:<16} {:>9} {:>9} {:>8.2} {:>8.1} {:>8.1} {:>7.3} {:>7.3} {:>8.2} {:>6.2} {:>8} {:>8} {:>9} {:>8}",
            self.label,
            self.strategy,
            self.succeeded,
            self.requests,
            self.submissions_per_request,
            self.completion_s,
            self.ideal_s,
            self.goodput_ratio,
            self.steady_goodput_ratio,
            self.attempts_per_request,
            self.throttled_attempt_pct,
            opt(self.p50_s),
            opt(self.p99_s),
            self.wasted_tokens,
            extra,
        )
    }
}
