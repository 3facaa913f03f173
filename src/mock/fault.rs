//! Scripted faults: the error shapes DashScope has been seen to send, on demand.

/// A fault a model can be scripted to show, with [`ModelConfig::fault`] (every request) or
/// [`ModelConfig::fault_rate`] (a seeded share of them).
///
/// Faults that answer with an error ([`EmptyThrottle`](Self::EmptyThrottle),
/// [`SseFramedErrorBody`](Self::SseFramedErrorBody)) are decided before the quotas and count as
/// failures; faults of the stream ([`ErrorMidStream`](Self::ErrorMidStream),
/// [`Stall`](Self::Stall), [`NoFirstByte`](Self::NoFirstByte)) hit admitted requests, which are
/// charged and counted as successes, as DashScope bills them.
///
/// [`ModelConfig::fault`]: super::ModelConfig::fault
/// [`ModelConfig::fault_rate`]: super::ModelConfig::fault_rate
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// A 429 with an empty body (and no `Retry-After`), on every API.
    EmptyThrottle,
    /// Native API: a 400 `InvalidParameter` whose body is an SSE frame
    /// (`id:1\nevent:error\n:HTTP_STATUS/400\ndata:{…}`) although its `content-type` says
    /// `application/json`. Other APIs get the 400 in their usual shape.
    SseFramedErrorBody,
    /// Streams fail after `after_tokens` tokens, in the shape of each API: the compatible
    /// `data: {"error":{…}}` chunk with no `finish_reason` after it, native `event:error` with
    /// `:HTTP_STATUS/NNN`, Anthropic `event: error`. Answers that do not stream are not
    /// affected.
    ErrorMidStream {
        /// Tokens sent before the error.
        after_tokens: u32,
        /// Which error.
        error: MidStreamError,
    },
    /// Streams stop sending after `after_tokens` tokens and stay open, silent, for ever. Answers
    /// that do not stream are not affected.
    Stall {
        /// Tokens sent before the silence.
        after_tokens: u32,
    },
    /// The answer's headers (HTTP 200) are sent, then nothing: the body never sends a byte.
    NoFirstByte,
}

/// The error of a [`Fault::ErrorMidStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MidStreamError {
    /// Moderation of the output: 400 `DataInspectionFailed` / `data_inspection_failed`,
    /// "Output data may contain inappropriate content."
    DataInspection,
    /// 500 `InternalError`.
    Internal,
    /// 429 `Throttling.RateQuota` / `limit_requests`.
    RateQuota,
}

impl Fault {
    /// Whether the fault is decided before the quotas (an error answer) rather than on an
    /// admitted stream.
    pub(crate) fn is_error_answer(self) -> bool {
        matches!(self, Fault::EmptyThrottle | Fault::SseFramedErrorBody)
    }
}

/// How the Anthropic-compatible endpoint shapes its error bodies
/// ([`MockBuilder::anthropic_error_shape`](super::MockBuilder::anthropic_error_shape)); all
/// three have been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AnthropicErrorShape {
    /// Anthropic's own: `{"type":"error","error":{"type":…,"message":"<NNN> Code: …"}}`.
    #[default]
    Anthropic,
    /// The OpenAI-compatible `{"error":{"message","type","param","code"},"request_id"}`
    /// (the most common in captures).
    OpenAi,
    /// The native envelope `{"code","message","request_id"}`.
    Native,
}
