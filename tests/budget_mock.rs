//! TokenBudget against `MockDashScope`, in both enforcement models: what the server admits in
//! any one-second window, goodput and throttling under saturation, convergence when estimates
//! are off by half, the shared-core scenario against the tenacity recipe, and cancellation at
//! every await point. Paused time, seeded: every run is the same.

use std::task::Poll;
use std::time::Duration;

use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{Enforcement, MockDashScope, ModelConfig, OutputCharge};
use tower_dashscope::{
    BudgetWait, ClassifyDashScopeError, ClassifyDashScopeErrorService, Quota, TokenBudget,
    TokenBudgetService,
};

#[allow(dead_code)]
#[path = "../examples/budget_scenarios/harness.rs"]
mod harness;
#[path = "../examples/support/open_loop.rs"]
mod open_loop;
#[path = "../examples/support/tenacity.rs"]
mod tenacity;

use harness::{MODEL, Saturation};

const MODELS: [Enforcement; 2] = [Enforcement::Continuous, Enforcement::FixedWindow];

/// 3,000 RPM and 600,000 TPM, requests of 500 input tokens and 50 output (answers use all of
/// `max_tokens`), four times the quota offered for 20 s.
fn input_heavy(enforcement: Enforcement, skew: f64) -> Saturation {
    let mut w = Saturation::new(enforcement);
    w.rpm = 3000;
    w.tpm = 600_000;
    w.input_chars = 2000;
    w.max_tokens = 50;
    w.min_output = 1.0;
    w.duration = Duration::from_secs(20);
    w.skew = skew;
    w
}

#[tokio::test(start_paused = true)]
async fn saturated_the_server_admits_at_most_a_second_s_worth_in_any_second() {
    for enforcement in MODELS {
        // Answers of 20% to 100% of max_tokens, all of max_tokens charged (the conservative
        // mode): the estimates are high, settled afterwards, and no second goes over.
        let mut w = Saturation::new(enforcement);
        w.duration = Duration::from_secs(20);
        w.learn_output = false;
        let r = harness::saturate(w).await;
        assert!(
            r.max_requests_1s as f64 <= r.rps + 1.0,
            "{enforcement:?}: {} requests in one second",
            r.max_requests_1s
        );
        assert!(
            r.max_tokens_1s as f64 <= r.tps + r.max_under_estimate as f64,
            "{enforcement:?}: {} tokens in one second",
            r.max_tokens_1s
        );
        assert!(r.throttled_share() <= 0.005, "{enforcement:?}: {r:?}");
        assert_eq!(r.completed, r.offered, "{enforcement:?}: {r:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn learning_the_output_share_is_not_throttled() {
    for enforcement in MODELS {
        // The same workload, the budget's default: the output charged is the share of
        // max_tokens answers used so far (60% on average here), settled both ways.
        let mut w = Saturation::new(enforcement);
        w.duration = Duration::from_secs(20);
        let learned = harness::saturate(w).await;
        w.learn_output = false;
        let conservative = harness::saturate(w).await;
        // Here three requests fill a second either way (the charge of four, learned, is still
        // over a second's worth): learning costs nothing and is not throttled. The goodput
        // example's `quota`, with more requests a second, shows the gain.
        assert!(
            learned.goodput_late >= conservative.goodput_late,
            "{enforcement:?}: {learned:?} vs {conservative:?}"
        );
        assert!(
            learned.throttled_share() <= 0.005,
            "{enforcement:?}: {learned:?}"
        );
        assert_eq!(
            learned.completed, learned.offered,
            "{enforcement:?}: {learned:?}"
        );
        // Over time the quota holds.
        assert!(learned.goodput_late <= 1.0, "{enforcement:?}: {learned:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn saturated_with_exact_estimates_goodput_is_near_the_tpm() {
    for enforcement in MODELS {
        let r = harness::saturate(input_heavy(enforcement, 1.0)).await;
        assert!(r.goodput >= 0.97, "{enforcement:?}: {r:?}");
        assert!(r.throttled_share() <= 0.005, "{enforcement:?}: {r:?}");
        assert!(r.max_tokens_1s as f64 <= r.tps, "{enforcement:?}: {r:?}");
        assert_eq!(r.completed, r.offered, "{enforcement:?}: {r:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn output_counted_when_generated_is_charged_when_reported() {
    for enforcement in MODELS {
        // The defaults of both sides: the server counts each answer's output when it has
        // written it, and the budget charges it when the usage reports it, as debt.
        let mut w = Saturation::new(enforcement);
        w.output_charge = OutputCharge::WhenGenerated;
        let r = harness::saturate(w).await;
        assert!(r.throttled_share() <= 0.005, "{enforcement:?}: {r:?}");
        assert_eq!(r.completed, r.offered, "{enforcement:?}: {r:?}");
        // What the server counted once saturated: never over the quota; under it by what
        // short answers cost (the budget hears of an answer's output only when it ends, so
        // with answers of 1-3 s it admits in waves: 0.84 here).
        assert!(
            (0.8..=1.02).contains(&r.counted_late),
            "{enforcement:?}: {r:?}"
        );
        // Reserving the output before sending instead does worse against such a server: the
        // reservation leaves the window long before the output is counted.
        let reserved = harness::saturate_with(
            Saturation {
                output_charge: OutputCharge::OnAdmission,
                ..w
            },
            OutputCharge::WhenGenerated,
        )
        .await;
        assert!(
            reserved.counted_late < r.counted_late,
            "{enforcement:?}: {reserved:?} vs {r:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_learns_that_a_server_counts_output_on_admission() {
    for enforcement in MODELS {
        // The budget's default (output charged when reported) against a server that counts
        // each answer on admission: its token 429s switch the model to reserving output.
        let w = Saturation {
            output_charge: OutputCharge::WhenGenerated,
            ..Saturation::new(enforcement)
        };
        let learned = harness::saturate_with(w, OutputCharge::OnAdmission).await;
        let fixed = harness::saturate_with(
            Saturation {
                detect_output_charge: false,
                ..w
            },
            OutputCharge::OnAdmission,
        )
        .await;
        assert!(
            learned.throttled_share() <= 0.01,
            "{enforcement:?}: {learned:?}"
        );
        assert!(
            fixed.throttled_share() > 2.0 * learned.throttled_share(),
            "{enforcement:?}: {fixed:?} vs {learned:?}"
        );
        assert_eq!(learned.completed, learned.offered, "{enforcement:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn estimates_off_by_half_converge_on_the_true_tpm() {
    for enforcement in MODELS {
        for skew in [1.5, 0.5] {
            let r = harness::saturate(input_heavy(enforcement, skew)).await;
            assert!(
                r.goodput_late >= 0.97,
                "{enforcement:?} ×{skew}: sustained goodput {:.3}; {r:?}",
                r.goodput_late
            );
            // Under-estimates are throttled by a strict server until the first answers report
            // their usage (one answer's latency); none once the budget has learned.
            assert_eq!(r.throttled_late, 0, "{enforcement:?} ×{skew}: {r:?}");
            assert!(
                r.throttled_share() <= 0.03,
                "{enforcement:?} ×{skew}: {r:?}"
            );
            // Once converged, a second's worth at most (plus one request's error).
            assert!(
                r.max_tokens_1s_late as f64 <= r.tps + r.max_under_estimate as f64,
                "{enforcement:?} ×{skew}: {r:?}"
            );
            assert_eq!(r.completed, r.offered, "{enforcement:?} ×{skew}: {r:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_shared_core_scenario_finishes_every_request_with_almost_no_retries() {
    let ideal = harness::quota_ideal();
    for enforcement in MODELS {
        for seed in 1..=3 {
            let ours = harness::recommended(enforcement, seed).await;
            assert_eq!(
                ours.completed,
                harness::REQUESTS,
                "{enforcement:?}: {ours:?}"
            );
            assert!(
                ours.attempts_per_request() <= 1.02,
                "{enforcement:?}: {ours:?}"
            );
            assert!(ours.max_requests_1s <= 5 + 1, "{enforcement:?}: {ours:?}");
            // Virtual time: deterministic under the paused clock.
            assert!(
                ours.elapsed.as_secs_f64() <= 1.05 * ideal.as_secs_f64(),
                "{enforcement:?}: {:?} against {ideal:?}",
                ours.elapsed
            );
            let recipe = harness::recipe(enforcement, seed).await;
            assert!(
                recipe.completed < harness::REQUESTS && recipe.attempts_per_request() > 3.0,
                "the baseline is as bad as reported: {recipe:?}"
            );
        }
    }
}

type Stack = TokenBudgetService<ClassifyDashScopeErrorService<MockDashScope>>;

/// 60 RPM and 6,000 TPM (one request and 100 tokens a second), one request in flight at most;
/// answers of 10 tokens in 0.8 s. Requests of 10 + 10 tokens, answered exactly as estimated.
fn cancellation_stack(enforcement: Enforcement) -> (TokenBudget, MockDashScope, Stack) {
    let mock = MockDashScope::builder()
        .model(
            MODEL,
            ModelConfig::new()
                .rpm(60)
                .tpm(6000)
                .latency(Duration::from_millis(300), 20.0)
                .enforcement(enforcement),
        )
        .build();
    let budget = TokenBudget::new(Quota::per_minute(60, 6000))
        .max_concurrency(1)
        .adaptive(false);
    let service = ServiceBuilder::new()
        .layer(budget.clone())
        .layer(ClassifyDashScopeError::new())
        .service(mock.clone());
    (budget, mock, service)
}

/// One request, sent and read to the end of its body.
async fn send(service: Stack) -> Result<(), String> {
    let response = service
        .oneshot(harness::chat(40, Some(10)))
        .await
        .map_err(|e| e.to_string())?;
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// What the budget charges the victim at most: the default estimate of its request.
fn victim_estimate() -> u64 {
    use tower_dashscope::body::ReplayBody;
    let request = harness::chat(40, Some(10));
    let body = request.body().bytes().unwrap();
    let chat = tower_dashscope::request::ChatRequest::parse(
        tower_dashscope::Api::OpenAiCompatible,
        request.headers(),
        &body,
    )
    .unwrap();
    chat.estimated_input_tokens() + 10
}

#[tokio::test(start_paused = true)]
async fn cancelled_at_every_await_point_nothing_is_lost_or_leaked() {
    let mut sent_polls = Vec::new();
    for enforcement in MODELS {
        for polls in 0..24 {
            // The victim's stack, and a twin that never sees the victim.
            let (budget, mock, service) = cancellation_stack(enforcement);
            let (twin_budget, _twin_mock, twin) = cancellation_stack(enforcement);
            let (a, b) = tokio::join!(send(service.clone()), send(twin.clone()));
            a.unwrap();
            b.unwrap();
            // The victim waits about a second for the request rate, is sent, is answered in
            // 0.8 s, and is read: polled `polls` times, 100 ms apart, then dropped.
            let mut victim = tokio_test::task::spawn(send(service.clone()));
            for _ in 0..polls {
                if let Poll::Ready(result) = victim.poll() {
                    result.unwrap();
                    break;
                }
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            let sent = mock.stats().total().requests == 2;
            if sent {
                sent_polls.push(polls);
            }
            drop(victim);

            let at = format!("{enforcement:?}, dropped after {polls} polls");
            assert_eq!(budget.in_flight(), 0, "{at}: a permit leaked");
            assert_eq!(mock.stats().in_flight, 0, "{at}");
            let used = budget.tokens_in_window(MODEL);
            let twin_used = twin_budget.tokens_in_window(MODEL);
            if sent {
                // Sent: the server billed it, so its charge (at most the default estimate) may
                // stay while in the window.
                assert!(
                    used <= twin_used + victim_estimate(),
                    "{at}: {used} against {twin_used}"
                );
            } else {
                assert_eq!(used, twin_used, "{at}: a waiting request left a trace");
            }
            // The queue and the only permit are free: the next request goes as soon as the
            // rate allows — at the same time as the twin's, if the victim was never sent.
            let both = async { tokio::join!(timed(service.clone()), timed(twin.clone())) };
            let (next, twin_next) = tokio::time::timeout(Duration::from_secs(5), both)
                .await
                .unwrap_or_else(|_| panic!("{at}: the next request was blocked"));
            if !sent {
                assert_eq!(next, twin_next, "{at}");
            }
            assert_eq!(budget.in_flight(), 0, "{at}");
        }
    }
    // The drops covered every stage: waiting (polls 0 to 3), sent and answering, read.
    assert_eq!(sent_polls.len(), 2 * 20, "{sent_polls:?}");
}

/// When a request was admitted, as its `BudgetWait` tells, after it was read.
async fn timed(service: Stack) -> Option<Duration> {
    let response = service.oneshot(harness::chat(40, Some(10))).await.unwrap();
    let wait = response.extensions().get::<BudgetWait>().map(|w| w.0);
    response.into_body().collect().await.unwrap();
    wait
}
