//! The response future of [`RetryWithJitterService`](super::RetryWithJitterService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::backoff::{backoff, on_top_of, uniform};
use super::budget::Withdrawn;
use super::throttle::Queued;
use super::{Config, ReplayBody, Shared};
use crate::error::{BoxError, DashScopeError, ErrorClass, into_dashscope_error};
use crate::extensions::Attempts;
use crate::fallback::default_switch;
use crate::guard::{Ending, Held, Release};
use crate::outcome::{Failure, failure_of};
use crate::spare::Spare;

/// How much of a response dropped for a retry is read (and discarded) while the backoff runs,
/// so that the connection it came on can be reused.
pub(crate) const DRAIN_LIMIT: usize = 64 * 1024;

pin_project! {
    /// Response future of [`RetryWithJitterService`](super::RetryWithJitterService).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B, R>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // The body of a response dropped for a retry, read to its end (up to `DRAIN_LIMIT`)
        // while the backoff runs.
        #[pin]
        drain: Drain<R>,
        service: S,
        // A copy of the request for the next attempt; `None` when the body cannot be replayed.
        spare: Option<Spare<B>>,
        // While a retry waits: the failure it replaces, returned if the retry is not sent.
        last: Option<DashScopeError>,
        // While a retry waits: what it holds (a retry withdrawn from the budget, or a place
        // among the throttled retries), released when it is sent or the future dropped.
        ticket: Option<Held<Ticket>>,
        attempts: u32,
        // The request carries `FallbackAvailable`: rate-limited failures go straight back to
        // the fallback above, which has another model for them.
        hand_off: bool,
        // The request carries `FallbackProbe`: every failure goes straight back to the
        // fallback above, which probes a model after its cooldown.
        probe: bool,
        started: Instant,
        previous_delay: Duration,
        config: Config,
        shared: Arc<Shared>,
        // `dashscope.retry`, entered while the future is polled (DEBUG: `Span::none()`, free,
        // when off).
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        // The backoff, then the inner service's readiness. Once the backoff has passed
        // (`slept`), `sleep` is reset to the deadline, if there is one, and raced with
        // readiness.
        Waiting {
            #[pin]
            sleep: Sleep,
            slept: bool,
        },
    }
}

pin_project! {
    #[project = DrainProj]
    enum Drain<R> {
        Body {
            #[pin]
            body: R,
            read: usize,
        },
        Done,
    }
}

/// What a scheduled retry holds until it is sent.
pub(crate) enum Ticket {
    /// A retry from the budget: kept once sent, refunded if the retry never is.
    Budget(Withdrawn),
    /// A place among the rate-limited retries waiting for a live server.
    Throttled(Queued),
}

impl Release for Ticket {
    fn release(self, ending: Ending) {
        match self {
            Ticket::Budget(withdrawn) => withdrawn.release(ending),
            Ticket::Throttled(queued) => queued.release(ending),
        }
    }
}

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(
        service: S,
        future: S::Future,
        spare: Option<Spare<B>>,
        hand_off: bool,
        probe: bool,
        config: Config,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            drain: Drain::Done,
            service,
            spare,
            last: None,
            ticket: None,
            attempts: 1,
            hand_off,
            probe,
            started: Instant::now(),
            previous_delay: config.base_delay,
            config,
            shared,
            span: tracing::debug_span!("dashscope.retry", attempt = 1u32),
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    R: Body,
{
    type Output = Result<Response<R>, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(into_dashscope_error);
                    let failure = failure_of(&result);
                    if failure.is_none() {
                        this.shared.throttle.success();
                    }
                    let scheduled = failure
                        .filter(|failure| this.shared.retries(failure))
                        .filter(|failure| {
                            let plan_wide =
                                result.as_ref().is_err_and(DashScopeError::is_plan_wide);
                            let rate_limited =
                                matches!(failure.class(), ErrorClass::RateLimited(_));
                            // A probe's failure goes back only when the fallback switches on
                            // it (its default rule): another one, a connection error say, would
                            // come back to the caller untried.
                            let probe_switches = *this.probe
                                && match &result {
                                    Err(err) => default_switch(err),
                                    Ok(_) => default_switch(&DashScopeError::new(failure.class())),
                                };
                            let handed_off =
                                !plan_wide && (probe_switches || (*this.hand_off && rate_limited));
                            if handed_off {
                                tracing::debug!(
                                    attempt = *this.attempts,
                                    dashscope.fallback.probe = *this.probe,
                                    "not retrying: a fallback model takes the request"
                                );
                            }
                            !handed_off
                        })
                        .and_then(|failure| {
                            let retry = next_retry(
                                &failure,
                                *this.attempts,
                                this.spare.as_ref(),
                                this.started,
                                this.previous_delay,
                                this.config,
                                this.shared,
                            )?;
                            Some((failure, retry))
                        });
                    let Some((failure, (delay, ticket))) = scheduled else {
                        let attempts = *this.attempts;
                        return Poll::Ready(match result {
                            Ok(mut response) => {
                                response.extensions_mut().insert(Attempts(attempts));
                                Ok(response)
                            }
                            Err(err) => Err(err.with_attempts(attempts)),
                        });
                    };
                    match &result {
                        Ok(response) => tracing::info!(
                            gen_ai.request.model = this.spare.as_ref().and_then(Spare::model),
                            error.type = failure.class().as_str(),
                            http.response.status_code = response.status().as_u16(),
                            attempt = *this.attempts,
                            delay_ms = delay.as_millis() as u64,
                            "retrying after a delay"
                        ),
                        Err(err) => tracing::info!(
                            gen_ai.request.model = this.spare.as_ref().and_then(Spare::model),
                            error.type = err.class().as_str(),
                            dashscope.code = err.code(),
                            dashscope.request_id = err.request_id(),
                            attempt = *this.attempts,
                            delay_ms = delay.as_millis() as u64,
                            "retrying after a delay"
                        ),
                    }
                    *this.last = Some(match result {
                        Ok(response) => {
                            // Keep what the response said, and read its body away while the
                            // backoff runs, so that its connection can be reused.
                            let (parts, body) = response.into_parts();
                            this.drain.set(Drain::Body { body, read: 0 });
                            error_of_head(&parts, &failure)
                        }
                        Err(err) => err,
                    });
                    *this.ticket = ticket;
                    *this.previous_delay = delay;
                    this.state.set(State::Waiting {
                        sleep: tokio::time::sleep(delay),
                        slept: false,
                    });
                }
                StateProj::Waiting { mut sleep, slept } => {
                    if !*slept {
                        poll_drain(this.drain.as_mut(), cx);
                        ready!(sleep.as_mut().poll(cx));
                        *slept = true;
                        this.drain.set(Drain::Done);
                        if let Some(deadline) = this.config.deadline {
                            // Far beyond any real deadline when the addition overflows.
                            let at = this
                                .started
                                .checked_add(deadline)
                                .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
                            sleep.as_mut().reset(at);
                        }
                    }
                    match this.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(err)) => {
                            let err = into_dashscope_error(err);
                            tracing::warn!(
                                error.type = err.class().as_str(),
                                error = %err,
                                attempt = *this.attempts,
                                "giving up: the inner service failed before a retry; returning \
                                 the last failure"
                            );
                            let last = this.last.take().unwrap_or_else(|| err.clone());
                            let last = if std::error::Error::source(&last).is_none() {
                                last.with_source(err)
                            } else {
                                last
                            };
                            *this.ticket = None;
                            return Poll::Ready(Err(last.with_attempts(*this.attempts)));
                        }
                        Poll::Pending => {
                            if this.config.deadline.is_some() && sleep.poll(cx).is_ready() {
                                tracing::warn!(
                                    attempt = *this.attempts,
                                    "giving up: the deadline passed while waiting for the inner \
                                     service; returning the last failure"
                                );
                                *this.ticket = None;
                                let last = this.last.take().unwrap_or_else(|| {
                                    DashScopeError::new(ErrorClass::Timeout)
                                        .with_message("the retry deadline passed")
                                });
                                return Poll::Ready(Err(last.with_attempts(*this.attempts)));
                            }
                            return Poll::Pending;
                        }
                    }
                    let Some(spare) = this.spare.take() else {
                        unreachable!("a retry is only scheduled when a spare request exists");
                    };
                    let mut request = spare.into_request();
                    *this.spare = Spare::of(&mut request);
                    *this.attempts += 1;
                    this.span.record("attempt", *this.attempts);
                    *this.last = None;
                    if let Some(ticket) = this.ticket.take() {
                        ticket.complete();
                    }
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

/// Instead of an `Instant` past the end of time: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Reads a dropped response's body away, up to [`DRAIN_LIMIT`] bytes, as far as it is ready.
fn poll_drain<R: Body>(mut drain: Pin<&mut Drain<R>>, cx: &mut Context<'_>) {
    loop {
        let DrainProj::Body { body, read } = drain.as_mut().project() else {
            return;
        };
        match body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *read = read.saturating_add(frame.data_ref().map_or(0, Buf::remaining));
                if *read >= DRAIN_LIMIT {
                    drain.set(Drain::Done);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => drain.set(Drain::Done),
            Poll::Pending => return,
        }
    }
}

/// The failure a dropped response reported, as a typed error: returned if its retry is never
/// sent (the deadline passed, or the inner service failed, while it waited).
fn error_of_head(parts: &http::response::Parts, failure: &Failure) -> DashScopeError {
    let mut err = DashScopeError::new(failure.class());
    if let Some(status) = failure.status() {
        err = err.with_status(status);
    }
    if let Some(retry_after) = failure.retry_after() {
        err = err.with_retry_after(retry_after);
    }
    let request_id = crate::headers::request_id(&parts.headers).and_then(|v| v.to_str().ok());
    if let Some(id) = request_id {
        err = err.with_request_id(id);
    }
    err
}

/// How long to wait before the next attempt and what the retry holds meanwhile, or `None` to
/// give up now.
fn next_retry<B>(
    failure: &Failure,
    attempts: u32,
    spare: Option<&Spare<B>>,
    started: &Instant,
    previous: &Duration,
    config: &Config,
    shared: &Shared,
) -> Option<(Duration, Option<Held<Ticket>>)> {
    let replayable = spare.is_some();
    let give_up = |reason: &'static str| {
        // A fallback above has another model for this request: not the end of it.
        let fallback_above = spare.is_some_and(Spare::fallback_available);
        if fallback_above {
            tracing::debug!(
                gen_ai.request.model = spare.and_then(Spare::model),
                error.type = failure.class().as_str(),
                http.response.status_code = failure.status().map(|s| s.as_u16()),
                attempt = attempts,
                reason,
                "not retrying; the fallback above has another model"
            );
        } else {
            tracing::warn!(
                gen_ai.request.model = spare.and_then(Spare::model),
                error.type = failure.class().as_str(),
                http.response.status_code = failure.status().map(|s| s.as_u16()),
                attempt = attempts,
                reason,
                "giving up: not retrying"
            );
        }
        None
    };
    if attempts >= config.max_attempts {
        return give_up("attempts exhausted");
    }
    if !replayable {
        return give_up("the request body cannot be replayed");
    }
    // `Retry-After: 0` (or a date in the past) is no hint: clients that all obeyed it would
    // retry together, at once.
    let hint = failure.retry_after().filter(|d| !d.is_zero());
    if hint.is_some_and(|hint| hint > config.max_retry_after) {
        return give_up("the server asks to wait longer than max_retry_after");
    }
    // A live server that rate-limits: spread the retries out over the time it needs to take
    // them all, instead of spending the outage budget.
    let throttled = matches!(failure.class(), ErrorClass::RateLimited(_))
        .then(|| shared.throttle.enqueue())
        .flatten()
        .map(|(spread, queued)| (spread, Held::new(Ticket::Throttled(queued))));
    let delay = {
        let mut rng = shared.rng.lock().unwrap_or_else(|e| e.into_inner());
        let backoff = match hint {
            Some(hint) => on_top_of(hint, &mut *rng),
            None => backoff(
                config.jitter,
                config.base_delay,
                config.max_delay,
                attempts - 1,
                *previous,
                &mut *rng,
            ),
        };
        match &throttled {
            Some((spread, _)) if hint.is_none() => {
                let spread = (*spread).min(config.max_delay);
                backoff.max(uniform(Duration::ZERO, spread, &mut *rng))
            }
            _ => backoff,
        }
    };
    if let Some(deadline) = config.deadline {
        if started.elapsed().saturating_add(delay) > deadline {
            return give_up("the next attempt would start after the deadline");
        }
    }
    let ticket = match (throttled, &shared.budget) {
        (Some((_, queued)), _) => Some(queued),
        (None, None) => None,
        (None, Some(budget)) => {
            if !budget.withdraw() {
                return give_up("the retry budget is spent");
            }
            Some(Held::new(Ticket::Budget(Withdrawn(budget.clone()))))
        }
    };
    Some((delay, ticket))
}

impl<S, B, R> fmt::Debug for ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
