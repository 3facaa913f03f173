//! [`ServiceBuilderExt`]: one method per layer on [`tower::ServiceBuilder`].
//!
//! The same as `.layer(…)` with each layer, shorter to write and to read, in the way of
//! tower-http's `ServiceBuilderExt`. The first method called is the outermost layer.
//!
//! # Example
//!
//! The recommended order, by hand (this is what [`RecommendedStack`] composes):
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_dashscope::{
//!     BoxError, FallbackModel, Quota, Region, RegionRouter, RetryWithJitter, ServedRegion,
//!     ServiceBuilderExt, TokenBudget,
//! };
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let http_client = service_fn(|req: Request<Full<Bytes>>| async move {
//!     assert_eq!(req.headers()["x-dashscope-wait-timeout"], "10");
//!     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(br#"{"choices":[]}"#))))
//! });
//! let client = ServiceBuilder::new()
//!     .fallback_model(FallbackModel::new(["qwen-max", "qwen-plus"]))
//!     .retry_with_jitter(RetryWithJitter::new().max_attempts(4))
//!     .token_budget(TokenBudget::new(Quota::per_minute(600, 1_000_000)))
//!     .region_router(RegionRouter::new(Region::Singapore, "sk-your-key"))
//!     .wait_timeout_header(Duration::from_secs(10))
//!     .classify_dashscope_error()
//!     .service(http_client);
//!
//! let request = Request::post("/compatible-mode/v1/chat/completions")
//!     .body(Full::from(r#"{"model":"qwen-max","messages":[]}"#))
//!     .unwrap();
//! let response = client.oneshot(request).await.unwrap();
//! assert_eq!(response.extensions().get::<ServedRegion>().unwrap().0, Region::Singapore);
//! # }
//! ```
//!
//! All six in one call:
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_dashscope::{RecommendedStack, Region, ServiceBuilderExt};
//!
//! let builder = ServiceBuilder::new()
//!     .recommended_stack(RecommendedStack::new(Region::Singapore, "sk-your-key"));
//! # let _ = builder;
//! ```
//!
//! [`RecommendedStack`]: crate::RecommendedStack

use std::time::Duration;

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::budget::TokenBudget;
use crate::classify::ClassifyDashScopeError;
use crate::fallback::FallbackModel;
use crate::retry::RetryWithJitter;
use crate::router::RegionRouter;
use crate::stack::RecommendedStack;
use crate::wait_timeout::WaitTimeoutHeader;

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Extension methods on [`tower::ServiceBuilder`], one per layer of this crate; see the
/// [module docs](self).
///
/// Sealed: implemented for `ServiceBuilder<L>` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds [`ClassifyDashScopeError`] with its defaults (for other settings,
    /// `.layer(ClassifyDashScopeError::new()…)`).
    fn classify_dashscope_error(self) -> ServiceBuilder<Stack<ClassifyDashScopeError, L>>;

    /// Adds `retry`, a [`RetryWithJitter`].
    fn retry_with_jitter(self, retry: RetryWithJitter)
    -> ServiceBuilder<Stack<RetryWithJitter, L>>;

    /// Adds [`WaitTimeoutHeader::new(wait)`](WaitTimeoutHeader::new).
    fn wait_timeout_header(self, wait: Duration) -> ServiceBuilder<Stack<WaitTimeoutHeader, L>>;

    /// Adds `budget`, a [`TokenBudget`] (services made from it share its state).
    fn token_budget(self, budget: TokenBudget) -> ServiceBuilder<Stack<TokenBudget, L>>;

    /// Adds `fallback`, a [`FallbackModel`].
    fn fallback_model(self, fallback: FallbackModel) -> ServiceBuilder<Stack<FallbackModel, L>>;

    /// Adds `router`, a [`RegionRouter`].
    fn region_router(self, router: RegionRouter) -> ServiceBuilder<Stack<RegionRouter, L>>;

    /// Adds all six layers in the recommended order: see [`RecommendedStack`].
    fn recommended_stack(
        self,
        stack: RecommendedStack,
    ) -> ServiceBuilder<Stack<RecommendedStack, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn classify_dashscope_error(self) -> ServiceBuilder<Stack<ClassifyDashScopeError, L>> {
        self.layer(ClassifyDashScopeError::new())
    }

    fn retry_with_jitter(
        self,
        retry: RetryWithJitter,
    ) -> ServiceBuilder<Stack<RetryWithJitter, L>> {
        self.layer(retry)
    }

    fn wait_timeout_header(self, wait: Duration) -> ServiceBuilder<Stack<WaitTimeoutHeader, L>> {
        self.layer(WaitTimeoutHeader::new(wait))
    }

    fn token_budget(self, budget: TokenBudget) -> ServiceBuilder<Stack<TokenBudget, L>> {
        self.layer(budget)
    }

    fn fallback_model(self, fallback: FallbackModel) -> ServiceBuilder<Stack<FallbackModel, L>> {
        self.layer(fallback)
    }

    fn region_router(self, router: RegionRouter) -> ServiceBuilder<Stack<RegionRouter, L>> {
        self.layer(router)
    }

    fn recommended_stack(
        self,
        stack: RecommendedStack,
    ) -> ServiceBuilder<Stack<RecommendedStack, L>> {
        self.layer(stack)
    }
}
