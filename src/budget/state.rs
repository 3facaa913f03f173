//! The state every clone of a [`TokenBudget`](super::TokenBudget) shares: one entry per model
//! (and account), each with its two windows, its queue of waiting requests and its adaptive
//! rates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::window::{SlotRef, Window};
use super::{Config, Quota};
use crate::error::RateLimitKind;
use crate::guard::{Ending, Release};

/// Budgets are counted in thousandths, so that a quota of 100 RPM is 1.666 requests a second,
/// not 1.
const MILLI: u64 = 1000;

/// The lowest an adaptive factor goes: a tenth of the configured quota.
const MIN_FACTOR: f64 = 0.1;
/// What one throttled answer multiplies the rate by.
const DECREASE: f64 = 0.7;
/// What one success adds back, as a fraction of the quota.
const RECOVER: f64 = 0.02;
/// Where a burst 429 restarts the ramp.
const BURST_RESTART: f64 = 0.25;
/// How far one request's reported input moves a model's learned input correction (an
/// exponentially weighted mean of `reported / estimated`).
const INPUT_LEARNING: f64 = 0.25;
/// The learned input correction stays within `1/INPUT_RATIO_BOUND ..= INPUT_RATIO_BOUND`.
const INPUT_RATIO_BOUND: f64 = 8.0;

/// Which budget a request is counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) account: Option<Arc<str>>,
    pub(crate) model: Arc<str>,
}

/// What admitting a request takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cost {
    /// Input as estimated plus output expected.
    pub(crate) tokens: u64,
    /// The input part of `tokens`, as the estimator saw it.
    pub(crate) input: u64,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    models: Mutex<Models>,
}

struct Models {
    map: HashMap<Key, ModelState>,
    in_flight: usize,
    /// Requests whose windows had room but no concurrency permit was free.
    permit_waiters: Vec<Waker>,
    next_ticket: u64,
}

struct ModelState {
    quota: Quota,
    requests: Window,
    tokens: Window,
    /// Waiting requests in arrival order; the first is the only one that may be admitted.
    queue: BTreeMap<u64, Option<Waker>>,
    /// Requests of this model admitted and not yet finished.
    in_flight: usize,
    request_factor: f64,
    token_factor: f64,
    last_decrease: Option<Instant>,
    created: Instant,
    /// What the estimator's input is multiplied by: learned from the usage responses report,
    /// so that an estimator that is off by a steady factor is charged as the server counts.
    input_ratio: f64,
}

/// What one try at admission says.
pub(crate) enum Admit {
    /// Admitted: charged, with a permit.
    Yes(Reservation),
    /// Not yet: try again at this instant (or when woken).
    At(Instant),
    /// Not yet: wait to be woken (behind another request, or for a permit).
    Woken,
}

/// What an admitted request holds until it is settled.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: Key,
    pub(crate) tokens: u64,
    /// The input as the estimator saw it, to learn from the usage reported.
    pub(crate) input: u64,
    pub(crate) at: SlotRef,
    /// Set when the request was sent with a usage slot of its own, to settle against.
    pub(crate) usage: Option<crate::extensions::UsageSlot>,
    /// How long the request waited for admission.
    pub(crate) waited: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        Arc::new(Shared {
            config,
            models: Mutex::new(Models {
                map: HashMap::new(),
                in_flight: 0,
                permit_waiters: Vec::new(),
                next_ticket: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Models> {
        // Only plain numbers and wakers inside: a panic elsewhere cannot leave them invalid.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn quota_for(&self, key: &Key) -> Quota {
        self.config
            .models
            .get(&*key.model)
            .copied()
            .unwrap_or(self.config.default)
    }

    /// Joins the queue of `key`'s model; the ticket orders admission. Returns the key the
    /// request is counted under (the overflow key when `max_models` are busy) and its ticket.
    pub(crate) fn enqueue(&self, key: Key) -> (Key, u64) {
        let now = Instant::now();
        let mut models = self.lock();
        let ticket = models.next_ticket;
        models.next_ticket += 1;
        let quota = self.quota_for(&key);
        let max_models = self.config.max_models;
        let (key, state) = entry(&mut models.map, key, quota, now, max_models, &self.config);
        state.queue.insert(ticket, None);
        (key, ticket)
    }

    /// Leaves the queue without being admitted (cancelled, or failed for max_wait).
    pub(crate) fn dequeue(&self, key: &Key, ticket: u64) {
        let mut models = self.lock();
        if let Some(state) = models.map.get_mut(key) {
            let was_head = state.queue.keys().next() == Some(&ticket);
            state.queue.remove(&ticket);
            if was_head {
                wake_head(state);
            }
        }
    }

    /// One try at admitting `ticket` at `now`.
    pub(crate) fn try_admit(
        self: &Arc<Self>,
        key: &Key,
        ticket: u64,
        cost: Cost,
        waker: &Waker,
    ) -> Admit {
        let now = Instant::now();
        let mut models = self.lock();
        let max_concurrency = self.config.max_concurrency;
        let permits_full = max_concurrency.is_some_and(|max| models.in_flight >= max);
        let Some(state) = models.map.get_mut(key) else {
            // Entries with a queue are never evicted; this is a ticket already dequeued.
            return Admit::Woken;
        };
        if state.queue.keys().next() != Some(&ticket) {
            if let Some(slot) = state.queue.get_mut(&ticket) {
                set_waker(slot, waker);
            }
            return Admit::Woken;
        }
        let (request_limit, token_limit) = state.limits(now, &self.config);
        state.requests.advance(now, request_limit);
        state.tokens.advance(now, token_limit);
        // The estimator's input, corrected by what usage has taught about it.
        let input = (cost.input as f64 * state.input_ratio).round() as u64;
        let tokens = (cost.tokens - cost.input.min(cost.tokens)).saturating_add(input);
        let token_cost = tokens.saturating_mul(MILLI);
        let wait = state
            .requests
            .wait_for(now, MILLI, request_limit)
            .max(state.tokens.wait_for(now, token_cost, token_limit));
        if !wait.is_zero() {
            if let Some(slot) = state.queue.get_mut(&ticket) {
                set_waker(slot, waker);
            }
            return Admit::At(now + wait);
        }
        if permits_full {
            if let Some(slot) = state.queue.get_mut(&ticket) {
                set_waker(slot, waker);
            }
            if !models.permit_waiters.iter().any(|w| w.will_wake(waker)) {
                models.permit_waiters.push(waker.clone());
            }
            return Admit::Woken;
        }
        state.requests.charge(MILLI, request_limit);
        let at = state.tokens.charge(token_cost, token_limit);
        state.queue.remove(&ticket);
        state.in_flight += 1;
        wake_head(state);
        models.in_flight += 1;
        Admit::Yes(Reservation {
            shared: Arc::clone(self),
            key: key.clone(),
            tokens,
            input: cost.input,
            at,
            usage: None,
            waited: Duration::ZERO,
        })
    }

    /// Gives back or charges the difference between what was reserved and what was used.
    fn settle(&self, key: &Key, reserved: u64, used: u64, at: SlotRef) {
        let now = Instant::now();
        let mut models = self.lock();
        let Some(state) = models.map.get_mut(key) else {
            return;
        };
        let (_, token_limit) = state.limits(now, &self.config);
        state.tokens.advance(now, token_limit);
        if used < reserved {
            state
                .tokens
                .credit(at, (reserved - used).saturating_mul(MILLI));
            wake_head(state);
        } else if used > reserved {
            let debt = (used - reserved).saturating_mul(MILLI);
            state.tokens.charge(debt, token_limit);
            tracing::debug!(
                model = &*key.model,
                debt_tokens = used - reserved,
                "TokenBudget: usage above the estimate, carried as debt"
            );
        }
    }

    /// A response reported `reported` input tokens for a request whose input was estimated at
    /// `estimated`: the model's input correction moves towards their ratio.
    fn learn_input(&self, key: &Key, estimated: u64, reported: u64) {
        if estimated == 0 || reported == 0 {
            return;
        }
        let mut models = self.lock();
        let Some(state) = models.map.get_mut(key) else {
            return;
        };
        let bound = INPUT_RATIO_BOUND;
        let seen = (reported as f64 / estimated as f64).clamp(1.0 / bound, bound);
        state.input_ratio += INPUT_LEARNING * (seen - state.input_ratio);
    }

    /// A request of `key` finished: its permit is free.
    fn finish(&self, key: &Key) {
        let mut models = self.lock();
        models.in_flight = models.in_flight.saturating_sub(1);
        if let Some(state) = models.map.get_mut(key) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        for waker in models.permit_waiters.drain(..) {
            waker.wake();
        }
    }

    /// The server answered `key`'s request: adapt the rates.
    pub(crate) fn observe(&self, key: &Key, throttled: Option<RateLimitKind>) {
        if !self.config.adaptive {
            return;
        }
        let now = Instant::now();
        let mut models = self.lock();
        let Some(state) = models.map.get_mut(key) else {
            return;
        };
        match throttled {
            None => {
                state.request_factor = (state.request_factor + RECOVER).min(1.0);
                state.token_factor = (state.token_factor + RECOVER).min(1.0);
            }
            Some(kind) => {
                // One decrease per window: the 429s of one burst are one signal.
                let window = self.config.window;
                if state
                    .last_decrease
                    .is_some_and(|at| now.saturating_duration_since(at) < window)
                {
                    return;
                }
                state.last_decrease = Some(now);
                match kind {
                    RateLimitKind::Requests | RateLimitKind::Concurrency => {
                        state.request_factor = (state.request_factor * DECREASE).max(MIN_FACTOR);
                    }
                    RateLimitKind::Tokens => {
                        state.token_factor = (state.token_factor * DECREASE).max(MIN_FACTOR);
                    }
                    RateLimitKind::Burst => {
                        state.request_factor = state.request_factor.min(BURST_RESTART);
                        state.token_factor = state.token_factor.min(BURST_RESTART);
                    }
                    _ => {
                        state.request_factor = (state.request_factor * DECREASE).max(MIN_FACTOR);
                        state.token_factor = (state.token_factor * DECREASE).max(MIN_FACTOR);
                    }
                }
                tracing::info!(
                    model = &*key.model,
                    kind = %kind,
                    request_factor = state.request_factor,
                    token_factor = state.token_factor,
                    "TokenBudget: the server throttled; lowering this model's rates"
                );
            }
        }
    }

    /// The rates in force for `key` now, as fractions of its quota (for tests and metrics).
    pub(crate) fn factors(&self, key: &Key) -> Option<(f64, f64)> {
        let models = self.lock();
        let now = Instant::now();
        models.map.get(key).map(|s| {
            let warm = s.warm_up(now, &self.config);
            (s.request_factor * warm, s.token_factor * warm)
        })
    }

    /// Permits in use, over every model.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Tokens counted in `key`'s window now (in the window and owed), rounded up.
    pub(crate) fn tokens_used(&self, key: &Key) -> u64 {
        let now = Instant::now();
        let mut models = self.lock();
        let Some(state) = models.map.get_mut(key) else {
            return 0;
        };
        let (_, token_limit) = state.limits(now, &self.config);
        state.tokens.advance(now, token_limit);
        state.tokens.used().div_ceil(MILLI)
    }

    /// Models with state.
    pub(crate) fn model_count(&self) -> usize {
        self.lock().map.len()
    }
}

fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn wake_head(state: &mut ModelState) {
    if let Some(waker) = state.queue.values_mut().next().and_then(Option::take) {
        waker.wake();
    }
}

/// The entry of `key`, made if needed; at `max_models`, an idle entry is evicted first (an idle
/// entry is one a new entry would equal), and if none is idle, requests share one overflow entry
/// under the default quota.
fn entry<'a>(
    map: &'a mut HashMap<Key, ModelState>,
    key: Key,
    quota: Quota,
    now: Instant,
    max_models: usize,
    config: &Config,
) -> (Key, &'a mut ModelState) {
    if !map.contains_key(&key) && map.len() >= max_models {
        let idle = map
            .iter_mut()
            .find_map(|(k, s)| s.is_idle(now, config).then(|| k.clone()));
        match idle {
            Some(idle) => {
                map.remove(&idle);
            }
            None => {
                tracing::warn!(
                    model = &*key.model,
                    max_models,
                    "TokenBudget: every tracked model is busy; counting this one in the shared \
                     overflow budget (raise max_models if this model is real)"
                );
                let overflow = Key {
                    account: None,
                    model: Arc::from("*"),
                };
                let state = map
                    .entry(overflow.clone())
                    .or_insert_with(|| ModelState::new(config.default, now, config.window));
                return (overflow, state);
            }
        }
    }
    let state = map
        .entry(key.clone())
        .or_insert_with(|| ModelState::new(quota, now, config.window));
    (key, state)
}

impl ModelState {
    fn new(quota: Quota, now: Instant, window: Duration) -> Self {
        ModelState {
            quota,
            requests: Window::new(window, now),
            tokens: Window::new(window, now),
            queue: BTreeMap::new(),
            in_flight: 0,
            request_factor: 1.0,
            token_factor: 1.0,
            last_decrease: None,
            created: now,
            input_ratio: 1.0,
        }
    }

    fn warm_up(&self, now: Instant, config: &Config) -> f64 {
        match config.warm_up {
            Some((from, over)) if !over.is_zero() => {
                let done =
                    now.saturating_duration_since(self.created).as_secs_f64() / over.as_secs_f64();
                (from + (1.0 - from) * done).min(1.0)
            }
            _ => 1.0,
        }
    }

    /// The request and token limits of one window now, in thousandths; `u64::MAX` for a
    /// dimension the quota leaves unlimited.
    fn limits(&self, now: Instant, config: &Config) -> (u64, u64) {
        let warm = self.warm_up(now, config);
        let per_window = |per_minute: u32, factor: f64| {
            if per_minute == 0 {
                return u64::MAX;
            }
            let exact = f64::from(per_minute) * MILLI as f64 * config.window.as_secs_f64() / 60.0;
            // At least one request's or token's worth, so that a tiny quota still admits.
            ((exact * factor * warm) as u64).max(MILLI)
        };
        (
            per_window(self.quota.requests, self.request_factor),
            per_window(self.quota.tokens, self.token_factor),
        )
    }

    fn is_idle(&self, now: Instant, config: &Config) -> bool {
        let (request_limit, token_limit) = self.limits(now, config);
        let mut requests_idle = self.requests.is_idle();
        let mut tokens_idle = self.tokens.is_idle();
        if !requests_idle || !tokens_idle {
            // Look at the windows as of now without changing them.
            let mut r = self.requests.clone();
            let mut t = self.tokens.clone();
            r.advance(now, request_limit);
            t.advance(now, token_limit);
            requests_idle = r.is_idle();
            tokens_idle = t.is_idle();
        }
        self.queue.is_empty()
            && self.in_flight == 0
            && requests_idle
            && tokens_idle
            && self.request_factor >= 1.0
            && self.token_factor >= 1.0
    }
}

/// What an admitted request releases: its permit always; its reservation is settled against
/// the usage the response reported when it completed, and kept as charged otherwise.
impl Release for Reservation {
    fn release(self, ending: Ending) {
        let used = match ending {
            Ending::Completed => self
                .usage
                .as_ref()
                .filter(|slot| slot.is_complete())
                .and_then(|slot| slot.get()),
            Ending::Dropped => None,
        };
        if let Some(usage) = used {
            self.shared
                .learn_input(&self.key, self.input, usage.input_tokens);
            self.shared
                .settle(&self.key, self.tokens, usage.total_tokens, self.at);
        }
        self.shared.finish(&self.key);
    }
}

impl Reservation {
    /// The server refused the request before generating anything: its tokens come back (the
    /// request still counts against the request rate).
    pub(crate) fn refund_tokens(&mut self) {
        self.shared.settle(&self.key, self.tokens, 0, self.at);
        self.tokens = 0;
        self.usage = None;
    }
}
