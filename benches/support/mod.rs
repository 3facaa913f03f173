//! What the benchmarks share.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Service;

/// One ready-call-poll cycle over a service whose future is ready at once.
pub fn call_once<S>(
    service: &mut S,
    cx: &mut Context<'_>,
    request: Request<Full<Bytes>>,
) -> S::Response
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let Poll::Ready(ready) = service.poll_ready(cx) else {
        panic!("not ready")
    };
    ready.unwrap();
    let future = pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(response) => response.unwrap(),
        Poll::Pending => panic!("not ready"),
    }
}
