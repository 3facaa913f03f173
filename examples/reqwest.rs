//! reqwest under the layers: a `reqwest::Client` wrapped as a tower service of
//! `http::Request<Full<Bytes>>`, so that reqwest users get retries, budgets, fallbacks and
//! failover with the client they already have.
//!
//! ```sh
//! cargo run --example reqwest                              # the simulator, no key
//! DASHSCOPE_API_KEY=sk-... cargo run --example reqwest     # DashScope (billed)
//! ```
//!
//! The adapter is [`reqwest_service`]: a dozen lines, copy it. It converts the request with
//! reqwest's own `TryFrom<http::Request<_>>` and the response with
//! `From<reqwest::Response> for http::Response<reqwest::Body>`; `reqwest::Body` is an
//! `http_body::Body`, so a stream reaches the layers frame by frame, as it arrives.
//!
//! Without a key it starts the DashScope simulator on a loopback port, with `qwen-max` down
//! for two seconds, and makes the same two calls as `cargo run --example hyper_client`. With
//! `DASHSCOPE_API_KEY` set it calls DashScope with `DASHSCOPE_REGION`, `DASHSCOPE_BASE_URL` and
//! `DASHSCOPE_MODEL` as `cargo run --example quickstart` reads them.
//!
//! Set no total `reqwest` timeout (`ClientBuilder::timeout`): it would cut long streams. Bound
//! the connection with `connect_timeout` and a stream's silences with
//! `ClassifyDashScopeError::idle_timeout` (`RecommendedStack::classify`).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, service_fn};
use tower_dashscope::{BoxError, ClassifyDashScopeError, ServiceBuilderExt};

#[path = "support/chat_demo.rs"]
mod chat_demo;

use chat_demo::chat_both;

/// `client` as a tower service: what the layers need below them.
fn reqwest_service(
    client: reqwest::Client,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<reqwest::Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |request: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let (parts, body) = request.into_parts();
            // A `Full` body is in memory: collecting it takes no time and cannot fail.
            let body = reqwest::Body::from(body.collect().await?.to_bytes());
            let request = reqwest::Request::try_from(Request::from_parts(parts, body))?;
            let response = client.execute(request).await?;
            Ok::<_, BoxError>(Response::from(response))
        }
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let endpoint = match chat_demo::start("reqwest under the recommended stack").await {
        Ok(endpoint) => endpoint,
        Err(code) => return code,
    };

    let reqwest_client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: cannot build the reqwest client: {err}");
            return ExitCode::FAILURE;
        }
    };
    let client = ServiceBuilder::new()
        .recommended_stack(
            endpoint
                .stack()
                // A stream silent for this long is a (retryable, before its first byte) timeout.
                .classify(ClassifyDashScopeError::new().idle_timeout(Duration::from_secs(30))),
        )
        .service(reqwest_service(reqwest_client));

    let failed = !chat_both(client, &endpoint).await;
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
