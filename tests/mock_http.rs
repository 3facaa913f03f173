//! The simulator's contract as a service and as an HTTP server: its futures are `Send + Sync`,
//! its server closes connections of clients that never finish their headers, reaps finished
//! connections at once, and reads the `Bearer` scheme in any case.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use tower::{Layer, Service, ServiceExt};
use tower_dashscope::ClassifyDashScopeError;
use tower_dashscope::mock::{MockDashScope, MockFuture, ModelConfig};

const COMPAT: &str = "/compatible-mode/v1/chat/completions";
const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn response_futures_are_send_and_sync() {
    assert_send_sync::<MockFuture>();
    assert_send_sync::<<MockDashScope as Service<Request<Full<Bytes>>>>::Future>();
    // A request body that is not `Sync` does not make the future lose `Sync`.
    type UnsyncBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
    assert_send_sync::<<MockDashScope as Service<Request<UnsyncBody>>>::Future>();
    // And so a stack over the simulator can be `Sync` too.
    type Classified = tower_dashscope::classify::ClassifyDashScopeErrorService<MockDashScope>;
    assert_send_sync::<<Classified as Service<Request<Full<Bytes>>>>::Future>();
}

#[tokio::test(start_paused = true)]
async fn the_bearer_scheme_is_read_in_any_case() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .api_key("sk-right")
        .build();
    let client = ClassifyDashScopeError::new().layer(mock);
    for value in ["Bearer sk-right", "bearer sk-right", "BEARER sk-right"] {
        let request = Request::post(COMPAT)
            .header("authorization", value)
            .body(Full::new(Bytes::from(BODY)))
            .unwrap();
        let response = client.clone().oneshot(request).await;
        assert!(response.is_ok(), "{value}: {:?}", response.err());
    }
    let request = Request::post(COMPAT)
        .header("authorization", "Basic sk-right")
        .body(Full::new(Bytes::from(BODY)))
        .unwrap();
    assert!(client.oneshot(request).await.is_err(), "not another scheme");
}

/// A blocking loopback client (on tokio's blocking pool): connects to `addr`, sends `bytes`,
/// and reads until the server closes the connection. Fails the test instead of hanging if the
/// server never closes it.
async fn send_and_read_until_closed(addr: SocketAddr, bytes: &'static [u8]) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut seen = Vec::new();
        stream
            .read_to_end(&mut seen)
            .expect("the server never closed the connection");
        seen
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    // Real time, a short limit: the test waits for the close, it does not time it.
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .header_read_timeout(Duration::from_millis(50))
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let _ = send_and_read_until_closed(server.local_addr(), b"POST /compatible-mode/v1/chat/compl")
        .await;
    assert_eq!(mock.stats().requests, 0, "no request was ever read");
}

#[tokio::test]
async fn finished_connections_are_reaped_at_once() {
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let request = format!(
        "POST {COMPAT} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let request: &'static [u8] = Box::leak(request.into_bytes().into_boxed_slice());
    let answer = send_and_read_until_closed(server.local_addr(), request).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // No other connection arrives: the finished one must go without waiting for one. Yielding
    // lets the server's tasks (and the IO driver) run; no wall-clock wait is involved.
    for _ in 0..100_000 {
        if server.connections() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "{} connection task(s) still held after the connection closed",
        server.connections()
    );
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let mock = MockDashScope::builder()
        .model("m", ModelConfig::new())
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..3 {
        let request = Request::post(format!("http://{}{COMPAT}", server.local_addr()))
            .body(Full::new(Bytes::from(BODY)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await.unwrap();
    }
    assert_eq!(mock.stats().requests, 3);
    assert_eq!(server.connections(), 1, "one connection, kept alive");
}
