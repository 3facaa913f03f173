//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Full;

/// A response with `status`, `headers` and a `Full` body.
pub fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    *response.headers_mut() = header_map(headers);
    response
}

pub fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// A body of `total` bytes in `chunk`-sized frames that counts how many bytes were polled out
/// of it.
#[derive(Debug)]
pub struct CountingBody {
    pub remaining: usize,
    pub chunk: usize,
    pub polled: Arc<AtomicUsize>,
    pub fill: u8,
}

impl CountingBody {
    pub fn new(total: usize, chunk: usize) -> (Self, Arc<AtomicUsize>) {
        let polled = Arc::new(AtomicUsize::new(0));
        let body = CountingBody {
            remaining: total,
            chunk: chunk.max(1),
            polled: polled.clone(),
            fill: b'x',
        };
        (body, polled)
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.chunk.min(self.remaining);
        self.remaining -= n;
        self.polled.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![self.fill; n])))))
    }
}

/// A body made of the given frames, yielded one by one.
#[derive(Debug)]
pub struct ChunkedBody {
    pub frames: std::collections::VecDeque<Result<Bytes, std::io::Error>>,
}

impl ChunkedBody {
    pub fn new<I, C>(chunks: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<Bytes>,
    {
        ChunkedBody {
            frames: chunks.into_iter().map(|c| Ok(c.into())).collect(),
        }
    }

    pub fn then_fail(mut self, kind: std::io::ErrorKind) -> Self {
        self.frames
            .push_back(Err(std::io::Error::new(kind, "body failed")));
        self
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frames.pop_front().map(|r| r.map(Frame::data)))
    }
}
