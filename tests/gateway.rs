//! The OpenAI-compatible gateway of `examples/axum_gateway`, end to end: started in process on
//! loopback in front of the DashScope simulator (also on loopback), driven over real HTTP.
//!
//! Every wait is bounded (`BOUND`); faults are scripted on every request of a model (rate 1.0),
//! so nothing depends on chance.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_dashscope::mock::{Fault, MidStreamError, MockDashScope, MockServer, ModelConfig};

#[allow(dead_code)]
#[path = "../examples/axum_gateway/mod.rs"]
mod gateway;
#[path = "support/gateway.rs"]
mod harness;

use gateway::config;

/// The longest any step of a test may take before it fails instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

const KEY_VAR: &str = "GATEWAY_TEST_KEY";
const KEY: &str = "sk-gateway-test";

/// A gateway on loopback in front of a simulator on loopback.
struct Harness {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    mock: MockDashScope,
    _server: MockServer,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Starts `mock` and a gateway whose configuration is `models_etc` (everything but `[server]`
/// and `[[upstreams]]`, which point at the simulator).
async fn start(mock: MockDashScope, models_etc: &str) -> Harness {
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let config = harness::config(server.local_addr(), KEY_VAR, models_etc);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let harness::Served { addr, task } = harness::serve(config, KEY_VAR, KEY, async move {
        let _ = stopped.await;
    })
    .await;
    Harness {
        addr,
        stop: Some(stop),
        task,
        mock,
        _server: server,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> http::Response<Incoming> {
        tokio::time::timeout(BOUND, self.client.request(request))
            .await
            .expect("the gateway answers in time")
            .expect("the gateway answers")
    }

    async fn post(&self, body: impl Into<Bytes>) -> http::Response<Incoming> {
        let request = Request::post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        self.send(request).await
    }

    /// A GET of `path`, read to its end.
    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let request = Request::get(self.url(path)).body(Full::default()).unwrap();
        read(self.send(request).await).await
    }

    async fn post_json(&self, body: Value) -> (StatusCode, HeaderMap, Bytes) {
        read(self.post(body.to_string()).await).await
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        stopped(&mut self.task).await;
    }
}

async fn read(response: http::Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(BOUND, body.collect())
        .await
        .expect("the body ends in time")
        .expect("the body is read")
        .to_bytes();
    (parts.status, parts.headers, bytes)
}

/// The next frame of `body`, which must come in time and without an error.
async fn next_frame(body: &mut Incoming) -> http_body::Frame<Bytes> {
    tokio::time::timeout(BOUND, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// The rest of `body`, which must end in time and without an error.
async fn rest(body: Incoming) -> Bytes {
    tokio::time::timeout(BOUND, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes()
}

/// Waits for the gateway's task, which must end in time and cleanly.
async fn stopped(task: &mut tokio::task::JoinHandle<std::io::Result<()>>) {
    tokio::time::timeout(BOUND, task)
        .await
        .expect("the gateway stops in time")
        .unwrap()
        .unwrap();
}

/// The simulator with qwen-max and qwen-plus as configured, taking [`KEY`].
fn two_models(max: ModelConfig, plus: ModelConfig) -> MockDashScope {
    MockDashScope::builder()
        .model("qwen-max", max)
        .model("qwen-plus", plus)
        .api_key(KEY)
        .build()
}

/// A model at twenty tokens a second: a stream's chunks come apart.
fn paced() -> ModelConfig {
    ModelConfig::new().latency(Duration::from_millis(10), 20.0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "Say hello to the gateway."}]})
}

fn stream(model: &str, max_tokens: u32) -> Value {
    let mut body = chat(model, max_tokens);
    body["stream"] = json!(true);
    body
}

/// The `data:` payloads of an event stream, in order.
fn data_events(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// The OpenAI error body's four fields are there, and its code is `code`.
fn assert_openai_error(body: &[u8], code: &str) -> Value {
    let value: Value = serde_json::from_slice(body).unwrap();
    let error = &value["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(
            error.get(field).is_some(),
            "no {field} in {value}: the OpenAI error shape has message, type, param and code"
        );
    }
    assert_eq!(error["code"], code, "{value}");
    assert!(!error["message"].as_str().unwrap().is_empty());
    value
}

/// The configuration most tests use: qwen-max (also asked for as gpt-4o) falls back to qwen-plus.
fn two_models_config() -> String {
    harness::models_etc(
        r#"
[aliases]
"gpt-4o" = "qwen-max"

[fallbacks]
"*" = ["qwen-plus"]
"#,
    )
}

#[tokio::test]
async fn a_model_that_is_down_falls_back_and_the_headers_say_so() {
    let mock = two_models(
        ModelConfig::new().outage(Duration::ZERO..Duration::from_secs(3600)),
        ModelConfig::new(),
    );
    let gw = start(mock, &two_models_config()).await;

    // Asked through an alias: qwen-max is down, qwen-plus answers.
    let (status, headers, body) = gw.post_json(chat("gpt-4o", 8)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer["model"], "qwen-plus",
        "the body names the model that served"
    );
    assert_eq!(
        answer["usage"]["completion_tokens"], 8,
        "and carries its usage"
    );
    assert_eq!(
        header(&headers, "x-gateway-served-model"),
        Some("qwen-plus")
    );
    assert_eq!(
        header(&headers, "x-gateway-requested-model"),
        Some("qwen-max")
    );
    let region = format!("http://{}", gw._server.local_addr());
    assert_eq!(header(&headers, "x-gateway-region"), Some(region.as_str()));
    assert_eq!(header(&headers, "x-gateway-attempts"), Some("1"));
    // qwen-plus's budget: 1,200 RPM and 200,000 TPM, 20 requests and 3,333 tokens a second;
    // this request took one request and its tokens.
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), Some("1200"));
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("200000"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("19")
    );
    let tokens: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!((3_300..3_333).contains(&tokens), "{tokens}");
    assert_eq!(header(&headers, "x-ratelimit-reset-requests"), Some("1s"));
    assert_eq!(header(&headers, "x-ratelimit-reset-tokens"), Some("1s"));

    let stats = gw.mock.stats();
    assert!(stats.model("qwen-max").unwrap().total.failed >= 1);
    assert_eq!(stats.model("qwen-plus").unwrap().total.succeeded, 1);

    // /v1/models lists each model with its fallbacks, and the aliases.
    let (status, _, body) = gw.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    let max = data.iter().find(|m| m["id"] == "qwen-max").unwrap();
    assert_eq!(max["fallbacks"], json!(["qwen-plus"]));
    assert_eq!(max["aliases"], json!(["gpt-4o"]));
    let plus = data.iter().find(|m| m["id"] == "qwen-plus").unwrap();
    assert_eq!(plus["fallbacks"], json!([]));
    let alias = data.iter().find(|m| m["id"] == "gpt-4o").unwrap();
    assert_eq!(alias["alias_of"], "qwen-max");
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_is_relayed_chunk_by_chunk_and_carries_its_usage() {
    let mock = two_models(paced(), ModelConfig::new());
    let gw = start(mock, &two_models_config()).await;

    let response = gw.post(stream("qwen-max", 6).to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(response.headers(), "content-type"),
        Some("text/event-stream")
    );
    assert_eq!(
        header(response.headers(), "x-gateway-served-model"),
        Some("qwen-max")
    );
    let mut body = response.into_body();
    // The first chunk arrives alone, before the answer is complete.
    let first = next_frame(&mut body).await.into_data().unwrap();
    let first = data_events(&first);
    assert!(!first.is_empty() && !first.contains(&"[DONE]".to_owned()));
    let rest = rest(body).await;
    let mut events = first;
    events.extend(data_events(&rest));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // The caller did not ask for the usage chunk: none with empty `choices`, and the usage
    // (which the gateway asked upstream for, so that the budget settles) rides on the last.
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert!(chunks.iter().all(|c| c["model"] == "qwen-max"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 6, "{text}");

    // A caller that asks for the usage chunk gets it as OpenAI sends it.
    let mut ask = stream("qwen-max", 3);
    ask["stream_options"] = json!({"include_usage": true});
    let (status, _, body) = gw.post_json(ask).await;
    assert_eq!(status, StatusCode::OK);
    let events = data_events(&body);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_byte_ends_with_an_error_event() {
    let mock = MockDashScope::builder()
        .model(
            "qwen-max",
            ModelConfig::new().fault(Fault::ErrorMidStream {
                after_tokens: 3,
                error: MidStreamError::Internal,
            }),
        )
        .model(
            "qwen-plus",
            ModelConfig::new().fault(Fault::Stall { after_tokens: 2 }),
        )
        .model("qwen-flash", ModelConfig::new().cut_streams_after(2))
        .api_key(KEY)
        .build();
    let models = r#"
[models]
"qwen-max" = {}
"qwen-plus" = {}
"qwen-flash" = {}

[timeouts]
idle = "300ms"
total = "20s"
"#;
    let gw = start(mock, models).await;

    for (model, code) in [
        ("qwen-max", "upstream_error"),
        ("qwen-plus", "upstream_timeout"),
        ("qwen-flash", "stream_interrupted"),
    ] {
        let (status, _, body) = gw.post_json(stream(model, 10)).await;
        assert_eq!(status, StatusCode::OK, "{model}: the stream had begun");
        let events = data_events(&body);
        assert!(
            !events.iter().any(|e| e == "[DONE]"),
            "{model}: a broken stream never ends with [DONE]: {events:?}"
        );
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert!(
            first["choices"][0]["delta"]["content"].is_string(),
            "{model}"
        );
        let errors: Vec<&String> = events.iter().filter(|e| e.contains("\"error\"")).collect();
        assert_eq!(errors.len(), 1, "{model}: one error event: {events:?}");
        assert_eq!(
            errors[0],
            events.last().unwrap(),
            "{model}: and it is the last"
        );
        assert_openai_error(errors[0].as_bytes(), code);
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_that_dies_before_its_first_byte_falls_back() {
    let mock = two_models(
        ModelConfig::new().fault(Fault::NoFirstByte),
        ModelConfig::new(),
    );
    let config = two_models_config().replace("first_byte = \"2s\"", "first_byte = \"300ms\"");
    let gw = start(mock, &config).await;
    let (status, headers, body) = gw.post_json(stream("qwen-max", 4)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&headers, "x-gateway-served-model"),
        Some("qwen-plus")
    );
    let events = data_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|e| !e.contains("\"error\"")));
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_gets_413_400_and_404_with_openai_shaped_bodies() {
    let mock = two_models(ModelConfig::new(), ModelConfig::new());
    let gw = start(mock, &two_models_config()).await;

    // Over max_body_bytes (4096), declared...
    let mut big = chat("qwen-max", 4);
    big["messages"][0]["content"] = json!("x".repeat(5_000));
    let (status, _, body) = read(gw.post(big.to_string()).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_openai_error(&body, "request_too_large");
    // ...or not (chunked, no content-length).
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(gw.url("/v1/chat/completions"))
        .body(Chunks(vec![Bytes::from(vec![b' '; 1_000]); 6]))
        .unwrap();
    let response = tokio::time::timeout(BOUND, client.request(request))
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = read(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_openai_error(&body, "request_too_large");

    let (status, _, body) = read(gw.post("this is not json").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_json");

    let (status, _, body) = gw
        .post_json(json!({"messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = assert_openai_error(&body, "missing_required_parameter");
    assert_eq!(error["error"]["param"], "model");
    assert_eq!(error["error"]["type"], "invalid_request_error");

    let (status, _, body) = gw.post_json(chat("gpt-5-ultra", 4)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error = assert_openai_error(&body, "model_not_found");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("qwen-max")
    );

    let (status, _, body) = gw.get("/v1/embeddings").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&body, "unknown_url");

    // Nothing of this reached the simulator.
    assert_eq!(gw.mock.stats().requests, 0);
    gw.stop().await;
}

/// A request body of several chunks and no declared length (sent chunked).
struct Chunks(Vec<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| self.0.remove(0));
        std::task::Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn upstream_errors_keep_their_status_and_retry_after() {
    // One request a minute, and a gateway-style Retry-After on 429s.
    let mock = two_models(
        ModelConfig::new()
            .rpm(1)
            .retry_after(Duration::from_millis(2_500)),
        ModelConfig::new().context_window(50),
    );
    // No client-side quota and no fallback: the simulator's 429 reaches the caller.
    let models = r#"
[models]
"qwen-max" = {}
"qwen-plus" = {}

[retry]
max_attempts = 1
"#;
    let gw = start(mock, models).await;
    let (status, _, _) = gw.post_json(chat("qwen-max", 4)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = gw.post_json(chat("qwen-max", 4)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_openai_error(&body, "rate_limit_exceeded");
    assert_eq!(header(&headers, "retry-after"), Some("3"));
    assert_eq!(header(&headers, "retry-after-ms"), Some("2500"));

    let mut long = chat("qwen-plus", 4);
    long["messages"][0]["content"] = json!("word ".repeat(200));
    let (status, _, body) = gw.post_json(long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "context_length_exceeded");
    gw.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_a_stream_in_flight() {
    let mock = two_models(paced(), ModelConfig::new());
    let mut gw = start(mock, &two_models_config()).await;
    let response = gw.post(stream("qwen-max", 8).to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = next_frame(&mut body).await;
    assert!(first.is_data());

    // Shut down while the stream is under way: it still ends whole.
    gw.stop.take().unwrap().send(()).unwrap();
    let rest = rest(body).await;
    assert_eq!(data_events(&rest).last().unwrap(), "[DONE]");
    stopped(&mut gw.task).await;
}

/// What openai-python's `Stream` does with an event stream: split events on blank lines, join
/// `data:` lines, stop at `[DONE]`, and raise `APIError` on any event whose JSON has a truthy
/// `error` (with its `message`). `Ok` carries the chunks and whether `[DONE]` came.
fn python_sdk_stream(bytes: &[u8]) -> Result<(Vec<Value>, bool), String> {
    let text = std::str::from_utf8(bytes).unwrap().replace("\r\n", "\n");
    let mut chunks = Vec::new();
    for event in text.split("\n\n") {
        let mut data = Vec::new();
        for line in event.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            if field == "data" {
                data.push(value);
            }
        }
        if data.is_empty() {
            continue;
        }
        let data = data.join("\n");
        if data.starts_with("[DONE]") {
            return Ok((chunks, true));
        }
        let value: Value =
            serde_json::from_str(&data).map_err(|e| format!("JSONDecodeError: {e}"))?;
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error["message"]
                .as_str()
                .unwrap_or("An error occurred during streaming");
            return Err(format!("APIError: {message}"));
        }
        chunks.push(value);
    }
    Ok((chunks, false))
}

/// The request openai-python 1.x sends for
/// `client.chat.completions.create(model=…, messages=…, stream=True,
/// stream_options={"include_usage": True})`.
fn python_sdk_request(url: &str, model: &str) -> Request<Full<Bytes>> {
    let body = json!({
        "messages": [{"role": "user", "content": "Say hello to the gateway."}],
        "model": model,
        "max_tokens": 5,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    Request::post(url)
        .header(
            "host",
            url.trim_start_matches("http://").split('/').next().unwrap(),
        )
        .header("accept-encoding", "gzip, deflate")
        .header("connection", "keep-alive")
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("user-agent", "OpenAI/Python 1.109.1")
        .header("x-stainless-lang", "python")
        .header("x-stainless-package-version", "1.109.1")
        .header("x-stainless-os", "Linux")
        .header("x-stainless-arch", "x64")
        .header("x-stainless-runtime", "CPython")
        .header("x-stainless-runtime-version", "3.12.3")
        .header("authorization", "Bearer sk-caller-key-the-gateway-ignores")
        .header("x-stainless-async", "false")
        .header("x-stainless-retry-count", "0")
        .header("x-stainless-read-timeout", "600")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn a_python_sdk_style_client_streams_and_raises_on_a_broken_stream() {
    let mock = two_models(
        ModelConfig::new(),
        ModelConfig::new().fault(Fault::ErrorMidStream {
            after_tokens: 2,
            error: MidStreamError::DataInspection,
        }),
    );
    let models = r#"
[models]
"qwen-max" = {}
"qwen-plus" = {}
"#;
    let gw = start(mock, models).await;
    let url = gw.url("/v1/chat/completions");

    // A whole stream: chunks, then the usage chunk the SDK asked for, then [DONE].
    let (status, headers, body) = read(gw.send(python_sdk_request(&url, "qwen-max")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    let (chunks, done) = python_sdk_stream(&body).expect("no APIError");
    assert!(done);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 5);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(usage["model"], "qwen-max");

    // A stream moderation cuts after two tokens: the SDK raises, with the upstream message.
    let (status, _, body) = read(gw.send(python_sdk_request(&url, "qwen-plus")).await).await;
    assert_eq!(status, StatusCode::OK);
    let err = python_sdk_stream(&body).expect_err("the SDK raises APIError");
    assert!(err.starts_with("APIError: "), "{err}");
    assert!(err.contains("inappropriate content"), "{err}");

    // Not streaming: the SDK reads an OpenAI error body from a 404.
    let mut request = python_sdk_request(&url, "no-such-model");
    *request.body_mut() = Full::new(Bytes::from(chat("no-such-model", 4).to_string()));
    let (status, _, body) = read(gw.send(request).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&body, "model_not_found");
    gw.stop().await;
}

// The configuration file.

const EXAMPLE: &str = include_str!("../examples/axum_gateway/gateway.toml");

#[test]
fn the_shipped_example_configuration_is_valid_and_means_what_it_says() {
    let config = config::parse(EXAMPLE, "gateway.toml").unwrap();
    assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(
        config.upstreams[0].target,
        config::Target::Region(tower_dashscope::Region::Singapore)
    );
    assert_eq!(
        config.upstreams[0].api_key_env.as_deref(),
        Some("DASHSCOPE_API_KEY")
    );
    assert_eq!(config.resolve("gpt-4o"), Some("qwen-plus"));
    assert_eq!(config.resolve("gpt-5"), None);
    // Lists are followed, exact names win over patterns, longer patterns over shorter.
    assert_eq!(config.fallbacks["qwen-max"], ["qwen-plus", "qwen-flash"]);
    assert_eq!(config.fallbacks["qwen-plus"], ["qwen-flash"]);
    assert_eq!(
        config.fallbacks["qwen3-coder-plus"],
        ["qwen3-coder-flash", "qwen-plus", "qwen-flash"]
    );
    assert!(!config.fallbacks.contains_key("qwen-flash"));
    assert_eq!(config.timeouts.total, Duration::from_secs(300));
    assert_eq!(
        config.models["qwen-max"].quota,
        Some(tower_dashscope::Quota::per_minute(600, 1_000_000))
    );
    assert_eq!(config.models["qwen3-coder-flash"].quota, None);
    assert_eq!(
        config.default_quota,
        Some(tower_dashscope::Quota::per_minute(600, 1_000_000))
    );
}

#[test]
fn chains_are_ordered_so_that_each_model_keeps_its_own() {
    let config = config::parse(EXAMPLE, "gateway.toml").unwrap();
    let chains = config.chains();
    // A model's own chain comes before any chain that lists it as a fallback.
    for (i, chain) in chains.iter().enumerate() {
        for later in &chains[i + 1..] {
            assert!(
                !chain[1..].contains(&later[0]),
                "{later:?} must come before {chain:?}"
            );
        }
    }
    assert_eq!(chains.len(), config.fallbacks.len());
}

/// The error for `text` (with a valid upstream and model unless it has its own).
fn config_error(text: &str) -> config::ConfigError {
    config::parse(text, "gw.toml").unwrap_err()
}

const BASE: &str = "[[upstreams]]\nregion = \"singapore\"\napi_key_env = \"K\"\n";

#[test]
fn configuration_errors_name_the_key_and_line_and_what_to_do() {
    let err = config_error(&format!(
        "{BASE}[models]\n\"m\" = {{}}\n[timeouts]\nidle = \"soon\"\n"
    ));
    assert_eq!(err.line, Some(7));
    assert_eq!(err.key.as_deref(), Some("timeouts.idle"));
    assert!(err.to_string().contains("\"30s\""), "{err}");

    // A misspelt key is an error, not ignored.
    let err = config_error(&format!(
        "{BASE}[models]\n\"m\" = {{}}\n[timeouts]\nidel = \"5s\"\n"
    ));
    assert_eq!(err.line, Some(7), "{err}");
    assert!(err.message.contains("idel"), "{err}");

    let err = config_error(&format!(
        "{BASE}[models]\n\"m\" = {{}}\n[aliases]\n\"gpt\" = \"nope\"\n"
    ));
    assert_eq!(err.key.as_deref(), Some("aliases.gpt"));
    assert_eq!(err.line, Some(7));
    assert!(err.message.contains("not in [models]"), "{err}");

    let err = config_error(&format!(
        "{BASE}[models]\n\"m\" = {{}}\n[fallbacks]\n\"*\" = [\"x\"]\n"
    ));
    assert!(err.message.contains("\"x\" is not in [models]"), "{err}");

    let err = config_error(
        "[[upstreams]]\nregion = \"mars\"\napi_key_env = \"K\"\n[models]\n\"m\" = {}\n",
    );
    assert_eq!(
        (err.line, err.key.as_deref()),
        (Some(2), Some("upstreams[0].region"))
    );
    assert!(err.message.contains("singapore"), "{err}");

    let err = config_error("[[upstreams]]\nregion = \"beijing\"\n[models]\n\"m\" = {}\n");
    assert_eq!(err.key.as_deref(), Some("upstreams[0].api_key_env"));
    assert!(err.message.contains("never goes in the file"), "{err}");

    let err = config_error(
        "[[upstreams]]\nregion = \"beijing\"\napi_key_env = \"sk-abc-123\"\n[models]\n\"m\" = {}\n",
    );
    assert!(err.message.contains("never put the key itself"), "{err}");

    let err = config_error(&format!("{BASE}[models]\n\"m\" = {{ rpm = -1 }}\n"));
    assert_eq!(err.key.as_deref(), Some("models.m.rpm"));

    let err = config_error(BASE);
    assert_eq!(err.key.as_deref(), Some("models"));

    let err = config_error("[models]\n\"m\" = {}\n");
    assert_eq!(err.key.as_deref(), Some("upstreams"));

    let err = config_error("this is = not toml = at all");
    assert_eq!(err.line, Some(1));
    assert!(err.to_string().starts_with("gw.toml, line 1: "), "{err}");
}

#[test]
fn patterns_and_durations() {
    use config::{matches_pattern, parse_duration};
    assert!(matches_pattern("*", "qwen-max"));
    assert!(matches_pattern("qwen3-*", "qwen3-coder-plus"));
    assert!(!matches_pattern("qwen3-*", "qwen-max"));
    assert!(matches_pattern("*-flash", "qwen3-coder-flash"));
    assert!(matches_pattern("qwen*coder*plus", "qwen3-coder-plus"));
    assert!(!matches_pattern("qwen*coder*plus", "qwen3-coder-flash"));
    assert!(!matches_pattern("a*a", "a"));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
    assert_eq!(parse_duration("30"), None);
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(parse_duration(""), None);
}

/// A request body that sends one chunk and then nothing, for ever.
struct Stalls(bool);

impl http_body::Body for Stalls {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            b"{\"model\":",
        )))))
    }
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_total_timeout() {
    let mock = MockDashScope::builder()
        .model("qwen-max", ModelConfig::new())
        .api_key(KEY)
        .build();
    let gw = start(
        mock,
        "[models]\n\"qwen-max\" = {}\n[timeouts]\ntotal = \"300ms\"\n",
    )
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(gw.url("/v1/chat/completions"))
        .body(Stalls(false))
        .unwrap();
    let response = tokio::time::timeout(BOUND, client.request(request))
        .await
        .expect("the gateway answers without waiting for the rest of the body")
        .unwrap();
    let (status, _, body) = read(response).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_openai_error(&body, "request_timeout");
    assert_eq!(gw.mock.stats().requests, 0);
    gw.stop().await;
}

/// An upstream body of one-byte frames.
struct Bytewise(Vec<u8>, usize);

impl http_body::Body for Bytewise {
    type Data = Bytes;
    type Error = tower_dashscope::DashScopeError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let i = self.1;
        self.1 += 1;
        std::task::Poll::Ready(
            self.0
                .get(i)
                .map(|b| Ok(http_body::Frame::data(Bytes::copy_from_slice(&[*b])))),
        )
    }
}

#[tokio::test]
async fn the_relay_reframes_events_split_at_every_byte_and_moves_usage_onto_the_last_chunk() {
    use gateway::sse::SseRelay;
    let upstream = concat!(
        ": a comment\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"model\":\"m\"}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"model\":\"m\",\"usage\":null}\r\n\r\n",
        "data: {\"choices\":[],\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    );
    let body = Bytewise(upstream.as_bytes().to_vec(), 0).boxed_unsync();
    let deadline = tokio::time::Instant::now() + BOUND;
    let relay = SseRelay::new(body, deadline, false, "m".into());
    let out = tokio::time::timeout(BOUND, relay.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let events = data_events(&out);
    assert_eq!(events.len(), 3, "{events:?}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "Hi");
    let last: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 2);
    assert_eq!(events[2], "[DONE]");

    // The same stream, cut before its end: an error event, no [DONE].
    let cut = &upstream[..upstream.find("data: {\"choices\":[{\"delta\":{},").unwrap()];
    let body = Bytewise(cut.as_bytes().to_vec(), 0).boxed_unsync();
    let relay = SseRelay::new(body, deadline, false, "m".into());
    let out = relay.collect().await.unwrap().to_bytes();
    let events = data_events(&out);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_openai_error(events[1].as_bytes(), "stream_interrupted");
}
