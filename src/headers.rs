//! The header names DashScope and compatible endpoints use, in one place.
//!
//! Every layer, the classifier and the simulator take their header names from here.
//!
//! ```
//! use http::Request;
//! use tower_dashscope::headers::{X_DASHSCOPE_SSE, X_DASHSCOPE_WAIT_TIMEOUT};
//!
//! let request = Request::post("https://dashscope-intl.aliyuncs.com/api/v1/services/aigc/text-generation/generation")
//!     .header(X_DASHSCOPE_SSE, "enable")
//!     .header(X_DASHSCOPE_WAIT_TIMEOUT, "30")
//!     .body(())
//!     .unwrap();
//! assert_eq!(request.headers()["x-dashscope-sse"], "enable");
//! ```

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-DashScope-Wait-Timeout: <integer seconds>`: asks the server to queue a burst-throttled
/// request instead of answering 429 (see [`WaitTimeoutHeader`](crate::WaitTimeoutHeader)).
pub const X_DASHSCOPE_WAIT_TIMEOUT: HeaderName =
    HeaderName::from_static("x-dashscope-wait-timeout");

/// `X-DashScope-SSE: enable`: asks the native API for an event stream.
pub const X_DASHSCOPE_SSE: HeaderName = HeaderName::from_static("x-dashscope-sse");

/// `X-DashScope-Async: enable`: asks for an asynchronous task (some models take only these).
pub const X_DASHSCOPE_ASYNC: HeaderName = HeaderName::from_static("x-dashscope-async");

/// `X-DashScope-WorkSpace: <id>`: the workspace a request is billed to.
pub const X_DASHSCOPE_WORKSPACE: HeaderName = HeaderName::from_static("x-dashscope-workspace");

/// `X-DashScope-DataInspection`: moderation settings for the request.
pub const X_DASHSCOPE_DATA_INSPECTION: HeaderName =
    HeaderName::from_static("x-dashscope-datainspection");

/// `x-request-id`: the response's request id, equal to the body's `request_id` (OpenAI's SDKs
/// read it).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `request-id`: the response's request id as Anthropic's SDKs read it.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// The response's request id header: [`X_REQUEST_ID`], else [`REQUEST_ID`].
pub(crate) fn request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers
        .get(X_REQUEST_ID)
        .or_else(|| headers.get(REQUEST_ID))
}

/// `retry-after-ms` (milliseconds, fractional allowed), sent by some OpenAI-style gateways.
pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// `x-api-key`: the key header of Anthropic's SDKs (the Anthropic-compatible endpoint also takes
/// `Authorization: Bearer`).
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// `anthropic-version`: sent by Anthropic's SDKs.
pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
