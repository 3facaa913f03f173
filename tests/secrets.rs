//! No API key anywhere: every failure path of the full stack (`RecommendedStack`'s six layers
//! over the simulator, in process and over loopback HTTP) is driven with `tracing` captured at
//! TRACE level, and everything that could show a key — the captured spans and events, `Debug`
//! and `Display` of every public type (layers, services, futures, errors, configurations, the
//! router and the one-call stack with their keys, the budget stores, the simulator and its
//! builder), the responses and the errors — is searched for the keys.
//!
//! Every key holds `secret-`, which nothing else the crate prints does; the capture helper
//! (tests/support/capture.rs) is the one the gateway's test uses too.

use std::fmt::{Debug, Display, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_dashscope::api::Plan;
use tower_dashscope::budget::LocalStore;
use tower_dashscope::mock::{MockDashScope, ModelConfig};
use tower_dashscope::router::ApiKey;
use tower_dashscope::{
    Attempts, ClassifyDashScopeError, DashScopeError, ErrorClass, FallbackModel, Quota,
    RecommendedService, RecommendedStack, Region, RegionRouter, RetryWithJitter, ServedModel,
    ServedRegion, TokenBudget, UsageSlot, WaitTimeoutHeader,
};

#[path = "support/capture.rs"]
mod capture;
#[path = "support/hosts.rs"]
mod hosts;
#[path = "support/loopback.rs"]
mod loopback;

use capture::{Capture, assert_no_secret};
use hosts::RefuseHosts;

/// Accepted only in Singapore.
const KEY_INTL: &str = "sk-secret-intl-7f3a9b";
/// Accepted only in Virginia.
const KEY_US: &str = "sk-secret-us-9c1b2d";
/// Accepted nowhere.
const KEY_WRONG: &str = "sk-secret-wrong-4d2e5f";
/// A Coding Plan key, accepted nowhere here.
const KEY_CODING: &str = "sk-sp-secret-coding-5e6f70";
/// What every key holds, and nothing else printed does.
const MARK: &str = "secret-";

const INTL: &str = "dashscope-intl.aliyuncs.com";
const US: &str = "dashscope-us.aliyuncs.com";
const PATH: &str = "/compatible-mode/v1/chat/completions";

type Inner = RefuseHosts<MockDashScope>;
type Stack = RecommendedService<Inner>;

/// The six layers, in DESIGN.md's order, each configurable.
#[derive(Clone, Debug)]
struct Layers {
    fallback: FallbackModel,
    retry: RetryWithJitter,
    budget: TokenBudget,
    router: RegionRouter,
    classify: ClassifyDashScopeError,
}

impl Layers {
    fn new(router: RegionRouter) -> Self {
        Layers {
            fallback: FallbackModel::new(["qwen-max", "qwen-plus"]),
            retry: RetryWithJitter::new().max_attempts(3).seed(11),
            budget: TokenBudget::new(Quota::per_minute(10_000, 10_000_000)),
            router,
            classify: ClassifyDashScopeError::new(),
        }
    }

    /// The one-call stack with these layers (its own router, made with a key of its own, is
    /// replaced: that key is searched for too).
    fn recommended(&self) -> RecommendedStack {
        RecommendedStack::new(Region::Beijing, KEY_WRONG)
            .fallback_layer(self.fallback.clone())
            .retry(self.retry.clone())
            .budget(self.budget.clone())
            .router(self.router.clone())
            .wait_timeout(Duration::from_secs(5))
            .classify(self.classify.clone())
    }

    fn stack(&self, inner: Inner) -> Stack {
        self.recommended().layer(inner)
    }
}

/// Singapore with its key, failing over to Virginia with its own.
fn router() -> RegionRouter {
    RegionRouter::new(Region::Singapore, KEY_INTL).failover(Region::Virginia, KEY_US)
}

/// A simulator that takes each key in its own region only.
fn simulator(plus: ModelConfig, max: ModelConfig) -> MockDashScope {
    MockDashScope::builder()
        .model("qwen-plus", plus)
        .model("qwen-max", max)
        .api_key_for_host(KEY_INTL, INTL)
        .api_key_for_host(KEY_US, US)
        .seed(5)
        .build()
}

fn chat(model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":16,"messages":[{{"role":"user","content":"hello there"}}]}}"#
    );
    Request::post(PATH)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Everything printed, to be searched at the end.
#[derive(Default)]
struct Printed(String);

impl Printed {
    fn debug(&mut self, what: &str, value: &impl Debug) {
        let _ = writeln!(self.0, "{what}: {value:?}");
        let _ = writeln!(self.0, "{what}: {value:#?}");
    }

    fn both(&mut self, what: &str, value: &(impl Debug + Display)) {
        self.debug(what, value);
        let _ = writeln!(self.0, "{what}: {value}");
        let _ = writeln!(self.0, "{what}: {value:#}");
    }

    fn error(&mut self, what: &str, err: &DashScopeError) {
        self.both(what, err);
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            let _ = writeln!(self.0, "{what} caused by: {cause} / {cause:?}");
            source = cause.source();
        }
        let _ = writeln!(self.0, "{what} advice: {}", err.advice());
    }

    /// Sends `req` through `service`, printing the future, the response, the body's end and
    /// every error; returns the class of the failure, if any.
    async fn drive<S, RB>(
        &mut self,
        what: &str,
        mut service: S,
        req: Request<Full<Bytes>>,
    ) -> Option<ErrorClass>
    where
        S: Service<Request<Full<Bytes>>, Response = http::Response<RB>, Error = DashScopeError>
            + Debug,
        S::Future: Debug,
        RB: http_body::Body<Error = DashScopeError> + Debug,
    {
        self.debug(&format!("{what} service"), &service);
        ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
            .await
            .unwrap();
        let future = service.call(req);
        self.debug(&format!("{what} future"), &future);
        let class = match future.await {
            Ok(response) => {
                self.debug(&format!("{what} response"), &response);
                let extensions = response.extensions();
                self.debug(
                    &format!("{what} served region"),
                    &extensions.get::<ServedRegion>(),
                );
                self.debug(
                    &format!("{what} served model"),
                    &extensions.get::<ServedModel>(),
                );
                self.debug(&format!("{what} attempts"), &extensions.get::<Attempts>());
                match response.into_body().collect().await {
                    Ok(body) => {
                        let _ = writeln!(self.0, "{what} body: {:?}", body.to_bytes());
                        None
                    }
                    Err(err) => {
                        self.error(&format!("{what} body error"), &err);
                        Some(err.class())
                    }
                }
            }
            Err(err) => {
                self.error(&format!("{what} error"), &err);
                Some(err.class())
            }
        };
        self.debug(&format!("{what} service after"), &service);
        class
    }
}

#[tokio::test(start_paused = true)]
async fn no_failure_path_of_the_full_stack_shows_a_key() {
    let (logs, _guard) = Capture::start();
    let mut out = Printed::default();
    let ok = || ModelConfig::new();

    // A wrong key: 401 from Singapore (no failover on a refused key).
    let mock = simulator(ok(), ok());
    let layers = Layers::new(RegionRouter::new(Region::Singapore, KEY_WRONG));
    let class = out
        .drive(
            "wrong key",
            layers.stack(RefuseHosts::new(mock)),
            chat("qwen-plus", false),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Authentication));

    // A Singapore key sent to Beijing.
    let mock = simulator(ok(), ok());
    let layers = Layers::new(RegionRouter::new(Region::Beijing, KEY_INTL));
    let class = out
        .drive(
            "wrong region",
            layers.stack(RefuseHosts::new(mock)),
            chat("qwen-plus", true),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Authentication));

    // Keys that do not fit the plan: refused locally, nothing sent.
    for (what, router) in [
        (
            "coding key on pay-as-you-go",
            RegionRouter::new(Region::Singapore, KEY_CODING),
        ),
        (
            "plain key on the Coding Plan",
            RegionRouter::new(Region::Singapore, KEY_INTL).plan(Plan::CodingPlan),
        ),
        (
            "unusable key",
            RegionRouter::new(Region::Singapore, format!("{KEY_INTL}\u{7}")),
        ),
    ] {
        if let Err(invalid) = router.validate() {
            out.both(&format!("{what} validate"), &invalid);
            let _ = writeln!(out.0, "{}: {}", invalid.message(), invalid.advice());
        }
        let mock = simulator(ok(), ok());
        let class = out
            .drive(
                what,
                Layers::new(router).stack(RefuseHosts::new(mock.clone())),
                chat("qwen-plus", false),
            )
            .await;
        assert_eq!(class, Some(ErrorClass::Authentication), "{what}");
        assert_eq!(mock.stats().requests, 0, "{what}: refused locally");
    }

    // 429s: the simulator takes one request a minute; retries, then the fallback.
    let mock = simulator(ok().rpm(1), ok().rpm(1));
    let layers = Layers::new(router());
    let stack = layers.stack(RefuseHosts::new(mock));
    for i in 0..4 {
        out.drive(&format!("429 #{i}"), stack.clone(), chat("qwen-max", false))
            .await;
    }

    // 503s everywhere: retried, fallen back, given up.
    let outage = || ok().outage(Duration::ZERO..Duration::from_secs(3600));
    let mock = simulator(outage(), outage());
    let class = out
        .drive(
            "503",
            Layers::new(router()).stack(RefuseHosts::new(mock)),
            chat("qwen-max", false),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Unavailable));

    // Failover: Singapore refuses connections; Virginia answers with its own key. Then both
    // refuse.
    let mock = simulator(ok(), ok());
    let inner = RefuseHosts::new(mock).refuse(INTL);
    let class = out
        .drive(
            "failover",
            Layers::new(router()).stack(inner.clone()),
            chat("qwen-plus", false),
        )
        .await;
    assert_eq!(class, None);
    let inner = inner.refuse(US);
    let class = out
        .drive(
            "no region left",
            Layers::new(router()).stack(inner),
            chat("qwen-plus", false),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Connection));

    // Fallback: qwen-max is down, qwen-plus serves (streamed).
    let mock = simulator(ok(), outage());
    let class = out
        .drive(
            "fallback",
            Layers::new(router()).stack(RefuseHosts::new(mock)),
            chat("qwen-max", true),
        )
        .await;
    assert_eq!(class, None);

    // A stream cut midway, after its first bytes reached the caller.
    let cut = || ok().cut_streams_after(4);
    let mock = simulator(cut(), cut());
    let class = out
        .drive(
            "stream cut",
            Layers::new(router()).stack(RefuseHosts::new(mock)),
            chat("qwen-plus", true),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::StreamInterrupted));

    // The budget refuses: one request a minute, waiting at most a second.
    let mut layers = Layers::new(router());
    layers.budget =
        TokenBudget::new(Quota::per_minute(1, 1_000_000)).max_wait(Duration::from_secs(1));
    // (With retries, the stack would wait out the refusal and succeed.)
    layers.retry = RetryWithJitter::new().max_attempts(1);
    let stack = layers.stack(RefuseHosts::new(simulator(ok(), ok())));
    out.drive("budget first", stack.clone(), chat("qwen-plus", false))
        .await;
    let class = out
        .drive("budget refusal", stack, chat("qwen-plus", false))
        .await;
    assert!(
        matches!(class, Some(ErrorClass::RateLimited(_))),
        "{class:?}"
    );

    // Timeouts: a first byte that never comes in time, a stream that stalls, a retry deadline.
    let slow = || ok().latency(Duration::from_secs(120), 1.0);
    let mut layers = Layers::new(router());
    layers.fallback =
        FallbackModel::new(["qwen-max", "qwen-plus"]).first_byte_timeout(Duration::from_secs(2));
    layers.retry = RetryWithJitter::new()
        .max_attempts(3)
        .deadline(Duration::from_secs(10))
        .seed(3);
    let class = out
        .drive(
            "first byte timeout",
            layers.stack(RefuseHosts::new(simulator(slow(), slow()))),
            chat("qwen-max", true),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Timeout));
    let mut layers = Layers::new(router());
    layers.classify = ClassifyDashScopeError::new().idle_timeout(Duration::from_millis(100));
    let stalls = || ok().latency(Duration::ZERO, 1.0);
    let class = out
        .drive(
            "idle timeout",
            layers.stack(RefuseHosts::new(simulator(stalls(), stalls()))),
            chat("qwen-plus", true),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Timeout));

    // The caller's own credentials (a gateway forwarding them) are replaced, not shown.
    let mut req = chat("qwen-plus", false);
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {KEY_WRONG}").parse().unwrap(),
    );
    let mock = simulator(ok(), ok());
    let class = out
        .drive(
            "caller's credentials",
            Layers::new(router()).stack(RefuseHosts::new(mock)),
            req,
        )
        .await;
    assert_eq!(class, None);

    let text = logs.text();
    assert!(
        logs.records()
            .iter()
            .any(|r| r.level == tracing::Level::TRACE),
        "TRACE was captured"
    );
    for expected in [
        "retrying after a delay",
        "fallback: switching model",
        "failing over to the next endpoint",
        "the key was refused",
        "giving up: TokenBudget has no room",
        "DashScope error classified",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    dump(&text, &out.0);
    assert_no_secret(&text, &[MARK]);
    assert_no_secret(&out.0, &[MARK]);
}

/// Over loopback HTTP with hyper-util's client: a refused key from the simulator's server, a
/// refused connection failed over, a connection reset after the request was sent; the real
/// client's errors are printed too.
#[tokio::test]
async fn no_failure_over_http_shows_a_key() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (logs, _guard) = Capture::start();
    let mut out = Printed::default();
    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .model("qwen-max", ModelConfig::new())
        .api_key(KEY_US)
        .build();
    let server = mock.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    out.debug("MockServer", &server);
    let served = Region::custom(&format!("http://{}", server.local_addr())).unwrap();
    // A port nothing listens on.
    let refused = Region::custom(&format!("http://{}", loopback::closed_port().await)).unwrap();
    // A server that reads each whole request and hangs up without answering.
    let resetting = Region::custom(&format!("http://{}", loopback::resetting().await)).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = |router: RegionRouter| {
        let layers = Layers::new(router);
        ServiceBuilder::new()
            .layer(layers.fallback)
            .layer(
                RetryWithJitter::new()
                    .max_attempts(2)
                    .base_delay(Duration::from_millis(1)),
            )
            .layer(layers.budget)
            .layer(layers.router)
            .layer(WaitTimeoutHeader::new(Duration::from_secs(5)))
            .layer(layers.classify)
            .service(client.clone())
    };

    let class = out
        .drive(
            "http wrong key",
            stack(RegionRouter::new(served.clone(), KEY_WRONG)),
            chat("qwen-plus", false),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Authentication));
    let class = out
        .drive(
            "http failover",
            stack(RegionRouter::new(refused.clone(), KEY_INTL).failover(served.clone(), KEY_US)),
            chat("qwen-plus", true),
        )
        .await;
    assert_eq!(class, None);
    let class = out
        .drive(
            "http refused",
            stack(RegionRouter::new(refused, KEY_INTL)),
            chat("qwen-plus", false),
        )
        .await;
    assert_eq!(class, Some(ErrorClass::Connection));
    let class = out
        .drive(
            "http reset",
            stack(RegionRouter::new(resetting, KEY_INTL).failover(served, KEY_US)),
            chat("qwen-plus", false),
        )
        .await;
    // Not failed over (it may have been sent), but retried: on the endpoint still healthy.
    assert_eq!(class, None);
    assert!(mock.stats().requests >= 2);

    let text = logs.text();
    for expected in [
        "failing over to the next endpoint",
        "the key was refused",
        "giving up: not failing over",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    dump(&text, &out.0);
    assert_no_secret(&text, &[MARK]);
    assert_no_secret(&out.0, &[MARK]);
}

#[test]
fn no_public_type_shows_a_key_in_debug_or_display() {
    let (logs, _guard) = Capture::start();
    let mut out = Printed::default();

    let key = ApiKey::new(KEY_INTL);
    out.both("ApiKey", &key);
    out.both("ApiKey coding", &ApiKey::new(KEY_CODING));

    let router = router().failover(Region::HongKong, KEY_CODING).failover(
        Region::custom("http://127.0.0.1:1/gateway").unwrap(),
        KEY_WRONG,
    );
    out.debug("RegionRouter", &router);
    if let Err(invalid) = router.validate() {
        out.both("InvalidRouter", &invalid);
    }
    for region in router.regions() {
        out.both("Region", region);
    }
    // A base URL with credentials in it is refused without repeating them.
    for url in [
        format!("https://user:{KEY_INTL}@example.com/v1"),
        format!("https://{KEY_INTL}@example.com"),
        format!("https://example.com/v1?key={KEY_INTL}"),
    ] {
        match Region::custom(&url) {
            Ok(region) => out.both("Region::custom", &region),
            Err(invalid) => out.both("InvalidRegion", &invalid),
        }
    }

    let mock = MockDashScope::builder()
        .model("qwen-plus", ModelConfig::new())
        .api_key(KEY_WRONG)
        .api_key_for_host(KEY_INTL, INTL)
        .api_key_for_plan(&Region::Singapore, Plan::CodingPlan, KEY_CODING);
    out.debug("MockBuilder", &mock);
    let mock = mock.build();
    out.debug("MockDashScope", &mock);
    out.debug("MockStats", &mock.stats());

    let layers = Layers::new(router.clone());
    out.debug("layers", &layers);
    out.debug("RecommendedStack", &layers.recommended());
    out.debug(
        "RecommendedStack::new",
        &RecommendedStack::new(Region::Singapore, KEY_INTL)
            .failover(Region::Virginia, KEY_US)
            .fallback(["qwen-max", "qwen-plus"])
            .quota(Quota::per_minute(60, 100_000)),
    );
    let stack = layers.stack(RefuseHosts::new(mock.clone()));
    out.debug("stack", &stack);
    out.debug(
        "RegionRouterService",
        &router.layer(ClassifyDashScopeError::new().layer(mock.clone())),
    );
    out.debug(
        "TokenBudget with a store",
        &TokenBudget::new(Quota::per_minute(1, 1)).store(LocalStore::new()),
    );
    out.debug("LocalStore", &LocalStore::new());
    out.debug("Quota", &Quota::per_minute(1, 1));
    out.debug("UsageSlot", &UsageSlot::new());
    out.debug(
        "ModelConfig",
        &ModelConfig::new()
            .rpm(1)
            .retry_after(Duration::from_secs(1)),
    );
    out.debug(
        "BufferRequestBody",
        &tower_dashscope::body::BufferRequestBody::new(1024).layer(mock.clone()),
    );
    #[cfg(feature = "redis")]
    {
        use tower_dashscope::budget::RedisStore;
        for url in [
            format!("redis://:{KEY_INTL}@127.0.0.1:1/0"),
            format!("redis://user:{KEY_INTL}@127.0.0.1:1/0"),
            // A Unix socket takes its password in the query.
            format!("redis+unix:///tmp/redis.sock?db=1&pass={KEY_INTL}"),
            format!("unix:///tmp/redis.sock?pass={KEY_INTL}"),
            // Passwords holding what ends a URL's parts, then malformed URLs.
            format!("redis://:pa?ss{KEY_INTL}@127.0.0.1:1/0"),
            format!("redis://:{KEY_INTL}#x@127.0.0.1:1/0"),
            format!("redis://:{KEY_INTL}@127.0.0.1:notaport/0"),
            format!("rediss://user:{KEY_INTL}@[::1/0"),
            format!("nosuch://:{KEY_INTL}@host/0"),
        ] {
            match RedisStore::new(&url) {
                Ok(store) => out.debug("RedisStore", &store),
                Err(err) => out.both("RedisStoreError", &err),
            }
        }
    }

    let text = logs.text();
    dump(&text, &out.0);
    assert_no_secret(&text, &[MARK]);
    assert_no_secret(&out.0, &[MARK]);
    // The check can fail: the key itself is found where it is, in text or in an event.
    assert!(std::panic::catch_unwind(|| assert_no_secret(key.expose(), &[MARK])).is_err());
    drop(_guard);
    let (leaky, _guard) = Capture::start();
    tracing::trace!(key = key.expose(), "a leak");
    let leaked = leaky.text();
    assert!(std::panic::catch_unwind(|| assert_no_secret(&leaked, &[MARK])).is_err());
}

/// `SECRETS_DUMP=path` appends what was searched to `path`, to read it.
fn dump(logs: &str, printed: &str) {
    if let Some(path) = std::env::var_os("SECRETS_DUMP") {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{logs}\n{printed}").unwrap();
    }
}
