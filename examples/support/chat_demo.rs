//! What `hyper_client`, `reqwest` and `custom_stack` share: where to send (the simulator on a
//! loopback port, or DashScope when `DASHSCOPE_API_KEY` is set), logging, and the two calls
//! they make — one answer in one piece, one streamed and printed token by token. Shared with
//! `#[path]`.
#![allow(dead_code)]

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_dashscope::mock::{MockDashScope, MockServer, ModelConfig};
use tower_dashscope::{
    Attempts, BudgetWait, DashScopeError, RecommendedStack, Region, RetryWithJitter, ServedModel,
    ServedRegion, UsageSlot,
};

#[path = "dashscope_env.rs"]
pub mod dashscope_env;
#[path = "logging.rs"]
mod logging;

pub use dashscope_env::redact;
use dashscope_env::{DEFAULT_MODEL, env, is_loopback, parse_base_url, parse_region};

/// Logs to stderr with `tracing-subscriber`: `RUST_LOG` if set, else `tower_dashscope=info`, so
/// the layers' decisions (a retry, a fallback, a failover) show up as they happen.
pub fn init_tracing() {
    logging::init();
}

/// Where the example sends its requests.
pub struct Endpoint {
    /// The region (or base URL) and its key.
    pub region: Region,
    /// The key: never printed, only handed to the stack.
    key: String,
    /// The model asked for.
    pub model: String,
    /// The model to fall back to, if any.
    pub fallback: Option<String>,
    /// The simulator, when there is no key; dropping it stops the server.
    pub simulator: Option<(MockDashScope, MockServer)>,
}

impl Endpoint {
    /// The simulator on a loopback port, or DashScope when `DASHSCOPE_API_KEY` is set (with
    /// `DASHSCOPE_REGION`, `DASHSCOPE_BASE_URL` and `DASHSCOPE_MODEL` as the quickstart reads
    /// them).
    pub async fn from_env() -> Result<Endpoint, String> {
        match env("DASHSCOPE_API_KEY")? {
            Some(key) => Endpoint::live(key),
            None => Endpoint::simulator().await,
        }
    }

    fn live(key: String) -> Result<Endpoint, String> {
        let checked = || -> Result<(Region, String), String> {
            let region = match env("DASHSCOPE_BASE_URL")? {
                Some(url) => {
                    let base = parse_base_url(&url)?;
                    if base.starts_with("http://") && !is_loopback(&base) {
                        eprintln!(
                            "warning: DASHSCOPE_BASE_URL is plain http to a host that is not \
                             loopback: the key travels unencrypted."
                        );
                    }
                    Region::custom(&base).map_err(|err| err.to_string())?
                }
                None => parse_region(env("DASHSCOPE_REGION")?.as_deref())?,
            };
            let model = env("DASHSCOPE_MODEL")?.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
            Ok((region, model))
        };
        // The messages quote the variables' values; none of them should hold the key.
        let (region, model) = checked().map_err(|message| redact(&message, &key))?;
        let fallback = (model != DEFAULT_MODEL).then(|| DEFAULT_MODEL.to_owned());
        Ok(Endpoint {
            region,
            key,
            model,
            fallback,
            simulator: None,
        })
    }

    /// A simulator on loopback: `qwen-max` is down for its first two seconds, `qwen-plus`
    /// answers at 40 tokens a second (so a stream is seen arriving).
    async fn simulator() -> Result<Endpoint, String> {
        let mock = MockDashScope::builder()
            .model(
                "qwen-max",
                ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(2)),
            )
            .model(
                "qwen-plus",
                ModelConfig::new()
                    .rpm(600)
                    .latency(Duration::from_millis(150), 40.0),
            )
            .api_key("sk-simulator")
            .seed(2026)
            .build();
        let server = mock
            .serve(([127, 0, 0, 1], 0).into())
            .await
            .map_err(|err| format!("cannot start the simulator on loopback: {err}"))?;
        let region = Region::custom(&format!("http://{}", server.local_addr()))
            .map_err(|err| err.to_string())?;
        Ok(Endpoint {
            region,
            key: "sk-simulator".to_owned(),
            model: "qwen-max".to_owned(),
            fallback: Some("qwen-plus".to_owned()),
            simulator: Some((mock, server)),
        })
    }

    /// The recommended stack for this endpoint: its region and key, a fallback chain, and
    /// retries short enough for a demo.
    pub fn stack(&self) -> RecommendedStack {
        let chain = std::iter::once(self.model.clone()).chain(self.fallback.clone());
        RecommendedStack::new(self.region.clone(), self.key.clone())
            .fallback(chain)
            .retry(
                RetryWithJitter::new()
                    .max_attempts(3)
                    .base_delay(Duration::from_millis(250))
                    .max_delay(Duration::from_secs(2))
                    .deadline(Duration::from_secs(30)),
            )
    }

    /// One line saying where requests go (never the key).
    pub fn describe(&self) -> String {
        match &self.simulator {
            Some((_, server)) => format!(
                "the DashScope simulator on http://{} (set DASHSCOPE_API_KEY for DashScope itself)",
                server.local_addr()
            ),
            None => format!(
                "DashScope, {} (DASHSCOPE_API_KEY set; billed to your key)",
                self.region
            ),
        }
    }

    /// The key, to redact it from anything printed.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A chat request body for `model`, streaming or not.
pub fn chat_request(model: &str, prompt: &str, stream: bool) -> Request<Full<Bytes>> {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
    });
    if stream {
        body["stream"] = true.into();
        // The usage arrives in the last chunk: the budget settles against it.
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let mut request = Request::post("/compatible-mode/v1/chat/completions")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    request.extensions_mut().insert(UsageSlot::new());
    request
}

/// What the layers say about a response, on one line.
pub fn report<B>(response: &Response<B>) -> String {
    let ext = response.extensions();
    let attempts = ext.get::<Attempts>().map_or(1, |a| a.0);
    let model = ext
        .get::<ServedModel>()
        .map(|m| m.0.as_str())
        .unwrap_or("?");
    let region = ext
        .get::<ServedRegion>()
        .map_or_else(|| "?".to_owned(), |r| r.0.to_string());
    let waited = ext.get::<BudgetWait>().map_or(Duration::ZERO, |w| w.0);
    format!(
        "status {}, served by {model} in {region}, {attempts} attempt(s) on it, budget wait {:.1} s",
        response.status().as_u16(),
        waited.as_secs_f64()
    )
}

/// The start of a client example: logging set up, the endpoint read from the environment (or
/// the simulator started), and `what` printed with where it goes. On a bad environment, the
/// message is printed and the exit code (2) returned.
pub async fn start(what: &str) -> Result<Endpoint, std::process::ExitCode> {
    init_tracing();
    match Endpoint::from_env().await {
        Ok(endpoint) => {
            println!("{what}, to {}", endpoint.describe());
            Ok(endpoint)
        }
        Err(message) => {
            eprintln!("error: {message}");
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// One answer in one piece: prints what the layers did and the answer's text.
pub async fn chat_once<S, B>(client: S, endpoint: &Endpoint) -> Result<(), DashScopeError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
    B: http_body::Body<Data = Bytes, Error = DashScopeError>,
{
    let request = chat_request(
        &endpoint.model,
        "In one short sentence: why retry with jitter?",
        false,
    );
    let usage = request.extensions().get::<UsageSlot>().cloned();
    let response = client.oneshot(request).await?;
    println!("  {}", report(&response));
    let body = response.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = json
        .pointer("/choices/0/message/content")
        .and_then(|t| t.as_str())
        .unwrap_or("(no text in the answer)");
    println!("  answer: {}", redact(text, endpoint.key()));
    if let Some(usage) = usage.and_then(|slot| slot.get()) {
        println!(
            "  usage: {} in + {} out tokens",
            usage.input_tokens, usage.output_tokens
        );
    }
    Ok(())
}

/// The two calls of the client examples: [`chat_once`], then [`chat_streaming`], each failure
/// printed with the key redacted. Whether both succeeded.
pub async fn chat_both<S, B>(client: S, endpoint: &Endpoint) -> bool
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError> + Clone,
    B: http_body::Body<Data = Bytes, Error = DashScopeError> + Unpin,
{
    let mut failed = false;
    println!("\n1. one answer in one piece (asks for {})", endpoint.model);
    if let Err(err) = chat_once(client.clone(), endpoint).await {
        println!("  failed: {}", redact(&err.to_string(), endpoint.key()));
        failed = true;
    }
    println!("\n2. a streamed answer, token by token");
    if let Err(err) = chat_streaming(client, endpoint).await {
        println!("\n  failed: {}", redact(&err.to_string(), endpoint.key()));
        failed = true;
    }
    !failed
}

/// A streamed answer, each token printed as it arrives.
pub async fn chat_streaming<S, B>(client: S, endpoint: &Endpoint) -> Result<(), DashScopeError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = DashScopeError>,
    B: http_body::Body<Data = Bytes, Error = DashScopeError> + Unpin,
{
    let model = endpoint.fallback.as_deref().unwrap_or(&endpoint.model);
    let request = chat_request(model, "Name the colours of the rainbow.", true);
    let usage = request.extensions().get::<UsageSlot>().cloned();
    let response = client.oneshot(request).await?;
    println!("  {}", report(&response));
    print!("  answer: ");
    let mut body = response.into_body();
    let mut events = SseLines::default();
    // Frame by frame: an error in the middle of the stream arrives here, typed.
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        for event in events.push(&data) {
            if let Some(token) = event
                .pointer("/choices/0/delta/content")
                .and_then(|t| t.as_str())
            {
                print!("{}", redact(token, endpoint.key()));
                let _ = std::io::stdout().flush();
            }
        }
    }
    println!();
    if let Some(usage) = usage.and_then(|slot| slot.get()) {
        println!(
            "  usage: {} in + {} out tokens",
            usage.input_tokens, usage.output_tokens
        );
    }
    Ok(())
}

/// The `data:` lines of an OpenAI-compatible event stream, parsed as JSON as they complete.
#[derive(Default)]
pub struct SseLines {
    partial: Vec<u8>,
}

impl SseLines {
    /// Adds `bytes`; returns the events completed by them (`[DONE]` and non-JSON lines skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<serde_json::Value> {
        self.partial.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                if let Ok(event) = serde_json::from_str(data.trim()) {
                    events.push(event);
                }
            }
        }
        events
    }
}
