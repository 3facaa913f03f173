//! `TokenBudget` measured against `MockDashScope`, in both of its enforcement models.
//!
//! `cargo run --example budget_scenarios`
//!
//! In-process, in paused tokio time with seeded randomness: minutes of traffic run in seconds
//! (debug build included) and print the same numbers every time. Three tables:
//!
//! 1. **Saturation.** Four times the quota offered for 60 s (600 RPM, 60,000 TPM; answers of
//!    20% to 100% of `max_tokens`, so the estimate is high and settlement matters), through
//!    `RetryWithJitter → TokenBudget → WaitTimeoutHeader → ClassifyDashScopeError`, with
//!    short answers (settled within the one-second window) and long ones (settled after it).
//!    Over-admission: the most requests and tokens the server admitted in any one-second
//!    window, against RPS and TPS (+ the largest amount one request's real tokens exceeded its
//!    estimate); goodput: tokens served over TPM × the span; the share of attempts the server
//!    throttled. With `max_tokens` charged up front and answers shorter than it, goodput is
//!    what settlement can give back while the request is still in the window: about the
//!    mean answer over `max_tokens` once answers outlast the window.
//!
//!    Those rows have the server count each answer's output at admission and the budget
//!    reserve it (`OutputCharge::OnAdmission` on both sides), where the per-second bounds
//!    apply; the rows marked "when generated" use both sides' default instead (the server
//!    counts output when written, the budget charges it when reported), and "counted" is the
//!    tokens the server counted in the second half, over the quota.
//! 2. **Estimates off by ±50%.** The same with an estimator that over- or under-estimates every
//!    input by half, on input-heavy requests: does sustained throughput converge on the true
//!    TPM?
//! 3. **Against the recipe it replaces.** 300 requests at 10 a second against `qwen-plus` at 300
//!    RPM, answers in 2.7 s: the recommended stack against Alibaba's tenacity recipe; completed,
//!    attempts per request, and time against what the quota alone imposes (300 at 5 a second,
//!    then one answer).

use std::time::Duration;

use tower_dashscope::mock::{Enforcement, OutputCharge};

#[path = "budget_scenarios/harness.rs"]
mod harness;
#[path = "support/open_loop.rs"]
mod open_loop;
#[path = "support/tenacity.rs"]
mod tenacity;

use harness::{Saturation, SaturationReport, ScenarioReport};

fn enforcement_name(e: Enforcement) -> &'static str {
    match e {
        Enforcement::FixedWindow => "fixed windows",
        _ => "continuous",
    }
}

fn saturation_row(name: &str, r: &SaturationReport) {
    println!(
        "{name:<50} {:>4} / {:<5.1} {:>6} / {:<6.0} {:>6} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>6.2}% {:>5}/{:<5} {:>5} {:>11} {:>5}/{:<5}",
        r.max_requests_1s,
        r.rps,
        r.max_tokens_1s,
        r.tps,
        r.max_tokens_1s_late,
        r.max_under_estimate,
        r.goodput,
        r.goodput_late,
        r.counted_late,
        100.0 * r.throttled_share(),
        r.throttled,
        r.attempts,
        r.throttled_late,
        format!("{:.2}/{:.2}", r.factors.0, r.factors.1),
        r.completed,
        r.offered,
    );
}

fn saturation_header() {
    println!(
        "{:<50} {:>12} {:>15} {:>6} {:>6} {:>8} {:>8} {:>8} {:>7} {:>11} {:>5} {:>11} {:>11}",
        "workload",
        "req/1s max",
        "tok/1s max",
        "late",
        "+err",
        "goodput",
        "2nd half",
        "counted",
        "429 %",
        "429/attempts",
        "late",
        "rate factors",
        "answered",
    );
}

fn scenario_row(name: &str, r: &ScenarioReport) {
    let ideal = harness::quota_ideal();
    println!(
        "{name:<44} {:>5} of {}  {:>9.3}  {:>5}  {:>8.1} s  {:>6.3}×  {:>4}",
        r.completed,
        harness::REQUESTS,
        r.attempts_per_request(),
        r.throttled,
        r.elapsed.as_secs_f64(),
        r.elapsed.as_secs_f64() / ideal.as_secs_f64(),
        r.max_requests_1s,
    );
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let models = [Enforcement::Continuous, Enforcement::FixedWindow];

    println!("1. Saturation: 4× the quota offered for 60 s; 600 RPM (10/s), 60,000 TPM (1,000/s)");
    println!("   requests of 25 input tokens, max_tokens 300, answers of 60..300 tokens");
    saturation_header();
    for enforcement in models {
        for (label, tokens_per_sec) in [("answers 0.4-0.6 s", 1000.0), ("answers 0.9-3.3 s", 100.0)]
        {
            let mut w = Saturation::new(enforcement);
            w.tokens_per_sec = tokens_per_sec;
            let r = harness::saturate(w).await;
            saturation_row(&format!("{}, {label}", enforcement_name(enforcement)), &r);
        }
    }
    // The defaults of both sides: output counted by the server when written, charged by the
    // budget when reported. Admissions in a second are then inputs only, so the two "max"
    // columns do not bound anything here; "counted" is what the server counted.
    for enforcement in models {
        for (label, tokens_per_sec) in [("answers 0.4-0.6 s", 1000.0), ("answers 0.9-3.3 s", 100.0)]
        {
            let mut w = Saturation::new(enforcement);
            w.tokens_per_sec = tokens_per_sec;
            w.output_charge = OutputCharge::WhenGenerated;
            let r = harness::saturate(w).await;
            saturation_row(
                &format!("{}, {label}, when generated", enforcement_name(enforcement)),
                &r,
            );
        }
    }

    println!();
    println!(
        "2. Estimates off by ±50%: 3,000 RPM (50/s), 600,000 TPM (10,000/s); 500 input tokens, \
         max_tokens 50 (answers use it all); 4× offered for 30 s"
    );
    saturation_header();
    for enforcement in models {
        for (label, skew) in [("exact", 1.0), ("+50%", 1.5), ("-50%", 0.5)] {
            let mut w = Saturation::new(enforcement);
            w.rpm = 3000;
            w.tpm = 600_000;
            w.input_chars = 2000;
            w.max_tokens = 50;
            w.min_output = 1.0;
            w.duration = Duration::from_secs(30);
            w.skew = skew;
            let r = harness::saturate(w).await;
            saturation_row(
                &format!("{}, input {label}", enforcement_name(enforcement)),
                &r,
            );
        }
    }

    println!();
    println!(
        "3. 300 requests at 10/s against qwen-plus at 300 RPM, answers 2.7 s; quota-imposed \
         ideal {:.1} s",
        harness::quota_ideal().as_secs_f64()
    );
    println!(
        "{:<44} {:>11}  {:>9}  {:>5}  {:>10}  {:>7}  {:>4}",
        "strategy", "completed", "att./req", "429s", "time", "÷ ideal", "r/1s"
    );
    for enforcement in models {
        for seed in 1..=3 {
            let r = harness::recipe(enforcement, seed).await;
            scenario_row(
                &format!(
                    "{}, recipe (tenacity), seed {seed}",
                    enforcement_name(enforcement)
                ),
                &r,
            );
            let r = harness::recommended(enforcement, seed).await;
            scenario_row(
                &format!(
                    "{}, recommended stack, seed {seed}",
                    enforcement_name(enforcement)
                ),
                &r,
            );
        }
    }
}
