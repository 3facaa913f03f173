//! `RegionRouter`: the URL table, path joining, credentials, key/plan checks, failover by
//! delivery, health in paused time, redaction. The inner service is a scripted double.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_dashscope::api::Plan;
use tower_dashscope::router::ApiKey;
use tower_dashscope::{
    Api, BoxError, DashScopeError, Delivery, ErrorClass, RateLimitKind, Region, RegionRouter,
    ServedRegion,
};

#[path = "support/capture.rs"]
mod capture;
use capture::Capture;

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// What the double does for a host.
#[derive(Clone, Copy, Debug)]
enum Behave {
    Status(u16),
    Io(io::ErrorKind),
    /// An error the classifier below made from a 401 answer.
    Classified401,
    /// A layer below refused the request locally (no status, not a transport failure), as a
    /// `TokenBudget` with `max_wait` below the router does.
    LocalRefusal,
}

/// A scripted HTTP client: answers per host, records what it was sent, and panics when called
/// without a successful `poll_ready` on the same clone.
#[derive(Clone)]
struct Double {
    hosts: Arc<Mutex<HashMap<String, Behave>>>,
    seen: Arc<Mutex<Vec<(Uri, HeaderMap)>>>,
    ready: bool,
}

impl Double {
    fn new() -> Self {
        Double {
            hosts: Arc::default(),
            seen: Arc::default(),
            ready: false,
        }
    }

    fn on(self, host: &str, behave: Behave) -> Self {
        self.set(host, behave);
        self
    }

    fn set(&self, host: &str, behave: Behave) {
        self.hosts.lock().unwrap().insert(host.to_owned(), behave);
    }

    fn seen(&self) -> Vec<(Uri, HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets what it was sent so far.
    fn forget_seen(&self) {
        self.seen.lock().unwrap().clear();
    }

    fn hosts_seen(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|(uri, _)| uri.host().unwrap().to_owned())
            .collect()
    }
}

impl fmt::Debug for Double {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Double")
    }
}

impl Service<Req> for Double {
    type Response = Res;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        let host = req.uri().host().unwrap_or_default().to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((req.uri().clone(), req.headers().clone()));
        let behave = self
            .hosts
            .lock()
            .unwrap()
            .get(&host)
            .copied()
            .unwrap_or(Behave::Status(200));
        std::future::ready(match behave {
            Behave::Status(status) => Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()),
            Behave::Io(kind) => Err(io::Error::new(kind, "scripted").into()),
            Behave::Classified401 => Err(Box::new(
                DashScopeError::new(ErrorClass::Authentication)
                    .with_status(StatusCode::UNAUTHORIZED)
                    .with_code("InvalidApiKey"),
            )),
            Behave::LocalRefusal => Err(Box::new(DashScopeError::new(ErrorClass::RateLimited(
                RateLimitKind::Local,
            )))),
        })
    }
}

fn chat(path: &str) -> Req {
    Request::post(path)
        .body(Full::new(Bytes::from_static(
            br#"{"model":"qwen-plus","messages":[]}"#,
        )))
        .unwrap()
}

async fn send(router: &RegionRouter, double: &Double, req: Req) -> Result<Res, DashScopeError> {
    router.layer(double.clone()).oneshot(req).await
}

const INTL: &str = "dashscope-intl.aliyuncs.com";
const CN: &str = "dashscope.aliyuncs.com";
const US: &str = "dashscope-us.aliyuncs.com";

#[tokio::test]
async fn the_whole_url_table() {
    use Api::*;
    let rows: Vec<(Region, Plan, Api, &str)> = vec![
        (
            Region::Beijing,
            Plan::PayAsYouGo,
            OpenAiCompatible,
            "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Beijing,
            Plan::PayAsYouGo,
            Native,
            "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
        ),
        (
            Region::Beijing,
            Plan::PayAsYouGo,
            Anthropic,
            "https://dashscope.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Singapore,
            Plan::PayAsYouGo,
            OpenAiCompatible,
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Plan::PayAsYouGo,
            Native,
            "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
        ),
        (
            Region::Singapore,
            Plan::PayAsYouGo,
            Anthropic,
            "https://dashscope-intl.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Virginia,
            Plan::PayAsYouGo,
            OpenAiCompatible,
            "https://dashscope-us.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Virginia,
            Plan::PayAsYouGo,
            Native,
            "https://dashscope-us.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
        ),
        (
            Region::Virginia,
            Plan::PayAsYouGo,
            Anthropic,
            "https://dashscope-us.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::HongKong,
            Plan::PayAsYouGo,
            OpenAiCompatible,
            "https://cn-hongkong.dashscope.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::HongKong,
            Plan::PayAsYouGo,
            Native,
            "https://cn-hongkong.dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
        ),
        (
            Region::HongKong,
            Plan::PayAsYouGo,
            Anthropic,
            "https://cn-hongkong.dashscope.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::workspace("ws-42", Region::Singapore).unwrap(),
            Plan::PayAsYouGo,
            OpenAiCompatible,
            "https://ws-42.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::workspace("ws-42", Region::Beijing).unwrap(),
            Plan::PayAsYouGo,
            Native,
            "https://ws-42.cn-beijing.maas.aliyuncs.com/api/v1/services/aigc/text-generation/generation",
        ),
        (
            Region::workspace("WS-42", Region::Virginia).unwrap(),
            Plan::PayAsYouGo,
            Anthropic,
            "https://ws-42.us-east-1.maas.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Beijing,
            Plan::CodingPlan,
            OpenAiCompatible,
            "https://coding.dashscope.aliyuncs.com/v1/chat/completions",
        ),
        (
            Region::Beijing,
            Plan::CodingPlan,
            Anthropic,
            "https://coding.dashscope.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Singapore,
            Plan::CodingPlan,
            OpenAiCompatible,
            "https://coding-intl.dashscope.aliyuncs.com/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Plan::CodingPlan,
            Anthropic,
            "https://coding-intl.dashscope.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Beijing,
            Plan::TokenPlan,
            OpenAiCompatible,
            "https://token-plan.cn-beijing.maas.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Beijing,
            Plan::TokenPlan,
            Anthropic,
            "https://token-plan.cn-beijing.maas.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Singapore,
            Plan::TokenPlan,
            OpenAiCompatible,
            "https://token-plan.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Plan::TokenPlan,
            Anthropic,
            "https://token-plan.ap-southeast-1.maas.aliyuncs.com/apps/anthropic/v1/messages",
        ),
    ];
    for (region, plan, api, want) in rows {
        let key = if plan == Plan::CodingPlan {
            "sk-sp-k"
        } else {
            "sk-k"
        };
        let router = RegionRouter::new(region.clone(), key).plan(plan).api(api);
        router.validate().unwrap();
        let double = Double::new();
        // The relative chat path, and DashScope's full path: both land on the same URL.
        let relative = api.chat_path();
        let full = format!("{}{}", api.base_path(plan).unwrap(), api.chat_path());
        for path in [relative.to_owned(), full] {
            let response = send(&router, &double, chat(&path)).await.unwrap();
            assert_eq!(
                response.extensions().get::<ServedRegion>(),
                Some(&ServedRegion(region.clone()))
            );
        }
        for (uri, _) in double.seen() {
            assert_eq!(uri.to_string(), want, "{region} {plan:?} {api:?}");
        }
    }
}

#[tokio::test]
async fn paths_and_queries_are_joined_without_doubling_or_dropping() {
    let upstream = Region::custom("http://127.0.0.1:8401/v1").unwrap();
    let gateway = Region::custom("https://gw.internal:8443/dashscope/").unwrap();
    let cases: Vec<(Region, Api, &str, &str)> = vec![
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/chat/completions",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "//chat/completions",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/v1/chat/completions",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/compatible-mode/v1/v1/chat/completions",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/models/?limit=2&after=x",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/models/?limit=2&after=x",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions?x=1",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions?x=1",
        ),
        // A path under another flavour's root is sent as that flavour.
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/api/v1/services/aigc/multimodal-generation/generation",
            "https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/multimodal-generation/generation",
        ),
        (
            Region::Singapore,
            Api::OpenAiCompatible,
            "/apps/anthropic/v1/messages",
            "https://dashscope-intl.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Singapore,
            Api::Anthropic,
            "/v1/messages?beta=true",
            "https://dashscope-intl.aliyuncs.com/apps/anthropic/v1/messages?beta=true",
        ),
        (
            Region::Singapore,
            Api::Anthropic,
            "/apps/anthropic/v1/v1/messages",
            "https://dashscope-intl.aliyuncs.com/apps/anthropic/v1/messages",
        ),
        (
            Region::Singapore,
            Api::Native,
            "/api/v1beta/x",
            "https://dashscope-intl.aliyuncs.com/api/v1/api/v1beta/x",
        ),
        // Custom URLs: with their own API root, or as a prefix.
        (
            upstream.clone(),
            Api::OpenAiCompatible,
            "/chat/completions",
            "http://127.0.0.1:8401/v1/chat/completions",
        ),
        (
            upstream.clone(),
            Api::OpenAiCompatible,
            "/v1/chat/completions",
            "http://127.0.0.1:8401/v1/chat/completions",
        ),
        (
            upstream.clone(),
            Api::OpenAiCompatible,
            "/compatible-mode/v1/chat/completions",
            "http://127.0.0.1:8401/v1/chat/completions",
        ),
        (
            upstream.clone(),
            Api::Anthropic,
            "/v1/messages",
            "http://127.0.0.1:8401/v1/messages",
        ),
        (
            gateway.clone(),
            Api::OpenAiCompatible,
            "/chat/completions",
            "https://gw.internal:8443/dashscope/compatible-mode/v1/chat/completions",
        ),
        (
            gateway.clone(),
            Api::Native,
            "/api/v1/services/aigc/text-generation/generation?a=b",
            "https://gw.internal:8443/dashscope/api/v1/services/aigc/text-generation/generation?a=b",
        ),
        (
            Region::custom("https://gw/apps/anthropic/v1").unwrap(),
            Api::Anthropic,
            "/v1/messages",
            "https://gw/apps/anthropic/v1/messages",
        ),
    ];
    for (region, api, path, want) in cases {
        let router = RegionRouter::new(region.clone(), "sk-k").api(api);
        let double = Double::new();
        send(&router, &double, chat(path)).await.unwrap();
        assert_eq!(
            double.seen()[0].0.to_string(),
            want,
            "{region} {api:?} {path}"
        );
    }
}

#[tokio::test]
async fn each_endpoint_gets_its_own_key_and_the_callers_is_replaced() {
    let router = RegionRouter::new(Region::Singapore, "sk-intl-key")
        .api(Api::Anthropic)
        .failover(Region::Virginia, "sk-us-key");
    let double = Double::new().on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused));
    let mut req = chat("/v1/messages");
    req.headers_mut()
        .insert("authorization", "Bearer sk-caller".parse().unwrap());
    req.headers_mut()
        .insert("x-api-key", "sk-caller".parse().unwrap());
    req.headers_mut()
        .insert("host", "evil.example".parse().unwrap());
    req.headers_mut()
        .insert("user-agent", "my-agent/1".parse().unwrap());
    let response = send(&router, &double, req).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(Region::Virginia))
    );

    let seen = double.seen();
    assert_eq!(double.hosts_seen(), [INTL, US]);
    for ((_, headers), key) in seen.iter().zip(["sk-intl-key", "sk-us-key"]) {
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert_eq!(headers["authorization"], format!("Bearer {key}").as_str());
        assert_eq!(headers["x-api-key"], key);
        assert!(headers["authorization"].is_sensitive() && headers["x-api-key"].is_sensitive());
        assert!(headers.get("host").is_none());
        assert_eq!(headers["user-agent"], "my-agent/1");
    }

    // The OpenAI-compatible flavour sends no x-api-key (a caller's is removed), and a
    // User-Agent when there was none.
    let router = RegionRouter::new(Region::Beijing, "sk-cn-key");
    let double = Double::new();
    let mut req = chat("/chat/completions");
    req.headers_mut()
        .insert("x-api-key", "sk-caller".parse().unwrap());
    send(&router, &double, req).await.unwrap();
    let (_, headers) = &double.seen()[0];
    assert_eq!(headers["authorization"], "Bearer sk-cn-key");
    assert!(headers.get("x-api-key").is_none());
    assert_eq!(
        headers["user-agent"],
        concat!("tower-dashscope/", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn key_and_plan_mismatches_fail_locally_naming_the_right_base_url() {
    let cases = [
        (
            Region::Singapore,
            Plan::PayAsYouGo,
            "sk-sp-abc",
            "https://coding-intl.dashscope.aliyuncs.com/v1",
        ),
        (
            Region::Beijing,
            Plan::PayAsYouGo,
            "sk-sp-abc",
            "https://coding.dashscope.aliyuncs.com/v1",
        ),
        (
            Region::Singapore,
            Plan::TokenPlan,
            "sk-sp-abc",
            "https://coding-intl.dashscope.aliyuncs.com/v1",
        ),
        (
            Region::Singapore,
            Plan::CodingPlan,
            "sk-abc",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        ),
        (
            Region::Beijing,
            Plan::CodingPlan,
            "sk-abc",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
        ),
        (
            Region::custom("https://dashscope-intl.aliyuncs.com").unwrap(),
            Plan::PayAsYouGo,
            "sk-sp-abc",
            "https://coding-intl.dashscope.aliyuncs.com/v1",
        ),
    ];
    for (region, plan, key, right) in cases {
        let router = RegionRouter::new(region.clone(), key).plan(plan);
        let invalid = router.validate().unwrap_err();
        assert!(invalid.to_string().contains(right), "{invalid}");
        let double = Double::new();
        let err = send(&router, &double, chat("/chat/completions"))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Authentication, "{region} {plan:?}");
        assert_eq!(err.delivery(), Some(Delivery::NotSent));
        assert!(err.to_string().contains(right), "{err}");
        assert!(double.seen().is_empty(), "nothing is sent");
    }
    // A gateway's own keys are not checked.
    let gw = Region::custom("https://gw.internal").unwrap();
    assert!(RegionRouter::new(gw.clone(), "gw-token").validate().is_ok());
    assert!(RegionRouter::new(gw, "sk-sp-abc").validate().is_ok());
    // Unusable keys.
    for key in ["", "  ", "sk-a\nb"] {
        let err = RegionRouter::new(Region::Singapore, key)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("API key"), "{err}");
    }
}

#[tokio::test]
async fn impossible_combinations_are_refused_at_construction() {
    let err = RegionRouter::new(Region::Singapore, "sk-sp-k")
        .plan(Plan::CodingPlan)
        .api(Api::Native)
        .validate()
        .unwrap_err();
    assert!(
        err.message()
            .contains("the Coding Plan serves no native API"),
        "{err}"
    );
    assert!(err.advice().contains("Api::OpenAiCompatible, /v1"), "{err}");
    let err = RegionRouter::new(Region::Virginia, "sk-sp-k")
        .plan(Plan::CodingPlan)
        .validate()
        .unwrap_err();
    assert!(
        err.to_string().contains("has no host in us-east-1"),
        "{err}"
    );
    assert!(err.advice().contains("Region::Singapore"), "{err}");
    // A failover endpoint is checked as well as the primary.
    let err = RegionRouter::new(Region::Singapore, "sk-sp-k")
        .plan(Plan::CodingPlan)
        .failover(Region::HongKong, "sk-sp-k2")
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("cn-hongkong"), "{err}");

    // Unchecked, every call fails locally with the same words.
    let router = RegionRouter::new(Region::Beijing, "sk-sp-k")
        .plan(Plan::CodingPlan)
        .api(Api::Native);
    let double = Double::new();
    let err = send(&router, &double, chat("/chat/completions"))
        .await
        .unwrap_err();
    assert_eq!(err.delivery(), Some(Delivery::NotSent));
    assert!(err.to_string().contains("no native API"), "{err}");
    assert!(double.seen().is_empty());

    // A native path on a Coding Plan router: refused per request, nothing sent.
    let router = RegionRouter::new(Region::Beijing, "sk-sp-k").plan(Plan::CodingPlan);
    router.validate().unwrap();
    let err = send(
        &router,
        &double,
        chat("/api/v1/services/aigc/text-generation/generation"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert_eq!(err.delivery(), Some(Delivery::NotSent));
    assert!(double.seen().is_empty());

    assert!(Region::workspace("", Region::Beijing).is_err());
    assert!(Region::workspace("-ws", Region::Beijing).is_err());
    assert!(Region::workspace("ws", Region::custom("https://x").unwrap()).is_err());
}

#[tokio::test]
async fn never_reached_fails_over_at_once() {
    for kind in [
        io::ErrorKind::ConnectionRefused,
        io::ErrorKind::HostUnreachable,
        io::ErrorKind::NetworkUnreachable,
    ] {
        let router = RegionRouter::new(Region::Singapore, "sk-1")
            .failover(Region::Beijing, "sk-2")
            .failover(Region::Virginia, "sk-3");
        let double = Double::new()
            .on(INTL, Behave::Io(kind))
            .on(CN, Behave::Io(kind));
        let response = send(&router, &double, chat("/chat/completions"))
            .await
            .unwrap();
        assert_eq!(
            response.extensions().get::<ServedRegion>(),
            Some(&ServedRegion(Region::Virginia))
        );
        assert_eq!(double.hosts_seen(), [INTL, CN, US]);
    }
    // Nothing left: the last failure.
    let router = RegionRouter::new(Region::Singapore, "sk-1").failover(Region::Beijing, "sk-2");
    let double = Double::new()
        .on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused))
        .on(CN, Behave::Io(io::ErrorKind::ConnectionRefused));
    let err = send(&router, &double, chat("/chat/completions"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection);
    assert_eq!(err.delivery(), Some(Delivery::NotSent));
    assert_eq!(double.hosts_seen(), [INTL, CN]);
}

#[tokio::test]
async fn maybe_reached_fails_over_only_when_configured() {
    for kind in [
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::UnexpectedEof,
        io::ErrorKind::TimedOut,
    ] {
        let router = RegionRouter::new(Region::Singapore, "sk-1").failover(Region::Beijing, "sk-2");
        let double = Double::new().on(INTL, Behave::Io(kind));
        let err = send(&router, &double, chat("/chat/completions"))
            .await
            .unwrap_err();
        assert_eq!(err.delivery(), Some(Delivery::MaybeSent), "{kind:?}");
        assert!(err.advice().contains("may have reached"), "{err}");
        assert!(err.advice().contains("failover_maybe_sent"), "{err}");
        assert_eq!(double.hosts_seen(), [INTL], "{kind:?}");

        let router = router.failover_maybe_sent(true);
        let double = Double::new().on(INTL, Behave::Io(kind));
        let response = send(&router, &double, chat("/chat/completions"))
            .await
            .unwrap();
        assert_eq!(
            response.extensions().get::<ServedRegion>(),
            Some(&ServedRegion(Region::Beijing))
        );
        assert_eq!(double.hosts_seen(), [INTL, CN]);
    }
}

#[tokio::test]
async fn no_failover_on_401_or_403() {
    let router = RegionRouter::new(Region::Singapore, "sk-1").failover(Region::Beijing, "sk-2");
    // Without a classifier below: the answer is handed back as it is.
    for status in [401, 403] {
        let double = Double::new().on(INTL, Behave::Status(status));
        let response = send(&router, &double, chat("/chat/completions"))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(double.hosts_seen(), [INTL]);
    }
    // With one: the error says the key may belong to another region.
    let double = Double::new().on(INTL, Behave::Classified401);
    let err = send(&router, &double, chat("/chat/completions"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    assert!(
        err.advice()
            .contains("this key may belong to another region"),
        "{err}"
    );
    assert!(
        err.advice()
            .contains("https://dashscope-intl.aliyuncs.com/compatible-mode/v1")
    );
    assert_eq!(double.hosts_seen(), [INTL]);
    // Other answers do not fail over either (retry and fallback are for those).
    for status in [429, 500, 503, 404] {
        let double = Double::new().on(INTL, Behave::Status(status));
        send(&router, &double, chat("/chat/completions"))
            .await
            .unwrap();
        assert_eq!(double.hosts_seen(), [INTL], "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn cooldown_then_one_probe_at_a_time_shared_by_clones() {
    let router = RegionRouter::new(Region::Singapore, "sk-1")
        .failover(Region::Beijing, "sk-2")
        .cooldown(Duration::from_secs(30));
    let double = Double::new().on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused));
    let clone = router.clone();
    send(&router, &double, chat("/chat/completions"))
        .await
        .unwrap();
    assert!(!router.is_healthy(0) && !clone.is_healthy(0));
    assert_eq!(double.hosts_seen(), [INTL, CN]);

    // During the cooldown, requests (through a clone too) start at the healthy endpoint.
    tokio::time::advance(Duration::from_secs(29)).await;
    double.forget_seen();
    send(&clone, &double, chat("/chat/completions"))
        .await
        .unwrap();
    assert_eq!(double.hosts_seen(), [CN]);

    // After it, one request probes; another one at the same time does not.
    tokio::time::advance(Duration::from_secs(1)).await;
    double.set(INTL, Behave::Status(200));
    double.forget_seen();
    let mut service = router.layer(double.clone());
    let mut other = clone.layer(double.clone());
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    std::future::poll_fn(|cx| other.poll_ready(cx))
        .await
        .unwrap();
    let probe = service.call(chat("/chat/completions"));
    let second = other.call(chat("/chat/completions"));
    let (probe, second) = (probe.await.unwrap(), second.await.unwrap());
    assert_eq!(
        probe.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(Region::Singapore))
    );
    assert_eq!(
        second.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(Region::Beijing))
    );
    assert!(router.is_healthy(0));

    // Healthy again: back to the primary.
    double.forget_seen();
    send(&clone, &double, chat("/chat/completions"))
        .await
        .unwrap();
    assert_eq!(double.hosts_seen(), [INTL]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_cools_down_again_and_a_dropped_one_is_given_back() {
    let router = RegionRouter::new(Region::Singapore, "sk-1")
        .failover(Region::Beijing, "sk-2")
        .cooldown(Duration::from_secs(10));
    let double = Double::new().on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused));
    send(&router, &double, chat("/x")).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;

    // A probe taken and dropped before it ran: the next request may probe.
    let mut service = router.layer(double.clone());
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    double.forget_seen();
    let dropped = service.call(chat("/x"));
    drop(dropped);
    double.forget_seen();
    send(&router, &double, chat("/x")).await.unwrap();
    assert_eq!(
        double.hosts_seen(),
        [INTL, CN],
        "probed, failed, failed over"
    );
    assert!(!router.is_healthy(0));

    // The failed probe started a new cooldown.
    tokio::time::advance(Duration::from_secs(9)).await;
    double.forget_seen();
    send(&router, &double, chat("/x")).await.unwrap();
    assert_eq!(double.hosts_seen(), [CN]);
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_by_a_layer_below_is_given_back() {
    // A probe whose request a layer below refused (no status, no transport failure) proved
    // nothing about the endpoint: the next request after it must be able to probe again,
    // rather than the endpoint being avoided for good.
    let router = RegionRouter::new(Region::Singapore, "sk-1")
        .failover(Region::Beijing, "sk-2")
        .cooldown(Duration::from_secs(10));
    let double = Double::new().on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused));
    send(&router, &double, chat("/x")).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;

    double.set(INTL, Behave::LocalRefusal);
    double.forget_seen();
    let err = send(&router, &double, chat("/x")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
    assert_eq!(double.hosts_seen(), [INTL], "the probe");

    double.set(INTL, Behave::Status(200));
    double.forget_seen();
    send(&router, &double, chat("/x")).await.unwrap();
    assert_eq!(
        double.hosts_seen(),
        [INTL],
        "probed again, not avoided for good"
    );
    assert!(router.is_healthy(0));
}

#[tokio::test(start_paused = true)]
async fn a_huge_cooldown_does_not_panic() {
    // `Duration::MAX` reads as "never come back by yourself"; it must not overflow an Instant.
    let router = RegionRouter::new(Region::Singapore, "sk-1")
        .failover(Region::Beijing, "sk-2")
        .cooldown(Duration::MAX);
    let double = Double::new().on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused));
    let response = send(&router, &double, chat("/x")).await.unwrap();
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(Region::Beijing))
    );
    assert!(!router.is_healthy(0));
    tokio::time::advance(Duration::from_secs(86_400)).await;
    double.forget_seen();
    send(&router, &double, chat("/x")).await.unwrap();
    assert_eq!(double.hosts_seen(), [CN]);
}

#[tokio::test(start_paused = true)]
async fn all_unhealthy_still_tries_in_order() {
    let router = RegionRouter::new(Region::Singapore, "sk-1").failover(Region::Beijing, "sk-2");
    let double = Double::new()
        .on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused))
        .on(CN, Behave::Io(io::ErrorKind::ConnectionRefused));
    send(&router, &double, chat("/x")).await.unwrap_err();
    double.set(CN, Behave::Status(200));
    double.forget_seen();
    let response = send(&router, &double, chat("/x")).await.unwrap();
    assert_eq!(double.hosts_seen(), [INTL, CN]);
    assert_eq!(
        response.extensions().get::<ServedRegion>(),
        Some(&ServedRegion(Region::Beijing))
    );
    assert!(router.is_healthy(1));
}

#[tokio::test]
async fn a_body_that_cannot_be_replayed_is_sent_once() {
    use tower_dashscope::body::SendOnce;
    let router = RegionRouter::new(Region::Singapore, "sk-1").failover(Region::Beijing, "sk-2");
    let seen = Arc::new(Mutex::new(0));
    let count = seen.clone();
    let inner = tower::service_fn(move |_req: Request<SendOnce<Full<Bytes>>>| {
        *count.lock().unwrap() += 1;
        async {
            Err::<Response<Full<Bytes>>, BoxError>(
                io::Error::from(io::ErrorKind::ConnectionRefused).into(),
            )
        }
    });
    let req = Request::post("/chat/completions")
        .body(SendOnce::new(Full::new(Bytes::new())))
        .unwrap();
    let err = router.layer(inner).oneshot(req).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Connection);
    assert_eq!(*seen.lock().unwrap(), 1);
}

/// An error whose text is hyper-util's legacy client error's for a connect failure.
#[derive(Debug)]
struct LooksLikeHyperUtilConnect;
impl fmt::Display for LooksLikeHyperUtilConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client error (Connect)")
    }
}
impl std::error::Error for LooksLikeHyperUtilConnect {}

#[test]
fn delivery_is_read_from_the_source_chain() {
    let of = |err: BoxError| DashScopeError::from(err).delivery();
    for kind in [
        io::ErrorKind::ConnectionRefused,
        io::ErrorKind::AddrNotAvailable,
        io::ErrorKind::HostUnreachable,
        io::ErrorKind::NetworkUnreachable,
        io::ErrorKind::NetworkDown,
    ] {
        assert_eq!(
            of(io::Error::from(kind).into()),
            Some(Delivery::NotSent),
            "{kind:?}"
        );
    }
    for kind in [
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::ConnectionAborted,
        io::ErrorKind::BrokenPipe,
        io::ErrorKind::UnexpectedEof,
        io::ErrorKind::TimedOut,
        io::ErrorKind::Other,
    ] {
        assert_eq!(
            of(io::Error::from(kind).into()),
            Some(Delivery::MaybeSent),
            "{kind:?}"
        );
    }
    assert_eq!(
        of(LooksLikeHyperUtilConnect.into()),
        Some(Delivery::NotSent)
    );
    assert_eq!(of("unknown".into()), Some(Delivery::MaybeSent));
    assert_eq!(
        of(tower::timeout::error::Elapsed::new().into()),
        Some(Delivery::MaybeSent)
    );
    // An answer says nothing about delivery; a typed error keeps what it had.
    assert_eq!(
        DashScopeError::new(ErrorClass::RateLimited(
            tower_dashscope::RateLimitKind::Requests
        ))
        .delivery(),
        None
    );
    let local = DashScopeError::new(ErrorClass::Connection).with_delivery(Delivery::NotSent);
    assert_eq!(of(Box::new(local)), Some(Delivery::NotSent));
}

#[tokio::test]
async fn services_and_futures_are_send_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    let router = RegionRouter::new(Region::Singapore, "sk-1");
    assert_send_sync(&router);
    let mut service = router.layer(Double::new());
    assert_send_sync(&service);
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let future = service.call(chat("/x"));
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&future);
    future.await.unwrap();
    assert_send_sync(&ApiKey::new("sk-x"));
}

#[tokio::test(start_paused = true)]
async fn no_key_in_tracing_debug_display_or_errors() {
    use tower::ServiceBuilder;
    use tower_dashscope::{ClassifyDashScopeError, RetryWithJitter};

    const KEYS: [&str; 4] = [
        "sk-SECRET-intl-0001",
        "sk-SECRET-cn-0002",
        "sk-sp-SECRET-plan-0003",
        "sk-SECRET-us-0004",
    ];
    let (capture, _guard) = Capture::start();
    let mut texts: Vec<String> = Vec::new();

    // A failing stack: refused, then reset (failover allowed), then 401 with a body, retried
    // above, classified below.
    let router = RegionRouter::new(Region::Singapore, KEYS[0])
        .failover(Region::Beijing, KEYS[1])
        .failover(Region::Virginia, KEYS[3])
        .failover_maybe_sent(true)
        .cooldown(Duration::from_secs(5));
    let double = Double::new()
        .on(INTL, Behave::Io(io::ErrorKind::ConnectionRefused))
        .on(CN, Behave::Io(io::ErrorKind::ConnectionReset))
        .on(US, Behave::Status(401));
    let stack = ServiceBuilder::new()
        .layer(RetryWithJitter::new().max_attempts(3).seed(1))
        .layer(router.clone())
        .layer(ClassifyDashScopeError::new())
        .service(double.clone());
    let mut req = chat("/chat/completions");
    req.headers_mut()
        .insert("authorization", "Bearer sk-caller".parse().unwrap());
    let err = stack.clone().oneshot(req).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Authentication);
    texts.push(format!("{err}"));
    texts.push(format!("{err:?}"));
    texts.push(err.advice().to_owned());
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        texts.push(format!("{cause} {cause:?}"));
        source = cause.source();
    }
    // The probe after the cooldown, the health changes.
    tokio::time::advance(Duration::from_secs(6)).await;
    let _ = stack.clone().oneshot(chat("/chat/completions")).await;
    // Local refusals.
    let plan = RegionRouter::new(Region::Singapore, KEYS[2]);
    let err = send(&plan, &double, chat("/chat/completions"))
        .await
        .unwrap_err();
    texts.push(format!("{err} {err:?}"));
    texts.push(format!(
        "{} {:?}",
        plan.validate().unwrap_err(),
        plan.validate().unwrap_err()
    ));
    let plain = RegionRouter::new(Region::Singapore, KEYS[0]).plan(Plan::CodingPlan);
    let err = send(&plain, &double, chat("/chat/completions"))
        .await
        .unwrap_err();
    texts.push(format!("{err} {err:?}"));
    // Every Debug there is.
    texts.push(format!(
        "{router:?} {plan:?} {:?}",
        router.layer(double.clone())
    ));
    texts.push(format!(
        "{:?} {}",
        ApiKey::new(KEYS[2]),
        ApiKey::new(KEYS[2])
    ));
    let mut service = router.layer(double.clone());
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let future = service.call(chat("/x"));
    texts.push(format!("{future:?}"));
    drop(future);
    for (_, headers) in double.seen() {
        texts.push(format!("{headers:?}"));
    }

    let log = capture.text();
    assert!(log.contains("failing over"), "{log}");
    assert!(log.contains("endpoint unhealthy"), "{log}");
    assert!(log.contains("probing"), "{log}");
    texts.push(log);
    let all = texts.join("\n");
    for key in KEYS {
        assert!(!all.contains(key), "{key} leaked:\n{all}");
    }
    assert!(!all.contains("SECRET"), "a part of a key leaked:\n{all}");
}
