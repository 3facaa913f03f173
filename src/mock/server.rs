//! Serving the simulator over HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tower::Service;

use super::MockDashScope;

/// How long a client may take to send a request's headers, by default: 30 s (hyper's own
/// default, which it applies only when given a timer).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A running HTTP server for a [`MockDashScope`]; stops when shut down or dropped.
///
/// A scripted connection reset closes the connection without an answer. A client that does not
/// finish sending a request's headers within the header read timeout
/// ([`MockBuilder::header_read_timeout`](super::MockBuilder::header_read_timeout)) has its
/// connection closed, so a stuck or hostile client cannot hold a connection forever.
#[derive(Debug)]
pub struct MockServer {
    local_addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl MockServer {
    pub(super) async fn start(mock: MockDashScope, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let header_read_timeout = mock.shared.header_read_timeout;
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: dropping it (when the server stops) ends them.
            let mut tasks = JoinSet::new();
            loop {
                let accepted = std::future::poll_fn(|cx| {
                    // Finished connections are reaped as they finish, not at the next accept:
                    // polling the set registers for the next one to finish.
                    while let Poll::Ready(Some(_)) = tasks.poll_join_next(cx) {}
                    count.store(tasks.len(), Ordering::Relaxed);
                    listener.poll_accept(cx)
                })
                .await;
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors, say: back off rather than spin.
                        tracing::warn!(error = %err, "MockDashScope could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mock = mock.clone();
                tasks.spawn(async move {
                    let service = hyper::service::service_fn(move |req| mock.clone().call(req));
                    // An error here is a reset we scripted, a client that went away, or one too
                    // slow to send its headers.
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_read_timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                count.store(tasks.len(), Ordering::Relaxed);
            }
        });
        Ok(MockServer {
            local_addr,
            connections,
            task,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open now: accepted, and not yet closed by either side.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
