//! [`MockBuilder`]: models, keys and the seed of a simulator.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::MockDashScope;
use super::failure::Shapes;
use super::fault::AnthropicErrorShape;
use super::keys::{ApiKey, Keys};
use super::model::ModelConfig;
use super::plan::{CodingPlan, TokenPlan};
use super::server::DEFAULT_HEADER_READ_TIMEOUT;
use super::service::{Plans, Shared};
use crate::api::{Plan, Region};

/// 2026-01-01 00:00:00 UTC.
const DEFAULT_EPOCH: u64 = 1_767_225_600;

/// Builds a [`MockDashScope`].
#[must_use]
pub struct MockBuilder {
    models: BTreeMap<String, ModelConfig>,
    keys: Keys,
    seed: u64,
    header_read_timeout: Duration,
    shapes: Shapes,
    plans: Plans,
}

impl Default for MockBuilder {
    fn default() -> Self {
        MockBuilder {
            models: BTreeMap::new(),
            keys: Keys::default(),
            seed: 0,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shapes: Shapes::default(),
            plans: Plans {
                epoch: DEFAULT_EPOCH,
                ..Plans::default()
            },
        }
    }
}

impl fmt::Debug for MockBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are secrets, even test ones: only their number is shown.
        f.debug_struct("MockBuilder")
            .field("models", &self.models)
            .field("keys", &self.keys.len())
            .field("seed", &self.seed)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("shapes", &self.shapes)
            .field("plans", &self.plans)
            .finish()
    }
}

impl MockBuilder {
    /// Serves `name` with `config`. Requests for models not configured get 404
    /// `ModelNotFound`.
    pub fn model(mut self, name: impl Into<String>, config: ModelConfig) -> Self {
        self.models.insert(name.into(), config);
        self
    }

    /// Accepts only `Authorization: Bearer <key>` (the scheme in any case; on the
    /// Anthropic-compatible path also `x-api-key: <key>`) with one of the keys given this way
    /// or with [`api_key_for_host`](Self::api_key_for_host) (any key, or none, when neither is
    /// called). Others get 401 `InvalidApiKey`, as a key from another region or plan does.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.keys.0.push(ApiKey::anywhere(key.into()));
        self
    }

    /// Accepts `key` only on requests for `host` — the request URI's host, or else its `Host`
    /// header, compared without the port and ignoring case — as DashScope accepts a key only
    /// in its own region and plan: a Singapore key sent to Beijing, or a Coding Plan key
    /// (`sk-sp-…`) sent to a pay-as-you-go host, gets 401 `InvalidApiKey`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::Request;
    /// use http_body_util::Full;
    /// use tower::{Layer, ServiceExt};
    /// use tower_dashscope::mock::{MockDashScope, ModelConfig};
    /// use tower_dashscope::{ClassifyDashScopeError, ErrorClass};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mock = MockDashScope::builder()
    ///     .model("qwen-plus", ModelConfig::new())
    ///     .api_key_for_host("sk-intl", "dashscope-intl.aliyuncs.com")
    ///     .build();
    /// let client = ClassifyDashScopeError::new().layer(mock);
    /// let chat = |host: &str| {
    ///     Request::post(format!("https://{host}/compatible-mode/v1/chat/completions"))
    ///         .header("authorization", "Bearer sk-intl")
    ///         .body(Full::new(Bytes::from(r#"{"model":"qwen-plus","messages":[]}"#)))
    ///         .unwrap()
    /// };
    /// assert!(client.clone().oneshot(chat("dashscope-intl.aliyuncs.com")).await.is_ok());
    /// let err = client.oneshot(chat("dashscope.aliyuncs.com")).await.unwrap_err();
    /// assert_eq!(err.class(), ErrorClass::Authentication);
    /// # }
    /// ```
    pub fn api_key_for_host(mut self, key: impl Into<String>, host: impl Into<String>) -> Self {
        self.keys.0.push(ApiKey::for_host(key.into(), &host.into()));
        self
    }

    /// Seeds the generator behind error and reset rates.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Accepts `key` only on the host of `plan` in `region` ([`Region::host`]): a Coding Plan
    /// key (`sk-sp-…`) on `coding-intl.dashscope.aliyuncs.com`, say. Where the table has no
    /// such host (Coding Plan in Virginia), the key is accepted nowhere.
    ///
    /// On a Coding Plan host of a simulator that serves the plan
    /// ([`coding_plan`](Self::coding_plan)), a refused key gets the plan's own 401, flat
    /// (`{"code":"invalid_api_key","message":"invalid access token or token expired"}`), nested
    /// under `error` on `/apps/anthropic`.
    pub fn api_key_for_plan(self, region: &Region, plan: Plan, key: impl Into<String>) -> Self {
        // No such host: a host no request can name.
        let host = region.host(plan).unwrap_or("no-such-host.invalid");
        self.api_key_for_host(key, host)
    }

    /// Serves the Coding Plan hosts with these plan-wide limits (requests there are also
    /// subject to each model's own configuration) and the plan's own answers: requests without
    /// a `User-Agent` get 405, refused keys the plan's 401. The plan has no native API (404),
    /// configured or not.
    pub fn coding_plan(mut self, plan: CodingPlan) -> Self {
        self.plans.coding = Some(plan);
        self
    }

    /// Serves the Token Plan hosts with these plan-wide limits.
    pub fn token_plan(mut self, plan: TokenPlan) -> Self {
        self.plans.token = Some(plan);
        self
    }

    /// The calendar time, in Unix seconds, that the simulator's start stands for: reset times
    /// in messages (Token Plan's) are told on this calendar.
    ///
    /// # Default
    ///
    /// 2026-01-01 00:00:00 UTC (`1_767_225_600`).
    pub fn epoch(mut self, unix_seconds: u64) -> Self {
        self.plans.epoch = unix_seconds;
        self
    }

    /// The shape of the Anthropic-compatible endpoint's error bodies; DashScope has been seen
    /// to send all three.
    ///
    /// # Default
    ///
    /// [`AnthropicErrorShape::Anthropic`].
    pub fn anthropic_error_shape(mut self, shape: AnthropicErrorShape) -> Self {
        self.shapes.anthropic = shape;
        self
    }

    /// Whether a 429 to an OpenAI-compatible *streaming* request is sent as an HTTP 200 event
    /// stream holding one `event:error` frame (`:HTTP_STATUS/429`, then the compatible error
    /// body), as it has been captured, rather than as an HTTP 429.
    ///
    /// # Default
    ///
    /// `false`: an HTTP 429.
    pub fn compat_stream_throttle_as_event(mut self, yes: bool) -> Self {
        self.shapes.compat_stream_throttle_as_event = yes;
        self
    }

    /// HTTP mode ([`MockDashScope::serve`]): how long a client may take to send a request's
    /// headers before its connection is closed. Zero is read as one millisecond.
    ///
    /// # Default
    ///
    /// [`DEFAULT_HEADER_READ_TIMEOUT`], 30 s.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The simulator. Its clock (outage windows, statistics) starts now.
    pub fn build(self) -> MockDashScope {
        MockDashScope {
            shared: Arc::new(Shared::new(
                Instant::now(),
                self.models,
                self.keys,
                self.seed,
                self.header_read_timeout,
                self.shapes,
                self.plans,
            )),
        }
    }
}
