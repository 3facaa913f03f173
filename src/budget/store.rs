//! Where the budget's windows live: in this process by default, or in a store a fleet shares.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{SlotRef, Window};
use crate::error::BoxError;

/// Which budget a request is counted in: its model, and its account when
/// [`TokenBudget::account`](super::TokenBudget::account) names one.
///
/// The key hashes its names once, when it is made (with a key random per process, so names
/// chosen to collide cannot slow the budget down); the budget's maps then use that hash as it
/// is, for the dozen lookups a request makes.
#[derive(Clone)]
pub struct BudgetKey {
    pub(crate) account: Option<Arc<str>>,
    pub(crate) model: Arc<str>,
    hash: u64,
}

impl BudgetKey {
    /// The key of `model`, in `account` if any.
    pub fn new(account: Option<&str>, model: &str) -> Self {
        BudgetKey::from_parts(account.map(Arc::from), Arc::from(model))
    }

    /// The key of names already shared.
    pub(crate) fn from_parts(account: Option<Arc<str>>, model: Arc<str>) -> Self {
        static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let hash = STATE
            .get_or_init(std::collections::hash_map::RandomState::new)
            .hash_one((account.as_deref(), &*model));
        BudgetKey {
            account,
            model,
            hash,
        }
    }

    /// The model.
    #[must_use]
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The account, when budgets are kept per account.
    #[must_use]
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }
}

impl PartialEq for BudgetKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.model == other.model && self.account == other.account
    }
}

impl Eq for BudgetKey {}

impl std::hash::Hash for BudgetKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetKey")
            .field("account", &self.account)
            .field("model", &self.model)
            .finish()
    }
}

/// Hashes a [`BudgetKey`] by the hash it carries: the maps keyed by it hash nothing again.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    // Only `BudgetKey`s are hashed with it, which write one `u64`; anything else still gets a
    // hash of every byte (FNV-1a), never a constant.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map keyed by [`BudgetKey`] that uses the hash each key carries.
pub(crate) type KeyMap<V> = HashMap<BudgetKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

impl fmt::Display for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.account {
            Some(account) => write!(f, "{account}/{}", self.model),
            None => f.write_str(&self.model),
        }
    }
}

/// What one window of a key may hold now, in **thousandths** of a request and of a token (so
/// that 100 RPM is 1.666 requests a second, not 1). `u64::MAX` leaves a dimension unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Thousandths of a request per window.
    pub requests: u64,
    /// Thousandths of a token per window.
    pub tokens: u64,
    /// The window's length.
    pub window: Duration,
}

/// Where a request's tokens were charged, so that a store can give back from the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken(pub u64);

/// The answer of [`BudgetStore::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Taken: one request and the tokens are charged.
    Taken(Taken),
    /// Not now: nothing was charged; try again after this long.
    Wait(Duration),
}

/// A store's answer: ready now (the in-process store; no allocation), or a future (a store
/// across the network).
#[must_use = "a store's answer does nothing unless awaited"]
pub enum StoreFuture<T> {
    /// The answer, now.
    Ready(Option<T>),
    /// The answer, later.
    Pending(Pin<Box<dyn Future<Output = T> + Send>>),
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFuture::Ready(_) => f.write_str("StoreFuture::Ready"),
            StoreFuture::Pending(_) => f.write_str("StoreFuture::Pending"),
        }
    }
}

/// The state of the budget's windows: one request window and one token window per
/// [`BudgetKey`], each holding at most its [`Limits`] over any window of time.
///
/// [`try_take`](Self::try_take) is the one atomic step of an admission: a store shared by a
/// fleet (Redis, say) does it in one round trip, so that no two processes both take the last
/// room. Everything else — arrival order, concurrency permits, adaptive rates — stays in the
/// process. [`LocalStore`], the default, keeps the windows in memory.
///
/// ```
/// use std::time::Duration;
/// use tower_dashscope::budget::{Admission, BudgetKey, BudgetStore, Limits, LocalStore};
///
/// let store = LocalStore::new();
/// let key = BudgetKey::new(None, "qwen-plus");
/// let limits = Limits { requests: 2_000, tokens: u64::MAX, window: Duration::from_secs(1) };
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// # rt.block_on(async {
/// for _ in 0..2 {
///     let taken = store.try_take(&key, limits, 10_000).ready().unwrap().unwrap();
///     assert!(matches!(taken, Admission::Taken(_)));
/// }
/// let third = store.try_take(&key, limits, 10_000).ready().unwrap().unwrap();
/// assert!(matches!(third, Admission::Wait(_)));
/// # });
/// ```
pub trait BudgetStore: Send + Sync + 'static {
    /// Takes one request and `tokens` thousandths of a token from `key`'s windows if both have
    /// room under `limits` now — all or nothing — or says how long until they will. A cost
    /// above a whole window's limit is taken when the window is empty, the excess owed.
    ///
    /// If the caller is cancelled while a pending answer is on its way, a take the store
    /// already made stays charged: the layer cannot know of it.
    fn try_take(
        &self,
        key: &BudgetKey,
        limits: Limits,
        tokens: u64,
    ) -> StoreFuture<Result<Admission, BoxError>>;

    /// Settles a request taken at `taken`: `delta` thousandths of a token come back (negative)
    /// or are owed (positive). Called from `Drop` and `poll` paths: it must not block; a store
    /// across the network sends it in the background.
    fn adjust(&self, key: &BudgetKey, limits: Limits, taken: Taken, delta: i64);

    /// The thousandths of a token counted against `key` now (in the window and owed).
    fn tokens_used(&self, key: &BudgetKey, limits: Limits) -> u64;

    /// The thousandths of a request counted against `key`'s request window now, if the store
    /// can tell without a round trip; `None` (the default) when it cannot. For
    /// [`TokenBudget::headroom`](super::TokenBudget::headroom) only; admission never uses it.
    fn requests_used(&self, key: &BudgetKey, limits: Limits) -> Option<u64> {
        let _ = (key, limits);
        None
    }

    /// Whether [`try_take`](Self::try_take) answers without a round trip (a store in this
    /// process). Only then may requests waiting behind the first in line be asked about room it
    /// cannot use ([`TokenBudget::backfill`](super::TokenBudget::backfill)): each try is one
    /// more take, which a store across the network would pay for in round trips. `false` by
    /// default.
    fn answers_locally(&self) -> bool {
        false
    }

    /// Forgets `key`: the process no longer tracks it, and its windows are idle.
    fn forget(&self, key: &BudgetKey);

    /// Whether `key`'s windows count nothing now (a key whose state may be forgotten).
    fn is_idle(&self, key: &BudgetKey, limits: Limits) -> bool;
}

impl<T> StoreFuture<T> {
    /// The answer if it is ready now (for stores that never wait, and for tests).
    pub fn ready(self) -> Option<T> {
        match self {
            StoreFuture::Ready(value) => value,
            StoreFuture::Pending(_) => None,
        }
    }
}

/// The default store: the windows in this process's memory, shared by every clone of the
/// layer. Entries are removed when the layer forgets a key, so memory follows the layer's
/// bound on models.
#[derive(Debug, Default)]
pub struct LocalStore {
    windows: Mutex<KeyMap<Windows>>,
}

#[derive(Debug, Clone)]
struct Windows {
    requests: Window,
    tokens: Window,
}

/// A request is a thousand thousandths.
const ONE_REQUEST: u64 = 1000;

impl LocalStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        LocalStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, KeyMap<Windows>> {
        // Plain numbers inside: a panic elsewhere cannot leave them invalid.
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(
        &self,
        key: &BudgetKey,
        limits: Limits,
        f: impl FnOnce(&mut Windows, Instant) -> T,
    ) -> T {
        let now = Instant::now();
        let mut map = self.lock();
        let windows = map.entry(key.clone()).or_insert_with(|| Windows {
            requests: Window::new(limits.window, now),
            tokens: Window::new(limits.window, now),
        });
        windows.requests.advance(now, limits.requests);
        windows.tokens.advance(now, limits.tokens);
        f(windows, now)
    }
}

impl BudgetStore for LocalStore {
    fn answers_locally(&self) -> bool {
        true
    }

    fn try_take(
        &self,
        key: &BudgetKey,
        limits: Limits,
        tokens: u64,
    ) -> StoreFuture<Result<Admission, BoxError>> {
        let admission = self.with(key, limits, |w, now| {
            let wait = w
                .requests
                .wait_for(now, ONE_REQUEST, limits.requests)
                .max(w.tokens.wait_for(now, tokens, limits.tokens));
            if !wait.is_zero() {
                return Admission::Wait(wait);
            }
            w.requests.charge(ONE_REQUEST, limits.requests);
            let at = w.tokens.charge(tokens, limits.tokens);
            Admission::Taken(Taken(at.slot))
        });
        StoreFuture::Ready(Some(Ok(admission)))
    }

    fn adjust(&self, key: &BudgetKey, limits: Limits, taken: Taken, delta: i64) {
        if !self.lock().contains_key(key) {
            return;
        }
        self.with(key, limits, |w, _| {
            if delta < 0 {
                w.tokens
                    .credit(SlotRef { slot: taken.0 }, delta.unsigned_abs());
            } else if delta > 0 {
                w.tokens.charge(delta.unsigned_abs(), limits.tokens);
            }
        });
    }

    fn tokens_used(&self, key: &BudgetKey, limits: Limits) -> u64 {
        if !self.lock().contains_key(key) {
            return 0;
        }
        self.with(key, limits, |w, _| w.tokens.used())
    }

    fn requests_used(&self, key: &BudgetKey, limits: Limits) -> Option<u64> {
        if !self.lock().contains_key(key) {
            return Some(0);
        }
        Some(self.with(key, limits, |w, _| w.requests.used()))
    }

    fn forget(&self, key: &BudgetKey) {
        self.lock().remove(key);
    }

    fn is_idle(&self, key: &BudgetKey, limits: Limits) -> bool {
        if !self.lock().contains_key(key) {
            return true;
        }
        self.with(key, limits, |w, _| {
            w.requests.is_idle() && w.tokens.is_idle()
        })
    }
}
