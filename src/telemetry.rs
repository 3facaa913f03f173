//! What the layers log: every `tracing` span and event, its level and its fields, in tables.
//!
//! Every layer emits a [`tracing`] event wherever it decides something: a failure classified, a
//! retry scheduled or given up, a request waiting for its budget or refused by it, a model
//! switched, cooled down or probed, a region failed over or back, a header set. Field names
//! follow the [OpenTelemetry semantic conventions for generative AI][genai] where one exists
//! (`gen_ai.request.model`, `gen_ai.usage.input_tokens`, `error.type`, …) and are
//! `dashscope.*` otherwise, so that a log pipeline or an OpenTelemetry exporter
//! (`tracing-opentelemetry`) can index them as they are.
//!
//! # Levels
//!
//! - **WARN**: the layer gives up — returns a failure it could not avoid (retries exhausted,
//!   no fallback model left, a budget refusal, a key refused, no region left) — or works in a
//!   degraded way (a Redis budget unavailable).
//! - **INFO**: a decision that changes what happens to a request: a retry after a delay, a
//!   model cooled down or switched, a failover, an endpoint unhealthy or healthy again, a
//!   model's rates lowered after 429s.
//! - **DEBUG**: every classified failure, every routed request, a budget wait and its
//!   admission, a settle with the usage, probes, the header set. The success path logs nothing
//!   above DEBUG.
//! - **TRACE**: per frame of a response body (`DashScope stream frame`), the usage seen in a
//!   body, an admission without waiting.
//!
//! With the level off, an event costs one comparison: no field is formatted and nothing is
//! allocated (`tests/success_path_allocations.rs` checks this for the six-layer stack with a
//! subscriber at INFO). No event or field ever holds an API key (`tests/secrets.rs`).
//!
//! # Seeing them
//!
//! Install a subscriber, for example `tracing-subscriber`'s `fmt` with an `EnvFilter`, and
//! choose the level with `RUST_LOG`:
//!
//! ```
//! use tracing_subscriber::EnvFilter;
//!
//! // `RUST_LOG` if set, else the layers' decisions at INFO and above.
//! let filter = EnvFilter::try_from_default_env()
//!     .unwrap_or_else(|_| EnvFilter::new("tower_dashscope=info"));
//! tracing_subscriber::fmt().with_env_filter(filter).init();
//! ```
//!
//! `RUST_LOG=tower_dashscope=debug` adds the routine decisions; `tower_dashscope::retry=debug`
//! narrows them to one layer (the targets are the modules below).
//!
//! # Spans
//!
//! Two DEBUG spans give the events of one request a context (a subscriber prints them as
//! `dashscope.fallback{gen_ai.request.model="qwen-max"}:dashscope.retry{attempt=2}: …`):
//!
//! | Span | Layer | Fields |
//! |---|---|---|
//! | `dashscope.fallback` | [`FallbackModel`](crate::FallbackModel), for a request of one of its chains | `gen_ai.request.model`; `gen_ai.response.model` once a model answered |
//! | `dashscope.retry` | [`RetryWithJitter`](crate::RetryWithJitter), every request | `attempt`, recorded anew at each attempt |
//!
//! Below a [`FallbackModel`](crate::FallbackModel) (or any layer that parsed the request), the
//! retry's and the router's events also carry `gen_ai.request.model`.
//!
//! # Fields
//!
//! | Field | Meaning | Events |
//! |---|---|---|
//! | `gen_ai.request.model` | The model a request asked for, or the model a decision is about | budget, fallback; retry and router below a fallback |
//! | `gen_ai.response.model` | The model that served the request | fallback: served by a fallback model |
//! | `gen_ai.usage.input_tokens` | Input tokens the response reported | budget settled, usage reported |
//! | `gen_ai.usage.output_tokens` | Output tokens the response reported | budget settled, usage reported |
//! | `gen_ai.usage.total_tokens` | Tokens the response reported in all (input and output) | usage above a minute of the quota |
//! | `error.type` | The [`ErrorClass`](crate::ErrorClass), snake case ([`ErrorClass::as_str`](crate::ErrorClass::as_str)): `rate_limited_requests`, `unavailable`, … | every failure |
//! | `error` | The error's `Display` (message and advice) | classified, giving up after an inner failure |
//! | `http.response.status_code` | The HTTP status of the failed response | classified, retrying, giving up, key refused |
//! | `server.address` | The Redis address, credentials and query removed | Redis budget |
//! | `dashscope.code` | The error code DashScope sent (`Throttling.RateQuota`, `limit_requests`, …) | classified, retrying |
//! | `dashscope.request_id` | The request id DashScope sent, to quote to support | classified, retrying |
//! | `dashscope.region` | The region id (`ap-southeast-1`, …) or custom base URL of the endpoint | router |
//! | `dashscope.failover.region` | The endpoint failed over to | failing over, not failing over |
//! | `dashscope.delivery` | Whether the failed request reached the server: `not sent`, `maybe sent` | failing over, not failing over |
//! | `dashscope.plan`, `dashscope.api` | The endpoint's plan and the request's API | routing request |
//! | `dashscope.fallback.model` | The model a fallback switches to | switching model |
//! | `dashscope.fallback.tried` | The models tried, in order | no fallback model left |
//! | `dashscope.fallback.probe` | The attempt is a fallback's probe of a model after its cooldown | retry: not retrying |
//! | `dashscope.context_window`, `dashscope.request_tokens` | A model's declared window and the request's estimated need | context-window fallback |
//! | `dashscope.budget.tokens` | Tokens reserved for the request | admitted, settled |
//! | `dashscope.budget.max_wait_ms` | The budget's `max_wait` | budget refusal |
//! | `dashscope.budget.debt_tokens` | Usage above the reservation, carried as debt | usage above the estimate |
//! | `dashscope.budget.request_factor`, `dashscope.budget.token_factor` | The adaptive rate factors after a 429 (1.0 = the quota) | rates lowered |
//! | `dashscope.wait_timeout_s` | The `X-DashScope-Wait-Timeout` value sent | header set |
//! | `attempt` | Which attempt (1 = the first) the event is about | retry, router |
//! | `delay_ms` | The backoff before the next attempt | retrying after a delay |
//! | `wait_ms` | How long a request waits (or would wait, or waited) | budget, fallback |
//! | `cooldown_ms` | How long a model or an endpoint stays out of rotation | cooling down, unhealthy |
//! | `renewed` | A cooling model's cooldown was extended | cooling down |
//! | `reason` | Why a retry is not made | giving up: not retrying |
//! | `phase` | Where a failure was found: `transport`, `error response`, `stream before its first event`, `stream` | classified |
//! | `bytes` | The frame's size | stream frame |
//!
//! # Events
//!
//! | Level | Target | Message | Fields |
//! |---|---|---|---|
//! | DEBUG | `classify` | DashScope error classified | `phase`, `error.type`, `http.response.status_code`, `dashscope.code`, `dashscope.request_id`, `error` |
//! | TRACE | `classify` | DashScope stream frame | `bytes` |
//! | TRACE | `classify` | DashScope usage reported | `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens` |
//! | INFO | `retry` | retrying after a delay | `gen_ai.request.model`, `error.type`, `http.response.status_code` or `dashscope.code` and `dashscope.request_id`, `attempt`, `delay_ms` |
//! | DEBUG | `retry` | not retrying: a fallback model takes the request (rate-limited, or a fallback's probe) | `attempt`, `dashscope.fallback.probe` |
//! | DEBUG | `retry` | not retrying; the fallback above has another model | as giving up: not retrying |
//! | WARN | `retry` | giving up: not retrying | `gen_ai.request.model`, `error.type`, `http.response.status_code`, `attempt`, `reason` |
//! | WARN | `retry` | giving up: the deadline passed while waiting for the inner service … | `attempt` |
//! | WARN | `retry` | giving up: the inner service failed before a retry … | `error.type`, `error`, `attempt` |
//! | DEBUG | `wait_timeout` | X-DashScope-Wait-Timeout set | `dashscope.wait_timeout_s` |
//! | DEBUG | `budget` | TokenBudget: no room yet; waiting | `gen_ai.request.model`, `wait_ms` |
//! | DEBUG | `budget` | TokenBudget: admitted after waiting | `gen_ai.request.model`, `wait_ms`, `dashscope.budget.tokens` |
//! | TRACE | `budget` | TokenBudget: admitted | `gen_ai.request.model`, `dashscope.budget.tokens` |
//! | DEBUG | `budget` | TokenBudget: settled with the reported usage | `gen_ai.request.model`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`, `dashscope.budget.tokens` |
//! | DEBUG | `budget` | TokenBudget: usage above the estimate, carried as debt | `gen_ai.request.model`, `dashscope.budget.debt_tokens` |
//! | WARN | `budget` | TokenBudget: usage reported above a minute of the quota; owing only a minute's worth | `gen_ai.request.model`, `gen_ai.usage.total_tokens`, `dashscope.budget.debt_tokens` |
//! | INFO | `budget` | TokenBudget: the server refuses tokens the budget had room for; reserving answers' expected output before sending from now on | `gen_ai.request.model`, `dashscope.budget.token_refusals` |
//! | INFO | `budget` | TokenBudget: the server throttled; lowering this model's rates | `gen_ai.request.model`, `error.type`, `dashscope.budget.request_factor`, `dashscope.budget.token_factor` |
//! | WARN | `budget` | giving up: TokenBudget has no room within max_wait … | `gen_ai.request.model`, `error.type`, `wait_ms`, `dashscope.budget.max_wait_ms` |
//! | WARN | `budget` | giving up: the budget store failed / did not answer within max_wait … | `gen_ai.request.model`, `error.type`, `error` or `wait_ms` |
//! | WARN | `budget` | TokenBudget: every tracked model is busy … | `gen_ai.request.model`, `max_models` |
//! | WARN, INFO | `budget::redis` | TokenBudget: the budget in Redis is unavailable … / Redis answers again | `server.address`, `error`, `retry_every_ms`, `replicas`, `prefix` |
//! | WARN | `budget::redis` | TokenBudget: too many settles are waiting for Redis; this one is dropped … / a settle for the Redis budget was made outside a tokio runtime … | `gen_ai.request.model`, `max_pending_settles` |
//! | DEBUG | `budget::redis` | TokenBudget: a settle could not be sent to Redis and is dropped | `gen_ai.request.model`, `error` |
//! | INFO | `fallback` | fallback: model cooling down | `gen_ai.request.model`, `error.type`, `cooldown_ms`, `renewed` |
//! | INFO | `fallback` | fallback: switching model | `gen_ai.request.model`, `dashscope.fallback.model`, `error.type` |
//! | DEBUG | `fallback` | fallback: served by a fallback model | `gen_ai.request.model`, `gen_ai.response.model` |
//! | DEBUG | `fallback` | fallback: skipping a model that is cooling down | `gen_ai.request.model`, `wait_ms` |
//! | DEBUG | `fallback` | fallback: every model left is cooling down; waiting … | `wait_ms` |
//! | DEBUG | `fallback` | fallback: probing the model after its cooldown / probe failed | `gen_ai.request.model` |
//! | INFO | `fallback` | fallback: probe answered; the model is back in rotation | `gen_ai.request.model` |
//! | WARN | `fallback` | fallback: chain longer than [`MAX_CHAIN`](crate::fallback::MAX_CHAIN) models; ignoring the rest (when the layer is built) | `gen_ai.request.model` |
//! | DEBUG | `fallback` | fallback: skipping a model whose context window cannot take the request | `gen_ai.request.model`, `dashscope.context_window`, `dashscope.request_tokens` |
//! | WARN | `fallback` | giving up: no fallback model left to try | `gen_ai.request.model`, `error.type`, `dashscope.fallback.tried` |
//! | WARN | `fallback` | giving up: no fallback model's declared context window fits the request | `gen_ai.request.model`, `dashscope.request_tokens` |
//! | WARN | `fallback` | giving up: the inner service failed before the next fallback attempt | `error.type`, `error` |
//! | DEBUG | `router` | routing request | `dashscope.region`, `dashscope.plan`, `dashscope.api`, `attempt` |
//! | INFO | `router` | failing over to the next endpoint | `gen_ai.request.model`, `dashscope.region`, `dashscope.failover.region`, `error.type`, `dashscope.delivery` |
//! | INFO | `router` | endpoint unhealthy after a connection-level failure | `dashscope.region`, `cooldown_ms` |
//! | DEBUG | `router` | probing an endpoint after its cooldown / endpoint still unhealthy | `dashscope.region` |
//! | INFO | `router` | endpoint healthy again | `dashscope.region` |
//! | WARN | `router` | the key was refused; it may belong to another region or plan … | `gen_ai.request.model`, `dashscope.region`, `error.type` or `http.response.status_code` |
//! | WARN | `router` | giving up: not failing over, the request may have reached the server | `gen_ai.request.model`, `dashscope.region`, `dashscope.failover.region`, `error.type`, `dashscope.delivery` |
//! | WARN | `router` | giving up: no endpoint left to fail over to | `gen_ai.request.model`, `dashscope.region`, `error.type` |
//! | WARN | `router` | giving up: the inner service failed before a failover … | `error.type`, `error` |
//!
//! Targets are the modules under `tower_dashscope::` (`tower_dashscope::retry::future`, …); the
//! table names them by layer. Messages are for people and may be reworded; fields are the
//! stable part.
//!
//! [genai]: https://opentelemetry.io/docs/specs/semconv/gen-ai/
