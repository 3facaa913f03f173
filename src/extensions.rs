//! What the layers tell the caller, in the response's extensions.

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
