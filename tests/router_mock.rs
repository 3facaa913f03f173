//! `RegionRouter` against `MockDashScope` over loopback, with a real HTTP client (hyper-util's
//! legacy client): an endpoint that refuses connections, one that resets after the request,
//! one bound to another region's keys.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_dashscope::mock::{MockDashScope, MockServer, ModelConfig};
use tower_dashscope::{
    ClassifyDashScopeError, Delivery, ErrorClass, Region, RegionRouter, ServedRegion,
};

#[path = "support/loopback.rs"]
mod loopback;

use loopback::{closed_port, resetting};

fn chat() -> Request<Full<Bytes>> {
    Request::post("/compatible-mode/v1/chat/completions")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap()
}

fn at(addr: SocketAddr) -> Region {
    Region::custom(&format!("http://{addr}")).unwrap()
}

/// A simulator that takes only `key`, on loopback.
async fn mock(key: &str) -> (MockDashScope, MockServer) {
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .api_key(key)
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (mock, server)
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn refused_connection_fails_over_at_once() {
    let refused = closed_port().await;
    let (mock, server) = mock("sk-good").await;
    let router =
        RegionRouter::new(at(refused), "sk-first").failover(at(server.local_addr()), "sk-good");
    let stack = ServiceBuilder::new()
        .layer(router.clone())
        .layer(ClassifyDashScopeError::new())
        .service(client());
    let response = stack.clone().oneshot(chat()).await.unwrap();
    assert!(response.status().is_success());
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(at(server.local_addr())))
    );
    response.into_body().collect().await.unwrap();
    assert_eq!(mock.stats().requests, 1);
    assert!(!router.is_healthy(0));

    // What the real client's error says on its own: never sent.
    let alone = ServiceBuilder::new()
        .layer(RegionRouter::new(at(refused), "sk-first"))
        .layer(ClassifyDashScopeError::new())
        .service(client());
    let err = alone.oneshot(chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection);
    assert_eq!(err.delivery(), Some(Delivery::NotSent), "{err:?}");
}

#[tokio::test]
async fn reset_after_the_request_is_not_resent_unless_configured() {
    let reset = resetting().await;
    let (mock, server) = mock("sk-good").await;
    let router =
        RegionRouter::new(at(reset), "sk-first").failover(at(server.local_addr()), "sk-good");
    let stack = ServiceBuilder::new()
        .layer(router.clone())
        .layer(ClassifyDashScopeError::new())
        .service(client());
    let err = stack.oneshot(chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection, "{err:?}");
    assert_eq!(err.delivery(), Some(Delivery::MaybeSent), "{err:?}");
    assert!(err.advice().contains("may have reached"), "{err}");
    assert_eq!(mock.stats().requests, 0, "not resent");

    let stack = ServiceBuilder::new()
        .layer(router.failover_maybe_sent(true))
        .layer(ClassifyDashScopeError::new())
        .service(client());
    let response = stack.oneshot(chat()).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(at(server.local_addr())))
    );
    assert_eq!(mock.stats().requests, 1);
}

#[tokio::test]
async fn a_key_of_another_region_is_401_and_never_fails_over() {
    let (other, other_server) = mock("sk-other-region").await;
    let (good, good_server) = mock("sk-good").await;
    let router = RegionRouter::new(at(other_server.local_addr()), "sk-mine")
        .failover(at(good_server.local_addr()), "sk-good");
    let stack = ServiceBuilder::new()
        .layer(router.clone())
        .layer(ClassifyDashScopeError::new())
        .service(client());
    let err = stack.oneshot(chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    assert!(
        err.advice()
            .contains("this key may belong to another region"),
        "{err}"
    );
    assert_eq!(err.delivery(), None, "the server answered");
    assert_eq!(other.stats().requests, 1);
    assert_eq!(good.stats().requests, 0, "no failover on 401");
    assert!(router.is_healthy(0), "an answer is no connection failure");
}
