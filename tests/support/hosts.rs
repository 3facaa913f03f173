//! An inner service for region failover tests: requests for the listed hosts fail as a refused
//! TCP connection would (nothing sent), the others go to the wrapped service (the simulator).

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Request;
use tower::Service;
use tower_dashscope::BoxError;

/// Refuses "connections" to some hosts; forwards the rest to `inner`.
#[derive(Clone, Debug)]
pub struct RefuseHosts<S> {
    inner: S,
    refused: Arc<Mutex<Vec<String>>>,
}

impl<S> RefuseHosts<S> {
    /// Forwards everything to `inner` until [`refuse`](Self::refuse) names a host.
    pub fn new(inner: S) -> Self {
        RefuseHosts {
            inner,
            refused: Arc::default(),
        }
    }

    /// Requests for `host` (the URI's host) fail with `ConnectionRefused` from now on, in every
    /// clone.
    pub fn refuse(self, host: &str) -> Self {
        self.refused.lock().unwrap().push(host.to_owned());
        self
    }

    /// Requests for every host go through again.
    pub fn accept_all(&self) {
        self.refused.lock().unwrap().clear();
    }
}

impl<S, B> Service<Request<B>> for RefuseHosts<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let host = req.uri().host().unwrap_or_default();
        if self.refused.lock().unwrap().iter().any(|h| h == host) {
            let err = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
            return Box::pin(std::future::ready(Err(err.into())));
        }
        let future = self.inner.call(req);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}
