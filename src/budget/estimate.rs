//! Estimating a request's tokens before it is sent.

use std::fmt;

use bytes::Bytes;

use crate::request::ChatRequest;

/// Estimates the input tokens of a request before it is sent.
///
/// [`TokenBudget`](crate::TokenBudget) charges `input + expected output` when it admits a request
/// and settles against the response's `usage` afterwards, so an estimate only has to be close,
/// and should rather err high. Implement it to plug in a real tokenizer; the request's body is
/// given as it will be sent.
///
/// ```
/// use bytes::Bytes;
/// use tower_dashscope::budget::TokenEstimator;
/// use tower_dashscope::request::ChatRequest;
///
/// /// One token per three bytes: cruder than the default, but it shows the shape.
/// struct PerThreeBytes;
///
/// impl TokenEstimator for PerThreeBytes {
///     fn input_tokens(&self, _chat: &ChatRequest, body: &Bytes) -> u64 {
///         (body.len() as u64).div_ceil(3)
///     }
/// }
/// # let _ = tower_dashscope::TokenBudget::new(tower_dashscope::Quota::per_minute(60, 60_000)).estimator(PerThreeBytes);
/// ```
pub trait TokenEstimator: Send + Sync + 'static {
    /// The input tokens of `chat`, whose whole body is `body`.
    fn input_tokens(&self, chat: &ChatRequest, body: &Bytes) -> u64;
}

/// The default estimator: [`ChatRequest::estimated_input_tokens`] — one token per four ASCII
/// characters of message text, rounded up, plus one per other character.
///
/// Qwen's tokenizer gives about four ASCII characters of English a token and a little under
/// one token per Chinese character, so the estimate is high for both, and higher for text that
/// mixes in markup or code. Roles, tool definitions and the chat template's own tokens are not
/// counted; the settlement against real `usage` corrects what the estimate missed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CharEstimator;

impl TokenEstimator for CharEstimator {
    fn input_tokens(&self, chat: &ChatRequest, _body: &Bytes) -> u64 {
        chat.estimated_input_tokens()
    }
}

impl<F> TokenEstimator for F
where
    F: Fn(&ChatRequest, &Bytes) -> u64 + Send + Sync + 'static,
{
    fn input_tokens(&self, chat: &ChatRequest, body: &Bytes) -> u64 {
        self(chat, body)
    }
}

/// A type-erased estimator with a `Debug` impl.
#[derive(Clone)]
pub(crate) struct DynEstimator(pub(crate) std::sync::Arc<dyn TokenEstimator>);

impl fmt::Debug for DynEstimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenEstimator")
    }
}
