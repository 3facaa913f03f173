//! The success path of `ClassifyDashScopeError` allocates nothing beyond what the inner service
//! does: counted with a per-thread counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_dashscope::{BoxError, ClassifyDashScopeError};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Allocations made by one ready-poll-call-poll-read cycle of `service`.
fn allocations_per_call<S, B>(service: &mut S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let before = allocations();
    let Poll::Ready(ready) = service.poll_ready(&mut cx) else {
        panic!("not ready")
    };
    ready.unwrap();
    let future = pin!(service.call(Request::new(Full::new(Bytes::from_static(b"{}")))));
    let Poll::Ready(response) = future.poll(&mut cx) else {
        panic!("not ready")
    };
    let mut body = response.unwrap().into_body();
    while let Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
        drop(frame.unwrap());
    }
    allocations() - before
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
