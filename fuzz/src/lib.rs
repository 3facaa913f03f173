//! Helpers shared by the fuzz targets: a body made of given chunks, a current-thread runtime,
//! and one call through `ClassifyDashScopeError` over a client that answers with a fuzzed body.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_dashscope::classify::{Usage, UsageSlot};
use tower_dashscope::{BoxError, ClassifyDashScopeError, DashScopeError, ErrorClass};

/// A body made of the given frames, yielded one by one.
#[derive(Debug)]
pub struct ChunkedBody(pub VecDeque<Bytes>);

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime"),
    );
}

/// Runs `future` to completion on this thread's runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.borrow().block_on(future))
}

/// `body` cut into at most `max_chunks` pieces whose lengths come from a small generator seeded
/// with `seed` (1 to `max_len` bytes each; the rest goes into the last piece).
pub fn chunks(body: &[u8], seed: u64, max_len: usize, max_chunks: usize) -> Vec<Bytes> {
    let mut state = seed | 1;
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() && out.len() + 1 < max_chunks {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = 1 + (state as usize) % max_len.max(1);
        let n = n.min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        out.push(Bytes::copy_from_slice(rest));
    }
    out
}

/// How a call through the classifier ended.
#[derive(Debug)]
pub struct Seen {
    /// The call's own error, if it failed.
    pub call_error: Option<DashScopeError>,
    /// The body's bytes, as the caller read them.
    pub bytes: Vec<u8>,
    /// The error that ended the body, if one did.
    pub body_error: Option<DashScopeError>,
    /// What the usage slot recorded.
    pub usage: Option<Usage>,
}

impl Seen {
    /// The error that ended the exchange, the call's or the body's: its class and status.
    pub fn verdict(&self) -> Option<(ErrorClass, Option<u16>)> {
        self.call_error
            .as_ref()
            .or(self.body_error.as_ref())
            .map(|e| (e.class(), e.status().map(|s| s.as_u16())))
    }
}

/// One request through `layer` to a client that answers 200 with `chunks`.
pub fn send(
    layer: ClassifyDashScopeError,
    request: Request<Full<Bytes>>,
    content_type: Option<&'static str>,
    chunks: Vec<Bytes>,
) -> Seen {
    send_status(
        layer,
        request,
        http::StatusCode::OK,
        HeaderMap::new(),
        content_type,
        chunks,
    )
}

/// One request through `layer` to a client that answers `status` with `headers` and `chunks`.
pub fn send_status(
    layer: ClassifyDashScopeError,
    request: Request<Full<Bytes>>,
    status: http::StatusCode,
    headers: HeaderMap,
    content_type: Option<&'static str>,
    chunks: Vec<Bytes>,
) -> Seen {
    let slot = request.extensions().get::<UsageSlot>().cloned();
    let body = std::sync::Mutex::new(Some(ChunkedBody(chunks.into())));
    let client = service_fn(move |_req: Request<Full<Bytes>>| {
        let body = body.lock().unwrap().take().expect("called once");
        let headers = headers.clone();
        async move {
            let mut response = Response::new(body);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert("content-type", http::HeaderValue::from_static(content_type));
            }
            Ok::<_, BoxError>(response)
        }
    });
    block_on(async move {
        let mut seen = Seen {
            call_error: None,
            bytes: Vec::new(),
            body_error: None,
            usage: None,
        };
        match layer.layer(client).oneshot(request).await {
            Err(err) => seen.call_error = Some(err),
            Ok(response) => {
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => {
                            if let Ok(data) = frame.into_data() {
                                seen.bytes.extend_from_slice(&data);
                            }
                        }
                        Err(err) => {
                            seen.body_error = Some(err);
                            assert!(body.frame().await.is_none(), "a frame after the error");
                            break;
                        }
                    }
                }
            }
        }
        seen.usage = slot.and_then(|s| s.get());
        seen
    })
}
