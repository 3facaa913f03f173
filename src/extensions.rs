//! What the layers tell the caller, in the response's extensions, and what they hand each
//! other in the request's: [`Attempts`], [`ServedModel`], [`BudgetWait`], [`ServedRegion`],
//! [`Usage`] and [`UsageSlot`].

use std::fmt;
use std::sync::{Arc, Mutex};

/// How many attempts [`RetryWithJitter`](crate::RetryWithJitter) made for this response, the
/// first included: `Attempts(1)` means it succeeded at once.
///
/// ```
/// # use tower_dashscope::Attempts;
/// # let response = http::Response::new(());
/// let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
/// # assert_eq!(attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempts(pub u32);

/// The model that answered, put into the response's extensions by
/// [`FallbackModel`](crate::FallbackModel): the requested one, or the model of the chain that
/// took over. The body is that model's own answer (its `model` and `usage` fields are not
/// relabelled). Absent when the layer passed the request through untouched: a model in no
/// chain and with no declared context window, or a body it cannot replay or rewrite.
///
/// ```
/// # use tower_dashscope::ServedModel;
/// # let mut response = http::Response::new(());
/// # response.extensions_mut().insert(ServedModel("qwen-flash".into()));
/// if let Some(ServedModel(model)) = response.extensions().get::<ServedModel>() {
///     println!("answered by {model}");
/// }
/// # assert_eq!(response.extensions().get::<ServedModel>().unwrap().0, "qwen-flash");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServedModel(pub String);

/// How long [`TokenBudget`](crate::TokenBudget) held this request back before sending it, so
/// that it stayed within its model's quota. Absent when it was sent at once.
///
/// ```
/// # use std::time::Duration;
/// # use tower_dashscope::BudgetWait;
/// # let response = http::Response::new(());
/// let waited = response.extensions().get::<BudgetWait>().map_or(Duration::ZERO, |w| w.0);
/// # assert_eq!(waited, Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetWait(pub std::time::Duration);

/// The region (endpoint) that served this response, set by
/// [`RegionRouter`](crate::RegionRouter): the primary's, or a failover's.
///
/// ```
/// # use tower_dashscope::{Region, ServedRegion};
/// # let mut response = http::Response::new(());
/// # response.extensions_mut().insert(ServedRegion(Region::Singapore));
/// if let Some(ServedRegion(region)) = response.extensions().get::<ServedRegion>() {
///     println!("served by {region}");
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedRegion(pub crate::api::Region);

/// Token counts a response reported in its `usage` object.
///
/// Both API shapes are read: native `usage.{input_tokens, output_tokens, total_tokens}` and
/// OpenAI-compatible `usage.{prompt_tokens, completion_tokens, total_tokens}`. A missing
/// `total_tokens` is the sum of the other two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// All tokens the request is billed and rate-limited for (input + output).
    pub total_tokens: u64,
}

impl Usage {
    /// Usage with these counts; `total_tokens` is their sum.
    #[must_use]
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens.saturating_add(output_tokens),
        }
    }
}

/// A shared slot in which [`ClassifyDashScopeError`](crate::ClassifyDashScopeError) records the
/// last `usage` a successful response reported.
///
/// # The protocol
///
/// A layer (or the caller) that wants real token counts puts a `UsageSlot` into the request's
/// extensions and keeps a clone. When the classifier below sees that slot, it watches the
/// response body as the caller reads it and stores every `usage` object it finds: in a JSON body,
/// in each event of a native stream (cumulative; the last one wins), and in the final chunk of an
/// OpenAI-compatible stream sent with `stream_options.include_usage=true`. Once the body has been
/// read to its end, [`get`](Self::get) holds the final counts; [`is_complete`](Self::is_complete)
/// says whether the body was read to its end.
///
/// Without a slot in the request, success bodies that are not event streams are not inspected at
/// all.
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_dashscope::{BoxError, ClassifyDashScopeError};
/// use tower_dashscope::classify::{Usage, UsageSlot};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = service_fn(|_req: Request<Full<Bytes>>| async {
///     let body = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
///     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(body))))
/// });
/// let service = ClassifyDashScopeError::new().layer(client);
///
/// let slot = UsageSlot::new();
/// let mut request = Request::new(Full::default());
/// request.extensions_mut().insert(slot.clone());
///
/// let response = service.oneshot(request).await.unwrap();
/// response.into_body().collect().await.unwrap();
/// assert_eq!(slot.get(), Some(Usage::new(12, 30)));
/// assert!(slot.is_complete());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct UsageSlot {
    shared: Arc<Mutex<SlotState>>,
}

#[derive(Default, Clone, Copy)]
struct SlotState {
    usage: Option<Usage>,
    complete: bool,
}

impl UsageSlot {
    /// An empty slot.
    #[must_use]
    pub fn new() -> Self {
        UsageSlot::default()
    }

    /// The last usage recorded, if any.
    #[must_use]
    pub fn get(&self) -> Option<Usage> {
        self.state().usage
    }

    /// Whether the response body was read to its end (successfully or not).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.state().complete
    }

    /// Records `usage`, replacing what was there.
    pub fn set(&self, usage: Usage) {
        self.with_state(|s| s.usage = Some(usage));
    }

    pub(crate) fn mark_complete(&self) {
        self.with_state(|s| s.complete = true);
    }

    /// This slot emptied, if this is its only handle (no one else can read or write it), for
    /// a layer to reuse for another request instead of allocating a new one.
    pub(crate) fn into_reusable(mut self) -> Option<UsageSlot> {
        let state = Arc::get_mut(&mut self.shared)?;
        *state.get_mut().unwrap_or_else(|e| e.into_inner()) = SlotState::default();
        Some(self)
    }

    fn state(&self) -> SlotState {
        // The lock is only ever held to copy a few words; a poisoned lock still holds valid data.
        *self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_state(&self, f: impl FnOnce(&mut SlotState)) {
        f(&mut self.shared.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl fmt::Debug for UsageSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("UsageSlot")
            .field("usage", &state.usage)
            .field("complete", &state.complete)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_slot_nobody_else_holds_is_reused_and_it_comes_back_empty() {
        let slot = UsageSlot::new();
        slot.set(Usage::new(3, 4));
        slot.mark_complete();
        let other = slot.clone();
        assert!(slot.into_reusable().is_none(), "another handle exists");
        assert_eq!(other.get(), Some(Usage::new(3, 4)));
        let reused = other.into_reusable().expect("the only handle");
        assert_eq!(reused.get(), None);
        assert!(!reused.is_complete());
    }
}
