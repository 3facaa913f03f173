//! The response future of [`RetryWithJitterService`](super::RetryWithJitterService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::backoff::{backoff, on_top_of};
use super::{Config, ReplayBody, Shared, clone_request};
use crate::error::{BoxError, DashScopeError, into_dashscope_error};
use crate::extensions::Attempts;
use crate::outcome::{Failure, failure_of};

pin_project! {
    /// Response future of [`RetryWithJitterService`](super::RetryWithJitterService).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // A copy of the request for the next attempt; `None` when the body cannot be replayed.
        spare: Option<Request<B>>,
        attempts: u32,
        started: Instant,
        previous_delay: Duration,
        config: Config,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Waiting {
            #[pin]
            sleep: Sleep,
        },
        Readying,
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn new(
        service: S,
        future: S::Future,
        spare: Option<Request<B>>,
        config: Config,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            service,
            spare,
            attempts: 1,
            started: Instant::now(),
            previous_delay: config.base_delay,
            config,
            shared,
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
{
    type Output = Result<Response<R>, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(into_dashscope_error);
                    // `Some(retry_after)` when a later attempt may succeed.
                    let retryable = failure_of(&result)
                        .filter(Failure::is_retryable)
                        .map(|failure| failure.retry_after());
                    let delay = retryable.and_then(|retry_after| {
                        next_delay(
                            retry_after,
                            *this.attempts,
                            this.spare.is_some(),
                            this.started,
                            this.previous_delay,
                            this.config,
                            this.shared,
                        )
                    });
                    let Some(delay) = delay else {
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
                        Ok(response) => tracing::debug!(
                            status = response.status().as_u16(),
                            attempt = *this.attempts,
                            delay_ms = delay.as_millis() as u64,
                            "retrying"
                        ),
                        Err(err) => tracing::debug!(
                            class = err.class().as_str(),
                            code = err.code(),
                            attempt = *this.attempts,
                            delay_ms = delay.as_millis() as u64,
                            "retrying"
                        ),
                    }
                    *this.previous_delay = delay;
                    this.state.set(State::Waiting {
                        sleep: tokio::time::sleep(delay),
                    });
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(err) = ready!(this.service.poll_ready(cx)) {
                        let err = into_dashscope_error(err).with_attempts(*this.attempts);
                        return Poll::Ready(Err(err));
                    }
                    let Some(request) = this.spare.take() else {
                        unreachable!("a retry is only scheduled when a spare request exists");
                    };
                    *this.spare = clone_request(&request);
                    *this.attempts += 1;
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

/// How long to wait before the next attempt, or `None` to give up now.
fn next_delay(
    retry_after: Option<Duration>,
    attempts: u32,
    replayable: bool,
    started: &Instant,
    previous: &Duration,
    config: &Config,
    shared: &Shared,
) -> Option<Duration> {
    let give_up = |reason: &'static str| {
        tracing::debug!(attempts, reason, "not retrying");
        None
    };
    if attempts >= config.max_attempts {
        return give_up("attempts exhausted");
    }
    if !replayable {
        return give_up("the request body cannot be replayed");
    }
    let delay = {
        let mut rng = shared.rng.lock().unwrap_or_else(|e| e.into_inner());
        match retry_after {
            Some(retry_after) if retry_after > config.max_retry_after => {
                return give_up("the server asks to wait longer than max_retry_after");
            }
            Some(retry_after) => on_top_of(retry_after, &mut *rng),
            None => backoff(
                config.jitter,
                config.base_delay,
                config.max_delay,
                attempts - 1,
                *previous,
                &mut *rng,
            ),
        }
    };
    if let Some(deadline) = config.deadline {
        if started.elapsed().saturating_add(delay) > deadline {
            return give_up("the next attempt would start after the deadline");
        }
    }
    if shared
        .budget
        .as_ref()
        .is_some_and(|budget| !budget.withdraw())
    {
        return give_up("the retry budget is spent");
    }
    Some(delay)
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
