//! The gateway itself: an axum router serving `POST /v1/chat/completions` and `GET /v1/models`
//! through the recommended stack.
//!
//! Kept apart from `main` so that integration tests start it in process, on loopback.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request as AxumRequest, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_dashscope::mock::{MockDashScope, MockServer, ModelConfig};
use tower_dashscope::{
    Attempts, BudgetWait, DashScopeError, ErrorClass, Region, ServedModel, ServedRegion,
    TokenBudget,
};

use super::config::{Config, ConfigError, Target};
use super::sse::SseRelay;
use super::stack::{self, Upstream};

/// The largest non-streamed answer the gateway reads from upstream.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The key the simulator is served with.
const SIMULATOR_KEY: &str = "sk-gateway-simulator";

/// Header: the model that served the answer (after aliases and fallbacks).
pub const SERVED_MODEL: HeaderName = HeaderName::from_static("x-gateway-served-model");
/// Header: the model the request was for, after aliases.
pub const REQUESTED_MODEL: HeaderName = HeaderName::from_static("x-gateway-requested-model");
/// Header: the upstream region (or base URL) that answered.
pub const SERVED_REGION: HeaderName = HeaderName::from_static("x-gateway-region");
/// Header: attempts made on the model that answered (retries included).
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");
/// Header: how long the request waited for its quota before it was sent, in milliseconds.
pub const BUDGET_WAIT_MS: HeaderName = HeaderName::from_static("x-gateway-budget-wait-ms");

/// A gateway, ready to serve: cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    upstream: Upstream,
    budget: TokenBudget,
}

/// What runs alongside a gateway: the simulator, when the configuration asks for it.
pub struct Upstreams {
    /// Each upstream's base and key, in order.
    pub resolved: Vec<(Region, String)>,
    /// The simulator's server, kept alive as long as this value.
    pub simulator: Option<(MockDashScope, MockServer)>,
}

/// Resolves the configuration's upstreams: reads each key from the environment (through
/// `env`), and starts the simulator on a loopback port if one is asked for.
pub async fn resolve_upstreams(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Upstreams, ConfigError> {
    let mut resolved = Vec::new();
    let mut simulator = None;
    for (i, upstream) in config.upstreams.iter().enumerate() {
        match &upstream.target {
            Target::Region(region) => {
                let name = upstream.api_key_env.as_deref().unwrap_or_default();
                let key =
                    env(name)
                        .filter(|k| !k.trim().is_empty())
                        .ok_or_else(|| ConfigError {
                            source_name: "the environment".into(),
                            line: None,
                            key: Some(format!("upstreams[{i}].api_key_env")),
                            message: format!(
                                "the environment variable {name} is not set (or empty): export it \
                             with the key for {region}, or run without a configuration file to \
                             use the simulator"
                            ),
                        })?;
                resolved.push((region.clone(), key));
            }
            Target::Simulator => {
                let (mock, server) = match &simulator {
                    Some(running) => running,
                    None => simulator.insert(start_simulator(config).await.map_err(|err| {
                        ConfigError {
                            source_name: "the simulator".into(),
                            line: None,
                            key: Some(format!("upstreams[{i}].simulator")),
                            message: format!("cannot listen on a loopback port: {err}"),
                        }
                    })?),
                };
                let _ = mock;
                let base = format!("http://{}", server.local_addr());
                let region = Region::custom(&base).map_err(|err| ConfigError {
                    source_name: "the simulator".into(),
                    line: None,
                    key: None,
                    message: err.to_string(),
                })?;
                resolved.push((region, SIMULATOR_KEY.to_owned()));
            }
        }
    }
    Ok(Upstreams {
        resolved,
        simulator,
    })
}

/// The simulator the gateway runs against without a key: every configured model, answering
/// at a readable pace.
async fn start_simulator(config: &Config) -> std::io::Result<(MockDashScope, MockServer)> {
    let mut builder = MockDashScope::builder().api_key(SIMULATOR_KEY).seed(16);
    for name in config.models.keys() {
        builder = builder.model(
            name.clone(),
            ModelConfig::new()
                .rpm(6_000)
                .tpm(5_000_000)
                .latency(Duration::from_millis(150), 40.0),
        );
    }
    let mock = builder.build();
    let server = mock.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    Ok((mock, server))
}

impl Gateway {
    /// A gateway for `config`, sending to `upstreams` (see [`resolve_upstreams`]).
    pub fn new(config: Config, upstreams: &[(Region, String)]) -> Result<Gateway, String> {
        let client = stack::http_client()?;
        let (upstream, budget) = stack::recommended_stack(&config, upstreams, client)?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                config,
                upstream,
                budget,
            }),
        })
    }

    /// The axum router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(list_models))
            .fallback(not_found)
            // The body limit is the gateway's own (an OpenAI-shaped 413), not axum's.
            .layer(DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting and waits for the
    /// requests in flight (streams included: the idle and total timeouts bound them).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// An OpenAI-shaped error response.
pub fn error_response(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: &str,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The status, OpenAI error type and code for an upstream failure.
pub fn map_error(err: &DashScopeError) -> (StatusCode, &'static str, &'static str) {
    match err.class() {
        ErrorClass::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        ErrorClass::QuotaExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
        ),
        ErrorClass::InvalidRequest => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
        ErrorClass::ContextLengthExceeded => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        ErrorClass::ContentFiltered => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "content_filter",
        ),
        ErrorClass::NotFound => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        ErrorClass::PayloadTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "payload_too_large",
        ),
        // The gateway's own key was refused: not the caller's credentials, so not a 401 that
        // an SDK would report as the caller's bad key.
        ErrorClass::Authentication | ErrorClass::PermissionDenied => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_authentication",
        ),
        ErrorClass::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "upstream_unavailable",
        ),
        ErrorClass::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
        ),
        ErrorClass::StreamInterrupted => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "stream_interrupted",
        ),
        ErrorClass::Connection => (
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_connection",
        ),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_error"),
    }
}

/// The message a caller sees for an upstream failure: what happened and what to do.
pub fn error_message(err: &DashScopeError) -> String {
    let mut message = err.to_string();
    if let Some(id) = err.request_id() {
        if !message.contains(id) {
            message.push_str(&format!(" (upstream request id {id})"));
        }
    }
    message
}

fn upstream_error_response(err: &DashScopeError, gateway: &Gateway, requested: &str) -> Response {
    let (status, kind, code) = map_error(err);
    let mut response = error_response(status, kind, Some(code), None, &error_message(err));
    let headers = response.headers_mut();
    if let Some(after) = err.retry_after() {
        // Whole seconds, rounded up: a caller that waits this long is not early.
        let secs = after.as_millis().div_ceil(1000).max(1);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs as u64));
        headers.insert(
            HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(after.as_millis() as u64),
        );
    }
    if let Some(attempts) = err.attempts() {
        headers.insert(ATTEMPTS, HeaderValue::from(attempts));
    }
    headers.insert(REQUESTED_MODEL, header_value(requested));
    rate_limit_headers(headers, &gateway.inner.budget, requested);
    tracing::warn!(
        gen_ai.request.model = requested,
        error.type = err.class().as_str(),
        dashscope.code = err.code().unwrap_or(""),
        dashscope.request_id = err.request_id().unwrap_or(""),
        attempt = err.attempts().unwrap_or(1),
        status = status.as_u16(),
        "gateway: the request failed upstream; answering with an error"
    );
    response
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// OpenAI-style rate-limit headers for `model`, from the budget's headroom: the limits are per
/// minute (the quota), the remaining counts are what the current shaping window (a second by
/// default) still admits, and the resets are that window.
pub fn rate_limit_headers(headers: &mut HeaderMap, budget: &TokenBudget, model: &str) {
    let room = budget.headroom(model);
    let reset = format_reset(room.window);
    if room.quota.requests_per_minute() > 0 {
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderValue::from(room.quota.requests_per_minute()),
        );
        if let Some(left) = room.requests {
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from(left),
            );
        }
        headers.insert(
            HeaderName::from_static("x-ratelimit-reset-requests"),
            header_value(&reset),
        );
    }
    if room.quota.tokens_per_minute() > 0 {
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderValue::from(room.quota.tokens_per_minute()),
        );
        if let Some(left) = room.tokens {
            headers.insert(
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderValue::from(left),
            );
        }
        headers.insert(
            HeaderName::from_static("x-ratelimit-reset-tokens"),
            header_value(&reset),
        );
    }
}

/// OpenAI's reset format: `1s`, `250ms`, `6m0s`.
fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{s:.3}s")
        }
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

async fn not_found(request: AxumRequest) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        None,
        &format!(
            "no route {} {}: this gateway serves POST /v1/chat/completions and GET /v1/models",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn list_models(State(gateway): State<Gateway>) -> Response {
    let config = &gateway.inner.config;
    let mut data = Vec::new();
    for name in config.models.keys() {
        let aliases: Vec<&String> = config
            .aliases
            .iter()
            .filter(|(_, target)| *target == name)
            .map(|(alias, _)| alias)
            .collect();
        data.push(json!({
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "tower-dashscope-gateway",
            "fallbacks": config.fallbacks.get(name).cloned().unwrap_or_default(),
            "aliases": aliases,
        }));
    }
    for (alias, target) in &config.aliases {
        data.push(json!({
            "id": alias,
            "object": "model",
            "created": 0,
            "owned_by": "tower-dashscope-gateway",
            "alias_of": target,
            "fallbacks": config.fallbacks.get(target).cloned().unwrap_or_default(),
        }));
    }
    let body = json!({"object": "list", "data": data});
    ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// What the caller asked for, checked.
struct Ask {
    /// The name the caller used.
    asked: String,
    /// The model it stands for.
    model: String,
    stream: bool,
    /// Whether the caller asked for the usage chunk itself.
    caller_wants_usage: bool,
    /// The body to send upstream.
    body: Bytes,
}

fn bad_request(param: Option<&str>, code: &str, message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(code),
        param,
        message,
    )
}

/// Reads and checks the request: the body within its limit, JSON, a known model.
async fn read_ask(gateway: &Gateway, request: AxumRequest) -> Result<Ask, Response> {
    let config = &gateway.inner.config;
    let limit = config.max_body_bytes;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            None,
            &format!(
                "the request body is over this gateway's limit of {limit} bytes \
                 (server.max_body_bytes); send a shorter conversation"
            ),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(err) => {
            return Err(bad_request(
                None,
                "unreadable_body",
                &format!("could not read the request body ({err}); send it again"),
            ));
        }
    };
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|err| {
        bad_request(
            None,
            "invalid_json",
            &format!(
                "the request body is not valid JSON ({err}); send a chat completion request \
                 as a JSON object"
            ),
        )
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(bad_request(
            None,
            "invalid_json",
            "the request body is JSON but not an object; send a chat completion request as a \
             JSON object",
        ));
    };
    let asked = match object.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => model.clone(),
        Some(_) => {
            return Err(bad_request(
                Some("model"),
                "invalid_type",
                "`model` must be a non-empty string naming a model; GET /v1/models lists them",
            ));
        }
        None => {
            return Err(bad_request(
                Some("model"),
                "missing_required_parameter",
                "you must provide a model parameter; GET /v1/models lists the models this \
                 gateway serves",
            ));
        }
    };
    let Some(model) = config.resolve(&asked).map(str::to_owned) else {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            &format!(
                "the model {asked:?} is not served by this gateway; use one of: {} \
                 (GET /v1/models lists them with their fallbacks)",
                config
                    .models
                    .keys()
                    .chain(config.aliases.keys())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    object.insert("model".into(), Value::String(model.clone()));
    let stream = object.get("stream").and_then(Value::as_bool) == Some(true);
    let mut caller_wants_usage = false;
    if stream {
        // The budget settles against the usage the stream reports: always ask for it.
        let options = object.entry("stream_options").or_insert_with(|| json!({}));
        if !options.is_object() {
            *options = json!({});
        }
        caller_wants_usage = options.get("include_usage").and_then(Value::as_bool) == Some(true);
        options["include_usage"] = Value::Bool(true);
    }
    let body = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
    Ok(Ask {
        asked,
        model,
        stream,
        caller_wants_usage,
        body,
    })
}

async fn chat_completions(State(gateway): State<Gateway>, request: AxumRequest) -> Response {
    let started = Instant::now();
    let deadline = started + gateway.inner.config.timeouts.total;
    let ask = match read_ask(&gateway, request).await {
        Ok(ask) => ask,
        Err(response) => return response,
    };
    tracing::debug!(
        gen_ai.request.model = %ask.model,
        asked = %ask.asked,
        stream = ask.stream,
        "gateway: forwarding"
    );
    let mut upstream_request = Request::post("/chat/completions")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(ask.body.clone()))
        .expect("a valid request");
    if ask.stream {
        upstream_request.headers_mut().insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    let call = gateway.inner.upstream.clone().oneshot(upstream_request);
    let response = match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return upstream_error_response(&err, &gateway, &ask.model),
        Err(_) => {
            let err = DashScopeError::new(ErrorClass::Timeout).with_message(format!(
                "no answer within the gateway's total timeout of {:?} (timeouts.total)",
                gateway.inner.config.timeouts.total
            ));
            return upstream_error_response(&err, &gateway, &ask.model);
        }
    };

    let (parts, body) = response.into_parts();
    let served = parts
        .extensions
        .get::<ServedModel>()
        .map_or_else(|| ask.model.clone(), |m| m.0.clone());
    let region = parts
        .extensions
        .get::<ServedRegion>()
        .map(|r| r.0.to_string());
    let attempts = parts.extensions.get::<Attempts>().map_or(1, |a| a.0);
    let waited = parts
        .extensions
        .get::<BudgetWait>()
        .map_or(Duration::ZERO, |w| w.0);
    let is_sse = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    let mut headers = HeaderMap::new();
    headers.insert(SERVED_MODEL, header_value(&served));
    headers.insert(REQUESTED_MODEL, header_value(&ask.model));
    if let Some(region) = &region {
        headers.insert(SERVED_REGION, header_value(region));
    }
    headers.insert(ATTEMPTS, HeaderValue::from(attempts));
    headers.insert(BUDGET_WAIT_MS, HeaderValue::from(waited.as_millis() as u64));
    for name in ["x-request-id", "x-dashscope-request-id"] {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(HeaderName::from_static(name), v.clone());
        }
    }
    rate_limit_headers(&mut headers, &gateway.inner.budget, &served);
    tracing::info!(
        gen_ai.request.model = %ask.model,
        gen_ai.response.model = %served,
        dashscope.region = region.as_deref().unwrap_or(""),
        attempt = attempts,
        wait_ms = waited.as_millis() as u64,
        stream = ask.stream,
        "gateway: upstream answered"
    );

    if is_sse {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let relay = SseRelay::new(body, deadline, ask.caller_wants_usage, served);
        let mut response = Response::new(Body::new(relay));
        *response.status_mut() = parts.status;
        response.headers_mut().extend(headers);
        return response;
    }

    // Not a stream: read it all (bounded, within the total timeout), then answer.
    let read = Limited::new(body, MAX_ANSWER_BYTES).collect();
    let bytes = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) => {
            let err = match err.downcast::<DashScopeError>() {
                Ok(err) => *err,
                Err(other) => DashScopeError::new(ErrorClass::StreamInterrupted)
                    .with_message(format!("the answer could not be read: {other}")),
            };
            return upstream_error_response(&err, &gateway, &ask.model);
        }
        Err(_) => {
            let err = DashScopeError::new(ErrorClass::Timeout).with_message(format!(
                "the answer did not arrive within the gateway's total timeout of {:?}",
                gateway.inner.config.timeouts.total
            ));
            return upstream_error_response(&err, &gateway, &ask.model);
        }
    };
    if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
        let usage = &answer["usage"];
        tracing::info!(
            gen_ai.response.model = %served,
            gen_ai.usage.input_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0),
            gen_ai.usage.output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0),
            "gateway: answered"
        );
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = parts.status;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().extend(headers);
    response
}
