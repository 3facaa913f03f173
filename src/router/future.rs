//! The response future of [`RegionRouterService`](super::RegionRouterService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{AUTHORIZATION, HOST, USER_AGENT};
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::Service;

use super::endpoint::{Endpoint, split_path};
use super::health::{Access, Probe};
use super::{Built, ReplayBody};
use crate::api::Api;
use crate::error::{BoxError, DashScopeError, Delivery, ErrorClass, into_dashscope_error};
use crate::extensions::ServedRegion;
use crate::guard::Held;
use crate::headers::X_API_KEY;
use crate::request::ChatRequest;
use crate::retry::clone_request;

pin_project! {
    /// Response future of [`RegionRouterService`](super::RegionRouterService).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // The request as the caller sent it, for a failover; `None` when there is nothing to
        // fail over to or the body cannot be replayed.
        spare: Option<Request<B>>,
        api: Api,
        // The endpoint of the attempt under way (or, while readying, of the next one).
        current: usize,
        // Endpoints tried, one bit each.
        tried: u64,
        // The probe the attempt under way holds, if its endpoint was due for one.
        probe: Option<Held<Probe>>,
        // While readying for a failover: the failure it replaces.
        last: Option<DashScopeError>,
        built: Arc<Built>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
        },
        Readying,
        Done {
            error: Option<DashScopeError>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: ReplayBody,
{
    /// Sends `req` with the readied `service` to the first endpoint that may take it.
    pub(crate) fn start(service: S, mut req: Request<B>, built: Arc<Built>) -> Self {
        let (api, _) = split_path(req.uri().path(), built.api);
        let mut this = ResponseFuture {
            state: State::Done { error: None },
            service,
            spare: None,
            api,
            current: 0,
            tried: 0,
            probe: None,
            last: None,
            built,
        };
        if let Some(invalid) = this
            .built
            .invalid
            .as_ref()
            .filter(|_| this.built.refuse_all)
        {
            let err = DashScopeError::new(ErrorClass::InvalidRequest)
                .with_delivery(Delivery::NotSent)
                .with_message(format!("invalid region router: {}", invalid.message()))
                .with_advice(invalid.advice().to_owned());
            this.state = State::Done { error: Some(err) };
            return this;
        }
        if this.built.endpoints.len() > 1 {
            this.spare = clone_request(&req);
        }
        let Some((index, probe)) = this.choose() else {
            this.state = State::Done {
                error: Some(no_endpoint()),
            };
            return this;
        };
        this.current = index;
        this.probe = probe;
        match prepare(&this.built.endpoints[index], api, &mut req) {
            Ok(()) => {
                trace_attempt(&this.built.endpoints[index], api, this.tried);
                let future = this.service.call(req);
                this.state = State::Calling { future };
            }
            Err(err) => {
                // A local refusal: the next endpoint may take it, unless it is about the key.
                this.tried |= 1 << index;
                this.probe = None;
                this.state = match this.next_after_local(err) {
                    Ok(next) => {
                        this.current = next.0;
                        this.probe = next.1;
                        State::Readying
                    }
                    Err(err) => State::Done { error: Some(err) },
                };
            }
        }
        this
    }

    /// The next endpoint to try: the first untried one that is healthy or due for a probe,
    /// else the first untried one.
    fn choose(&self) -> Option<(usize, Option<Held<Probe>>)> {
        choose(&self.built, self.tried)
    }

    /// After a local refusal `err` of the current endpoint: the next endpoint, or the error
    /// to return.
    fn next_after_local(
        &mut self,
        err: DashScopeError,
    ) -> Result<(usize, Option<Held<Probe>>), DashScopeError> {
        if err.class() == ErrorClass::Authentication || self.spare.is_none() {
            return Err(err);
        }
        match self.choose() {
            Some(next) => {
                self.last = Some(err);
                Ok(next)
            }
            None => Err(err),
        }
    }
}

fn choose(built: &Arc<Built>, tried: u64) -> Option<(usize, Option<Held<Probe>>)> {
    let untried = |i: &usize| tried & (1 << *i) == 0;
    let count = built.endpoints.len();
    for i in (0..count).filter(untried) {
        match built.health.access(i, &built.endpoints[i].region) {
            Access::Healthy => return Some((i, None)),
            Access::Probe => {
                let probe = Probe {
                    health: built.health.clone(),
                    index: i,
                };
                return Some((i, Some(Held::new(probe))));
            }
            Access::Avoid => {}
        }
    }
    (0..count).find(untried).map(|i| (i, None))
}

fn no_endpoint() -> DashScopeError {
    DashScopeError::new(ErrorClass::Connection)
        .with_delivery(Delivery::NotSent)
        .with_message("the region router has no endpoint left to try")
        .with_advice("add endpoints with RegionRouter::failover")
}

fn trace_attempt(endpoint: &Endpoint, api: Api, tried: u64) {
    tracing::debug!(
        dashscope.region = %endpoint.region,
        dashscope.plan = endpoint.plan.as_str(),
        dashscope.api = api.as_str(),
        attempt = tried.count_ones() + 1,
        "routing request"
    );
}

/// Points `req` at `endpoint`: its URI, its credentials, a `User-Agent` if none.
fn prepare<B>(endpoint: &Endpoint, api: Api, req: &mut Request<B>) -> Result<(), DashScopeError> {
    if !endpoint.serves(api) {
        return Err(endpoint.unserved_error(api));
    }
    if let Some(err) = endpoint.key_error(api) {
        return Err(err);
    }
    // Taken, not copied: the request gets the URI made from it.
    let original = std::mem::take(req.uri_mut());
    let uri = endpoint.uri(api, original).ok_or_else(|| {
        DashScopeError::new(ErrorClass::InvalidRequest)
            .with_delivery(Delivery::NotSent)
            .with_message(format!(
                "the request path cannot be joined to {}",
                endpoint.base_url(api).unwrap_or_default()
            ))
            .with_advice("send a path relative to the API root, e.g. /chat/completions")
    })?;
    *req.uri_mut() = uri;
    let Some((bearer, plain)) = endpoint.credentials() else {
        return Err(endpoint
            .key_error(api)
            .unwrap_or_else(|| DashScopeError::new(ErrorClass::Authentication)));
    };
    let headers = req.headers_mut();
    // Whatever the caller set is replaced: its credentials, and a Host for another authority.
    headers.remove(HOST);
    headers.remove(X_API_KEY);
    headers.insert(AUTHORIZATION, bearer.clone());
    if api == Api::Anthropic {
        headers.insert(X_API_KEY, plain.clone());
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(super::USER_AGENT));
    }
    Ok(())
}

/// Whether an outcome is a failure at the connection level (no answer), and how it went.
fn transport_failure(err: &DashScopeError) -> Option<Delivery> {
    let transport = err.status().is_none()
        && matches!(err.class(), ErrorClass::Connection | ErrorClass::Timeout);
    transport.then(|| err.delivery().unwrap_or(Delivery::MaybeSent))
}

/// The advice of a 401/403 answer: the key may belong to another region or plan.
fn wrong_region_advice(err: DashScopeError, endpoint: &Endpoint, api: Api) -> DashScopeError {
    let url = endpoint
        .base_url(api)
        .unwrap_or_else(|| endpoint.region.to_string());
    let advice = format!(
        "this key may belong to another region or plan: keys work only in the region and plan \
         they were created for, and this one was sent to {url} ({}, {}); {}",
        endpoint.region.id(),
        endpoint.plan.as_str(),
        err.advice()
    );
    err.with_advice(advice)
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
                StateProj::Done { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(no_endpoint)));
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(into_dashscope_error);
                    let index = *this.current;
                    let endpoint = &this.built.endpoints[index];
                    *this.tried |= 1 << index;
                    let err = match result {
                        Ok(mut response) => {
                            this.built.health.succeeded(index, &endpoint.region);
                            complete(this.probe);
                            let status = response.status();
                            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
                            {
                                tracing::warn!(
                                    gen_ai.request.model = ChatRequest::model_of(this.spare.as_ref()),
                                    dashscope.region = %endpoint.region,
                                    http.response.status_code = status.as_u16(),
                                    "the key was refused; it may belong to another region or \
                                     plan (not failing over)"
                                );
                            }
                            response
                                .extensions_mut()
                                .insert(ServedRegion(endpoint.region.clone()));
                            return Poll::Ready(Ok(response));
                        }
                        Err(err) => err,
                    };
                    let Some(delivery) = transport_failure(&err) else {
                        // An answer: the network path works. A refusal of a layer below (no
                        // status) proved nothing: its probe is given back, not kept for good.
                        if err.status().is_some() {
                            this.built.health.succeeded(index, &endpoint.region);
                            complete(this.probe);
                        } else {
                            *this.probe = None;
                        }
                        let refused = err.class() == ErrorClass::Authentication
                            || (err.class() == ErrorClass::PermissionDenied
                                && err.status() == Some(StatusCode::FORBIDDEN));
                        let err = if refused {
                            tracing::warn!(
                                gen_ai.request.model = ChatRequest::model_of(this.spare.as_ref()),
                                dashscope.region = %endpoint.region,
                                error.type = err.class().as_str(),
                                "the key was refused; it may belong to another region or plan \
                                 (not failing over)"
                            );
                            wrong_region_advice(err, endpoint, *this.api)
                        } else {
                            err
                        };
                        return Poll::Ready(Err(err));
                    };
                    this.built.health.failed(index, &endpoint.region);
                    complete(this.probe);
                    let next = if this.spare.is_some() {
                        choose(this.built, *this.tried)
                    } else {
                        None
                    };
                    let Some((next, probe)) = next else {
                        if this.built.endpoints.len() > 1 {
                            tracing::warn!(
                                gen_ai.request.model = ChatRequest::model_of(this.spare.as_ref()),
                                dashscope.region = %endpoint.region,
                                error.type = err.class().as_str(),
                                "giving up: no endpoint left to fail over to"
                            );
                        }
                        return Poll::Ready(Err(err));
                    };
                    let to = &this.built.endpoints[next].region;
                    if delivery == Delivery::MaybeSent && !this.built.failover_maybe_sent {
                        tracing::warn!(
                            gen_ai.request.model = ChatRequest::model_of(this.spare.as_ref()),
                            dashscope.region = %endpoint.region,
                            dashscope.failover.region = %to,
                            error.type = err.class().as_str(),
                            dashscope.delivery = %delivery,
                            "giving up: not failing over, the request may have reached the server"
                        );
                        // The probe taken for the next endpoint goes back unused.
                        drop(probe);
                        let advice = format!(
                            "the request may have reached {} before the connection failed, so \
                             it was not resent to {to} (a chat completion may already be \
                             billed; RegionRouter::failover_maybe_sent allows it); {}",
                            endpoint.region,
                            err.advice()
                        );
                        return Poll::Ready(Err(err.with_advice(advice)));
                    }
                    tracing::info!(
                        gen_ai.request.model = ChatRequest::model_of(this.spare.as_ref()),
                        dashscope.region = %endpoint.region,
                        dashscope.failover.region = %to,
                        error.type = err.class().as_str(),
                        dashscope.delivery = %delivery,
                        "failing over to the next endpoint"
                    );
                    *this.current = next;
                    *this.probe = probe;
                    *this.last = Some(err);
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    match this.service.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(err)) => {
                            let err = into_dashscope_error(err);
                            tracing::warn!(
                                error.type = err.class().as_str(),
                                error = %err,
                                "giving up: the inner service failed before a failover; \
                                 returning the last failure"
                            );
                            *this.probe = None;
                            let last = this.last.take().unwrap_or(err);
                            return Poll::Ready(Err(last));
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    let index = *this.current;
                    let endpoint = &this.built.endpoints[index];
                    let Some(mut request) = this.spare.as_ref().and_then(clone_request) else {
                        *this.probe = None;
                        let last = this.last.take().unwrap_or_else(no_endpoint);
                        return Poll::Ready(Err(last));
                    };
                    match prepare(endpoint, *this.api, &mut request) {
                        Ok(()) => {
                            trace_attempt(endpoint, *this.api, *this.tried);
                            *this.last = None;
                            let future = this.service.call(request);
                            this.state.set(State::Calling { future });
                        }
                        Err(err) => {
                            *this.tried |= 1 << index;
                            *this.probe = None;
                            if err.class() == ErrorClass::Authentication {
                                return Poll::Ready(Err(err));
                            }
                            match choose(this.built, *this.tried) {
                                Some((next, probe)) => {
                                    *this.current = next;
                                    *this.probe = probe;
                                    *this.last = Some(err);
                                }
                                None => return Poll::Ready(Err(err)),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Ends the probe an attempt held, its outcome recorded.
fn complete(probe: &mut Option<Held<Probe>>) {
    if let Some(probe) = probe.take() {
        probe.complete();
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("api", &self.api)
            .field("current", &self.current)
            .field("tried", &self.tried)
            .finish_non_exhaustive()
    }
}
