//! [`RedisStore`]: the budget's windows in Redis (or Valkey), shared by every replica of a
//! service, so that a fleet stays within one account's quota.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::store::{
    Admission, BudgetKey, BudgetStore, KeyMap, Limits, LocalStore, StoreFuture, Taken,
};
use crate::error::{BoxError, DashScopeError, Delivery, ErrorClass, RateLimitKind};

/// The script's layout version: it is in every key name, so that a version that changes the
/// layout never reads another's keys. The script itself is called by its SHA1 (`EVALSHA`), so
/// every replica runs exactly the script it was built with.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const SCRIPT_VERSION: u32 = 1;

const SCRIPT: &str = include_str!("budget.lua");

/// The largest integer a Lua number (a double) holds exactly.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// Marks a [`Taken`] made by the in-process fallback (Redis slots stay below 2^53).
const LOCAL_TAG: u64 = 1 << 63;

/// What a [`RedisStore`] does while Redis does not answer (refused, unreachable, or slower than
/// its [`timeout`](RedisStore::timeout)). Never the whole quota in every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub enum WhenUnavailable {
    /// Send nothing: every request fails at once with
    /// [`RateLimited(Local)`](RateLimitKind::Local), its `retry_after` the time until Redis is
    /// tried again. The default.
    FailClosed,
    /// Keep serving this process's share of the quota from an in-process store: each window's
    /// limits divided by `replicas` (the number of processes expected to share the budget).
    LocalShare {
        /// How many processes share the quota; `0` is taken as `1`.
        replicas: u32,
    },
}

#[derive(Debug, Clone)]
struct Settings {
    prefix: Arc<str>,
    timeout: Duration,
    retry_every: Duration,
    when_unavailable: WhenUnavailable,
    max_pending_settles: usize,
}

/// A [`BudgetStore`] in Redis (or Valkey): one budget for a whole fleet. Behind the `redis`
/// cargo feature.
///
/// - **One atomic round trip per admission.** One Lua script (`EVALSHA`, loaded once per
///   server with `SCRIPT LOAD`) takes a request and the tokens from a model's request and token
///   windows together or not at all, with the same sliding window, debt and settling as the
///   in-process [`LocalStore`]. Its clock is the server's `TIME`, so client clocks never
///   matter; its arithmetic is in integers below 2^53 (microseconds, thousandths of a token);
///   it is replicated by its effects, not verbatim.
/// - **Keys**: `<prefix>:v1:{<budget>}:rq` and `…:tk`, where `<budget>` is the model (and
///   account, `account/model`): the hash tag keeps a model's keys in one Redis Cluster slot.
///   `v1` is [`SCRIPT_VERSION`]. A key expires a second after its window counts nothing.
/// - **Waiting stays local**: the script answers "taken" or "retry in d"; the layer waits with
///   tokio timers, so a waiting request costs no Redis traffic until it may go.
/// - **Settling** against reported usage goes through the same script, sent in the background
///   on a tokio task ([`BudgetStore::adjust`] never blocks). At most
///   [`max_pending_settles`](Self::max_pending_settles) are under way at once; beyond, a settle
///   is dropped with a warning.
/// - **When Redis does not answer** within the [`timeout`](Self::timeout) (every call has
///   one), [`WhenUnavailable`] decides: fail closed (the default), or serve an explicit share of
///   the quota in process. A `tracing` warning marks each switch; Redis is tried again every
///   [`retry_every`](Self::retry_every), and used again as soon as it answers.
///
/// Every replica that shares a prefix must configure the same quotas and
/// [`burst`](super::TokenBudget::burst) window (the keys are the quota's, not the process's).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_dashscope::budget::{RedisStore, WhenUnavailable};
/// use tower_dashscope::{Quota, TokenBudget};
///
/// # fn main() -> Result<(), tower_dashscope::budget::RedisStoreError> {
/// let store = RedisStore::new("redis://127.0.0.1:6379")?
///     .prefix("myapp:budget")
///     .timeout(Duration::from_millis(200))
///     // Ten replicas: while Redis is down, each serves a tenth of the quota.
///     .when_unavailable(WhenUnavailable::LocalShare { replicas: 10 });
/// let budget = TokenBudget::new(Quota::per_minute(600, 1_000_000)).store(store);
/// # let _ = budget;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStore {
    shared: Arc<Shared>,
}

/// A [`RedisStore`] could not be made: the Redis URL is not valid.
#[derive(Debug)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisStoreError {
    source: redis::RedisError,
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RedisStore: the Redis URL is not valid ({}); use redis://host:port/db or \
             rediss://host:port for TLS",
            self.source
        )
    }
}

impl std::error::Error for RedisStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

struct Shared {
    client: redis::Client,
    /// Where Redis is, without credentials, for messages.
    address: String,
    settings: Settings,
    script: redis::Script,
    manager: Mutex<Option<ConnectionManager>>,
    health: Mutex<Health>,
    /// The in-process fallback of [`WhenUnavailable::LocalShare`].
    local: LocalStore,
    /// What Redis last said about each key, for the synchronous questions of the trait.
    seen: Mutex<KeyMap<Seen>>,
    pending_settles: AtomicUsize,
}

#[derive(Debug)]
struct Health {
    up: bool,
    /// While down: when Redis is tried again.
    next_try: Instant,
    /// While down: a call is trying Redis now.
    probing: bool,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    tokens_used: u64,
    idle_at: Instant,
}

/// The script's answer.
#[derive(Debug, Clone, Copy)]
struct Reply {
    status: i64,
    value: u64,
    tokens_used: u64,
    idle_in: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Take,
    Credit,
    Debit,
    Peek,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Take => "take",
            Op::Credit => "credit",
            Op::Debit => "debit",
            Op::Peek => "peek",
        }
    }
}

/// Why Redis did not answer.
#[derive(Debug)]
struct Unanswered(String);

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unanswered {}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values inside: a panic elsewhere cannot leave them invalid.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The URL without its credentials: its user info, and its query (where a Unix socket URL
/// carries the password, `?pass=…`).
fn redact(url: &str) -> String {
    // Everything before the last `@` goes first, whatever a password holds; then the query.
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    match url.find(['?', '#']) {
        Some(query) => url[..query].to_owned(),
        None => url,
    }
}

impl RedisStore {
    /// A store in the Redis at `url` (`redis://host:port/db`, `rediss://` for TLS when the
    /// `redis` crate's TLS features are on, `redis+unix:///path`). Nothing is connected yet: the
    /// first request connects, so a store can be made while Redis is down.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|source| RedisStoreError { source })?;
        let settings = Settings {
            prefix: Arc::from("tower-dashscope:budget"),
            timeout: Duration::from_millis(250),
            retry_every: Duration::from_secs(1),
            when_unavailable: WhenUnavailable::FailClosed,
            max_pending_settles: 1024,
        };
        Ok(RedisStore::build(client, redact(url), settings))
    }

    fn build(client: redis::Client, address: String, settings: Settings) -> Self {
        RedisStore {
            shared: Arc::new(Shared {
                client,
                address,
                settings,
                script: redis::Script::new(SCRIPT),
                manager: Mutex::new(None),
                health: Mutex::new(Health {
                    up: true,
                    next_try: Instant::now(),
                    probing: false,
                }),
                local: LocalStore::new(),
                seen: Mutex::new(KeyMap::default()),
                pending_settles: AtomicUsize::new(0),
            }),
        }
    }

    /// The builder methods make a new store (no connection, no state): configure first, then
    /// clone.
    #[must_use]
    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        RedisStore::build(
            self.shared.client.clone(),
            self.shared.address.clone(),
            settings,
        )
    }

    /// The prefix of every key (`tower-dashscope:budget` by default). Replicas that share a
    /// budget share a prefix; give other budgets other prefixes.
    #[must_use]
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix: Arc<str> = Arc::from(prefix.into());
        self.with(|s| s.prefix = prefix)
    }

    /// How long any one call to Redis may take, connecting included (250 ms by default; at
    /// least 1 ms). Past it, Redis counts as unavailable.
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        let timeout = timeout.max(Duration::from_millis(1));
        self.with(|s| s.timeout = timeout)
    }

    /// While Redis is unavailable, how often one request tries it again (1 s by default; at
    /// least 1 ms); the others meanwhile follow [`WhenUnavailable`] at once.
    #[must_use]
    pub fn retry_every(self, every: Duration) -> Self {
        let every = every.max(Duration::from_millis(1));
        self.with(|s| s.retry_every = every)
    }

    /// What happens while Redis is unavailable: [`WhenUnavailable::FailClosed`] by default.
    #[must_use]
    pub fn when_unavailable(self, policy: WhenUnavailable) -> Self {
        self.with(|s| s.when_unavailable = policy)
    }

    /// The most settles (usage reported after a response) sent to Redis at once, in the
    /// background (1024 by default). Beyond, a settle is dropped with a warning: Redis is far
    /// slower than the traffic.
    #[must_use]
    pub fn max_pending_settles(self, max: usize) -> Self {
        self.with(|s| s.max_pending_settles = max.max(1))
    }

    /// The names of `key`'s request and token windows in Redis.
    #[must_use]
    pub fn key_names(&self, key: &BudgetKey) -> [String; 2] {
        self.shared.keys(key)
    }

    /// Whether Redis is taken to be unavailable now (its last call failed or timed out).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        !lock(&self.shared.health).up
    }

    /// The thousandths of a token counted against `key` in Redis now (in the window and owed),
    /// asked of Redis itself. [`BudgetStore::tokens_used`], which must not wait, answers from
    /// the last reply instead.
    ///
    /// # Errors
    ///
    /// When Redis does not answer within the timeout.
    pub async fn tokens_in_redis(&self, key: &BudgetKey, limits: Limits) -> Result<u64, BoxError> {
        let reply = self.shared.call(Op::Peek, key, limits, 0, 0).await?;
        Ok(reply.tokens_used)
    }

    /// Settles as [`BudgetStore::adjust`] does, but waits for Redis to have done it.
    ///
    /// # Errors
    ///
    /// When Redis does not answer within the timeout.
    pub async fn adjust_now(
        &self,
        key: &BudgetKey,
        limits: Limits,
        taken: Taken,
        delta: i64,
    ) -> Result<(), BoxError> {
        self.shared.adjust(key, limits, taken, delta).await
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.shared.address)
            .field("prefix", &self.shared.settings.prefix)
            .field("timeout", &self.shared.settings.timeout)
            .field("retry_every", &self.shared.settings.retry_every)
            .field("when_unavailable", &self.shared.settings.when_unavailable)
            .field("unavailable", &self.is_unavailable())
            .finish_non_exhaustive()
    }
}

/// A window's limit as the script takes it: `0` for unlimited, else `1 ..= 2^53 - 1`.
fn script_limit(limit: u64) -> u64 {
    if limit == u64::MAX {
        0
    } else {
        limit.clamp(1, MAX_EXACT)
    }
}

/// The slot width in microseconds: a hundredth of the window, `1 µs ..= 864 s`.
fn slot_width(window: Duration) -> u64 {
    let micros = u64::try_from(window.as_micros() / 100).unwrap_or(u64::MAX);
    micros.clamp(1, 864_000_000)
}

impl Shared {
    fn keys(&self, key: &BudgetKey) -> [String; 2] {
        let prefix = &self.settings.prefix;
        let budget = key.to_string();
        [
            format!("{prefix}:v{SCRIPT_VERSION}:{{{budget}}}:rq"),
            format!("{prefix}:v{SCRIPT_VERSION}:{{{budget}}}:tk"),
        ]
    }

    fn manager(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = lock(&self.manager);
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    /// One call of the script, within the timeout.
    async fn call(
        &self,
        op: Op,
        key: &BudgetKey,
        limits: Limits,
        amount: u64,
        slot: u64,
    ) -> Result<Reply, Unanswered> {
        let [requests_key, tokens_key] = self.keys(key);
        let timeout = self.settings.timeout;
        let attempt = async {
            let mut connection = self.manager()?;
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(requests_key)
                .key(tokens_key)
                .arg(op.as_str())
                .arg(slot_width(limits.window))
                .arg(script_limit(limits.requests))
                .arg(script_limit(limits.tokens))
                .arg(amount.min(MAX_EXACT))
                .arg(slot.min(MAX_EXACT));
            invocation
                .invoke_async::<(i64, u64, u64, u64)>(&mut connection)
                .await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((status, value, tokens_used, idle_in))) => Ok(Reply {
                status,
                value,
                tokens_used,
                idle_in: Duration::from_micros(idle_in),
            }),
            Ok(Err(err)) => {
                if !matches!(err.kind(), redis::ErrorKind::Server(_)) {
                    // A connection that failed is made anew on the next try.
                    lock(&self.manager).take();
                }
                Err(Unanswered(format!(
                    "Redis at {} failed: {err}",
                    self.address
                )))
            }
            Err(_) => {
                lock(&self.manager).take();
                Err(Unanswered(format!(
                    "Redis at {} did not answer within {} ms",
                    self.address,
                    timeout.as_millis()
                )))
            }
        }
    }

    fn remember(&self, key: &BudgetKey, reply: &Reply) {
        let now = Instant::now();
        lock(&self.seen).insert(
            key.clone(),
            Seen {
                tokens_used: reply.tokens_used,
                idle_at: now
                    .checked_add(reply.idle_in)
                    .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            },
        );
    }

    /// Whether this call goes to Redis: always while it is up; while down, one call every
    /// `retry_every` tries it. `Err` is the time until the next try.
    fn route(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut health = lock(&self.health);
        if health.up {
            return Ok(());
        }
        if now >= health.next_try && !health.probing {
            health.probing = true;
            return Ok(());
        }
        Err(health
            .next_try
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)))
    }

    fn answered(&self) {
        let mut health = lock(&self.health);
        health.probing = false;
        if !health.up {
            health.up = true;
            tracing::info!(
                server.address = %self.address,
                prefix = &*self.settings.prefix,
                "TokenBudget: Redis answers again; back to the budget shared in Redis"
            );
        }
    }

    fn unanswered(&self, why: &Unanswered) {
        let mut health = lock(&self.health);
        health.probing = false;
        health.next_try = Instant::now() + self.settings.retry_every;
        if health.up {
            health.up = false;
            match self.settings.when_unavailable {
                WhenUnavailable::FailClosed => tracing::warn!(
                    server.address = %self.address,
                    error = %why,
                    retry_every_ms = self.settings.retry_every.as_millis() as u64,
                    "TokenBudget: the budget in Redis is unavailable; failing closed (requests \
                     get RateLimited(Local)) until it answers again"
                ),
                WhenUnavailable::LocalShare { replicas } => tracing::warn!(
                    server.address = %self.address,
                    error = %why,
                    replicas = replicas.max(1),
                    retry_every_ms = self.settings.retry_every.as_millis() as u64,
                    "TokenBudget: the budget in Redis is unavailable; this process now admits \
                     its share (quota / replicas) from memory until Redis answers again"
                ),
            }
        }
    }

    fn local_limits(limits: Limits, replicas: u32) -> Limits {
        let replicas = u64::from(replicas.max(1));
        let share = |limit: u64| {
            if limit == u64::MAX {
                u64::MAX
            } else {
                (limit / replicas).max(1)
            }
        };
        Limits {
            requests: share(limits.requests),
            tokens: share(limits.tokens),
            window: limits.window,
        }
    }

    /// The answer while Redis is unavailable.
    fn unavailable(
        &self,
        key: &BudgetKey,
        limits: Limits,
        tokens: u64,
        retry_in: Duration,
        why: Option<&Unanswered>,
    ) -> Result<Admission, BoxError> {
        match self.settings.when_unavailable {
            WhenUnavailable::LocalShare { replicas } => {
                let limits = Shared::local_limits(limits, replicas);
                match self.local.try_take(key, limits, tokens).ready() {
                    Some(Ok(Admission::Taken(Taken(slot)))) => {
                        Ok(Admission::Taken(Taken(slot | LOCAL_TAG)))
                    }
                    Some(answer) => answer,
                    None => Ok(Admission::Wait(retry_in)),
                }
            }
            WhenUnavailable::FailClosed => {
                let why = why.map_or_else(
                    || format!("Redis at {} is unavailable", self.address),
                    ToString::to_string,
                );
                let err = DashScopeError::new(ErrorClass::RateLimited(RateLimitKind::Local))
                    .with_retry_after(retry_in)
                    .with_delivery(Delivery::NotSent)
                    .with_message(format!(
                        "TokenBudget: the budget shared in Redis cannot be checked for model \
                         `{}` ({why}); the request was not sent (fail-closed policy). Check \
                         Redis; Redis is tried again in {} ms. To keep serving a share of the \
                         quota meanwhile, use WhenUnavailable::LocalShare",
                        key.model(),
                        retry_in.as_millis()
                    ));
                Err(Box::new(err))
            }
        }
    }

    async fn take(
        &self,
        key: BudgetKey,
        limits: Limits,
        tokens: u64,
    ) -> Result<Admission, BoxError> {
        if let Err(retry_in) = self.route() {
            return self.unavailable(&key, limits, tokens, retry_in, None);
        }
        match self.call(Op::Take, &key, limits, tokens, 0).await {
            Ok(reply) => {
                self.answered();
                self.remember(&key, &reply);
                Ok(match reply.status {
                    1 => Admission::Taken(Taken(reply.value)),
                    // A wait of at least a microsecond: zero would ask again at once.
                    _ => Admission::Wait(Duration::from_micros(reply.value.max(1))),
                })
            }
            Err(why) => {
                self.unanswered(&why);
                let retry_in = self.settings.retry_every;
                self.unavailable(&key, limits, tokens, retry_in, Some(&why))
            }
        }
    }

    /// Settles a take of the in-process share there; false for a take made in Redis.
    fn adjust_local(&self, key: &BudgetKey, limits: Limits, taken: Taken, delta: i64) -> bool {
        if taken.0 & LOCAL_TAG == 0 {
            return false;
        }
        if let WhenUnavailable::LocalShare { replicas } = self.settings.when_unavailable {
            let limits = Shared::local_limits(limits, replicas);
            self.local
                .adjust(key, limits, Taken(taken.0 & !LOCAL_TAG), delta);
        }
        true
    }

    async fn adjust(
        &self,
        key: &BudgetKey,
        limits: Limits,
        taken: Taken,
        delta: i64,
    ) -> Result<(), BoxError> {
        if delta == 0 {
            return Ok(());
        }
        if self.adjust_local(key, limits, taken, delta) {
            return Ok(());
        }
        let (op, amount) = if delta < 0 {
            (Op::Credit, delta.unsigned_abs())
        } else {
            (Op::Debit, delta.unsigned_abs())
        };
        let reply = self.call(op, key, limits, amount, taken.0).await?;
        self.remember(key, &reply);
        Ok(())
    }
}

impl BudgetStore for RedisStore {
    fn try_take(
        &self,
        key: &BudgetKey,
        limits: Limits,
        tokens: u64,
    ) -> StoreFuture<Result<Admission, BoxError>> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        StoreFuture::Pending(Box::pin(
            async move { shared.take(key, limits, tokens).await },
        ))
    }

    /// Sent in the background on a tokio task (the same script, atomically); a settle made
    /// outside a tokio runtime, or beyond [`max_pending_settles`](RedisStore::max_pending_settles),
    /// is dropped with a warning.
    fn adjust(&self, key: &BudgetKey, limits: Limits, taken: Taken, delta: i64) {
        if delta == 0 {
            return;
        }
        let shared = &self.shared;
        if shared.adjust_local(key, limits, taken, delta) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                gen_ai.request.model = key.model(),
                "TokenBudget: a settle for the Redis budget was made outside a tokio runtime \
                 and is dropped (settle from within the runtime the budget runs in)"
            );
            return;
        };
        let max = shared.settings.max_pending_settles;
        if shared.pending_settles.fetch_add(1, Ordering::AcqRel) >= max {
            shared.pending_settles.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                gen_ai.request.model = key.model(),
                max_pending_settles = max,
                "TokenBudget: too many settles are waiting for Redis; this one is dropped \
                 (Redis is slower than the traffic: check it, or raise max_pending_settles)"
            );
            return;
        }
        let shared = Arc::clone(shared);
        let key = key.clone();
        runtime.spawn(async move {
            if let Err(err) = shared.adjust(&key, limits, taken, delta).await {
                tracing::debug!(
                    gen_ai.request.model = key.model(),
                    error = %err,
                    "TokenBudget: a settle could not be sent to Redis and is dropped"
                );
            }
            shared.pending_settles.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// As of Redis's last answer for `key` (and the in-process share while Redis is
    /// unavailable); [`RedisStore::tokens_in_redis`] asks Redis.
    fn tokens_used(&self, key: &BudgetKey, limits: Limits) -> u64 {
        let now = Instant::now();
        let remote = lock(&self.shared.seen)
            .get(key)
            .filter(|seen| seen.idle_at > now)
            .map_or(0, |seen| seen.tokens_used);
        let local = match self.shared.settings.when_unavailable {
            WhenUnavailable::LocalShare { replicas } => self
                .shared
                .local
                .tokens_used(key, Shared::local_limits(limits, replicas)),
            WhenUnavailable::FailClosed => 0,
        };
        remote.max(local)
    }

    fn forget(&self, key: &BudgetKey) {
        lock(&self.shared.seen).remove(key);
        self.shared.local.forget(key);
    }

    /// Whether, as of Redis's last answer, `key`'s windows count nothing now (and the
    /// in-process share is idle): the process may forget the key; Redis keeps its own state.
    fn is_idle(&self, key: &BudgetKey, limits: Limits) -> bool {
        let now = Instant::now();
        let remote = lock(&self.shared.seen)
            .get(key)
            .is_none_or(|seen| seen.idle_at <= now);
        let local = match self.shared.settings.when_unavailable {
            WhenUnavailable::LocalShare { replicas } => self
                .shared
                .local
                .is_idle(key, Shared::local_limits(limits, replicas)),
            WhenUnavailable::FailClosed => true,
        };
        remote && local
    }
}
