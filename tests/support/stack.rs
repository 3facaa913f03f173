//! The recommended stack for the hardening tests: `RecommendedStack` (DESIGN.md's order,
//! outermost first: FallbackModel -> RetryWithJitter -> TokenBudget -> RegionRouter ->
//! WaitTimeoutHeader -> ClassifyDashScopeError) with each layer given explicitly, so a test can
//! change one and inspect the budget and router it used. Included with `#[path]`.
#![allow(dead_code)]

use std::time::Duration;

use tower::Layer;
use tower_dashscope::{
    ClassifyDashScopeError, FallbackModel, Quota, RecommendedService, RecommendedStack, Region,
    RegionRouter, RetryWithJitter, TokenBudget,
};

/// The service the recommended stack makes over `S`.
pub type Stack<S> = RecommendedService<S>;

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
    /// The recommended stack of these layers.
    pub fn stack(&self) -> RecommendedStack {
        // The region and key are the router's, which replaces the one they make.
        RecommendedStack::new(Region::Singapore, "sk-test-0000")
            .fallback_layer(self.fallback.clone())
            .retry(self.retry.clone())
            .budget(self.budget.clone())
            .router(self.router.clone())
            .wait_timeout(self.wait)
            .classify(self.classify.clone())
    }

    /// The stack over `inner`.
    pub fn over<S>(&self, inner: S) -> Stack<S> {
        self.stack().layer(inner)
    }
}

/// The recommended stack with its test defaults over `inner`.
pub fn recommended<S>(inner: S) -> Stack<S> {
    Layers::default().over(inner)
}
