//! Serving the simulator over HTTP/1.1.

use std::net::SocketAddr;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::Service;

use super::MockDashScope;

/// A running HTTP server for a [`MockDashScope`]; stops when shut down or dropped.
///
/// A scripted connection reset closes the connection without an answer.
#[derive(Debug)]
pub struct MockServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MockServer {
    pub(super) async fn start(mock: MockDashScope, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Connections live in this set: dropping it (when the server stops) ends them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors, say: back off rather than spin.
                        tracing::warn!(error = %err, "MockDashScope could not accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let mock = mock.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| mock.clone().call(req));
                    // An error here is a reset we scripted, or a client that went away.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(MockServer { local_addr, task })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
