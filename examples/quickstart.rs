//! The quickstart: a burst of chat requests through the layers, against an in-process stand-in
//! that fails the way DashScope does.
//!
//! `cargo run --example quickstart`
//!
//! The stand-in (below, in this file) enforces a small per-window request quota and answers over
//! it with DashScope's own 429 bodies — native `Throttling.RateQuota`, compatible
//! `limit_requests`, and a native *stream* whose 429 arrives inside an HTTP 200 as
//! `event:error` + `:HTTP_STATUS/429`. Some requests overflow the context window, one stream is
//! cut by moderation after it started. Everything runs in this process; no network, no key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_dashscope::{Attempts, ClassifyDashScopeError, RetryWithJitter, WaitTimeoutHeader};

/// What the stand-in saw, for the report.
#[derive(Default)]
struct ServerLog {
    requests: u32,
    throttled: u32,
    throttled_in_streams: u32,
    window_start: Option<Instant>,
    in_window: u32,
}

const QUOTA_PER_WINDOW: u32 = 4;
const WINDOW: Duration = Duration::from_millis(250);

fn json(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", "req-quickstart")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn sse(body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/event-stream;charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A DashScope stand-in: a per-window request quota, DashScope's error bodies and streams.
fn stand_in(log: Arc<Mutex<ServerLog>>, request: &Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let native = path.starts_with("/api/v1/");
    let streaming = request.headers().contains_key("x-dashscope-sse");
    let prompt = request.headers()["x-prompt"].to_str().unwrap().to_owned();

    let mut log = log.lock().unwrap();
    log.requests += 1;
    let now = Instant::now();
    if log.window_start.is_none_or(|start| now - start >= WINDOW) {
        log.window_start = Some(now);
        log.in_window = 0;
    }
    log.in_window += 1;
    if log.in_window > QUOTA_PER_WINDOW {
        log.throttled += 1;
        let message = "Requests rate limit exceeded, please try again later.";
        return match (native, streaming) {
            (true, true) => {
                log.throttled_in_streams += 1;
                sse(format!(
                "id:1\nevent:error\n:HTTP_STATUS/429\ndata:{{\"request_id\":\"req-quickstart\",\"code\":\"Throttling.RateQuota\",\"message\":\"{message}\"}}\n\n"
                ))
            }
            (true, false) => json(
                429,
                format!(r#"{{"code":"Throttling.RateQuota","message":"{message}","request_id":"req-quickstart"}}"#),
            ),
            (false, _) => json(
                429,
                r#"{"error":{"message":"You have exceeded your current request limit.","type":"limit_requests","code":"limit_requests"},"request_id":"req-quickstart"}"#.to_owned(),
            ),
        };
    }
    drop(log);

    if prompt.len() > 2_000 {
        return json(
            400,
            r#"{"error":{"code":"invalid_parameter_error","param":null,"message":"<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, 2000]","type":"invalid_request_error"},"request_id":"req-quickstart"}"#.to_owned(),
        );
    }
    if streaming && prompt.contains("forbidden") {
        return sse(concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Once upon\"},\"finish_reason\":null}]}\n\n",
            "data: {\"error\":{\"message\":\"Output data may contain inappropriate content.\",\"type\":\"data_inspection_failed\",\"code\":\"data_inspection_failed\"}}\n\n",
        ).to_owned());
    }
    if streaming {
        return sse(concat!(
            "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"Hello\",\"role\":\"assistant\"},\"finish_reason\":\"null\"}]}}\n\n",
            "id:2\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"Hello there\",\"role\":\"assistant\"},\"finish_reason\":\"stop\"}]}}\n\n",
        ).to_owned());
    }
    json(
        200,
        r#"{"choices":[{"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#.to_owned(),
    )
}

#[tokio::main]
async fn main() {
    if std::env::var_os("DASHSCOPE_API_KEY").is_some() {
        println!(
            "note: DASHSCOPE_API_KEY is set, but talking to the real endpoint is not built yet;"
        );
        println!("      this demo runs against the in-process stand-in. (The key is not read.)\n");
    }

    let log = Arc::new(Mutex::new(ServerLog::default()));
    let server_log = log.clone();
    let http_client = service_fn(move |request: Request<Full<Bytes>>| {
        let response = stand_in(server_log.clone(), &request);
        async move {
            // A little network and model latency.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::convert::Infallible>(response)
        }
    });

    let client = ServiceBuilder::new()
        .layer(
            RetryWithJitter::new()
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(2))
                .seed(2026),
        )
        .layer(WaitTimeoutHeader::new(Duration::from_secs(10)))
        .layer(ClassifyDashScopeError::new())
        .service(http_client);

    // A realistic burst: 24 requests at once, both API flavours, some streaming, two too long,
    // one that moderation cuts after it started.
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..24 {
        let native = i % 3 == 0;
        let streaming = i % 4 == 1;
        let prompt = match i {
            7 | 19 => "a very long document ".repeat(200),
            13 => "tell me something forbidden".to_owned(),
            _ => format!("question {i}"),
        };
        let path = if native {
            "/api/v1/services/aigc/text-generation/generation"
        } else {
            "/compatible-mode/v1/chat/completions"
        };
        let mut request = Request::post(path).header("x-prompt", &prompt);
        if streaming {
            request = request.header("x-dashscope-sse", "enable");
        }
        let body = format!(
            r#"{{"model":"qwen-plus","stream":{streaming},"input":"{}"}}"#,
            prompt.len()
        );
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let response = client.oneshot(request).await?;
            let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
            // Read the body to its end: errors inside streams surface here.
            response.into_body().collect().await?;
            Ok::<u32, tower_dashscope::DashScopeError>(attempts)
        }));
    }

    let mut succeeded = 0;
    let mut retries = 0;
    let mut failures: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(attempts) => {
                succeeded += 1;
                retries += attempts - 1;
            }
            Err(err) => {
                retries += err.attempts().unwrap_or(1).saturating_sub(1);
                let entry = failures
                    .entry(err.class().as_str().to_owned())
                    .or_insert((0, err.to_string()));
                entry.0 += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let log = log.lock().unwrap();

    println!("tower-dashscope quickstart: 24 chat requests at once against a DashScope stand-in");
    println!(
        "allowing {QUOTA_PER_WINDOW} requests per {} ms.\n",
        WINDOW.as_millis()
    );
    println!("  succeeded                 {succeeded:>3} of 24");
    println!(
        "  429s the server sent      {:>3}  ({} of them inside HTTP 200 event streams)",
        log.throttled, log.throttled_in_streams
    );
    println!("  retries the layer made    {retries:>3}  (jittered backoff on every 429)");
    println!("  requests the server saw   {:>3}", log.requests);
    println!(
        "  time taken                {:>6.2} s\n",
        elapsed.as_secs_f64()
    );
    if !failures.is_empty() {
        println!("  did not succeed (each with the advice its error carries):");
        for (class, (count, example)) in &failures {
            println!("    {count} × {class}");
            println!("        {example}");
        }
    }
    let throttled_left = failures
        .keys()
        .any(|class| class.starts_with("rate_limited"));
    if throttled_left {
        println!("\n  some requests were still throttled after every attempt.");
    }
}
