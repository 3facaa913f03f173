//! tower's nearest equivalent of a retry layer on the success path, shared by the benchmarks
//! that compare against it.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// A tower retry policy that clones the request (like any retrying policy must) and never
/// retries.
#[derive(Clone)]
pub struct AlwaysOnce;

impl<Res, E> tower::retry::Policy<Request<Full<Bytes>>, Res, E> for AlwaysOnce {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<Full<Bytes>>,
        _result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
}
