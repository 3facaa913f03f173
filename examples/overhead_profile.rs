//! The success path of the recommended stack, tower's nearest equivalent or the bare service,
//! in a loop: for a profiler that counts instructions, which gives the same numbers on every
//! run and machine where the criterion timings of `benches/overhead.rs` do not.
//!
//! ```sh
//! cargo build --release --example overhead_profile
//! for n in 1000 6000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/overhead_profile full $n 2>&1 | grep refs
//! done
//! ```
//!
//! Instructions per request are the difference of the two totals over 5,000 (the setup cancels
//! out). `full` is the recommended stack of the bench, `tower` tower's `RateLimit` + `Retry` +
//! a header set by `MapRequest`, `bare` the service alone; each request carries the bench's
//! 2 KiB chat body and its response body is read to its end.

use std::future::Future;
use std::pin::{Pin, pin};
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::limit::RateLimitLayer;
use tower::retry::RetryLayer;
use tower::util::MapRequestLayer;
use tower::{Service, ServiceBuilder, service_fn};
use tower_dashscope::{
    BoxError, ClassifyDashScopeError, FallbackModel, Quota, Region, RegionRouter, RetryWithJitter,
    TokenBudget, WaitTimeoutHeader,
};

#[path = "../benches/support/always_once.rs"]
mod always_once;

/// The bench's chat body: 2,029 bytes, a few turns, `model` first.
fn chat_body() -> Bytes {
    let mut body = String::from(r#"{"model":"qwen-plus","max_tokens":512,"messages":["#);
    let mut turn = 0;
    while body.len() < 2048 - 120 {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        body.push_str(&format!(
            r#"{{"role":"{role}","content":"Turn {turn}: the quick brown fox jumps over the lazy dog, twice over."}},"#
        ));
        turn += 1;
    }
    body.push_str(r#"{"role":"user","content":"Now answer."}],"temperature":0.7}"#);
    Bytes::from(body)
}

fn inner()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError> + Clone {
    service_fn(|_req: Request<Full<Bytes>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(
            br#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":500,"completion_tokens":1,"total_tokens":501},"model":"qwen-plus"}"#,
        )));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        Ok::<_, BoxError>(response)
    })
}

/// `n` ready-call-poll-read cycles; every step must be ready at once.
fn run<S, B>(mut service: S, body: &Bytes, n: usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        let request = Request::post("/compatible-mode/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .expect("a valid request");
        let Poll::Ready(ready) = service.poll_ready(&mut cx) else {
            panic!("the service was not ready")
        };
        ready.expect("ready");
        let future = pin!(service.call(request));
        let Poll::Ready(response) = future.poll(&mut cx) else {
            panic!("the response was not ready")
        };
        let mut body = response.expect("a response").into_body();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            drop(frame.expect("a frame"));
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let n = match args.next().map(|n| n.parse::<usize>()) {
        None => 10_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: overhead_profile full|tower|bare [REQUESTS]");
            return ExitCode::from(2);
        }
    };
    // The budget's and the rate limit's clocks are tokio's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _guard = runtime.enter();
    let body = chat_body();
    match which.as_str() {
        "full" => run(
            ServiceBuilder::new()
                .layer(FallbackModel::new(["qwen-plus", "qwen-flash"]))
                .layer(RetryWithJitter::new().seed(1))
                .layer(
                    TokenBudget::new(Quota::per_minute(u32::MAX, u32::MAX))
                        .burst(Duration::from_secs(3600)),
                )
                .layer(RegionRouter::new(Region::Singapore, "sk-bench-0000"))
                .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
                .layer(ClassifyDashScopeError::new())
                .service(inner()),
            &body,
            n,
        ),
        "tower" => run(
            ServiceBuilder::new()
                .layer(RateLimitLayer::new(u64::MAX / 2, Duration::from_secs(1)))
                .layer(RetryLayer::new(always_once::AlwaysOnce))
                .layer(MapRequestLayer::new(|mut req: Request<Full<Bytes>>| {
                    req.headers_mut().insert(
                        AUTHORIZATION,
                        HeaderValue::from_static("Bearer sk-bench-0000"),
                    );
                    req
                }))
                .service(inner()),
            &body,
            n,
        ),
        "bare" => run(inner(), &body, n),
        _ => {
            eprintln!("usage: overhead_profile full|tower|bare [REQUESTS]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
