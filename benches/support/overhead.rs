//! What the overhead bench measures — its 2 KiB chat body, its inner service, the recommended
//! stack and tower's nearest equivalent — and one ready-call-poll-read cycle, in one place so
//! that `benches/overhead.rs`, `examples/overhead_profile.rs` and
//! `tests/success_path_allocations.rs` measure the same thing. Included with `#[path]`.
#![allow(dead_code)]

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
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
    BoxError, ClassifyDashScopeError, FallbackModel, Quota, RecommendedService, Region,
    RegionRouter, RetryWithJitter, TokenBudget, WaitTimeoutHeader,
};

#[path = "always_once.rs"]
mod always_once;

/// A current-thread runtime with time, for the budget's and the rate limit's clocks (tokio's):
/// enter it before building the stacks.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// The key the router sets (and tower's equivalent sets as a header).
pub const KEY: &str = "sk-bench-0000";

/// The bench's chat body: 2,029 bytes, a few turns, `model` first.
pub fn chat_body() -> Bytes {
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

/// A chat request carrying `body`.
pub fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap()
}

/// The inner service: answers at once with a small chat completion.
pub fn inner()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
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

/// A budget no benchmark run fills: the largest quota over an hour's window (about 2.6e11
/// tokens, 2.6e8 requests of these), so that it does all its work and never waits.
pub fn budget() -> TokenBudget {
    TokenBudget::new(Quota::per_minute(u32::MAX, u32::MAX)).burst(Duration::from_secs(3600))
}

/// The router: Singapore with [`KEY`].
pub fn router() -> RegionRouter {
    RegionRouter::new(Region::Singapore, KEY)
}

/// The fallback chain: qwen-plus, then qwen-flash.
pub fn fallback() -> FallbackModel {
    FallbackModel::new(["qwen-plus", "qwen-flash"])
}

/// The recommended stack (outermost first, as the README writes it) over `inner`, with
/// [`budget`], [`router`] and [`fallback`].
pub fn recommended<S>(inner: S) -> RecommendedService<S> {
    ServiceBuilder::new()
        .layer(fallback())
        .layer(RetryWithJitter::new().seed(1))
        .layer(budget())
        .layer(router())
        .layer(WaitTimeoutHeader::new(Duration::from_secs(30)))
        .layer(ClassifyDashScopeError::new())
        .service(inner)
}

/// tower's nearest built-in equivalent of the stack over `inner`: `RateLimit` → `Retry` (a
/// policy that clones the request and never retries) → a header set by `MapRequest`
/// (tower-http's `SetRequestHeader` is not a dependency; this does what it does for one static
/// header).
pub fn tower_equivalent<S>(
    inner: S,
) -> impl Service<Request<Full<Bytes>>, Response = S::Response, Error = BoxError>
where
    S: Service<Request<Full<Bytes>>, Error = BoxError> + Clone,
{
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
        .service(inner)
}

/// One ready-call-poll cycle and the body read to its end: the frames it yielded. Every step
/// must be ready at once.
pub fn call_once<S, B>(
    service: &mut S,
    cx: &mut Context<'_>,
    request: Request<Full<Bytes>>,
) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let Poll::Ready(ready) = service.poll_ready(cx) else {
        panic!("the service was not ready")
    };
    ready.unwrap();
    let future = pin!(service.call(request));
    let Poll::Ready(response) = future.poll(cx) else {
        panic!("the response was not ready")
    };
    let mut body = response.unwrap().into_body();
    let mut frames = 0;
    while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(cx) {
        drop(frame.unwrap());
        frames += 1;
    }
    frames
}
