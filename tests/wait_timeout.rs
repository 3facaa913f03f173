//! `WaitTimeoutHeader`: the header, its rounding, the caller's value, readiness, errors.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::Layer;
use tower_dashscope::{ErrorClass, WaitTimeoutHeader, WaitTimeoutHeaderService};
use tower_test::mock;

type Req = Request<Full<Bytes>>;

/// The header value the inner service receives for `request` through `layer`.
async fn sent_header(layer: WaitTimeoutHeader, request: Req) -> Option<String> {
    let (mut service, mut handle) = mock::spawn_layer::<Req, Response<()>, _>(layer);
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let response = service.call(request);
    let (received, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(()));
    response.await.unwrap();
    let values: Vec<_> = received
        .headers()
        .get_all("x-dashscope-wait-timeout")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(values.len() <= 1, "header set twice: {values:?}");
    values.into_iter().next()
}

#[tokio::test]
async fn sets_whole_seconds_rounding_up() {
    for (wait, expected) in [
        (Duration::from_secs(30), "30"),
        (Duration::from_millis(1500), "2"),
        (Duration::from_nanos(1), "1"),
        (Duration::ZERO, "0"),
        (Duration::from_secs(120), "120"),
        (Duration::MAX, "18446744073709551615"),
    ] {
        let layer = WaitTimeoutHeader::new(wait);
        assert_eq!(layer.wait(), wait);
        assert_eq!(layer.header_value(), expected);
        let got = sent_header(layer, Request::new(Full::default())).await;
        assert_eq!(got.as_deref(), Some(expected), "{wait:?}");
    }
}

#[tokio::test]
async fn keeps_a_value_the_caller_set() {
    let request = Request::builder()
        .header("X-DashScope-Wait-Timeout", "5")
        .body(Full::default())
        .unwrap();
    let got = sent_header(WaitTimeoutHeader::new(Duration::from_secs(30)), request).await;
    assert_eq!(got.as_deref(), Some("5"));
}

#[tokio::test]
async fn forwards_readiness_and_classifies_errors() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Req, Response<()>, _>(WaitTimeoutHeader::new(Duration::from_secs(3)));
    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let response = service.call(Request::new(Full::default()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
    assert_eq!(response.await.unwrap_err().class(), ErrorClass::Connection);
}

#[test]
fn service_constructor_and_accessors() {
    let mut service = WaitTimeoutHeaderService::new(7u8, Duration::from_secs(1));
    assert_eq!(*service.get_ref(), 7);
    *service.get_mut() = 8;
    assert_eq!(service.into_inner(), 8);
    let _ = WaitTimeoutHeader::new(Duration::from_secs(1)).layer(());
}
