//! How long to wait before a retry.

use std::time::Duration;

use rand::Rng;

/// How the wait before each retry is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// "Full jitter": before retry `n` (0-based) wait `uniform(0, min(max, base · 2ⁿ))`. The
    /// default, and what Alibaba recommends (`wait_random_exponential(min=1, max=60)`).
    Full,
    /// "Decorrelated jitter": wait `min(max, uniform(base, 3 · previous wait))`, starting from
    /// `base`. Spreads clients out more when many fail together.
    Decorrelated,
}

/// The wait before retry number `retry` (0-based), given the previous wait.
pub(crate) fn backoff(
    jitter: Jitter,
    base: Duration,
    max: Duration,
    retry: u32,
    previous: Duration,
    rng: &mut impl Rng,
) -> Duration {
    let max = max.max(Duration::ZERO);
    match jitter {
        Jitter::Full => {
            let cap = base
                .checked_mul(2u32.saturating_pow(retry.min(31)))
                .unwrap_or(max)
                .min(max);
            uniform(Duration::ZERO, cap, rng)
        }
        Jitter::Decorrelated => {
            let high = previous.max(base).saturating_mul(3).min(max);
            uniform(base.min(high), high, rng)
        }
    }
}

/// A small jitter on top of a server-requested delay: up to 10% of it, at most one second.
pub(crate) fn on_top_of(retry_after: Duration, rng: &mut impl Rng) -> Duration {
    let spread = (retry_after / 10).min(Duration::from_secs(1));
    retry_after.saturating_add(uniform(Duration::ZERO, spread, rng))
}

/// A duration drawn uniformly from `low ..= high` (`low` when `high <= low`).
pub(crate) fn uniform(low: Duration, high: Duration, rng: &mut impl Rng) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_nanos().min(u128::from(u64::MAX)) as u64;
    low + Duration::from_nanos(rng.random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    const S: Duration = Duration::from_secs(1);

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(2026), ..ProptestConfig::default() })]
        #[test]
        fn full_jitter_stays_under_the_exponential_cap(seed: u64, retry in 0u32..100) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let d = backoff(Jitter::Full, S, 60 * S, retry, Duration::ZERO, &mut rng);
            let cap = if retry >= 6 { 60 * S } else { S * 2u32.pow(retry) };
            prop_assert!(d <= cap, "{:?} > {:?}", d, cap);
        }

        #[test]
        fn decorrelated_stays_between_base_and_max(seed: u64, previous_ms in 0u64..1_000_000) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let previous = Duration::from_millis(previous_ms);
            let d = backoff(Jitter::Decorrelated, S, 60 * S, 3, previous, &mut rng);
            prop_assert!(d >= S && d <= 60 * S);
            prop_assert!(d <= previous.max(S) * 3);
        }

        #[test]
        fn extreme_settings_never_panic(base_ns: u64, max_ns: u64, retry: u32, previous_ns: u64, seed: u64) {
            let mut rng = SmallRng::seed_from_u64(seed);
            for jitter in [Jitter::Full, Jitter::Decorrelated] {
                let d = backoff(jitter, Duration::from_nanos(base_ns), Duration::from_nanos(max_ns), retry, Duration::from_nanos(previous_ns), &mut rng);
                prop_assert!(d <= Duration::from_nanos(max_ns.max(base_ns)));
            }
            let _ = on_top_of(Duration::MAX / 2, &mut rng);
            prop_assert_eq!(on_top_of(Duration::MAX, &mut rng), Duration::MAX);
        }
    }

    #[test]
    fn the_jitter_is_spread_out() {
        let mut rng = SmallRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..1000)
            .map(|_| backoff(Jitter::Full, S, 60 * S, 2, Duration::ZERO, &mut rng))
            .collect();
        let below_one = draws.iter().filter(|d| **d < S).count();
        // uniform(0, 4 s): about a quarter below one second.
        assert!((150..350).contains(&below_one), "{below_one}");
    }

    #[test]
    fn on_top_adds_at_most_ten_percent() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let d = on_top_of(Duration::from_millis(350), &mut rng);
            assert!(
                d >= Duration::from_millis(350) && d <= Duration::from_millis(385),
                "{d:?}"
            );
        }
    }
}
