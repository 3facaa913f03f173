//! The success path of `ClassifyDashScopeError` allocates nothing beyond what the inner service
//! does, parsing a chat request allocates once, and the whole recommended stack stays within a
//! bound of allocations per request: counted with a per-thread counting allocator.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_dashscope::{BoxError, ClassifyDashScopeError};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "../benches/support/overhead.rs"]
mod workload;

use counting_alloc::count as allocations;
use workload::{call_once, chat_body, inner, recommended, request};

/// Allocations made by one ready-poll-call-poll-read cycle of `service` (a request with a body
/// of `{}`).
fn allocations_per_call<S, B>(service: &mut S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    allocations_of(service, Request::new(Full::new(Bytes::from_static(b"{}"))))
}

#[test]
fn the_layer_adds_no_allocation_on_success() {
    let bare = || {
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
                b"{\"ok\":true}",
            ))))
        })
    };
    let mut bare_service = bare();
    let mut layered = ClassifyDashScopeError::new().layer(bare());
    // Warm up anything lazily initialised.
    allocations_per_call(&mut bare_service);
    allocations_per_call(&mut layered);

    let bare_count = allocations_per_call(&mut bare_service);
    let layered_count = allocations_per_call(&mut layered);
    assert_eq!(
        layered_count, bare_count,
        "bare {bare_count}, layered {layered_count}"
    );

    // The counter works: an error response does allocate (the bounded body buffer, the error).
    let mut failing =
        ClassifyDashScopeError::new().layer(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"{\"code\":\"InternalError\"}",
            )));
            *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            Ok::<_, BoxError>(response)
        }));
    let mut cx = Context::from_waker(Waker::noop());
    let before = allocations();
    let _ = failing.poll_ready(&mut cx);
    let future = pin!(failing.call(Request::new(Full::default())));
    assert!(matches!(future.poll(&mut cx), Poll::Ready(Err(_))));
    assert!(allocations() > before);
}

/// A body yielding pre-built chunks (building them allocates; yielding them does not).
struct Chunks(std::collections::VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn stream_allocations_per_chunk(with_usage: bool) -> Vec<usize> {
    // A long compatible-mode stream, one event per chunk, events split across chunks too.
    let event = r#"data: {"choices":[{"delta":{"content":" word"},"finish_reason":null,"index":0}],"object":"chat.completion.chunk","usage":{"prompt_tokens":20,"completion_tokens":1,"total_tokens":21},"model":"qwen-plus","id":"chatcmpl-1"}"#;
    let mut text = String::new();
    for _ in 0..400 {
        text.push_str(event);
        text.push_str("\n\n");
    }
    text.push_str("data: [DONE]\n\n");
    let chunks: std::collections::VecDeque<Bytes> = text
        .as_bytes()
        .chunks(97)
        .map(Bytes::copy_from_slice)
        .collect();
    let count = chunks.len();
    let body = std::sync::Mutex::new(Some(Chunks(chunks)));
    let mut service =
        ClassifyDashScopeError::new().layer(service_fn(move |_req: Request<Full<Bytes>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move {
                let mut response = Response::new(body);
                response
                    .headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                Ok::<_, BoxError>(response)
            }
        }));
    let mut cx = Context::from_waker(Waker::noop());
    let _ = service.poll_ready(&mut cx);
    let mut request = Request::new(Full::default());
    if with_usage {
        request
            .extensions_mut()
            .insert(tower_dashscope::classify::UsageSlot::new());
    }
    let future = pin!(service.call(request));
    let Poll::Ready(Ok(response)) = future.poll(&mut cx) else {
        panic!("expected the response")
    };
    let mut body = response.into_body();
    let mut per_chunk = Vec::with_capacity(count);
    loop {
        let before = allocations();
        match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                drop(frame);
                per_chunk.push(allocations() - before);
            }
            Poll::Ready(Some(Err(err))) => panic!("{err}"),
            Poll::Ready(None) | Poll::Pending => break,
        }
    }
    assert!(
        per_chunk.len() >= count - 2,
        "read {} of {count} chunks",
        per_chunk.len()
    );
    per_chunk
}

#[test]
fn event_streams_allocate_nothing_per_chunk_in_the_steady_state() {
    for with_usage in [false, true] {
        let per_chunk = stream_allocations_per_chunk(with_usage);
        // The first chunks grow the scanner's reusable buffers; after that, nothing.
        let steady = &per_chunk[20..];
        assert!(
            steady.iter().all(|&n| n == 0),
            "usage {with_usage}: allocations per chunk after warm-up: {:?}",
            steady.iter().filter(|&&n| n > 0).count()
        );
    }
}

/// Parsing a chat request allocates for the model name only, however many messages and keys
/// it has (serde's `Cow<str>` keys used to cost one allocation per key: 50 for 24 messages).
#[test]
fn parsing_a_chat_request_does_not_allocate_per_key() {
    use tower_dashscope::Api;
    use tower_dashscope::request::ChatRequest;

    let mut messages = Vec::new();
    for i in 0..24 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(format!(
            r#"{{"role":"{role}","content":"message number {i}, some words"}}"#
        ));
    }
    let body = format!(
        r#"{{"model":"qwen-plus","max_tokens":64,"stream":true,"stream_options":{{"include_usage":true}},"messages":[{}]}}"#,
        messages.join(",")
    );
    let headers = http::HeaderMap::new();
    let before = allocations();
    let chat = ChatRequest::parse(Api::OpenAiCompatible, &headers, body.as_bytes()).unwrap();
    let made = allocations() - before;
    assert_eq!(chat.model(), Some("qwen-plus"));
    assert!(chat.include_usage() && chat.stream());
    assert!(
        made <= 1,
        "{made} allocations to parse a 24-message request"
    );
}

/// The whole recommended stack on the success path, over a service that answers at once: the
/// allocations it adds per request beyond the bare service's own, with a 2 KiB chat body (the
/// overhead bench's). A bound to hold, not a goal: BENCHMARKS.md says what they are.
#[test]
fn the_recommended_stack_allocates_a_bounded_amount_per_request() {
    // The budget's clock is tokio's.
    let runtime = workload::runtime();
    let _guard = runtime.enter();
    let body = chat_body();
    let mut bare = inner();
    let mut stack = recommended(inner());
    let per_call = |service: &mut dyn FnMut(Request<Full<Bytes>>) -> usize| -> usize {
        // Warm up, then the most of ten calls (building the request excluded).
        for _ in 0..10 {
            service(request(&body));
        }
        (0..10).map(|_| service(request(&body))).max().unwrap()
    };
    let bare_count = per_call(&mut |req| allocations_of(&mut bare, req));
    let stack_count = per_call(&mut |req| allocations_of(&mut stack, req));
    let added = stack_count - bare_count;
    // 31 before the parse shared its model name with the budget's key; 30 before the spares
    // stopped cloning the layers' own extensions, the router reused the request's path, the
    // budget reused its usage slots and the classifier read JSON usage without a box.
    assert!(
        added <= 18,
        "the stack adds {added} allocations per request"
    );
}

/// Allocations made by one ready-call-poll-read cycle of `service` with `request`, the
/// request's own construction excluded.
fn allocations_of<S, B>(service: &mut S, request: Request<Full<Bytes>>) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let before = allocations();
    call_once(service, &mut cx, request);
    allocations() - before
}

/// The six layers' success path over an in-memory service: the allocations of one call, its
/// body read to the end.
fn full_stack_allocations_per_call<S, B>(service: &mut S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let request = Request::post("/compatible-mode/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    allocations_of(service, request)
}

/// With a subscriber at INFO (as an application logging at that level has), the success path
/// of all six layers logs nothing and allocates nothing more than with no subscriber: the
/// DEBUG and TRACE events are skipped before any field is formatted.
#[test]
fn the_full_stack_success_path_logs_nothing_at_info_and_allocates_nothing_for_it() {
    use tracing::Level;

    #[path = "support/capture.rs"]
    mod capture;

    // The budget's clock is tokio's.
    let runtime = workload::runtime();
    let _runtime = runtime.enter();
    let mut stack = recommended(service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
                br#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},"model":"qwen-plus"}"#,
            ))))
    }));
    let measure = |stack: &mut _| {
        for _ in 0..5 {
            full_stack_allocations_per_call(stack);
        }
        (0..20)
            .map(|_| full_stack_allocations_per_call(stack))
            .collect::<Vec<_>>()
    };
    let without = measure(&mut stack);

    let (at_info, guard) = capture::Capture::start_at(Level::INFO);
    let with_info = measure(&mut stack);
    drop(guard);
    assert_eq!(with_info, without, "a subscriber at INFO costs allocations");
    assert!(at_info.records().is_empty(), "{}", at_info.text());

    // The check can fail: at TRACE the same calls log and format their fields.
    let (at_trace, _guard) = capture::Capture::start_at(Level::TRACE);
    let with_trace = measure(&mut stack);
    assert!(!at_trace.events("routing request").is_empty());
    assert!(with_trace.iter().sum::<usize>() > without.iter().sum::<usize>());
    // Nothing on the success path is above DEBUG.
    let loud: Vec<_> = at_trace
        .records()
        .into_iter()
        .filter(|r| r.level < Level::DEBUG)
        .map(|r| r.to_string())
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}
