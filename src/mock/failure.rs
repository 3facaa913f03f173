//! The error catalogue: every error the simulator sends, by name, and how each API shapes it.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::body::MockBody;
use super::fault::AnthropicErrorShape;
use crate::api::Api;
use crate::headers::{REQUEST_ID, X_REQUEST_ID};

/// One error answer, in the shape of the API it answers.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    /// The native `code`.
    pub(crate) native_code: &'static str,
    /// The OpenAI-compatible `error.code`.
    pub(crate) compat_code: &'static str,
    /// The OpenAI-compatible `error.type`: the code, except where DashScope sends another.
    pub(crate) compat_type: &'static str,
    /// The Anthropic-compatible `error.type`.
    pub(crate) anthropic_type: &'static str,
    pub(crate) message: Cow<'static, str>,
    /// The OpenAI-compatible message, where it differs from the native one.
    pub(crate) compat_message: Option<&'static str>,
}

impl Failure {
    fn new(
        status: StatusCode,
        native_code: &'static str,
        compat_code: &'static str,
        anthropic_type: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Failure {
            status,
            native_code,
            compat_code,
            compat_type: compat_code,
            anthropic_type,
            message: message.into(),
            compat_message: None,
        }
    }

    /// 400 `InvalidParameter` / `invalid_parameter_error`: bad input.
    pub(crate) fn invalid_parameter(message: impl Into<Cow<'static, str>>) -> Self {
        Failure {
            compat_type: "invalid_request_error",
            ..Failure::new(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "invalid_parameter_error",
                "invalid_request_error",
                message,
            )
        }
    }

    /// 400 "Range of input length should be [1, N]": the context window.
    pub(crate) fn context_overflow(window: u32) -> Self {
        Failure::invalid_parameter(format!(
            "<400> InternalError.Algo.InvalidParameter: Range of input length should be [1, {window}]"
        ))
    }

    /// 400 "Range of max_tokens should be [1, N]".
    pub(crate) fn max_tokens_out_of_range(max: u32) -> Self {
        Failure::invalid_parameter(format!(
            "<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, {max}]"
        ))
    }

    /// 401 `InvalidApiKey` / `invalid_api_key`: a wrong key, or one of another region or plan.
    /// The compatible body is DashScope's own: type `invalid_request_error`, "Incorrect API key
    /// provided. …".
    pub(crate) fn invalid_api_key() -> Self {
        Failure {
            compat_type: "invalid_request_error",
            compat_message: Some(
                "Incorrect API key provided. For details, see: https://www.alibabacloud.com/help/en/model-studio/error-code#apikey-error",
            ),
            ..Failure::new(
                StatusCode::UNAUTHORIZED,
                "InvalidApiKey",
                "invalid_api_key",
                "authentication_error",
                "Invalid API-key provided.",
            )
        }
    }

    /// 404 `ModelNotFound` / `model_not_found`.
    pub(crate) fn model_not_found(model: &str) -> Self {
        Failure::new(
            StatusCode::NOT_FOUND,
            "ModelNotFound",
            "model_not_found",
            "not_found_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
    }

    /// 403 `AllocationQuota.FreeTierOnly`: the free quota is gone.
    pub(crate) fn free_tier_only() -> Self {
        Failure::new(
            StatusCode::FORBIDDEN,
            "AllocationQuota.FreeTierOnly",
            "AllocationQuota.FreeTierOnly",
            "billing_error",
            "The free tier of the model has been exhausted. If you want to continue access the model on a paid basis, please disable the \"use free tier only\" mode.",
        )
    }

    /// 400 `Arrearage`: the account is overdue.
    pub(crate) fn arrearage() -> Self {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "Arrearage",
            "Arrearage",
            "billing_error",
            "Access denied, please make sure your account is in good standing.",
        )
    }

    /// 503 `ModelUnavailable`.
    pub(crate) fn model_unavailable() -> Self {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ModelUnavailable",
            "ServiceUnavailable",
            "overloaded_error",
            "Model is unavailable, please try again later.",
        )
    }

    /// 400 `DataInspectionFailed` for the input.
    pub(crate) fn input_inspection_failed() -> Self {
        Failure {
            compat_type: "invalid_request_error",
            ..Failure::new(
                StatusCode::BAD_REQUEST,
                "DataInspectionFailed",
                "data_inspection_failed",
                "invalid_request_error",
                "Input data may contain inappropriate content.",
            )
        }
    }

    /// 400 `DataInspectionFailed` for the output (sent inside a stream that had started).
    pub(crate) fn output_inspection_failed() -> Self {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "DataInspectionFailed",
            "data_inspection_failed",
            "invalid_request_error",
            "Output data may contain inappropriate content.",
        )
    }

    /// 500 `InternalError` (DashScope's own spelling, "occured").
    pub(crate) fn internal_error() -> Self {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal_error",
            "api_error",
            "An internal error has occured, try again later or contact service support.",
        )
    }

    /// 429 `Throttling.RateQuota` / `limit_requests`: requests per minute.
    pub(crate) fn rate_quota() -> Self {
        Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttling.RateQuota",
            "limit_requests",
            "rate_limit_error",
            "Requests rate limit exceeded, please try again later.",
        )
    }

    /// 429 `Throttling.AllocationQuota` / `insufficient_quota`: tokens per minute.
    pub(crate) fn allocation_quota() -> Self {
        Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttling.AllocationQuota",
            "insufficient_quota",
            "rate_limit_error",
            "Allocated quota exceeded, please increase your quota limit.",
        )
    }

    /// 429 `Throttling.BurstRate` / `limit_burst_rate`: the growth-rate limit.
    pub(crate) fn burst_rate() -> Self {
        Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttling.BurstRate",
            "limit_burst_rate",
            "rate_limit_error",
            "Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time.",
        )
    }

    fn message_for(&self, api: Api) -> &str {
        match (api, self.compat_message) {
            (Api::OpenAiCompatible, Some(message)) => message,
            _ => &self.message,
        }
    }

    /// The native body: `{"code", "message", "request_id"}`.
    pub(crate) fn native_json(&self, request_id: &str) -> Value {
        json!({
            "code": self.native_code,
            "message": self.message,
            "request_id": request_id,
        })
    }

    /// The OpenAI-compatible body: `{"error": {…}, "id", "request_id"}`.
    pub(crate) fn compat_json(&self, request_id: &str) -> Value {
        json!({
            "error": {
                "message": self.message_for(Api::OpenAiCompatible),
                "type": self.compat_type,
                "param": null,
                "code": self.compat_code,
            },
            "id": format!("chatcmpl-{request_id}"),
            "request_id": request_id,
        })
    }

    /// Anthropic's body: `{"type": "error", "error": {"type", "message": "<NNN> Code: …"}}`.
    pub(crate) fn anthropic_json(&self, request_id: &str) -> Value {
        json!({
            "type": "error",
            "error": {
                "type": self.anthropic_type,
                "message": if self.message.starts_with('<') {
                    self.message.to_string()
                } else {
                    format!("<{}> {}: {}", self.status.as_u16(), self.native_code, self.message)
                },
            },
            "request_id": request_id,
        })
    }

    pub(crate) fn json(&self, api: Api, request_id: &str, shapes: Shapes) -> Value {
        match (api, shapes.anthropic) {
            (Api::Native, _) | (Api::Anthropic, AnthropicErrorShape::Native) => {
                self.native_json(request_id)
            }
            (Api::Anthropic, AnthropicErrorShape::Anthropic) => self.anthropic_json(request_id),
            _ => self.compat_json(request_id),
        }
    }

    /// The answer: a JSON error body, or for a native streaming request an HTTP 200 event
    /// stream with `event:error` and `:HTTP_STATUS/NNN`, as DashScope sends it (and, if
    /// `shapes` asks for it, for a compatible streaming 429 too).
    pub(crate) fn respond(
        &self,
        api: Api,
        stream: bool,
        request_id: &str,
        retry_after: Option<Duration>,
        shapes: Shapes,
    ) -> Response<MockBody> {
        let body = self.json(api, request_id, shapes);
        let mut builder = response_builder(api, request_id);
        if let Some(delay) = retry_after.filter(|_| self.status == StatusCode::TOO_MANY_REQUESTS) {
            builder = builder.header(
                http::header::RETRY_AFTER,
                format!("{:.3}", delay.as_secs_f64()),
            );
        }
        let response = if api == Api::Native && stream {
            builder
                .status(StatusCode::OK)
                .header(
                    http::header::CONTENT_TYPE,
                    "text/event-stream;charset=UTF-8",
                )
                .header("x-dashscope-finished", "true")
                .body(MockBody::full(native_error_frame(1, self.status, &body)))
        } else if api == Api::OpenAiCompatible
            && stream
            && shapes.compat_stream_throttle_as_event
            && self.status == StatusCode::TOO_MANY_REQUESTS
        {
            let frame = format!(
                "event:error\n:HTTP_STATUS/{}\ndata:{body}\n\n",
                self.status.as_u16()
            );
            builder
                .status(StatusCode::OK)
                .header(
                    http::header::CONTENT_TYPE,
                    "text/event-stream;charset=UTF-8",
                )
                .body(MockBody::full(frame))
        } else {
            builder
                .status(self.status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(MockBody::full(body.to_string()))
        };
        response.unwrap_or_else(|_| Response::new(MockBody::full(Bytes::new())))
    }
}

/// How error bodies are shaped where DashScope has been seen to vary
/// ([`MockBuilder`](super::MockBuilder) options).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Shapes {
    pub(crate) anthropic: AnthropicErrorShape,
    pub(crate) compat_stream_throttle_as_event: bool,
}

/// A response builder with the request id headers of `api`: `x-request-id`, and on the
/// Anthropic-compatible endpoint also `request-id` (what Anthropic's SDKs read).
pub(crate) fn response_builder(api: Api, request_id: &str) -> http::response::Builder {
    let builder = Response::builder().header(X_REQUEST_ID, request_id);
    if api == Api::Anthropic {
        builder.header(REQUEST_ID, request_id)
    } else {
        builder
    }
}

/// A native `event:error` frame: `id:N`, `event:error`, `:HTTP_STATUS/NNN`, `data:{…}`.
pub(crate) fn native_error_frame(id: u32, status: StatusCode, body: &Value) -> String {
    format!(
        "id:{id}\nevent:error\n:HTTP_STATUS/{}\ndata:{body}\n\n",
        status.as_u16()
    )
}
