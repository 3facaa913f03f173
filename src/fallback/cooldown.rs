//! The health of each model, shared by every clone of a layer: cooldowns and half-open probes.
//!
//! One slot per model the layer was configured with (the table never grows, so its memory is
//! bounded by the configuration). A slot is
//!
//! - **healthy**: requests go to the model;
//! - **cooling** until an instant: requests skip it, no round trip;
//! - **half-open** once that instant passed: the first request to come takes the one probe;
//!   others skip the model until the probe ends. The probe's success makes it healthy; its
//!   failure cools it again.
//!
//! A new failure only ever extends a cooldown: the end is the later of the current end and
//! `now + length`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::guard::{Ending, Release};

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Cooling until then; half-open once it passed; healthy when `None`.
    until: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
}

/// What a request may do with a model now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Send to it.
    Healthy,
    /// Send to it as the one probe after its cooldown; the caller holds a [`Probe`].
    Probe,
    /// Skip it; it may be tried again at this instant (for a probe in flight: a guess).
    Cooling(Instant),
}

/// How often a request waiting for a model whose probe is in flight looks again.
pub(crate) const PROBE_RECHECK: Duration = Duration::from_millis(250);

/// The health table.
#[derive(Debug)]
pub(crate) struct Health {
    slots: Mutex<Vec<Slot>>,
}

impl Health {
    pub(crate) fn new(models: usize) -> Self {
        Health {
            slots: Mutex::new(vec![Slot::default(); models]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // Every update leaves the slots valid; a panic elsewhere does not poison their meaning.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request may go to `model` now, taking the probe if it is half-open.
    pub(crate) fn access(&self, model: usize, now: Instant) -> Access {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(model) else {
            return Access::Healthy;
        };
        match slot.until {
            None => Access::Healthy,
            Some(until) if until > now => Access::Cooling(until),
            Some(_) if slot.probing => Access::Cooling(now + PROBE_RECHECK),
            Some(_) => {
                slot.probing = true;
                Access::Probe
            }
        }
    }

    /// Cools `model` down for `length` from `now`, or longer if it already is: returns the end
    /// and whether an existing cooldown was extended (`false` for a new one).
    pub(crate) fn cool(&self, model: usize, now: Instant, length: Duration) -> (Instant, bool) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(model) else {
            return (now, false);
        };
        let end = now.checked_add(length).unwrap_or(now + FAR);
        let renewed = slot.until.is_some_and(|until| until > now);
        let until = slot.until.filter(|_| renewed).map_or(end, |u| u.max(end));
        slot.until = Some(until);
        (until, renewed)
    }

    /// Whether `model` is healthy (not cooling, not half-open).
    #[cfg(test)]
    pub(crate) fn is_healthy(&self, model: usize) -> bool {
        self.lock().get(model).is_none_or(|s| s.until.is_none())
    }

    fn end_probe(&self, model: usize, healthy: bool) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(model) {
            slot.probing = false;
            if healthy {
                slot.until = None;
            }
        }
    }
}

/// Far beyond any real cooldown or wait, for lengths that overflow an `Instant`.
pub(super) const FAR: Duration = Duration::from_secs(86_400 * 365);

/// The probe a request holds for a half-open model; released (by [`Held`](crate::guard::Held))
/// exactly once, also when the request is dropped.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) health: Arc<Health>,
    pub(crate) model: usize,
    /// Set when the probe's outcome showed the model answering.
    pub(crate) healthy: bool,
}

impl Release for Probe {
    fn release(self, ending: Ending) {
        // A dropped probe proved nothing: the model stays half-open for the next request.
        let healthy = self.healthy && ending == Ending::Completed;
        self.health.end_probe(self.model, healthy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Held;

    #[tokio::test(start_paused = true)]
    async fn cooldowns_only_extend() {
        let health = Health::new(1);
        let t0 = Instant::now();
        assert_eq!(health.access(0, t0), Access::Healthy);
        let (end, renewed) = health.cool(0, t0, Duration::from_secs(10));
        assert_eq!((end, renewed), (t0 + Duration::from_secs(10), false));
        // A shorter cooldown later does not shorten it; a longer one extends it.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(health.cool(0, t1, Duration::from_secs(1)), (end, true));
        let (longer, renewed) = health.cool(0, t1, Duration::from_secs(30));
        assert_eq!((longer, renewed), (t1 + Duration::from_secs(30), true));
        assert_eq!(health.access(0, t1), Access::Cooling(longer));
        // Overflow is no panic.
        health.cool(0, t1, Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time() {
        let health = Arc::new(Health::new(1));
        let t0 = Instant::now();
        health.cool(0, t0, Duration::from_secs(5));
        let after = t0 + Duration::from_secs(5);
        assert_eq!(health.access(0, after), Access::Probe);
        assert_eq!(
            health.access(0, after),
            Access::Cooling(after + PROBE_RECHECK)
        );
        // A dropped probe leaves it half-open: the next request probes.
        drop(Held::new(Probe {
            health: health.clone(),
            model: 0,
            healthy: true,
        }));
        assert_eq!(health.access(0, after), Access::Probe);
        let mut probe = Held::new(Probe {
            health: health.clone(),
            model: 0,
            healthy: false,
        });
        probe.get_mut().healthy = true;
        probe.complete();
        assert!(health.is_healthy(0));
        assert_eq!(health.access(0, after), Access::Healthy);
    }
}
