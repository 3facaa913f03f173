//! All six layers, in the recommended order, from one configuration.
//!
//! [`RecommendedStack`] is one [`Layer`] made of [`FallbackModel`], [`RetryWithJitter`],
//! [`TokenBudget`], [`RegionRouter`], [`WaitTimeoutHeader`] and [`ClassifyDashScopeError`],
//! outermost first. Give it a region and a key, add what you know (quotas, fallback chains, a
//! failover region) and put it over any HTTP client service; the service it makes is named
//! [`RecommendedService<S>`]. Users who need another order, or fewer layers, stack the layers
//! themselves with [`ServiceBuilder`](tower::ServiceBuilder) and
//! [`ServiceBuilderExt`](crate::ServiceBuilderExt).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{
//!     Attempts, BoxError, Quota, RecommendedStack, Region, ServedModel, ServedRegion,
//! };
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // An HTTP client stand-in: the first call is throttled, the next ones answer.
//! let calls = Arc::new(AtomicU32::new(0));
//! let http_client = service_fn(move |req: Request<Full<Bytes>>| {
//!     let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
//!     async move {
//!         assert_eq!(req.uri().host(), Some("dashscope-intl.aliyuncs.com"));
//!         let response: Response<Full<Bytes>> = if first {
//!             Response::builder().status(429).body(Full::from(
//!                 r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded"}"#,
//!             ))?
//!         } else {
//!             Response::new(Full::from(
//!                 r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
//!             ))
//!         };
//!         Ok::<_, BoxError>(response)
//!     }
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(
//!         RecommendedStack::new(Region::Singapore, "sk-your-key")
//!             .quota(Quota::per_minute(600, 1_000_000))
//!             .fallback(["qwen-max", "qwen-plus"]),
//!     )
//!     .service(http_client);
//!
//! let request = Request::post("/compatible-mode/v1/chat/completions")
//!     .body(Full::from(r#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}"#))
//!     .unwrap();
//! let response = client.oneshot(request).await.unwrap();
//! // qwen-plus is the last model of its chain: the 429 was retried, after a backoff.
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
//! assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "qwen-plus");
//! assert_eq!(response.extensions().get::<ServedRegion>().unwrap().0, Region::Singapore);
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert!(body.starts_with(b"{\"choices\""));
//! # }
//! ```
//!
//! Everything configurable, with a failover region and a tuned retry:
//!
//! ```
//! use std::time::Duration;
//! use tower_dashscope::{Api, Quota, RecommendedStack, Region, RetryWithJitter};
//!
//! let stack = RecommendedStack::new(Region::Singapore, "sk-intl-key")
//!     .failover(Region::Virginia, "sk-us-key")         // keys belong to one region each
//!     .api(Api::OpenAiCompatible)                       // for paths like /chat/completions
//!     .quota(Quota::per_minute(1_200, 1_000_000))       // every model...
//!     .model_quota("qwen-max", Quota::per_minute(600, 600_000)) // ...but this one
//!     .max_concurrency(64)
//!     .fallback(["qwen-max", "qwen-plus", "qwen-flash"])
//!     .retry(RetryWithJitter::new().max_attempts(4).deadline(Duration::from_secs(30)))
//!     .wait_timeout(Duration::from_secs(5));
//! # let _ = stack;
//! ```
//!
//! # The order, and why
//!
//! A request goes in from the top and the response comes out the same way; each layer sees
//! only what the layers below it let through:
//!
//! ```text
//!  your code ── request ─────────────────────────────────────────────▲── Response / DashScopeError
//!  ┌─────────────────────────────────────────────────────────────────┴────────────────┐
//!  │ FallbackModel            picks the model; on a failure another model can fix,     │
//!  │                          rewrites `model` and goes round again          ServedModel│
//!  │ ┌──────────────────────────────────────────────────────────────────────────────┐ │
//!  │ │ RetryWithJitter        backoff + jitter, Retry-After, retry budget   Attempts │ │
//!  │ │ ┌──────────────────────────────────────────────────────────────────────────┐ │ │
//!  │ │ │ TokenBudget          waits for the quota of the model sent   BudgetWait  │ │ │
//!  │ │ │ ┌──────────────────────────────────────────────────────────────────────┐ │ │ │
//!  │ │ │ │ RegionRouter       base URL + key; failover if never sent ServedRegion│ │ │ │
//!  │ │ │ │ ┌──────────────────────────────────────────────────────────────────┐ │ │ │ │
//!  │ │ │ │ │ WaitTimeoutHeader  X-DashScope-Wait-Timeout: the server queues   │ │ │ │ │
//!  │ │ │ │ │ ┌──────────────────────────────────────────────────────────────┐ │ │ │ │ │
//!  │ │ │ │ │ │ ClassifyDashScopeError  every failure → typed DashScopeError │ │ │ │ │ │
//!  │ │ │ │ │ │ ┌──────────────────────────────────────────────────────────┐ │ │ │ │ │ │
//!  │ │ │ │ │ │ │ your HTTP client (hyper-util, reqwest adapter, mock…)    │ │ │ │ │ │ │
//! ```
//!
//! - **[`ClassifyDashScopeError`] innermost**, so that every layer above sees typed errors: a
//!   429 in any of DashScope's body shapes, an error event at the start of a stream, a
//!   transport error placed as sent or not. Above it, a `200` is a success.
//! - **[`WaitTimeoutHeader`]** only adds a header; it sits below the router so that every
//!   attempt to every region carries it.
//! - **[`RegionRouter`] below the budget and the retry**, so that failing over to another
//!   region (only when the request never reached the server) is part of one attempt, and each
//!   retry starts again from the first healthy region.
//! - **[`TokenBudget`] inside the retry**, so that every attempt pays for its quota: a retry
//!   storm cannot exceed the quota it is retrying against. **Inside the fallback**, so that it
//!   counts the model actually sent, not the one first asked for.
//! - **[`RetryWithJitter`] inside the fallback**, so that a model is retried (when retrying
//!   can help) before the next is tried, and the fallback can tell the retry to hand rate
//!   limits straight back when another model has room
//!   ([`FallbackAvailable`](crate::fallback::FallbackAvailable)).
//! - **[`FallbackModel`] outermost**, so that it sees each model's final outcome, after its
//!   retries, and switches only on the errors another model can fix.
//!
//! What goes wrong in other orders is shown in `examples/custom_stack.rs`.
//!
//! # Default
//!
//! Every setting not given is the layer's own default (see each layer's `# Default`), except
//! where this list says otherwise:
//!
//! - [`fallback`](RecommendedStack::fallback): **no chain**, so [`FallbackModel`] passes every
//!   request through untouched (a model in no chain is sent once, as asked);
//! - [`quota`](RecommendedStack::quota): **none** — [`Quota::per_minute(0, 0)`](Quota::per_minute),
//!   which leaves requests and tokens unlimited: [`TokenBudget`] never makes a request wait and
//!   never refuses one (so no [`BudgetWait`](crate::BudgetWait) appears). It still estimates
//!   each chat request's tokens and settles them against the reported usage, which costs a
//!   little work and no waiting; the server's 429s lower only limits that exist, so none;
//!   [`max_concurrency`](RecommendedStack::max_concurrency) limits requests in flight if set;
//! - [`model_quota`](RecommendedStack::model_quota): none;
//! - [`max_concurrency`](RecommendedStack::max_concurrency): unlimited;
//! - [`retry`](RecommendedStack::retry): [`RetryWithJitter::new`] — 6 attempts, 1 s base and
//!   60 s maximum delay with full jitter, `Retry-After` honoured up to 120 s, no deadline, a
//!   retry budget of 10 retries per second plus 20% of requests;
//! - [`router`](RecommendedStack::router): [`RegionRouter::new`] with the region and key given
//!   to [`new`](RecommendedStack::new), [`Api::OpenAiCompatible`] for paths that name no API,
//!   the pay-as-you-go plan, no failover;
//! - [`wait_timeout`](RecommendedStack::wait_timeout): **10 s** ([`DEFAULT_WAIT_TIMEOUT`]); a
//!   client timeout of yours must be longer than this;
//! - [`classify`](RecommendedStack::classify): [`ClassifyDashScopeError::new`] (no idle
//!   timeout between stream chunks).
//!
//! # Sharing
//!
//! Cloning the stack, or calling [`layer`](Layer::layer) on it several times, shares the state
//! of every layer: the quota windows, the retry budget, the fallback cooldowns and the regions'
//! health. Each builder method that changes a layer makes that layer anew, so configure first,
//! then clone.

use std::fmt;
use std::time::Duration;

use tower::Layer;

use crate::api::{Api, Region};
use crate::budget::{Quota, TokenBudget, TokenBudgetService};
use crate::classify::{ClassifyDashScopeError, ClassifyDashScopeErrorService};
use crate::fallback::{FallbackModel, FallbackModelService};
use crate::retry::{RetryWithJitter, RetryWithJitterService};
use crate::router::{RegionRouter, RegionRouterService};
use crate::wait_timeout::{WaitTimeoutHeader, WaitTimeoutHeaderService};

/// The `X-DashScope-Wait-Timeout` the stack asks for unless told otherwise: 10 seconds.
///
/// DashScope recommends 3 to 120 seconds; ten lets a burst-throttled request be queued by the
/// server rather than refused, without holding an interactive caller long.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The service [`RecommendedStack`] makes over an HTTP client service `S`: the six layers,
/// outermost first.
pub type RecommendedService<S> = FallbackModelService<
    RetryWithJitterService<
        TokenBudgetService<
            RegionRouterService<WaitTimeoutHeaderService<ClassifyDashScopeErrorService<S>>>,
        >,
    >,
>;

/// Layer of all six layers in the recommended order; see the [module docs](self).
///
/// `Clone` is cheap and shares every layer's state. `Debug` never shows a key.
///
/// # Default
///
/// See the [module docs](self#default).
#[derive(Clone)]
#[must_use]
pub struct RecommendedStack {
    fallback: FallbackModel,
    retry: RetryWithJitter,
    budget: TokenBudget,
    /// What [`budget`](Self::budget) is made of, until a budget of the caller's replaces it.
    quota: Quota,
    model_quotas: Vec<(String, Quota)>,
    max_concurrency: Option<usize>,
    router: RegionRouter,
    wait_timeout: WaitTimeoutHeader,
    classify: ClassifyDashScopeError,
}

impl RecommendedStack {
    /// The stack for `region`, with `api_key` (sent only to that region), and every other
    /// setting at its [default](self#default).
    pub fn new(region: Region, api_key: impl Into<String>) -> Self {
        let quota = Quota::per_minute(0, 0);
        RecommendedStack {
            fallback: FallbackModel::new(Vec::<String>::new()),
            retry: RetryWithJitter::new(),
            budget: TokenBudget::new(quota),
            quota,
            model_quotas: Vec::new(),
            max_concurrency: None,
            router: RegionRouter::new(region, api_key),
            wait_timeout: WaitTimeoutHeader::new(DEFAULT_WAIT_TIMEOUT),
            classify: ClassifyDashScopeError::new(),
        }
    }

    /// Adds a region to fail over to, after those added before, with its own key: see
    /// [`RegionRouter::failover`].
    pub fn failover(mut self, region: Region, api_key: impl Into<String>) -> Self {
        self.router = self.router.failover(region, api_key);
        self
    }

    /// The API flavour of requests whose path names none (`/chat/completions`): see
    /// [`RegionRouter::api`].
    pub fn api(mut self, api: Api) -> Self {
        self.router = self.router.api(api);
        self
    }

    /// The quota of every model that has none of its own
    /// ([`model_quota`](Self::model_quota)): see [`TokenBudget::new`]. Makes the budget anew
    /// from the stack's quota settings, replacing one given to [`budget`](Self::budget).
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self.rebuild_budget()
    }

    /// `model`'s own quota: see [`TokenBudget::model`]. Makes the budget anew from the stack's
    /// quota settings, replacing one given to [`budget`](Self::budget).
    pub fn model_quota(mut self, model: impl Into<String>, quota: Quota) -> Self {
        let model = model.into();
        self.model_quotas.retain(|(m, _)| *m != model);
        self.model_quotas.push((model, quota));
        self.rebuild_budget()
    }

    /// How many requests may be in flight at once, over every model: see
    /// [`TokenBudget::max_concurrency`]. Makes the budget anew from the stack's quota settings,
    /// replacing one given to [`budget`](Self::budget).
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = Some(max);
        self.rebuild_budget()
    }

    /// Adds a fallback chain, in order of preference (the argument of [`FallbackModel::new`]):
    /// a request for a model of the chain that fails in a way another model can fix is sent to
    /// the next. Chains added later come after (see [`FallbackModel::with_chain`]).
    pub fn fallback<I>(mut self, chain: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.fallback = self.fallback.with_chain(chain);
        self
    }

    /// The retry layer, in place of the default [`RetryWithJitter::new`].
    pub fn retry(mut self, retry: RetryWithJitter) -> Self {
        self.retry = retry;
        self
    }

    /// The budget, in place of the one made from [`quota`](Self::quota),
    /// [`model_quota`](Self::model_quota) and [`max_concurrency`](Self::max_concurrency) —
    /// for its other settings ([`TokenBudget::max_wait`], a shared
    /// [`store`](TokenBudget::store), …). Calling one of those three afterwards makes the
    /// budget anew from them and drops this one.
    pub fn budget(mut self, budget: TokenBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The fallback layer, in place of the one made from [`fallback`](Self::fallback)'s
    /// chains, for its other settings ([`FallbackModel::cooldown`],
    /// [`first_byte_timeout`](FallbackModel::first_byte_timeout), context windows, …). Chains
    /// added with [`fallback`](Self::fallback) afterwards are added to it.
    pub fn fallback_layer(mut self, fallback: FallbackModel) -> Self {
        self.fallback = fallback;
        self
    }

    /// The router, in place of the one made from [`new`](Self::new),
    /// [`failover`](Self::failover) and [`api`](Self::api) (for a plan, a workspace host or a
    /// cooldown). [`failover`](Self::failover) and [`api`](Self::api) afterwards change it.
    pub fn router(mut self, router: RegionRouter) -> Self {
        self.router = router;
        self
    }

    /// The `X-DashScope-Wait-Timeout` sent with every request (see [`WaitTimeoutHeader`]);
    /// `Duration::ZERO` asks the server not to queue.
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait_timeout = WaitTimeoutHeader::new(wait);
        self
    }

    /// The classifier, in place of [`ClassifyDashScopeError::new`] (for an idle timeout
    /// between stream chunks, body limits, …).
    pub fn classify(mut self, classify: ClassifyDashScopeError) -> Self {
        self.classify = classify;
        self
    }

    /// The fallback layer in use, e.g. to inspect it.
    pub fn fallback_ref(&self) -> &FallbackModel {
        &self.fallback
    }

    /// The budget in use, e.g. for [`TokenBudget::in_flight`] or
    /// [`TokenBudget::tokens_in_window`] (it shares its state with every service made).
    pub fn budget_ref(&self) -> &TokenBudget {
        &self.budget
    }

    /// The router in use, e.g. for [`RegionRouter::validate`] or
    /// [`RegionRouter::is_healthy`].
    pub fn router_ref(&self) -> &RegionRouter {
        &self.router
    }

    fn rebuild_budget(mut self) -> Self {
        let mut budget = TokenBudget::new(self.quota);
        for (model, quota) in &self.model_quotas {
            budget = budget.model(model.clone(), *quota);
        }
        if let Some(max) = self.max_concurrency {
            budget = budget.max_concurrency(max);
        }
        self.budget = budget;
        self
    }
}

impl fmt::Debug for RecommendedStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each layer's own `Debug`; the router's shows no key.
        f.debug_struct("RecommendedStack")
            .field("fallback", &self.fallback)
            .field("retry", &self.retry)
            .field("budget", &self.budget)
            .field("router", &self.router)
            .field("wait_timeout", &self.wait_timeout)
            .field("classify", &self.classify)
            .finish()
    }
}

impl<S> Layer<S> for RecommendedStack {
    type Service = RecommendedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.classify.layer(inner);
        let inner = self.wait_timeout.layer(inner);
        let inner = self.router.layer(inner);
        let inner = self.budget.layer(inner);
        let inner = self.retry.layer(inner);
        self.fallback.layer(inner)
    }
}
