//! The response future and body of [`TokenBudgetService`](super::TokenBudgetService).

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::state::{Begin, Cost, Key, Reservation, Shared};
use super::store::{Admission, Limits, StoreFuture};
use crate::error::{BoxError, DashScopeError, ErrorClass, RateLimitKind, into_dashscope_error};
use crate::extensions::{BudgetWait, UsageSlot};
use crate::future::SyncFuture;
use crate::guard::Held;
use crate::outcome::failure_of;

/// A place in a model's queue; leaving it (by drop) dequeues, so a cancelled request holds
/// nothing and is charged nothing.
struct Queued {
    shared: Arc<Shared>,
    key: Key,
    ticket: u64,
    /// Set once admitted: the ticket already left the queue.
    admitted: bool,
    /// Set while a store across the network is asked: a permit is held for the answer.
    asking: bool,
    /// The tokens last asked of the store include the expected output.
    reserved_output: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.asking {
            self.shared.finish(&self.key);
        }
        if !self.admitted {
            self.shared.dequeue(&self.key, self.ticket);
        }
    }
}

pin_project! {
    /// Response future of [`TokenBudgetService`](super::TokenBudgetService): waits for the
    /// request's model to have room, takes its budget, then calls the inner service. Polled
    /// again after it completed, it returns an error rather than panicking.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // Until admitted: the request, the readied service and the place in the queue.
        request: Option<Request<B>>,
        service: Option<S>,
        queued: Option<Queued>,
        cost: Cost,
        started: Instant,
        deadline: Option<Instant>,
        #[pin]
        sleep: Option<Sleep>,
        // Whether the request had to wait for room (not just for a store's answer). Then the
        // readied service was given up for an unreadied clone while waiting: it must be readied
        // again once admitted.
        delayed: bool,
        // A store across the network answering (the in-process store answers at once), and
        // when to stop waiting for it (with max_wait).
        asking: Option<(SyncFuture<Result<Admission, BoxError>>, Limits, u64, Option<Instant>)>,
        // Once admitted, until the response body ends.
        held: Option<Held<Reservation>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Admitting,
        // Admitted after a wait: readying the inner service again before the call.
        Readying,
        Calling {
            #[pin]
            future: F,
        },
        Done,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// A request that is not budgeted (not a chat request): called at once.
    pub(crate) fn passthrough(mut service: S, request: Request<B>) -> Self {
        let future = service.call(request);
        ResponseFuture {
            state: State::Calling { future },
            request: None,
            service: None,
            queued: None,
            cost: Cost {
                input: 0,
                output: 0,
            },
            started: Instant::now(),
            deadline: None,
            sleep: None,
            delayed: false,
            asking: None,
            held: None,
        }
    }

    pub(crate) fn admitting(
        service: S,
        request: Request<B>,
        shared: Arc<Shared>,
        key: Key,
        cost: Cost,
    ) -> Self {
        let started = Instant::now();
        let deadline = shared
            .config
            .max_wait
            .and_then(|wait| started.checked_add(wait));
        let (key, ticket) = shared.enqueue(key);
        ResponseFuture {
            state: State::Admitting,
            request: Some(request),
            service: Some(service),
            queued: Some(Queued {
                shared,
                key,
                ticket,
                admitted: false,
                asking: false,
                reserved_output: false,
            }),
            cost,
            started,
            deadline,
            sleep: None,
            delayed: false,
            asking: None,
            held: None,
        }
    }
}

thread_local! {
    /// Usage slots of requests that are over, emptied, for the next requests on this thread:
    /// a slot is an `Arc`, and a request would otherwise allocate one.
    static SPARE_SLOTS: RefCell<Vec<UsageSlot>> = const { RefCell::new(Vec::new()) };
}

/// How many emptied usage slots a thread keeps.
const MAX_SPARE_SLOTS: usize = 16;

/// An empty usage slot: one a request of this thread is done with, or a new one.
fn spare_slot() -> UsageSlot {
    SPARE_SLOTS
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `slot` for a later request, if nothing else holds it any more (the classifier lets go
/// of it when the body ends; a caller or an inner service may still hold a copy).
fn recycle_slot(slot: UsageSlot) {
    if let Some(slot) = slot.into_reusable() {
        let _ = SPARE_SLOTS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < MAX_SPARE_SLOTS {
                spare.push(slot);
            }
        });
    }
}

/// With `max_wait`, the least time a store across the network is given to answer, however
/// little of `max_wait` is left (so that `max_wait(Duration::ZERO)` still works with one).
const STORE_ROUND_TRIP: Duration = Duration::from_secs(1);

/// Polls the wake-up `sleep`, made on first use and moved to `at` when it is set elsewhere.
fn poll_sleep_until(
    mut sleep: Pin<&mut Option<Sleep>>,
    at: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match sleep.as_mut().as_pin_mut() {
        Some(sleep) if sleep.deadline() != at => sleep.reset(at),
        Some(_) => {}
        None => sleep.set(Some(tokio::time::sleep_until(at))),
    }
    match sleep.as_pin_mut() {
        Some(sleep) => sleep.poll(cx),
        None => Poll::Ready(()),
    }
}

/// The `tracing` event of a request refused for waiting past `max_wait`.
fn refused(key: &Key, wait: Duration, max_wait: Duration) {
    tracing::warn!(
        gen_ai.request.model = &*key.model,
        error.type = ErrorClass::RateLimited(RateLimitKind::Local).as_str(),
        wait_ms = wait.as_millis() as u64,
        dashscope.budget.max_wait_ms = max_wait.as_millis() as u64,
        "giving up: TokenBudget has no room within max_wait; the request was not sent"
    );
}

/// The error of a request that would wait past `max_wait`.
fn over_max_wait(key: &Key, wait: Duration, max_wait: Duration) -> DashScopeError {
    DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Local))
        .with_retry_after(wait)
        .with_message(format!(
            "TokenBudget: model `{}` has no room for this request for {:.3}s, over max_wait \
             {:.3}s; it was not sent (retry later, or fall back to a model with room)",
            key.model,
            wait.as_secs_f64(),
            max_wait.as_secs_f64()
        ))
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<BudgetBody<R>>, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Admitting => {
                    let (answer, limits, charged) = match this.asking.as_mut() {
                        Some((asking, limits, charged, until)) => {
                            let Poll::Ready(answer) = asking.poll(cx) else {
                                // max_wait bounds the wait for the store's answer too.
                                let Some(deadline) = *until else {
                                    return Poll::Pending;
                                };
                                ready!(poll_sleep_until(this.sleep.as_mut(), deadline, cx));
                                let Some(queued) = this.queued.take() else {
                                    unreachable!("a request is queued until it is admitted");
                                };
                                let waited = deadline.saturating_duration_since(*this.started);
                                let err = DashScopeError::new(ErrorClass::Connection).with_message(
                                    format!(
                                        "TokenBudget: the budget store did not answer for model \
                                         `{}` within {:.3}s (max_wait, and at least {:.3}s for a \
                                         round trip); the request was not sent (check the store, \
                                         e.g. Redis)",
                                        queued.key.model,
                                        waited.as_secs_f64(),
                                        STORE_ROUND_TRIP.as_secs_f64()
                                    ),
                                );
                                tracing::warn!(
                                    gen_ai.request.model = &*queued.key.model,
                                    error.type = err.class().as_str(),
                                    wait_ms = waited.as_millis() as u64,
                                    "giving up: the budget store did not answer within max_wait; \
                                     the request was not sent"
                                );
                                // Dropping the place in the queue gives the permit back.
                                drop(queued);
                                *this.asking = None;
                                this.state.set(State::Done);
                                return Poll::Ready(Err(err));
                            };
                            let (limits, charged) = (*limits, *charged);
                            *this.asking = None;
                            if let Some(queued) = this.queued.as_mut() {
                                queued.asking = false;
                            }
                            (Some(answer), limits, charged)
                        }
                        None => {
                            let Some(queued) = this.queued.as_mut() else {
                                unreachable!("a request is queued until it is admitted");
                            };
                            match queued.shared.begin(
                                &queued.key,
                                queued.ticket,
                                *this.cost,
                                cx.waker(),
                            ) {
                                Begin::Ask(
                                    StoreFuture::Ready(answer),
                                    limits,
                                    charged,
                                    reserved_output,
                                ) => {
                                    queued.reserved_output = reserved_output;
                                    (answer, limits, charged)
                                }
                                Begin::Ask(
                                    StoreFuture::Pending(asking),
                                    limits,
                                    charged,
                                    reserved_output,
                                ) => {
                                    queued.reserved_output = reserved_output;
                                    queued.asking = true;
                                    // A round trip gets at least STORE_ROUND_TRIP, so that
                                    // max_wait(ZERO) still works with a store across the network.
                                    let until = this.deadline.map(|deadline| {
                                        let now = Instant::now();
                                        deadline
                                            .max(now.checked_add(STORE_ROUND_TRIP).unwrap_or(now))
                                    });
                                    *this.asking =
                                        Some((SyncFuture::new(asking), limits, charged, until));
                                    continue;
                                }
                                Begin::Woken => (None, Limits::default(), 0),
                            }
                        }
                    };
                    let Some(queued) = this.queued.as_ref() else {
                        unreachable!("a request is queued until it is admitted");
                    };
                    let now = Instant::now();
                    let wake_at = match answer {
                        Some(Ok(Admission::Taken(at))) => {
                            let Some(mut queued) = this.queued.take() else {
                                unreachable!("checked above");
                            };
                            queued.admitted = true;
                            let mut reservation = queued.shared.admitted(
                                &queued.key,
                                queued.ticket,
                                *this.cost,
                                charged,
                                limits,
                                at,
                            );
                            reservation.reserved_output = queued.reserved_output;
                            let (Some(mut request), Some(mut service)) =
                                (this.request.take(), this.service.take())
                            else {
                                unreachable!("taken once, here");
                            };
                            let slot = match request.extensions().get::<UsageSlot>() {
                                Some(slot) => slot.clone(),
                                None => {
                                    let slot = spare_slot();
                                    request.extensions_mut().insert(slot.clone());
                                    slot
                                }
                            };
                            reservation.usage = Some(slot);
                            // After a wait, not sent until the inner service is readied again
                            // and called: dropped or failed before that, no answer is
                            // generated, so none is owed.
                            reservation.failed = *this.delayed;
                            let waited = if *this.delayed {
                                now.saturating_duration_since(*this.started)
                            } else {
                                Duration::ZERO
                            };
                            reservation.waited = waited;
                            if !waited.is_zero() {
                                tracing::debug!(
                                    gen_ai.request.model = &*reservation.key.model,
                                    wait_ms = waited.as_millis() as u64,
                                    dashscope.budget.tokens = reservation.tokens,
                                    "TokenBudget: admitted after waiting"
                                );
                            } else {
                                tracing::trace!(
                                    gen_ai.request.model = &*reservation.key.model,
                                    dashscope.budget.tokens = reservation.tokens,
                                    "TokenBudget: admitted"
                                );
                            }
                            *this.held = Some(Held::new(reservation));
                            this.sleep.set(None);
                            if *this.delayed {
                                *this.request = Some(request);
                                *this.service = Some(service);
                                this.state.set(State::Readying);
                                continue;
                            }
                            let future = service.call(request);
                            this.state.set(State::Calling { future });
                            continue;
                        }
                        Some(Ok(Admission::Wait(wait))) => {
                            queued.shared.not_yet(&queued.key, queued.ticket);
                            // A store that rounds a sub-millisecond wait down to zero is not
                            // asked again in a busy loop.
                            let wait = wait.max(Duration::from_millis(1));
                            Some(
                                now.checked_add(wait)
                                    .unwrap_or(now + Duration::from_secs(86_400)),
                            )
                        }
                        Some(Err(source)) => {
                            queued.shared.not_yet(&queued.key, queued.ticket);
                            // A store that says what it means (e.g. RedisStore failing closed
                            // with RateLimited(Local)) is passed on as it is.
                            let err = match source.downcast::<DashScopeError>() {
                                Ok(err) => *err,
                                Err(source) => DashScopeError::new(ErrorClass::Connection)
                                    .with_message(format!(
                                        "TokenBudget: the budget store failed for model `{}`; \
                                         the request was not sent (check the store, e.g. Redis)",
                                        queued.key.model
                                    ))
                                    .with_source(source),
                            };
                            tracing::warn!(
                                gen_ai.request.model = &*queued.key.model,
                                error.type = err.class().as_str(),
                                error = %err,
                                "giving up: the budget store failed; the request was not sent"
                            );
                            this.state.set(State::Done);
                            this.queued.take();
                            return Poll::Ready(Err(err));
                        }
                        None => None,
                    };
                    let first_wait = !*this.delayed;
                    if first_wait {
                        // Waiting for quota must not hold the inner service's readiness (a
                        // `Buffer` slot, a `ConcurrencyLimit` permit): swap the readied service
                        // for a clone, and ready that one once admitted.
                        if let Some(service) = this.service.as_mut() {
                            *service = service.clone();
                        }
                        *this.delayed = true;
                    }
                    // Not yet: fail now if the wait would end past max_wait.
                    if let (Some(deadline), Some(at)) = (*this.deadline, wake_at) {
                        if at > deadline {
                            let max_wait = deadline.saturating_duration_since(*this.started);
                            let err = over_max_wait(
                                &queued.key,
                                at.saturating_duration_since(now),
                                max_wait,
                            );
                            refused(&queued.key, at.saturating_duration_since(now), max_wait);
                            this.state.set(State::Done);
                            this.queued.take();
                            return Poll::Ready(Err(err));
                        }
                    }
                    let Some(at) = wake_at.or(*this.deadline) else {
                        return Poll::Pending;
                    };
                    if wake_at.is_none() && now >= at {
                        // Queued behind others (or for a permit) past max_wait.
                        let max_wait = at.saturating_duration_since(*this.started);
                        let err = over_max_wait(&queued.key, max_wait, max_wait);
                        refused(&queued.key, max_wait, max_wait);
                        this.state.set(State::Done);
                        this.queued.take();
                        return Poll::Ready(Err(err));
                    }
                    if first_wait {
                        tracing::debug!(
                            gen_ai.request.model = &*queued.key.model,
                            wait_ms = wake_at
                                .map(|at| at.saturating_duration_since(now).as_millis() as u64),
                            "TokenBudget: no room yet; waiting"
                        );
                    }
                    ready!(poll_sleep_until(this.sleep.as_mut(), at, cx));
                }
                StateProj::Readying => {
                    let Some(service) = this.service.as_mut() else {
                        unreachable!("the service waits here until it is ready");
                    };
                    if let Err(err) = ready!(service.poll_ready(cx)) {
                        // Not sent: the tokens come back; the permit is released.
                        let err = into_dashscope_error(err);
                        if let Some(mut held) = this.held.take() {
                            held.get_mut().refund_tokens();
                            held.complete();
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(Err(err));
                    }
                    let (Some(mut service), Some(request)) =
                        (this.service.take(), this.request.take())
                    else {
                        unreachable!("both wait here until the call");
                    };
                    if let Some(held) = this.held.as_mut() {
                        held.get_mut().failed = false;
                    }
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(into_dashscope_error);
                    this.state.set(State::Done);
                    let mut held = this.held.take();
                    if let Some(reservation) = held.as_mut().map(Held::get_mut) {
                        settle_outcome(reservation, &result);
                    }
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let (mut parts, body) = response.into_parts();
                            // The wait is the time to admission, not the call's.
                            if let Some(reservation) = held.as_ref().map(Held::get) {
                                let wait = reservation.waited;
                                if !wait.is_zero() {
                                    parts.extensions.insert(BudgetWait(wait));
                                }
                            }
                            Ok(Response::from_parts(
                                parts,
                                BudgetBody { inner: body, held },
                            ))
                        }
                        Err(err) => {
                            if let Some(held) = held {
                                held.complete();
                            }
                            Err(err)
                        }
                    });
                }
                StateProj::Done => {
                    return Poll::Ready(Err(DashScopeError::new(ErrorClass::InvalidRequest)
                        .with_message("TokenBudget's response future was polled after it completed")
                        .with_advice("poll a future only until it returns Ready")));
                }
            }
        }
    }
}

/// What the outcome of the call says to the budget: 429s lower the model's rates, successes
/// raise them back; a request the server refused before generating gets its tokens back.
fn settle_outcome<R>(reservation: &mut Reservation, result: &Result<Response<R>, DashScopeError>) {
    let failure = failure_of(result);
    reservation.failed = failure.is_some();
    let throttled = match failure.map(|f| f.class()) {
        Some(ErrorClass::RateLimited(RateLimitKind::Local)) => return,
        Some(ErrorClass::RateLimited(kind)) => Some(kind),
        _ => None,
    };
    if failure.is_none() || throttled.is_some() {
        reservation.shared.observe(&reservation.key, throttled);
    }
    let refused = failure.is_some_and(|f| {
        f.status().is_some()
            && !matches!(
                f.class(),
                ErrorClass::ServerError
                    | ErrorClass::Unavailable
                    | ErrorClass::Timeout
                    | ErrorClass::Connection
                    | ErrorClass::StreamInterrupted
            )
    });
    if refused {
        reservation.refund_tokens();
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response body of [`TokenBudgetService`](super::TokenBudgetService): the inner body,
    /// unchanged. When it ends, the request's reservation is settled against the usage the
    /// response reported, and its concurrency permit is released; dropped or failed part-way,
    /// the permit is released and the estimate stays charged (the server billed what it sent).
    pub struct BudgetBody<B> {
        #[pin]
        inner: B,
        held: Option<Held<Reservation>>,
    }
}

impl<B> BudgetBody<B> {
    /// The body inside; the reservation is released as if the body had been dropped.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for BudgetBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            None => {
                if let Some(held) = this.held.take() {
                    let slot = held.get().usage.clone();
                    held.complete();
                    if let Some(slot) = slot {
                        recycle_slot(slot);
                    }
                }
            }
            Some(Err(_)) => {
                // Failed part-way: keep the charge, free the permit.
                this.held.take();
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for BudgetBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetBody")
            .field("inner", &self.inner)
            .field("settled", &self.held.is_none())
            .finish()
    }
}
