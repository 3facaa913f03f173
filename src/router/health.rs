//! Which endpoints are failing, shared by every clone of a router.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::Region;
use crate::guard::{Ending, Release};

/// The health of every endpoint of one router.
#[derive(Debug)]
pub(crate) struct Health {
    cooldown: Duration,
    endpoints: Mutex<Vec<State>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// `Some` while the endpoint is taken to be failing: until then, only the last resort.
    down_until: Option<Instant>,
    /// A request is probing it (its cooldown has passed).
    probing: bool,
}

/// What a request may do with an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Healthy: use it.
    Healthy,
    /// Its cooldown has passed and this request holds its one probe.
    Probe,
    /// Cooling down, or another request is probing it: a last resort only.
    Avoid,
}

impl Health {
    pub(crate) fn new(endpoints: usize, cooldown: Duration) -> Self {
        Health {
            cooldown,
            endpoints: Mutex::new(vec![State::default(); endpoints]),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<State>) -> T) -> T {
        // A poisoned lock still holds valid states: each update is a few plain stores.
        f(&mut self.endpoints.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether endpoint `i` may be used now; takes its probe when that is due and free.
    pub(crate) fn access(&self, i: usize, region: &Region) -> Access {
        let now = Instant::now();
        let access = self.with(|states| {
            let state = &mut states[i];
            match state.down_until {
                None => Access::Healthy,
                Some(until) if until <= now && !state.probing => {
                    state.probing = true;
                    Access::Probe
                }
                Some(_) => Access::Avoid,
            }
        });
        if access == Access::Probe {
            tracing::debug!(dashscope.region = %region, "probing an endpoint after its cooldown");
        }
        access
    }

    /// Endpoint `i` answered: healthy again.
    pub(crate) fn succeeded(&self, i: usize, region: &Region) {
        let was_down = self.with(|states| {
            let state = &mut states[i];
            let was_down = state.down_until.is_some();
            *state = State::default();
            was_down
        });
        if was_down {
            tracing::info!(dashscope.region = %region, "endpoint healthy again");
        }
    }

    /// Endpoint `i` failed at the connection level: unhealthy for the cooldown.
    pub(crate) fn failed(&self, i: usize, region: &Region) {
        let now = Instant::now();
        // A cooldown past what an Instant can hold (`Duration::MAX`: "not by itself") is a year.
        let until = now
            .checked_add(self.cooldown)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        let was_up = self.with(|states| {
            let state = &mut states[i];
            let was_up = state.down_until.is_none();
            *state = State {
                down_until: Some(until),
                probing: false,
            };
            was_up
        });
        if was_up {
            tracing::info!(
                dashscope.region = %region,
                cooldown_ms = self.cooldown.as_millis() as u64,
                "endpoint unhealthy after a connection-level failure"
            );
        } else {
            tracing::debug!(dashscope.region = %region, "endpoint still unhealthy");
        }
    }

    /// Whether endpoint `i` is healthy now (for tests and introspection).
    pub(crate) fn is_healthy(&self, i: usize) -> bool {
        self.with(|states| states.get(i).is_some_and(|s| s.down_until.is_none()))
    }
}

/// A probe in flight: given back if the request ends without an outcome (dropped).
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) health: Arc<Health>,
    pub(crate) index: usize,
}

impl Release for Probe {
    fn release(self, ending: Ending) {
        if ending == Ending::Dropped {
            self.health
                .with(|states| states[self.index].probing = false);
        }
    }
}
