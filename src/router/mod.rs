//! The right base URL and key for every request, and failover between regions where it can
//! help.
//!
//! [`RegionRouter`] sends each request to an endpoint — a [`Region`] (one of DashScope's four,
//! a workspace-dedicated host from [`Region::workspace`], or any base URL from
//! [`Region::custom`]), a [`Plan`] and an [`Api`] flavour — with that endpoint's key:
//!
//! - **Resolution.** The request's path is taken relative to its API root and joined to the
//!   endpoint's: a path under DashScope's own roots (`/compatible-mode/v1/…`, `/api/v1/…`,
//!   `/apps/anthropic/…`, or `/v1/…` for the OpenAI-compatible flavour) is sent as that
//!   flavour, any other path (`/chat/completions`) as the router's [`api`](RegionRouter::api).
//!   No segment is doubled or dropped (`/v1/v1/…` is the known trap), the query is kept, and
//!   the scheme and authority already on the request are replaced.
//! - **Credentials.** Each endpoint's key goes only to that endpoint, as
//!   `Authorization: Bearer <key>` (and `x-api-key: <key>` for the Anthropic flavour). Any
//!   credential the caller set, and any `Host` header, is replaced. Keys are held as an
//!   [`ApiKey`], whose `Debug` shows only its kind, and sent as sensitive header values; no key
//!   appears in `Debug`, `Display`, errors or `tracing` output.
//! - **A `User-Agent`**, `tower-dashscope/<version>`, when the caller sent none: the Coding
//!   Plan answers 405 to clients without one.
//! - **Checks before the network.** A Coding Plan key (`sk-sp-…`) on an endpoint that is not a
//!   Coding Plan host, or another key on a Coding Plan host, fails with
//!   [`ErrorClass::Authentication`] naming the base URL to use, and nothing is sent
//!   ([`Delivery::NotSent`]). Combinations that do not exist (the native API on the Coding
//!   Plan, the Coding Plan in Virginia) are refused when the router is built:
//!   [`validate`](RegionRouter::validate) says so with what to use instead (and every call
//!   fails with that error, locally, if it was not checked).
//! - **Failover** to the endpoints added with [`failover`](RegionRouter::failover), in order,
//!   only where it can help:
//!   - **never on an answer**, and in particular never on 401/403: a key from another region
//!     stays one. The error's advice says "this key may belong to another region or plan"
//!     instead.
//!   - at once when the request **never reached the server** ([`Delivery::NotSent`]: DNS,
//!     refused or unreachable, TLS handshake, a pooled connection closed before the request
//!     was written);
//!   - when it **may have reached it** ([`Delivery::MaybeSent`]: reset after the request was
//!     written, a timeout while under way) only with
//!     [`failover_maybe_sent(true)`](RegionRouter::failover_maybe_sent): a chat completion may
//!     already be generated and billed. Off by default.
//!
//!   A request whose body cannot be replayed ([`ReplayBody`]) is sent once.
//! - **Health.** An endpoint that fails at the connection level is avoided for a
//!   [`cooldown`](RegionRouter::cooldown): later requests start at the first healthy endpoint
//!   in order (an unhealthy one is still tried last, when nothing else is left). After the
//!   cooldown one request at a time probes it; an answer makes it healthy again. Health is
//!   shared by every clone of the layer and every service made from it.
//! - **What the caller learns:** [`ServedRegion`] in the response's extensions; `tracing`
//!   events for failovers and health changes (`info`), probes (`debug`), and a refused key or
//!   giving up (`warn`): see the [telemetry table](crate::telemetry).
//!
//! Each attempt readies the inner service again before calling it.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_dashscope::{BoxError, Region, RegionRouter, ServedRegion};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let http_client = service_fn(|req: Request<Full<Bytes>>| async move {
//!     // The router set the base URL and the key.
//!     assert_eq!(req.uri(), "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions");
//!     assert!(req.headers()["authorization"].is_sensitive());
//!     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//! });
//! let router = RegionRouter::new(Region::Singapore, "sk-0123456789abcdef");
//! router.validate().expect("a valid configuration");
//! let client = router.layer(http_client);
//!
//! let request = Request::post("/chat/completions")
//!     .body(Full::new(Bytes::from(r#"{"model":"qwen-plus","messages":[]}"#)))
//!     .unwrap();
//! let response = client.oneshot(request).await.unwrap();
//! assert_eq!(response.extensions().get::<ServedRegion>(), Some(&ServedRegion(Region::Singapore)));
//! # }
//! ```
//!
//! Customised: the Coding Plan's Anthropic-compatible API, a private gateway as failover,
//! resending after a possible delivery, a shorter cooldown.
//!
//! ```
//! use std::time::Duration;
//! use tower_dashscope::{Api, Region, RegionRouter};
//! use tower_dashscope::api::Plan;
//!
//! let router = RegionRouter::new(Region::Singapore, "sk-sp-0123456789abcdef")
//!     .plan(Plan::CodingPlan)
//!     .api(Api::Anthropic)
//!     .failover(Region::Beijing, "sk-sp-fedcba9876543210")
//!     .failover(Region::custom("https://llm-gateway.internal:8443/v1").unwrap(), "sk-sp-gw")
//!     .failover_maybe_sent(true) // requests may be billed twice
//!     .cooldown(Duration::from_secs(10));
//! assert!(router.validate().is_ok());
//!
//! // Refused at construction, with what to use instead.
//! let err = RegionRouter::new(Region::Singapore, "sk-sp-0123456789abcdef")
//!     .plan(Plan::CodingPlan)
//!     .api(Api::Native)
//!     .validate()
//!     .unwrap_err();
//! assert!(err.to_string().contains("the Coding Plan serves no native API"));
//! ```

mod endpoint;
pub mod future;
mod health;
mod key;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

pub use self::key::ApiKey;
pub use crate::body::ReplayBody;
pub use crate::extensions::ServedRegion;

use self::endpoint::{Endpoint, unserved_advice, unserved_message};
use self::future::ResponseFuture;
use self::health::Health;
use crate::api::{Api, Plan, Region};
use crate::error::{BoxError, DashScopeError, into_dashscope_error};
#[cfg(doc)]
use crate::error::{Delivery, ErrorClass};

/// The most endpoints one router takes (the primary and its failovers).
pub const MAX_ENDPOINTS: usize = 64;

/// The `User-Agent` the router sends when the caller set none: `tower-dashscope/<version>`.
pub const USER_AGENT: &str = concat!("tower-dashscope/", env!("CARGO_PKG_VERSION"));

/// Layer that sends each request to the right base URL with the right key, and fails over
/// between regions where that can help; see the [module docs](self).
///
/// Cloning is cheap and shares the endpoints' health; each builder method makes a new health
/// table, so configure first, then clone or apply.
///
/// # Default
///
/// - [`api`](Self::api): [`Api::OpenAiCompatible`] (for paths that do not say);
/// - [`plan`](Self::plan): [`Plan::PayAsYouGo`];
/// - no failover endpoints;
/// - [`failover_maybe_sent`](Self::failover_maybe_sent): `false`;
/// - [`cooldown`](Self::cooldown): 30 s.
#[derive(Clone)]
#[must_use]
pub struct RegionRouter {
    spec: Spec,
    built: Arc<Built>,
}

#[derive(Clone)]
struct Spec {
    endpoints: Vec<(Region, ApiKey)>,
    api: Api,
    plan: Plan,
    cooldown: Duration,
    failover_maybe_sent: bool,
}

/// What every service of a router shares.
pub(crate) struct Built {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) api: Api,
    pub(crate) failover_maybe_sent: bool,
    pub(crate) health: Arc<Health>,
    /// A configuration that cannot work, as `validate` reports it.
    pub(crate) invalid: Option<InvalidRouter>,
    /// Whether every call fails with `invalid` (a key problem fails only the calls routed to
    /// its endpoint, as an authentication error).
    pub(crate) refuse_all: bool,
}

impl Spec {
    fn build(&self) -> Arc<Built> {
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .iter()
            .take(MAX_ENDPOINTS)
            .map(|(region, key)| Endpoint::new(region.clone(), self.plan, key.clone()))
            .collect();
        let invalid = self.problem(&endpoints);
        let refuse_all = invalid.as_ref().is_some_and(|i| !i.key);
        Arc::new(Built {
            refuse_all,
            health: Arc::new(Health::new(endpoints.len(), self.cooldown)),
            endpoints,
            api: self.api,
            failover_maybe_sent: self.failover_maybe_sent,
            invalid,
        })
    }

    /// The first thing that makes this configuration unusable, if any.
    fn problem(&self, endpoints: &[Endpoint]) -> Option<InvalidRouter> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Some(InvalidRouter {
                message: format!(
                    "{} endpoints were configured, at most {MAX_ENDPOINTS} are taken",
                    self.endpoints.len()
                ),
                advice: "fail over to fewer regions".into(),
                key: false,
            });
        }
        for endpoint in endpoints {
            if !endpoint.serves(self.api) {
                return Some(InvalidRouter {
                    message: unserved_message(&endpoint.region, self.plan, self.api),
                    advice: unserved_advice(self.plan, self.api),
                    key: false,
                });
            }
            if endpoint.key_problem().is_some() {
                let err = endpoint.key_error(self.api)?;
                return Some(InvalidRouter {
                    message: err.message().unwrap_or_default().to_owned(),
                    advice: err.advice().to_owned(),
                    key: true,
                });
            }
        }
        None
    }
}

impl RegionRouter {
    /// Requests go to `region` (with [`plan`](Self::plan)'s hosts) with `api_key`.
    pub fn new(region: Region, api_key: impl Into<String>) -> Self {
        let spec = Spec {
            endpoints: vec![(region, ApiKey::new(api_key))],
            api: Api::OpenAiCompatible,
            plan: Plan::PayAsYouGo,
            cooldown: Duration::from_secs(30),
            failover_maybe_sent: false,
        };
        let built = spec.build();
        RegionRouter { spec, built }
    }

    fn rebuilt(mut self, change: impl FnOnce(&mut Spec)) -> Self {
        change(&mut self.spec);
        self.built = self.spec.build();
        self
    }

    /// Adds an endpoint to fail over to, after those added before, with its own key (keys
    /// belong to one region). See the [module docs](self) for when failover happens.
    pub fn failover(self, region: Region, api_key: impl Into<String>) -> Self {
        let key = ApiKey::new(api_key);
        self.rebuilt(|s| s.endpoints.push((region, key)))
    }

    /// The API flavour of requests whose path does not name one (`/chat/completions`); paths
    /// under DashScope's own roots keep theirs. It must be served by every endpoint.
    pub fn api(self, api: Api) -> Self {
        self.rebuilt(|s| s.api = api)
    }

    /// The plan whose hosts every endpoint uses: [`Plan::CodingPlan`] sends requests to
    /// `coding(-intl).dashscope.aliyuncs.com`, [`Plan::TokenPlan`] to
    /// `token-plan.<region>.maas.aliyuncs.com`.
    pub fn plan(self, plan: Plan) -> Self {
        self.rebuilt(|s| s.plan = plan)
    }

    /// How long an endpoint that failed at the connection level is avoided before one request
    /// probes it again.
    pub fn cooldown(self, cooldown: Duration) -> Self {
        self.rebuilt(|s| s.cooldown = cooldown)
    }

    /// Whether a request that **may have reached** the server ([`Delivery::MaybeSent`]: reset
    /// after it was written, a timeout while under way) is sent again to the next endpoint.
    /// Such a chat completion may be generated and billed twice.
    ///
    /// # Default
    ///
    /// `false`: only requests that never reached the server fail over.
    pub fn failover_maybe_sent(self, yes: bool) -> Self {
        self.rebuilt(|s| s.failover_maybe_sent = yes)
    }

    /// Checks the configuration: every endpoint serves the API, every key is usable and
    /// matches its endpoint's plan.
    ///
    /// # Errors
    ///
    /// [`InvalidRouter`], saying what is wrong and what to use instead. Unchecked, a
    /// combination that does not exist fails every call with the same words, and a key that
    /// does not fit its endpoint fails the calls routed there with
    /// [`ErrorClass::Authentication`] (locally, nothing is sent).
    pub fn validate(&self) -> Result<(), InvalidRouter> {
        match &self.built.invalid {
            Some(invalid) => Err(invalid.clone()),
            None => Ok(()),
        }
    }

    /// The endpoints' regions, the primary first.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.spec.endpoints.iter().map(|(region, _)| region)
    }

    /// Whether the endpoint at `index` (0 is the primary) is healthy now: not cooling down
    /// after a connection-level failure. Shared by every clone.
    #[must_use]
    pub fn is_healthy(&self, index: usize) -> bool {
        self.built.health.is_healthy(index)
    }
}

impl fmt::Debug for RegionRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionRouter")
            .field("endpoints", &self.built.endpoints)
            .field("api", &self.spec.api)
            .field("plan", &self.spec.plan)
            .field("cooldown", &self.spec.cooldown)
            .field("failover_maybe_sent", &self.spec.failover_maybe_sent)
            .finish()
    }
}

/// Why a [`RegionRouter`]'s configuration cannot work; see [`RegionRouter::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRouter {
    message: String,
    advice: String,
    /// A key that does not fit its endpoint (rather than a combination that does not exist).
    key: bool,
}

impl InvalidRouter {
    /// What is wrong.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What to do instead.
    #[must_use]
    pub fn advice(&self) -> &str {
        &self.advice
    }
}

impl fmt::Display for InvalidRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid region router: {}; {}",
            self.message, self.advice
        )
    }
}

impl std::error::Error for InvalidRouter {}

impl<S> Layer<S> for RegionRouter {
    type Service = RegionRouterService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RegionRouterService {
            inner,
            built: self.built.clone(),
        }
    }
}

/// Service that routes requests of `S` to the right endpoint; made by [`RegionRouter`], see
/// the [module docs](self).
pub struct RegionRouterService<S> {
    inner: S,
    built: Arc<Built>,
}

impl<S: Clone> Clone for RegionRouterService<S> {
    fn clone(&self) -> Self {
        RegionRouterService {
            inner: self.inner.clone(),
            built: self.built.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RegionRouterService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionRouterService")
            .field("inner", &self.inner)
            .field("endpoints", &self.built.endpoints)
            .finish_non_exhaustive()
    }
}

impl<S> RegionRouterService<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the service, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RegionRouterService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: ReplayBody,
{
    type Response = Response<ResBody>;
    type Error = DashScopeError;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(into_dashscope_error)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service makes the first call; the future keeps it for failovers and
        // readies it again before each one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(inner, req, self.built.clone())
    }
}
