//! The layers between the gateway and its upstreams: the recommended stack, built from the
//! configuration, over hyper-util's client (HTTPS with rustls, or plain HTTP).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_dashscope::{
    ClassifyDashScopeError, DashScopeError, FallbackModel, Quota, Region, RegionRouter,
    RetryWithJitter, TokenBudget, WaitTimeoutHeader,
};

use super::config::Config;

/// A response body from upstream: its errors are typed.
pub type UpstreamBody = UnsyncBoxBody<Bytes, DashScopeError>;

/// The stack, boxed: what the handlers call.
pub type Upstream =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<UpstreamBody>, DashScopeError>;

/// The HTTP client: `https://` with rustls (ring, webpki roots), `http://` as it is (the
/// simulator, a local upstream).
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Makes the HTTP client.
pub fn http_client() -> Result<HttpClient, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|err| format!("cannot set up TLS: {err}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The budget the configuration describes; the gateway keeps a clone to read its headroom.
pub fn budget(config: &Config) -> TokenBudget {
    // No default quota: models without one are not limited on this side.
    let mut budget = TokenBudget::new(config.default_quota.unwrap_or(Quota::per_minute(0, 0)));
    for (name, model) in &config.models {
        if let Some(quota) = model.quota {
            budget = budget.model(name.clone(), quota);
        }
    }
    budget
}

/// The router: the first upstream, then the others as failover, each with its key.
pub fn router(upstreams: &[(Region, String)]) -> Result<RegionRouter, String> {
    let mut iter = upstreams.iter();
    let (region, key) = iter.next().ok_or("no upstream")?;
    let mut router = RegionRouter::new(region.clone(), key.clone());
    for (region, key) in iter {
        router = router.failover(region.clone(), key.clone());
    }
    router
        .validate()
        .map_err(|err| format!("{}; {}", err.message(), err.advice()))?;
    Ok(router)
}

/// The recommended stack, outermost first: FallbackModel -> RetryWithJitter -> TokenBudget ->
/// RegionRouter -> WaitTimeoutHeader -> ClassifyDashScopeError -> the HTTP client.
///
/// Composed by hand until `RecommendedStack` lands; the order is DESIGN.md's.
pub fn recommended_stack(
    config: &Config,
    budget: TokenBudget,
    router: RegionRouter,
    client: HttpClient,
) -> Upstream {
    let chains = config.chains();
    let mut fallback = FallbackModel::new(chains.first().cloned().unwrap_or_default());
    for chain in chains.into_iter().skip(1) {
        fallback = fallback.with_chain(chain);
    }
    for (name, model) in &config.models {
        if let Some(window) = model.context_window {
            fallback = fallback.context_window(name.clone(), window);
        }
    }
    let timeouts = config.timeouts;
    let fallback = fallback.first_byte_timeout(timeouts.first_byte);
    let retry = RetryWithJitter::new()
        .max_attempts(config.retry.max_attempts)
        .base_delay(config.retry.base_delay)
        .max_delay(config.retry.max_delay)
        .deadline(timeouts.total);
    // Let the server queue a burst-throttled request for a while, well within the first-byte
    // timeout.
    let wait = (timeouts.first_byte / 2).max(Duration::from_secs(1));
    let service = ServiceBuilder::new()
        .layer(fallback)
        .layer(retry)
        .layer(budget)
        .layer(router)
        .layer(WaitTimeoutHeader::new(wait))
        .layer(ClassifyDashScopeError::new().idle_timeout(timeouts.idle))
        .service(client)
        .map_response(|response| response.map(|body| body.boxed_unsync()));
    BoxCloneSyncService::new(service)
}
