//! The state every clone of a [`TokenBudget`](super::TokenBudget) shares: one entry per model
//! (and account), each with its two windows, its queue of waiting requests and its adaptive
//! rates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{
    Admission, BudgetKey, BudgetStore, KeyMap, Limits, LocalStore, StoreFuture, Taken,
};
use super::{Config, OutputCharge, Quota};
use crate::error::BoxError;
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
/// How far one answer's reported output moves a model's learned output share (an
/// exponentially weighted mean of `reported output / output cap`). Answers vary much more than
/// an estimator's error does, so it moves more slowly than the input correction.
const OUTPUT_LEARNING: f64 = 0.1;
/// The learned output share never goes below this (an answer can always be longer than the
/// last ones were).
const MIN_OUTPUT_SHARE: f64 = 0.05;
/// The output share charged is the learned mean plus this many of the learned standard
/// deviations: a margin for the seconds in which several answers run long.
const OUTPUT_MARGIN: f64 = 1.0;

/// Outcomes per period over which the server's token 429s are counted, to tell whether it
/// counts output on admission ([`Config::detect_output_charge`]).
const DETECT_PERIOD: u32 = 100;

/// Token 429s within one [`DETECT_PERIOD`] that mean the server counts output on admission:
/// against a server that counts it when written, the budget sees about one in 2,000.
const DETECT_REFUSALS: u32 = 3;

/// Which budget a request is counted in.
pub(crate) type Key = BudgetKey;

/// What admitting a request takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cost {
    /// The input, as the estimator saw it.
    pub(crate) input: u64,
    /// The output cap: `max_tokens`, or the default output tokens.
    pub(crate) output: u64,
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    store: Arc<dyn BudgetStore>,
    models: Mutex<Models>,
}

struct Models {
    map: KeyMap<ModelState>,
    in_flight: usize,
    /// Requests whose windows had room but no concurrency permit was free.
    permit_waiters: Vec<Waker>,
    next_ticket: u64,
}

struct ModelState {
    quota: Quota,
    /// Waiting requests in arrival order; the first may be admitted, and while it waits for
    /// room, those behind it that may backfill ([`Config::backfill`]).
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
    /// The share of its output cap an answer is expected to use: learned from the usage
    /// responses report; 1.0 (the whole cap) until the first answer.
    output_share: f64,
    /// The moving mean of the squared share, for its spread.
    output_share_sq: f64,
    /// Thousandths of tokens over-estimated by requests settled after their charge left the
    /// window (so not given back there), set against later under-estimates' debt. At most one
    /// window's token limit.
    credit: u64,
    /// The ticket first in line and since when, to bound how long requests behind it may take
    /// room it cannot use.
    head_since: Option<(u64, Instant)>,
    /// The server was seen to count output on admission: the expected output is reserved
    /// before sending, whatever [`Config::output_charge`] says.
    reserve_output: bool,
    /// Outcomes and token 429s in the current detection period.
    outcomes: u32,
    token_refusals: u32,
}

/// What the first step of an admission says.
pub(crate) enum Begin {
    /// First in line (or backfilling behind it) with a permit taken: ask the store, then
    /// [`Shared::admitted`] or [`Shared::not_yet`]. With the limits asked under and the tokens
    /// asked for, and whether those include the expected output (to be told to
    /// [`Shared::admitted`]: the model may switch to reserving output while the store answers).
    Ask(StoreFuture<Result<Admission, BoxError>>, Limits, u64, bool),
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
    /// The output cap, to learn the share of it answers use.
    pub(crate) output: u64,
    /// When the reservation was charged: a refund after a window has passed can no longer
    /// come out of the window.
    pub(crate) admitted_at: Instant,
    pub(crate) limits: Limits,
    pub(crate) at: Taken,
    /// Set when the request was sent with a usage slot of its own, to settle against.
    pub(crate) usage: Option<crate::extensions::UsageSlot>,
    /// How long the request waited for admission.
    pub(crate) waited: Duration,
    /// The call failed (an error, or an error response): no answer is being generated.
    pub(crate) failed: bool,
    /// The expected output was reserved with the input.
    pub(crate) reserved_output: bool,
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
        let store = config
            .store
            .clone()
            .unwrap_or_else(|| Arc::new(LocalStore::new()));
        Arc::new(Shared {
            config,
            store,
            models: Mutex::new(Models {
                map: KeyMap::default(),
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
        let store = &*self.store;
        let (key, state) = entry(
            &mut models.map,
            key,
            quota,
            now,
            max_models,
            &self.config,
            store,
        );
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

    /// The first step of admitting `ticket`: when it is first in line (or may backfill behind
    /// the first) and a permit is free, the permit is taken and the store is asked for the
    /// budget.
    pub(crate) fn begin(&self, key: &Key, ticket: u64, cost: Cost, waker: &Waker) -> Begin {
        let now = Instant::now();
        let mut models = self.lock();
        let max_concurrency = self.config.max_concurrency;
        let permits_full = max_concurrency.is_some_and(|max| models.in_flight >= max);
        let Some(state) = models.map.get_mut(key) else {
            // Entries with a queue are never evicted; this is a ticket already dequeued.
            return Begin::Woken;
        };
        let Some(slot) = state.queue.get_mut(&ticket) else {
            return Begin::Woken;
        };
        set_waker(slot, waker);
        let head = state.queue.keys().next().copied();
        if head == Some(ticket) {
            if state.head_since.map(|(t, _)| t) != Some(ticket) {
                state.head_since = Some((ticket, now));
            }
        } else if !self.store.answers_locally()
            || !state.may_backfill(ticket, now, self.config.backfill, self.config.window)
        {
            return Begin::Woken;
        }
        if permits_full {
            if !models.permit_waiters.iter().any(|w| w.will_wake(waker)) {
                models.permit_waiters.push(waker.clone());
            }
            return Begin::Woken;
        }
        let limits = state.limits(now, &self.config);
        // The estimator's input, corrected by what usage has taught about it.
        let input = (cost.input as f64 * state.input_ratio).round() as u64;
        // The output: reserved as expected when the server counts it on admission.
        let reserves_output = state.reserves_output(&self.config);
        let output = if reserves_output {
            state.expected_output(cost.output, self.config.learn_output)
        } else {
            // Counted by the server when generated: charged when the usage says how much.
            0
        };
        let charged = input.saturating_add(output);
        state.in_flight += 1;
        models.in_flight += 1;
        drop(models);
        let answer = self
            .store
            .try_take(key, limits, charged.saturating_mul(MILLI));
        Begin::Ask(answer, limits, charged, reserves_output)
    }

    /// The store took the budget: `ticket` leaves the queue, admitted.
    pub(crate) fn admitted(
        self: &Arc<Self>,
        key: &Key,
        ticket: u64,
        cost: Cost,
        charged: u64,
        limits: Limits,
        at: Taken,
    ) -> Reservation {
        let mut models = self.lock();
        if let Some(state) = models.map.get_mut(key) {
            state.queue.remove(&ticket);
            wake_head(state);
        }
        Reservation {
            shared: Arc::clone(self),
            key: key.clone(),
            tokens: charged,
            input: cost.input,
            output: cost.output,
            limits,
            at,
            admitted_at: Instant::now(),
            usage: None,
            waited: Duration::ZERO,
            failed: false,
            // Set by the caller: whether the tokens it asked the store for included the
            // expected output ([`Begin::Ask`]).
            reserved_output: false,
        }
    }

    /// The store said not yet (or failed) to `ticket`: the permit goes back; the ticket keeps
    /// its place in line. When it is first in line, the requests behind it that may take the
    /// room it cannot use ([`Config::backfill`]) are woken to try.
    pub(crate) fn not_yet(&self, key: &Key, ticket: u64) {
        self.finish(key);
        if self.config.backfill == 0 || !self.store.answers_locally() {
            return;
        }
        let mut models = self.lock();
        if let Some(state) = models.map.get_mut(key) {
            if state.queue.keys().next() == Some(&ticket) {
                for waker in state
                    .queue
                    .values_mut()
                    .skip(1)
                    .take(self.config.backfill)
                    .filter_map(Option::take)
                {
                    waker.wake();
                }
            }
        }
    }

    /// Gives back or charges the difference between what was reserved and what was used.
    ///
    /// A refund whose charge is still in the window comes out of the window. One settled after
    /// the charge left it cannot (the window's seconds are past) and becomes credit instead,
    /// set against later debt, so that over time the budget is charged what the server counted,
    /// neither the larger of estimate and usage nor less.
    fn settle(
        &self,
        key: &Key,
        reserved: u64,
        used: u64,
        at: Taken,
        limits: Limits,
        admitted_at: Instant,
    ) {
        // A usage above the reservation by more than a minute of the model's token quota is
        // not believed: one bogus `total_tokens` (a proxy's bug, a hostile upstream) would
        // otherwise be owed for as long as it says, blocking the model for days.
        let ceiling = reserved.saturating_add(minute_of_tokens(limits));
        if used > ceiling {
            tracing::warn!(
                gen_ai.request.model = &*key.model,
                gen_ai.usage.total_tokens = used,
                dashscope.budget.debt_tokens = ceiling - reserved,
                "TokenBudget: usage reported above a minute of the quota; owing only a minute's worth"
            );
        }
        let used = used.min(ceiling);
        let mut delta = i64::try_from(used.saturating_mul(MILLI))
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(reserved.saturating_mul(MILLI)).unwrap_or(i64::MAX));
        if delta == 0 {
            return;
        }
        let in_window = Instant::now().saturating_duration_since(admitted_at) < limits.window;
        if !(delta < 0 && in_window) {
            let mut models = self.lock();
            if let Some(state) = models.map.get_mut(key) {
                if delta < 0 {
                    // Past the window: kept as credit, up to one window's limit.
                    let cap = if limits.tokens == u64::MAX {
                        0
                    } else {
                        limits.tokens
                    };
                    state.credit = state.credit.saturating_add(delta.unsigned_abs()).min(cap);
                    return;
                }
                let offset = state.credit.min(delta.unsigned_abs());
                state.credit -= offset;
                delta -= i64::try_from(offset).unwrap_or(0);
            }
            if delta == 0 {
                return;
            }
        }
        self.store.adjust(key, limits, at, delta);
        if delta < 0 {
            let mut models = self.lock();
            if let Some(state) = models.map.get_mut(key) {
                wake_head(state);
            }
        } else {
            tracing::debug!(
                gen_ai.request.model = &*key.model,
                dashscope.budget.debt_tokens = delta.unsigned_abs() / MILLI,
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

    /// A response reported `reported` output tokens for a request whose output cap was `cap`:
    /// the model's expected output share moves towards their ratio.
    fn learn_output(&self, key: &Key, cap: u64, reported: u64) {
        if !self.config.learn_output || cap == 0 {
            return;
        }
        let mut models = self.lock();
        let Some(state) = models.map.get_mut(key) else {
            return;
        };
        let seen = (reported as f64 / cap as f64).clamp(MIN_OUTPUT_SHARE, 1.0);
        state.output_share += OUTPUT_LEARNING * (seen - state.output_share);
        state.output_share_sq += OUTPUT_LEARNING * (seen * seen - state.output_share_sq);
    }

    /// The output an answer of cap `cap` is expected to use: the learned share of it (the whole
    /// cap when the budget does not learn it).
    fn expected_output(&self, key: &Key, cap: u64) -> u64 {
        let learn = self.config.learn_output;
        match self.lock().map.get(key) {
            Some(state) => state.expected_output(cap, learn),
            None => cap,
        }
    }

    /// A request of `key` finished: its permit is free.
    pub(crate) fn finish(&self, key: &Key) {
        let mut models = self.lock();
        models.in_flight = models.in_flight.saturating_sub(1);
        if let Some(state) = models.map.get_mut(key) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        for waker in models.permit_waiters.drain(..) {
            waker.wake();
        }
    }

    /// The server answered `key`'s request: adapt the rates, and tell how it counts output.
    pub(crate) fn observe(&self, key: &Key, throttled: Option<RateLimitKind>) {
        if !self.config.adaptive && !self.config.detect_output_charge {
            return;
        }
        let now = Instant::now();
        let mut models = self.lock();
        let Some(state) = models.map.get_mut(key) else {
            return;
        };
        if self.config.detect_output_charge && !state.reserves_output(&self.config) {
            state.outcomes += 1;
            if throttled == Some(RateLimitKind::Tokens) {
                state.token_refusals += 1;
                if state.token_refusals >= DETECT_REFUSALS {
                    // A server that counts output when written refuses tokens the budget had
                    // room for about once in 2,000; this one counts answers on admission.
                    state.reserve_output = true;
                    tracing::info!(
                        gen_ai.request.model = &*key.model,
                        dashscope.budget.token_refusals = state.token_refusals,
                        "TokenBudget: the server refuses tokens the budget had room for; \
                         reserving answers' expected output before sending from now on"
                    );
                }
            }
            if state.outcomes >= DETECT_PERIOD {
                state.outcomes = 0;
                state.token_refusals = 0;
            }
        }
        if !self.config.adaptive {
            return;
        }
        match throttled {
            None => {
                state.request_factor = (state.request_factor + RECOVER).min(1.0);
                state.token_factor = (state.token_factor + RECOVER).min(1.0);
            }
            Some(_) if state.quota.requests == 0 && state.quota.tokens == 0 => {
                // An unlimited quota has no rate to lower (the default of `RecommendedStack`).
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
                    gen_ai.request.model = &*key.model,
                    error.type = crate::error::ErrorClass::RateLimited(kind).as_str(),
                    dashscope.budget.request_factor = state.request_factor,
                    dashscope.budget.token_factor = state.token_factor,
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
        let limits = {
            let models = self.lock();
            match models.map.get(key) {
                Some(state) => state.limits(now, &self.config),
                None => return 0,
            }
        };
        self.store.tokens_used(key, limits).div_ceil(MILLI)
    }

    /// What `key` may still be sent in its window now: `(limits, requests used, tokens used)`
    /// in thousandths; the quota's full limits for a model without state.
    pub(crate) fn headroom(&self, key: &Key) -> (Quota, Limits, Option<u64>, u64) {
        let now = Instant::now();
        let (quota, limits, known) = {
            let models = self.lock();
            match models.map.get(key) {
                Some(state) => (state.quota, state.limits(now, &self.config), true),
                None => {
                    let quota = self.quota_for(key);
                    let fresh = ModelState::new(quota, now);
                    (quota, fresh.limits(now, &self.config), false)
                }
            }
        };
        if !known {
            return (quota, limits, Some(0), 0);
        }
        let requests = self.store.requests_used(key, limits);
        (quota, limits, requests, self.store.tokens_used(key, limits))
    }

    /// Models with state.
    pub(crate) fn model_count(&self) -> usize {
        self.lock().map.len()
    }
}

/// The tokens a minute of `limits` allows (the window's limit scaled to 60 s; `u64::MAX` when
/// tokens are unlimited).
fn minute_of_tokens(limits: Limits) -> u64 {
    if limits.tokens == u64::MAX {
        return u64::MAX;
    }
    let window_ms = limits.window.as_millis().max(1);
    let per_minute = u128::from(limits.tokens) * 60_000 / window_ms / u128::from(MILLI);
    u64::try_from(per_minute).unwrap_or(u64::MAX)
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
    map: &'a mut KeyMap<ModelState>,
    key: Key,
    quota: Quota,
    now: Instant,
    max_models: usize,
    config: &Config,
    store: &dyn BudgetStore,
) -> (Key, &'a mut ModelState) {
    if !map.contains_key(&key) && map.len() >= max_models {
        let idle = map
            .iter()
            .find_map(|(k, s)| s.is_idle(k, now, config, store).then(|| k.clone()));
        match idle {
            Some(idle) => {
                map.remove(&idle);
                store.forget(&idle);
            }
            None => {
                tracing::warn!(
                    gen_ai.request.model = &*key.model,
                    max_models,
                    "TokenBudget: every tracked model is busy; counting this one in the shared \
                     overflow budget (raise max_models if this model is real)"
                );
                let overflow = Key::from_parts(None, Arc::from("*"));
                let state = map
                    .entry(overflow.clone())
                    .or_insert_with(|| ModelState::new(config.default, now));
                return (overflow, state);
            }
        }
    }
    let state = map
        .entry(key.clone())
        .or_insert_with(|| ModelState::new(quota, now));
    (key, state)
}

impl ModelState {
    fn new(quota: Quota, now: Instant) -> Self {
        ModelState {
            quota,
            queue: BTreeMap::new(),
            in_flight: 0,
            request_factor: 1.0,
            token_factor: 1.0,
            last_decrease: None,
            created: now,
            input_ratio: 1.0,
            output_share: 1.0,
            output_share_sq: 1.0,
            credit: 0,
            head_since: None,
            reserve_output: false,
            outcomes: 0,
            token_refusals: 0,
        }
    }

    /// Whether this model's requests reserve their expected output before sending: set so, or
    /// learned from the server's refusals.
    fn reserves_output(&self, config: &Config) -> bool {
        config.output_charge == OutputCharge::OnAdmission || self.reserve_output
    }

    /// Whether `ticket`, not first in line, may try for room now: it is among the `backfill`
    /// requests behind the first, and the first has waited less than a `window` (after that, the
    /// room is kept for it, so that small requests cannot hold a large one back for long).
    fn may_backfill(&self, ticket: u64, now: Instant, backfill: usize, window: Duration) -> bool {
        if backfill == 0 {
            return false;
        }
        let Some((head, since)) = self.head_since else {
            return false;
        };
        self.queue.keys().next() == Some(&head)
            && now.saturating_duration_since(since) < window
            && self
                .queue
                .keys()
                .skip(1)
                .take(backfill)
                .any(|&t| t == ticket)
    }

    /// The output an answer of cap `cap` is expected to use: the learned share of it, or the
    /// whole cap when the budget does not `learn` it.
    fn expected_output(&self, cap: u64, learn: bool) -> u64 {
        if learn {
            (cap as f64 * self.expected_output_share()).ceil() as u64
        } else {
            cap
        }
    }

    /// The share of its output cap a request is charged: the learned mean plus a margin of
    /// its spread, at most the whole cap.
    fn expected_output_share(&self) -> f64 {
        let spread = (self.output_share_sq - self.output_share * self.output_share)
            .max(0.0)
            .sqrt();
        (self.output_share + OUTPUT_MARGIN * spread).min(1.0)
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
    fn limits(&self, now: Instant, config: &Config) -> Limits {
        let warm = self.warm_up(now, config);
        let per_window = |per_minute: u32, factor: f64| {
            if per_minute == 0 {
                return u64::MAX;
            }
            let exact = f64::from(per_minute) * MILLI as f64 * config.window.as_secs_f64() / 60.0;
            // At least one request's or token's worth, so that a tiny quota still admits.
            ((exact * factor * warm) as u64).max(MILLI)
        };
        Limits {
            requests: per_window(self.quota.requests, self.request_factor),
            tokens: per_window(self.quota.tokens, self.token_factor),
            window: config.window,
        }
    }

    fn is_idle(&self, key: &Key, now: Instant, config: &Config, store: &dyn BudgetStore) -> bool {
        self.queue.is_empty()
            && self.in_flight == 0
            && self.request_factor >= 1.0
            && self.token_factor >= 1.0
            && store.is_idle(key, self.limits(now, config))
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
            tracing::debug!(
                gen_ai.request.model = &*self.key.model,
                gen_ai.usage.input_tokens = usage.input_tokens,
                gen_ai.usage.output_tokens = usage.output_tokens,
                dashscope.budget.tokens = self.tokens,
                "TokenBudget: settled with the reported usage"
            );
            self.shared
                .learn_input(&self.key, self.input, usage.input_tokens);
            self.shared
                .learn_output(&self.key, self.output, usage.output_tokens);
            self.shared.settle(
                &self.key,
                self.tokens,
                usage.total_tokens,
                self.at,
                self.limits,
                self.admitted_at,
            );
        } else if !self.failed && !self.reserved_output {
            // An answer whose usage never came (a stream without `include_usage`, a body not
            // read to its end, a call cancelled after it was sent): the server counts what it
            // generated all the same, so the output the model's answers are expected to use is
            // owed now.
            let expected = self.shared.expected_output(&self.key, self.output);
            self.shared.settle(
                &self.key,
                self.tokens,
                self.tokens.saturating_add(expected),
                self.at,
                self.limits,
                self.admitted_at,
            );
        }
        self.shared.finish(&self.key);
    }
}

impl Reservation {
    /// The server refused the request before generating anything: its tokens come back (the
    /// request still counts against the request rate).
    pub(crate) fn refund_tokens(&mut self) {
        self.shared.settle(
            &self.key,
            self.tokens,
            0,
            self.at,
            self.limits,
            self.admitted_at,
        );
        self.tokens = 0;
        self.usage = None;
    }
}
