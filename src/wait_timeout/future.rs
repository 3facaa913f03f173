//! The response future of [`WaitTimeoutHeaderService`](super::WaitTimeoutHeaderService).

/// Response future of [`WaitTimeoutHeaderService`](super::WaitTimeoutHeaderService): the inner
/// future, its error converted into a [`DashScopeError`](crate::DashScopeError).
pub type ResponseFuture<F> = crate::future::ConvertError<F>;
