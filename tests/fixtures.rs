//! Every line of `tests/fixtures/dashscope-errors.jsonl` through the layer.

mod common;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use tower::{Layer, ServiceExt, service_fn};
use tower_dashscope::classify::classify_response;
use tower_dashscope::{BoxError, ClassifyDashScopeError, DashScopeError};

const FIXTURES: &str = include_str!("fixtures/dashscope-errors.jsonl");

struct Fixture {
    name: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    raw: Value,
}

fn fixtures() -> Vec<Fixture> {
    let all: Vec<Fixture> = FIXTURES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let raw: Value = serde_json::from_str(line).unwrap();
            Fixture {
                name: raw["name"].as_str().unwrap().to_owned(),
                status: raw["status"].as_u64().unwrap() as u16,
                headers: raw["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                body: raw["body"].as_str().unwrap().to_owned(),
                raw,
            }
        })
        .collect();
    assert!(all.len() >= 12, "only {} fixtures were read", all.len());
    all
}

impl Fixture {
    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn check(&self, err: &DashScopeError) {
        let name = &self.name;
        let raw = &self.raw;
        assert_eq!(
            format!("{:?}", err.class()),
            raw["expect_class"].as_str().unwrap(),
            "{name}: {err}"
        );
        assert_eq!(err.code(), raw["expect_code"].as_str(), "{name}");
        if let Some(id) = raw.get("expect_request_id") {
            assert_eq!(err.request_id(), id.as_str(), "{name}");
        }
        let expect_status = raw
            .get("expect_status")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(self.status));
        assert_eq!(
            err.status().map(|s| u64::from(s.as_u16())),
            Some(expect_status),
            "{name}"
        );
    }
}

#[test]
fn every_fixture_body_is_classified_as_expected() {
    for fixture in fixtures() {
        let status = http::StatusCode::from_u16(fixture.status).unwrap();
        let headers = common::header_map(&fixture.headers());
        let err = classify_response(status, &headers, fixture.body.as_bytes());
        fixture.check(&err);
    }
}

#[tokio::test]
async fn every_fixture_is_classified_by_the_layer() {
    let mut checked = 0;
    for fixture in fixtures() {
        let response = common::response(fixture.status, &fixture.headers(), fixture.body.clone());
        let client = service_fn(move |_req: Request<Full<Bytes>>| {
            let response = response.clone();
            async move { Ok::<_, BoxError>(response) }
        });
        let err = ClassifyDashScopeError::new()
            .layer(client)
            .oneshot(Request::new(Full::default()))
            .await
            .expect_err(&fixture.name);
        fixture.check(&err);
        checked += 1;
    }
    assert!(checked >= 12);
}
