//! A budget store whose `try_take` the test scripts — slow, hung, counted — while the rest of
//! the store goes to a local store. Included with `#[path]`.
#![allow(dead_code)]

use std::sync::Arc;

use tower_dashscope::BoxError;
use tower_dashscope::budget::{
    Admission, BudgetKey, BudgetStore, Limits, LocalStore, StoreFuture, Taken,
};

type Take = dyn Fn(&Arc<LocalStore>, &BudgetKey, Limits, u64) -> StoreFuture<Result<Admission, BoxError>>
    + Send
    + Sync;

/// A budget store that answers `try_take` with `take(&local, key, limits, tokens)` and
/// hands `adjust`, `tokens_used`, `forget` and `is_idle` to `local`.
pub struct ScriptedStore {
    local: Arc<LocalStore>,
    take: Box<Take>,
}

impl ScriptedStore {
    pub fn new(
        local: Arc<LocalStore>,
        take: impl Fn(
            &Arc<LocalStore>,
            &BudgetKey,
            Limits,
            u64,
        ) -> StoreFuture<Result<Admission, BoxError>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        ScriptedStore {
            local,
            take: Box::new(take),
        }
    }
}

impl BudgetStore for ScriptedStore {
    fn try_take(
        &self,
        key: &BudgetKey,
        limits: Limits,
        tokens: u64,
    ) -> StoreFuture<Result<Admission, BoxError>> {
        (self.take)(&self.local, key, limits, tokens)
    }

    fn adjust(&self, key: &BudgetKey, limits: Limits, taken: Taken, delta: i64) {
        self.local.adjust(key, limits, taken, delta);
    }

    fn tokens_used(&self, key: &BudgetKey, limits: Limits) -> u64 {
        self.local.tokens_used(key, limits)
    }

    fn forget(&self, key: &BudgetKey) {
        self.local.forget(key);
    }

    fn is_idle(&self, key: &BudgetKey, limits: Limits) -> bool {
        self.local.is_idle(key, limits)
    }
}
