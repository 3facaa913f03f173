//! The recommended stack, composed by hand in DESIGN.md's order (outermost first):
//! FallbackModel -> RetryWithJitter -> TokenBudget -> RegionRouter -> WaitTimeoutHeader ->
//! ClassifyDashScopeError. Included with `#[path]` by the hardening tests; one function to
//! switch to `RecommendedStack` once it exists.
#![allow(dead_code)]

use std::time::Duration;

use tower::ServiceBuilder;
use tower_dashscope::{
    ClassifyDashScopeError, ClassifyDashScopeErrorService, FallbackModel, FallbackModelService,
    Quota, Region, RegionRouter, RegionRouterService, RetryWithJitter, RetryWithJitterService,
    TokenBudget, TokenBudgetService, WaitTimeoutHeader, WaitTimeoutHeaderService,
};

/// The service the recommended stack makes over `S`.
pub type Stack<S> = FallbackModelService<
    RetryWithJitterService<
        TokenBudgetService<
            RegionRouterService<WaitTimeoutHeaderService<ClassifyDashScopeErrorService<S>>>,
        >,
    >,
>;

/// The six layers, each given explicitly.
#[derive(Clone, Debug)]
pub struct Layers {
    pub fallback: FallbackModel,
    pub retry: RetryWithJitter,
    pub budget: TokenBudget,
    pub router: RegionRouter,
    pub wait: Duration,
    pub classify: ClassifyDashScopeError,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            fallback: FallbackModel::new(["qwen-plus", "qwen-flash"]),
            retry: RetryWithJitter::new().seed(1),
            budget: TokenBudget::new(Quota::per_minute(600, 1_000_000)),
            router: RegionRouter::new(Region::Singapore, "sk-test-0000")
                .failover(Region::Virginia, "sk-test-1111"),
            wait: Duration::from_secs(30),
            classify: ClassifyDashScopeError::new(),
        }
    }
}

impl Layers {
    /// The stack over `inner`.
    pub fn over<S>(&self, inner: S) -> Stack<S> {
        ServiceBuilder::new()
            .layer(self.fallback.clone())
            .layer(self.retry.clone())
            .layer(self.budget.clone())
            .layer(self.router.clone())
            .layer(WaitTimeoutHeader::new(self.wait))
            .layer(self.classify.clone())
            .service(inner)
    }
}

/// The recommended stack with its test defaults over `inner`.
pub fn recommended<S>(inner: S) -> Stack<S> {
    Layers::default().over(inner)
}
