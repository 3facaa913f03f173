//! The response future and body of [`FallbackModelService`](super::FallbackModelService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::response::Parts;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::cooldown::{Access, FAR, Health, Probe};
use super::rewrite::{ModelSpans, find_model, rewrite};
use super::{Config, FallbackAvailable, FallbackProbe, MAX_CHAIN, ServedModel};
use crate::body::ReplayBody;
use crate::error::{BoxError, DashScopeError, ErrorClass, into_dashscope_error};
use crate::guard::Held;
use crate::request::ChatRequest;
use crate::spare::Spare;

pin_project! {
    /// Response future of [`FallbackModelService`](super::FallbackModelService): one attempt
    /// after another, down the chain, each on a freshly readied inner service.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B, R>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future, R>,
        // The first-byte timer while an attempt runs; the wake-up while the chain is cooling.
        #[pin]
        sleep: Option<Sleep>,
        service: S,
        // `None`: the request passes through (no chain, or a body that cannot be replayed).
        run: Option<Run<B>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        Calling {
            #[pin]
            future: F,
        },
        // A successful answer to a streaming request (or to any request, with a first-byte
        // timeout): waiting for its first data frame.
        Peeking {
            parts: Option<Parts>,
            body: Option<Pin<Box<R>>>,
        },
        // Every model left is cooling: `sleep` runs until the first is back.
        Waiting,
        // Readying the inner service for the next attempt.
        Readying,
        // Nothing was sent: every model is cooling for longer than `max_wait`.
        Failed {
            error: Option<DashScopeError>,
        },
        Done,
    }
}

/// Which list of models a request walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    /// A chain of the configuration.
    Chain(usize),
    /// Only the requested model (it is in no chain but has a context window).
    Single,
    /// The models with a declared context window, smallest first.
    Context,
}

/// A walk down a list: positions from `start` on, those in `done` tried or ruled out.
#[derive(Debug, Clone, Copy)]
struct Route {
    list: List,
    start: usize,
    done: u64,
}

enum Choice {
    Send(usize),
    Wait(Instant),
    Exhausted,
}

/// What to do after a failed attempt.
enum Step {
    /// Return the outcome as it is: the failure does not switch models.
    Return,
    /// Send to `next` (after readying the inner service).
    Next,
    /// Every model left is cooling: wait until then.
    Wait(Instant),
    /// Nothing left within `max_wait`: return the outcome, naming the models tried.
    Exhausted,
}

/// What a request with a chain carries through its attempts.
struct Run<B> {
    config: Arc<Config>,
    health: Arc<Health>,
    // The original request, never sent: each attempt is a copy.
    spare: Spare<B>,
    chat: Arc<ChatRequest>,
    bytes: Bytes,
    // Found at the first rewrite.
    spans: Option<Option<ModelSpans>>,
    requested: usize,
    route: Route,
    // The model of the attempt in flight, and the next one once chosen.
    current: usize,
    next: usize,
    probe: Option<Held<Probe>>,
    // The failure an attempt in waiting replaces.
    last: Option<DashScopeError>,
    tried: Vec<usize>,
    started: Instant,
    // `dashscope.fallback`, entered while the future is polled (DEBUG: `Span::none()`, free,
    // when off).
    span: tracing::Span,
}

impl<S, B, R> ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    B: ReplayBody,
{
    pub(crate) fn start(
        mut service: S,
        mut req: Request<B>,
        config: Arc<Config>,
        health: Arc<Health>,
    ) -> Self {
        let Some(mut run) = Run::new(&mut req, config, health) else {
            let future = service.call(req);
            return ResponseFuture::passthrough(service, future);
        };
        let span = run.span.clone();
        let _entered = span.enter();
        let now = Instant::now();
        match run.select(now) {
            Choice::Send(model) => {
                let req = if model == run.requested {
                    run.mark(&mut req);
                    req
                } else {
                    match run.attempt(model) {
                        Some(rewritten) => rewritten,
                        None => {
                            let future = service.call(req);
                            return ResponseFuture::passthrough(service, future);
                        }
                    }
                };
                run.current = model;
                let sleep = run.config.first_byte_timeout.map(tokio::time::sleep);
                let future = service.call(req);
                ResponseFuture {
                    state: State::Calling { future },
                    sleep,
                    service,
                    run: Some(run),
                }
            }
            Choice::Wait(at) if at <= run.deadline() => {
                run.log_wait(at, now);
                ResponseFuture {
                    state: State::Waiting,
                    sleep: Some(tokio::time::sleep_until(at)),
                    service,
                    run: Some(run),
                }
            }
            choice => {
                let back = match choice {
                    Choice::Wait(at) => Some(at),
                    _ => None,
                };
                let error = Some(run.cooling_error(back, now));
                ResponseFuture {
                    state: State::Failed { error },
                    sleep: None,
                    service,
                    run: Some(run),
                }
            }
        }
    }

    fn passthrough(service: S, future: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            sleep: None,
            service,
            run: None,
        }
    }
}

impl<B> Run<B> {
    fn new(req: &mut Request<B>, config: Arc<Config>, health: Arc<Health>) -> Option<Self>
    where
        B: ReplayBody,
    {
        let chat = ChatRequest::of(req)?;
        let requested = config.model_id(chat.model()?)?;
        let info = &config.models[requested];
        let (list, start) = match info.chain {
            Some((chain, position)) => (List::Chain(chain), position),
            None if info.window.is_some() && !config.by_window.is_empty() => (List::Single, 0),
            None => return None,
        };
        // Fallback needs a copy for each attempt, the bytes to rewrite, and a body type that can
        // hold the rewritten bytes.
        let spare = Spare::of(req)?;
        let bytes = req.body().bytes()?;
        B::from_bytes(Bytes::new())?;
        let span = tracing::debug_span!(
            "dashscope.fallback",
            gen_ai.request.model = &*info.name,
            gen_ai.response.model = tracing::field::Empty,
        );
        Some(Run {
            config,
            health,
            spare,
            chat,
            bytes,
            spans: None,
            requested,
            route: Route {
                list,
                start,
                done: 0,
            },
            current: requested,
            next: requested,
            probe: None,
            last: None,
            tried: Vec::new(),
            started: Instant::now(),
            span,
        })
    }

    fn deadline(&self) -> Instant {
        self.started
            .checked_add(self.config.max_wait)
            .unwrap_or_else(|| self.started + FAR)
    }

    fn name(&self, model: usize) -> &str {
        &self.config.models[model].name
    }

    /// The models of the route's list.
    fn with_list<T>(&self, f: impl FnOnce(&[usize]) -> T) -> T {
        let list: &[usize] = match self.route.list {
            List::Chain(chain) => &self.config.chains[chain],
            List::Single => std::slice::from_ref(&self.requested),
            List::Context => &self.config.by_window,
        };
        f(&list[..list.len().min(MAX_CHAIN)])
    }

    /// Whether a model is left to try after the current one.
    fn has_more(&self) -> bool {
        let (start, done) = (self.route.start, self.route.done);
        self.with_list(|list| (start..list.len()).any(|p| done & (1 << p) == 0))
    }

    /// The next model to send to, taking its probe if it is half-open; or when the first
    /// cooling one is back; or nothing left.
    fn select(&mut self, now: Instant) -> Choice {
        let (start, done) = (self.route.start, self.route.done);
        let mut earliest: Option<Instant> = None;
        let len = self.with_list(<[usize]>::len);
        for position in start..len {
            if done & (1 << position) != 0 {
                continue;
            }
            let model = self.with_list(|list| list[position]);
            match self.health.access(model, now) {
                Access::Healthy => {
                    self.route.done |= 1 << position;
                    return Choice::Send(model);
                }
                Access::Probe => {
                    self.route.done |= 1 << position;
                    tracing::debug!(
                        gen_ai.request.model = self.name(model),
                        "fallback: probing the model after its cooldown"
                    );
                    self.probe = Some(Held::new(Probe {
                        health: self.health.clone(),
                        model,
                        healthy: false,
                    }));
                    return Choice::Send(model);
                }
                Access::Cooling(back) => {
                    tracing::debug!(
                        gen_ai.request.model = self.name(model),
                        wait_ms = back.saturating_duration_since(now).as_millis() as u64,
                        "fallback: skipping a model that is cooling down"
                    );
                    earliest = Some(earliest.map_or(back, |e| e.min(back)));
                }
            }
        }
        earliest.map_or(Choice::Exhausted, Choice::Wait)
    }

    /// Marks an attempt's request for a retry layer below.
    fn mark(&self, req: &mut Request<B>) {
        if !self.has_more() {
            return;
        }
        if self.config.hands_off {
            req.extensions_mut().insert(FallbackAvailable);
        }
        if self.probe.is_some() && self.config.switch_if.is_none() {
            // A probe's failure is an answer: the model is still down. Not retried below
            // when it is one the default rule switches on; with a rule of the caller's, which
            // a retry below cannot see, the probe is retried as any request.
            req.extensions_mut().insert(FallbackProbe);
        }
    }

    /// The request for an attempt at `model`: a copy of the original, its `model` rewritten if
    /// it is another. `None` when the body cannot be rewritten.
    fn attempt(&mut self, model: usize) -> Option<Request<B>>
    where
        B: ReplayBody,
    {
        let mut req = if model == self.requested {
            self.spare.copy()?
        } else {
            let spans = self
                .spans
                .get_or_insert_with(|| find_model(&self.bytes))
                .as_ref()?;
            let bytes = rewrite(&self.bytes, spans, &self.config.models[model].token);
            let length = bytes.len();
            let mut req = self.spare.copy_with_body(B::from_bytes(bytes)?);
            if req.headers().contains_key(http::header::CONTENT_LENGTH) {
                req.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            ChatRequest::store(&mut req, Arc::new(self.chat.with_model(self.name(model))));
            req
        };
        self.mark(&mut req);
        Some(req)
    }

    /// Ends the probe, if this attempt was one.
    fn end_probe(&mut self, healthy: bool) {
        if let Some(mut probe) = self.probe.take() {
            probe.get_mut().healthy = healthy;
            probe.complete();
            if healthy {
                tracing::info!(
                    gen_ai.request.model = self.name(self.current),
                    "fallback: probe answered; the model is back in rotation"
                );
            } else {
                tracing::debug!(
                    gen_ai.request.model = self.name(self.current),
                    "fallback: probe failed"
                );
            }
        }
    }

    /// A response from the current model, for the caller.
    fn served<T>(&mut self, mut response: Response<T>) -> Response<T> {
        self.end_probe(true);
        let name = self.name(self.current).to_owned();
        self.span.record("gen_ai.response.model", &*name);
        if self.current != self.requested {
            tracing::debug!(
                gen_ai.request.model = self.name(self.requested),
                gen_ai.response.model = &*name,
                "fallback: served by a fallback model"
            );
        }
        response.extensions_mut().insert(ServedModel(name));
        response
    }

    /// What to do after the current model failed with `err`.
    fn decide(&mut self, err: &DashScopeError, now: Instant) -> Step {
        let model = self.current;
        let config = self.config.clone();
        if err.class() == ErrorClass::ContextLengthExceeded && !config.by_window.is_empty() {
            // The model is up; the input is too long for it.
            self.end_probe(true);
            self.tried.push(model);
            let need = config
                .estimator
                .input_tokens(&self.chat, &self.bytes)
                .saturating_add(u64::from(self.chat.max_tokens().unwrap_or(0)));
            let above = config.models[model].window;
            let mut done = 0u64;
            for (position, &candidate) in config.by_window.iter().enumerate() {
                let window = config.models[candidate].window.unwrap_or(0);
                let fits = window >= need && above.is_none_or(|above| window > above);
                if !fits || self.tried.contains(&candidate) {
                    done |= 1 << position;
                    if candidate != model {
                        tracing::debug!(
                            gen_ai.request.model = &*config.models[candidate].name,
                            dashscope.context_window = window,
                            dashscope.request_tokens = need,
                            "fallback: skipping a model whose context window cannot take the request"
                        );
                    }
                }
            }
            self.route = Route {
                list: List::Context,
                start: 0,
                done,
            };
            if !self.has_more() {
                tracing::warn!(
                    gen_ai.request.model = self.name(self.requested),
                    dashscope.request_tokens = need,
                    "giving up: no fallback model's declared context window fits the request"
                );
                return Step::Return;
            }
            return self.next_step(err, now);
        }
        if !config.switches(err) {
            self.end_probe(true);
            return Step::Return;
        }
        let length = err
            .retry_after()
            .filter(|d| !d.is_zero())
            .unwrap_or(config.cooldown);
        let (until, renewed) = self.health.cool(model, now, length);
        tracing::info!(
            gen_ai.request.model = self.name(model),
            error.type = err.class().as_str(),
            cooldown_ms = until.saturating_duration_since(now).as_millis() as u64,
            renewed,
            "fallback: model cooling down"
        );
        self.end_probe(false);
        self.tried.push(model);
        self.next_step(err, now)
    }

    fn next_step(&mut self, err: &DashScopeError, now: Instant) -> Step {
        match self.select(now) {
            Choice::Send(next) => {
                tracing::info!(
                    gen_ai.request.model = self.name(self.current),
                    dashscope.fallback.model = self.name(next),
                    error.type = err.class().as_str(),
                    "fallback: switching model"
                );
                self.next = next;
                Step::Next
            }
            Choice::Wait(at) if at <= self.deadline() => {
                self.log_wait(at, now);
                Step::Wait(at)
            }
            _ => {
                tracing::warn!(
                    gen_ai.request.model = self.name(self.requested),
                    error.type = err.class().as_str(),
                    dashscope.fallback.tried = self.tried_names(),
                    "giving up: no fallback model left to try"
                );
                Step::Exhausted
            }
        }
    }

    fn log_wait(&self, at: Instant, now: Instant) {
        tracing::debug!(
            wait_ms = at.saturating_duration_since(now).as_millis() as u64,
            "fallback: every model left is cooling down; waiting for the first to come back"
        );
    }

    fn tried_names(&self) -> String {
        let names: Vec<&str> = self.tried.iter().map(|&m| self.name(m)).collect();
        names.join(", ")
    }

    /// The last failure, saying which models were tried.
    fn exhausted(&self, err: DashScopeError) -> DashScopeError {
        if self.tried.is_empty() {
            return err;
        }
        let advice = format!(
            "no model of the fallback chain could answer (tried {}); {}",
            self.tried_names(),
            err.advice()
        );
        err.with_advice(advice)
    }

    /// The error of a request that found every model cooling for longer than `max_wait`.
    fn cooling_error(&self, back: Option<Instant>, now: Instant) -> DashScopeError {
        let names: Vec<&str> = self.with_list(|list| {
            list[self.route.start..]
                .iter()
                .map(|&m| &*self.config.models[m].name)
                .collect()
        });
        let mut err = DashScopeError::new(ErrorClass::Unavailable).with_advice(
            "wait for the retry-after, raise the fallback's max_wait, or add a model to the chain",
        );
        let message = match back {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                err = err.with_retry_after(wait);
                format!(
                    "every model this request may use ({}) is cooling down after failures; the \
                     first is back in {:.3}s, past the fallback's max_wait of {:.3}s",
                    names.join(", "),
                    wait.as_secs_f64(),
                    self.config.max_wait.as_secs_f64()
                )
            }
            None => format!(
                "every model this request may use ({}) is cooling down after failures",
                names.join(", ")
            ),
        };
        err.with_message(message)
    }

    fn timeout(&self, what: &str) -> DashScopeError {
        let timeout = self.config.first_byte_timeout.unwrap_or_default();
        DashScopeError::new(ErrorClass::Timeout)
            .with_message(format!(
                "{} sent no {what} within the first-byte timeout of {:.3}s",
                self.name(self.current),
                timeout.as_secs_f64()
            ))
            .with_advice(
                "the model accepted the request and stayed silent; the next model of the chain \
                 is tried, or raise the fallback's first_byte_timeout",
            )
    }
}

/// A typed error for an `Ok` failure response (no classifier below): its class, status,
/// retry-after and request id.
fn error_of_response<R>(response: &Response<R>) -> DashScopeError {
    let status = response.status();
    let mut err = DashScopeError::new(ErrorClass::from_status(status)).with_status(status);
    if let Some(retry_after) = crate::retry_after::parse_retry_after(response.headers()) {
        err = err.with_retry_after(retry_after);
    }
    if let Some(id) = crate::headers::request_id(response.headers()).and_then(|v| v.to_str().ok()) {
        err = err.with_request_id(id);
    }
    err
}

/// Whether a response is no failure ([`failure_of`](crate::outcome::failure_of)'s rule).
fn is_success<R>(response: &Response<R>) -> bool {
    response.status().is_success() || response.status().is_informational()
}

/// Whether the first-byte timer has fired.
fn fired(sleep: Pin<&mut Option<Sleep>>, cx: &mut Context<'_>) -> bool {
    sleep.as_pin_mut().is_some_and(|s| s.poll(cx).is_ready())
}

/// What the poll loop does after an attempt's outcome.
enum After<R: Body> {
    Return(Result<Response<ResponseBody<R>>, DashScopeError>),
    Ready,
    Wait(Instant),
}

/// Judges a finished attempt that failed (or was `Ok` with a failure status).
fn after_failure<B: ReplayBody, R: Body>(
    run: &mut Run<B>,
    outcome: Result<Response<R>, DashScopeError>,
) -> After<R> {
    let now = Instant::now();
    let head = match &outcome {
        Ok(response) => Some(error_of_response(response)),
        Err(_) => None,
    };
    let step = match (&head, &outcome) {
        (Some(err), _) | (None, Err(err)) => run.decide(err, now),
        (None, Ok(_)) => Step::Return,
    };
    match step {
        Step::Return => After::Return(match outcome {
            Ok(response) => Ok(run.served(response.map(ResponseBody::plain))),
            Err(err) => Err(err),
        }),
        Step::Exhausted => After::Return(match outcome {
            Ok(response) => Ok(run.served(response.map(ResponseBody::plain))),
            Err(err) => Err(run.exhausted(err)),
        }),
        Step::Next | Step::Wait(_) => {
            // The failed response is dropped; what it said is kept in case nothing else answers.
            run.last = Some(match (head, outcome) {
                (Some(err), _) => err,
                (None, Err(err)) => err,
                (None, Ok(_)) => unreachable!("a head error exists for every Ok outcome"),
            });
            match step {
                Step::Wait(at) => After::Wait(at),
                _ => After::Ready,
            }
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B, R>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    R: Body,
    R::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<R>>, DashScopeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let span = this.run.as_ref().map(|run| run.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        loop {
            let after = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let outcome = match future.poll(cx) {
                        Poll::Ready(outcome) => outcome.map_err(into_dashscope_error),
                        Poll::Pending => match this.run.as_ref() {
                            Some(run) if fired(this.sleep.as_mut(), cx) => {
                                Err(run.timeout("response headers"))
                            }
                            _ => return Poll::Pending,
                        },
                    };
                    let Some(run) = this.run.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(outcome.map(|r| r.map(ResponseBody::plain)));
                    };
                    match outcome {
                        Ok(response) if is_success(&response) => {
                            // A stream's first event, or with a first-byte timeout any
                            // body's first byte, is awaited before the caller sees anything.
                            if run.chat.stream() || run.config.first_byte_timeout.is_some() {
                                let (parts, body) = response.into_parts();
                                this.state.set(State::Peeking {
                                    parts: Some(parts),
                                    body: Some(Box::pin(body)),
                                });
                                continue;
                            }
                            After::Return(Ok(run.served(response.map(ResponseBody::plain))))
                        }
                        outcome => after_failure(run, outcome),
                    }
                }
                StateProj::Peeking { parts, body } => {
                    let Some(run) = this.run.as_mut() else {
                        unreachable!("only requests with a chain are peeked at");
                    };
                    let stream = body.as_mut().expect("taken only when leaving this state");
                    let first = loop {
                        match stream.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if frame.data_ref().is_some_and(|d| !d.has_remaining()) {
                                    continue;
                                }
                                break Ok(Some(frame));
                            }
                            Poll::Ready(None) => break Ok(None),
                            Poll::Ready(Some(Err(err))) => {
                                break Err(DashScopeError::from_body_error(err.into()));
                            }
                            Poll::Pending => {
                                if fired(this.sleep.as_mut(), cx) {
                                    let what = if run.chat.stream() {
                                        "first event"
                                    } else {
                                        "first byte of its body"
                                    };
                                    break Err(run.timeout(what));
                                }
                                return Poll::Pending;
                            }
                        }
                    };
                    match first {
                        Ok(first) => {
                            let (Some(parts), Some(body)) = (parts.take(), body.take()) else {
                                unreachable!("taken only here");
                            };
                            let response =
                                Response::from_parts(parts, ResponseBody::peeked(first, body));
                            After::Return(Ok(run.served(response)))
                        }
                        // Nothing reached the caller yet: this is the attempt's failure.
                        Err(err) => after_failure::<B, R>(run, Err(err)),
                    }
                }
                StateProj::Waiting => {
                    if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                        ready!(sleep.poll(cx));
                    }
                    let Some(run) = this.run.as_mut() else {
                        unreachable!("only requests with a chain wait");
                    };
                    let now = Instant::now();
                    match run.select(now) {
                        Choice::Send(next) => {
                            run.next = next;
                            After::Ready
                        }
                        Choice::Wait(at) if at <= run.deadline() => After::Wait(at),
                        choice => {
                            let err = match run.last.take() {
                                Some(last) => run.exhausted(last),
                                None => run.cooling_error(
                                    match choice {
                                        Choice::Wait(at) => Some(at),
                                        _ => None,
                                    },
                                    now,
                                ),
                            };
                            After::Return(Err(err))
                        }
                    }
                }
                StateProj::Readying => {
                    let Some(run) = this.run.as_mut() else {
                        unreachable!("only requests with a chain make further attempts");
                    };
                    if let Err(err) = ready!(this.service.poll_ready(cx)) {
                        let err = into_dashscope_error(err);
                        tracing::warn!(
                            error.type = err.class().as_str(),
                            error = %err,
                            "giving up: the inner service failed before the next fallback attempt"
                        );
                        let err = match run.last.take() {
                            Some(last) => run.exhausted(last),
                            None => err,
                        };
                        this.state.set(State::Done);
                        return Poll::Ready(Err(err));
                    }
                    let next = run.next;
                    let Some(req) = run.attempt(next) else {
                        // The body cannot be rewritten after all (e.g. a duplicate `model` that
                        // is not a string): the last failure stands.
                        let err = run.last.take().unwrap_or_else(|| {
                            DashScopeError::new(ErrorClass::InvalidRequest)
                                .with_message("the request body's model cannot be rewritten")
                        });
                        this.state.set(State::Done);
                        return Poll::Ready(Err(err));
                    };
                    run.current = next;
                    match run.config.first_byte_timeout {
                        Some(timeout) => {
                            // As `tokio::time::sleep` does for the first attempt: a timeout
                            // too long for an Instant (`Duration::MAX`) is no panic.
                            let now = Instant::now();
                            let at = now.checked_add(timeout).unwrap_or_else(|| now + FAR);
                            match this.sleep.as_mut().as_pin_mut() {
                                Some(sleep) => sleep.reset(at),
                                None => this.sleep.set(Some(tokio::time::sleep_until(at))),
                            }
                        }
                        None => this.sleep.set(None),
                    }
                    let future = this.service.call(req);
                    this.state.set(State::Calling { future });
                    continue;
                }
                StateProj::Failed { error } => {
                    let err = error.take().unwrap_or_else(|| {
                        DashScopeError::new(ErrorClass::Unavailable)
                            .with_message("the fallback future was polled after it completed")
                    });
                    this.state.set(State::Done);
                    return Poll::Ready(Err(err));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(DashScopeError::new(ErrorClass::InvalidRequest)
                        .with_message(
                            "the fallback's response future was polled after it completed",
                        )
                        .with_advice("poll a future only until it returns Ready")));
                }
            };
            match after {
                After::Return(result) => {
                    this.state.set(State::Done);
                    return Poll::Ready(result);
                }
                After::Ready => this.state.set(State::Readying),
                After::Wait(at) => {
                    match this.sleep.as_mut().as_pin_mut() {
                        Some(sleep) => sleep.reset(at),
                        None => this.sleep.set(Some(tokio::time::sleep_until(at))),
                    }
                    this.state.set(State::Waiting);
                }
            }
        }
    }
}

impl<S, B, R> fmt::Debug for ResponseFuture<S, B, R>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        if let Some(run) = &self.run {
            d.field("model", &run.name(run.current))
                .field("tried", &run.tried_names());
        }
        d.finish_non_exhaustive()
    }
}

pin_project! {
    /// Response body of [`FallbackModelService`](super::FallbackModelService): the served
    /// model's body as it is, its errors converted into [`DashScopeError`]s. A stream that fails
    /// after its first byte reached the caller ends with the typed error; it is never continued
    /// from another model.
    pub struct ResponseBody<R>
    where
        R: Body,
    {
        #[pin]
        kind: Kind<R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<R>
    where
        R: Body,
    {
        Plain {
            #[pin]
            body: R,
        },
        // A stream whose first frame was read to know it started.
        Peeked {
            first: Option<Frame<R::Data>>,
            body: Pin<Box<R>>,
        },
    }
}

impl<R: Body> ResponseBody<R> {
    fn plain(body: R) -> Self {
        ResponseBody {
            kind: Kind::Plain { body },
        }
    }

    fn peeked(first: Option<Frame<R::Data>>, body: Pin<Box<R>>) -> Self {
        ResponseBody {
            kind: Kind::Peeked { first, body },
        }
    }
}

impl<R> Body for ResponseBody<R>
where
    R: Body,
    R::Error: Into<BoxError>,
{
    type Data = R::Data;
    type Error = DashScopeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx),
            KindProj::Peeked { first, body } => {
                if let Some(frame) = first.take() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                body.as_mut().poll_frame(cx)
            }
        };
        polled.map_err(|err| DashScopeError::from_body_error(err.into()))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Peeked { first, body } => first.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Peeked { first, body } => {
                let held = first
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.remaining() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(held));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(held));
                }
                hint
            }
        }
    }
}

impl<R: Body> fmt::Debug for ResponseBody<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}
