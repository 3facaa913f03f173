//! The layers between the gateway and its upstreams: `RecommendedStack`, configured from the
//! file, over hyper-util's client (HTTPS with rustls, or plain HTTP).

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
    Api, ClassifyDashScopeError, DashScopeError, FallbackModel, Quota, RecommendedStack, Region,
    RetryWithJitter, TokenBudget,
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

/// The recommended stack, outermost first: FallbackModel -> RetryWithJitter -> TokenBudget ->
/// RegionRouter -> WaitTimeoutHeader -> ClassifyDashScopeError -> the HTTP client, from the
/// configuration and the resolved upstreams (the first serves, the others are failover).
///
/// Returns the service and the budget, whose headroom the gateway reports (it shares its state
/// with the stack's).
pub fn recommended_stack(
    config: &Config,
    upstreams: &[(Region, String)],
    client: HttpClient,
) -> Result<(Upstream, TokenBudget), String> {
    let ((region, key), failovers) = upstreams.split_first().ok_or("no upstream")?;
    let timeouts = config.timeouts;

    let mut fallback =
        FallbackModel::new(Vec::<String>::new()).first_byte_timeout(timeouts.first_byte);
    for (name, model) in &config.models {
        if let Some(window) = model.context_window {
            fallback = fallback.context_window(name.clone(), window);
        }
    }
    let mut stack = RecommendedStack::new(region.clone(), key.clone())
        .api(Api::OpenAiCompatible)
        // Models without a quota of their own: the file's default, or not limited here.
        .quota(config.default_quota.unwrap_or(Quota::per_minute(0, 0)))
        .fallback_layer(fallback)
        .retry(
            RetryWithJitter::new()
                .max_attempts(config.retry.max_attempts)
                .base_delay(config.retry.base_delay)
                .max_delay(config.retry.max_delay)
                .deadline(timeouts.total),
        )
        // Let the server queue a burst-throttled request for a while, well within the
        // first-byte timeout.
        .wait_timeout((timeouts.first_byte / 2).max(Duration::from_secs(1)))
        .classify(ClassifyDashScopeError::new().idle_timeout(timeouts.idle));
    for (region, key) in failovers {
        stack = stack.failover(region.clone(), key.clone());
    }
    for (name, model) in &config.models {
        if let Some(quota) = model.quota {
            stack = stack.model_quota(name.clone(), quota);
        }
    }
    for chain in config.chains() {
        stack = stack.fallback(chain);
    }
    stack
        .router_ref()
        .validate()
        .map_err(|err| format!("{}; {}", err.message(), err.advice()))?;
    let budget = stack.budget_ref().clone();
    let service = ServiceBuilder::new()
        .layer(stack)
        .service(client)
        .map_response(|response| response.map(|body| body.boxed_unsync()));
    Ok((BoxCloneSyncService::new(service), budget))
}
