//! RedisStore against a real Redis: 127.0.0.1:6379, or `REDIS_URL`. Without a Redis these
//! tests say so and pass, except under CI (`CI` set), where a missing Redis fails them:
//! `.ci/run` starts one.
//!
//! Redis's clock (`TIME`) is real, so these tests use real, short windows (or windows of an hour
//! inside which a test's few milliseconds never matter), and check counts per server-time slot
//! rather than timings. Every test has its own random key prefix.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, ServiceExt, service_fn};
use tower_dashscope::budget::{
    Admission, BudgetKey, BudgetStore, Limits, LocalStore, RedisStore, Taken, WhenUnavailable,
};
use tower_dashscope::{BoxError, DashScopeError, ErrorClass, Quota, RateLimitKind, TokenBudget};

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A connection to the test Redis, or `None` (with a message) when there is none and CI is not
/// set. Under CI a missing Redis fails the test.
async fn redis() -> Option<redis::aio::MultiplexedConnection> {
    let url = redis_url();
    let connect = async {
        let client = redis::Client::open(url.as_str())?;
        client.get_multiplexed_async_connection().await
    };
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(connection)) => Some(connection),
        failed => {
            let why = match failed {
                Ok(Err(err)) => err.to_string(),
                _ => "no answer within 3 s".to_owned(),
            };
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "Redis at {url} is needed under CI and is unreachable ({why}): start \
                 redis-server (.ci/run does), or set REDIS_URL"
            );
            eprintln!(
                "SKIPPED: Redis at {url} is unreachable ({why}); start redis-server or set \
                 REDIS_URL to run the RedisStore tests"
            );
            None
        }
    }
}

/// A prefix no other test (or run) uses.
fn prefix(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tdtest:{test}:{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn store(prefix: &str) -> RedisStore {
    RedisStore::new(&redis_url())
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_secs(2))
}

async fn take(store: &dyn BudgetStore, key: &BudgetKey, limits: Limits, tokens: u64) -> Admission {
    match store.try_take(key, limits, tokens) {
        tower_dashscope::budget::StoreFuture::Ready(answer) => answer.unwrap().unwrap(),
        tower_dashscope::budget::StoreFuture::Pending(answer) => answer.await.unwrap(),
    }
}

fn taken(admission: Admission) -> Taken {
    match admission {
        Admission::Taken(at) => at,
        other => panic!("expected a take, got {other:?}"),
    }
}

fn wait(admission: Admission) -> Duration {
    match admission {
        Admission::Wait(wait) => wait,
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// A seeded xorshift, for weights.
fn weights(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed.max(1);
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        1 + state % 5
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hammering_one_bucket_never_take_more_than_it_holds() {
    let Some(_) = redis().await else { return };
    let prefix = prefix("atomic");
    let key = BudgetKey::new(None, "qwen-plus");
    // 20 requests and 60 tokens a second; weighted takes of 1..=5 tokens.
    let limits = Limits {
        requests: 20_000,
        tokens: 60_000,
        window: SECOND,
    };
    let taken_at: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    // Eight replicas (separate stores, separate connections), three callers each.
    for replica in 0..8u64 {
        let store = Arc::new(store(&prefix));
        for caller in 0..3u64 {
            let (store, key, taken_at) = (store.clone(), key.clone(), taken_at.clone());
            tasks.push(tokio::spawn(async move {
                let mut weight = weights(replica * 31 + caller + 1);
                let end = std::time::Instant::now() + Duration::from_millis(2500);
                while std::time::Instant::now() < end {
                    let tokens = weight() * 1000;
                    match take(&*store, &key, limits, tokens).await {
                        Admission::Taken(Taken(slot)) => {
                            taken_at.lock().unwrap().push((slot, tokens));
                        }
                        Admission::Wait(wait) => {
                            tokio::time::sleep(wait.min(Duration::from_millis(30))).await;
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Slots are the server's: 10 ms each. A take counts for 101 slots (a window, plus the slot
    // it was made in), so no 101 consecutive slots may hold more than the limits.
    let mut per_slot: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for &(slot, tokens) in taken_at.lock().unwrap().iter() {
        let entry = per_slot.entry(slot).or_default();
        entry.0 += 1000;
        entry.1 += tokens;
    }
    let total: u64 = per_slot.values().map(|v| v.0).sum::<u64>() / 1000;
    assert!(
        total >= 40,
        "only {total} taken in 2.5 s: the test proves nothing"
    );
    for &start in per_slot.keys() {
        let (requests, tokens) = per_slot
            .range(start..=start + 100)
            .fold((0, 0), |acc, (_, v)| (acc.0 + v.0, acc.1 + v.1));
        assert!(
            requests <= limits.requests && tokens <= limits.tokens,
            "slots {start}..={}: {requests} request-thousandths, {tokens} token-thousandths",
            start + 100
        );
    }
    eprintln!("taken: {total} requests in 2.5 s by 24 callers in 8 replicas");
}

const CHAT: &str = "/compatible-mode/v1/chat/completions";

fn chat(model: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":1,"messages":[{{"role":"user","content":"abc"}}]}}"#
    );
    Request::post(CHAT)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A chat service that answers at once.
fn answering() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future: Send,
> + Clone
+ Send
+ Sync {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    })
}

/// A `RedisStore` that records the slot (the Redis server's time) of every take it makes.
struct Recorded {
    inner: RedisStore,
    taken: Arc<Mutex<Vec<u64>>>,
}

impl BudgetStore for Recorded {
    fn try_take(
        &self,
        key: &BudgetKey,
        limits: Limits,
        tokens: u64,
    ) -> tower_dashscope::budget::StoreFuture<Result<Admission, BoxError>> {
        let taken = self.taken.clone();
        let record = move |answer: &Result<Admission, BoxError>| {
            if let Ok(Admission::Taken(at)) = answer {
                taken.lock().unwrap().push(at.0);
            }
        };
        match self.inner.try_take(key, limits, tokens) {
            tower_dashscope::budget::StoreFuture::Ready(answer) => {
                if let Some(answer) = &answer {
                    record(answer);
                }
                tower_dashscope::budget::StoreFuture::Ready(answer)
            }
            tower_dashscope::budget::StoreFuture::Pending(answer) => {
                tower_dashscope::budget::StoreFuture::Pending(Box::pin(async move {
                    let answer = answer.await;
                    record(&answer);
                    answer
                }))
            }
        }
    }

    fn adjust(&self, key: &BudgetKey, limits: Limits, taken: Taken, delta: i64) {
        self.inner.adjust(key, limits, taken, delta);
    }

    fn tokens_used(&self, key: &BudgetKey, limits: Limits) -> u64 {
        self.inner.tokens_used(key, limits)
    }

    fn forget(&self, key: &BudgetKey) {
        self.inner.forget(key);
    }

    fn is_idle(&self, key: &BudgetKey, limits: Limits) -> bool {
        self.inner.is_idle(key, limits)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budgets_sharing_a_prefix_send_one_quota_between_them() {
    let Some(_) = redis().await else { return };
    let prefix = prefix("fleet");
    let taken: Arc<Mutex<Vec<u64>>> = Arc::default();
    let server = answering();
    // Four replicas of 1200 RPM: 20 a second between them, where four local budgets would send
    // 80 a second.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let budget = TokenBudget::new(Quota::per_minute(1200, 0))
            .adaptive(false)
            .store(Recorded {
                inner: store(&prefix),
                taken: taken.clone(),
            });
        let service = budget.layer(server.clone());
        for _ in 0..12 {
            let service = service.clone();
            calls.push(tokio::spawn(async move {
                service.oneshot(chat("qwen-plus")).await.unwrap();
            }));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    let mut taken = taken.lock().unwrap().clone();
    taken.sort_unstable();
    assert_eq!(taken.len(), 48);
    // Counted in the Redis server's own time (10 ms slots; a take counts for 101 of them), not
    // in ours, which a loaded machine delays by varying amounts: no 101 consecutive slots hold
    // more than 20, and the 48 needed more than two windows.
    for (i, &first) in taken.iter().enumerate() {
        let within = taken[i..].iter().take_while(|&&t| t <= first + 100).count();
        assert!(
            within <= 20,
            "{within} requests within slots {first}..={}: over the quota",
            first + 100
        );
    }
    assert!(
        taken[47] - taken[0] > 200,
        "48 requests in {} slots",
        taken[47] - taken[0]
    );
}

#[tokio::test]
async fn debt_and_settling_match_the_in_process_store() {
    let Some(_) = redis().await else { return };
    let redis = store(&prefix("settle"));
    let local = LocalStore::new();
    let key = BudgetKey::new(Some("acct"), "qwen-max");
    // An hour's window: the few milliseconds of the test never move it.
    let limits = Limits {
        requests: 100_000,
        tokens: 10_000,
        window: HOUR,
    };
    for store in [&redis as &dyn BudgetStore, &local] {
        let used = async |store: &dyn BudgetStore| {
            if std::ptr::addr_eq(store, &redis as &dyn BudgetStore) {
                redis.tokens_in_redis(&key, limits).await.unwrap()
            } else {
                local.tokens_used(&key, limits)
            }
        };
        let adjust = async |store: &dyn BudgetStore, at: Taken, delta: i64| {
            if std::ptr::addr_eq(store, &redis as &dyn BudgetStore) {
                redis.adjust_now(&key, limits, at, delta).await.unwrap();
            } else {
                local.adjust(&key, limits, at, delta);
            }
        };
        let first = taken(take(store, &key, limits, 4_000).await);
        taken(take(store, &key, limits, 4_000).await);
        wait(take(store, &key, limits, 4_000).await);
        assert_eq!(used(store).await, 8_000);
        // An over-estimate comes back from the slot of the take.
        adjust(store, first, -3_000).await;
        assert_eq!(used(store).await, 5_000);
        let third = taken(take(store, &key, limits, 4_000).await);
        assert_eq!(used(store).await, 9_000);
        // An under-estimate: 1,000 fit, 5,000 are owed; nothing is admitted while owed.
        adjust(store, third, 6_000).await;
        assert_eq!(used(store).await, 15_000);
        let owed = wait(take(store, &key, limits, 1).await);
        assert!(owed > HOUR, "{owed:?}");
        // A credit pays the debt first, then the slot.
        adjust(store, third, -7_000).await;
        assert_eq!(used(store).await, 8_000);
        taken(take(store, &key, limits, 2_000).await);
        // Bigger than the window: only into an empty window.
        let big = wait(take(store, &key, limits, 30_000).await);
        assert!(big > Duration::from_secs(3500), "{big:?}");
    }
    // Into an empty window a cost bigger than the window is taken, the rest owed.
    let other = BudgetKey::new(None, "qwen-turbo");
    for store in [&redis as &dyn BudgetStore, &local] {
        taken(take(store, &other, limits, 30_000).await);
        let owed = wait(take(store, &other, limits, 1_000).await);
        assert!(owed > 2 * HOUR, "{owed:?}");
    }
    assert_eq!(redis.tokens_in_redis(&other, limits).await.unwrap(), 30_000);

    // The trait's adjust sends the settle in the background, through the same script.
    let bg = BudgetKey::new(None, "qwen-background");
    let at = taken(take(&redis, &bg, limits, 9_000).await);
    redis.adjust(&bg, limits, at, -9_000);
    let mut used = u64::MAX;
    for _ in 0..200 {
        used = redis.tokens_in_redis(&bg, limits).await.unwrap();
        if used == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(used, 0, "the background settle never arrived");
}

#[tokio::test]
async fn large_amounts_stay_exact() {
    let Some(_) = redis().await else { return };
    let redis = store(&prefix("exact"));
    let key = BudgetKey::new(None, "qwen-long");
    // 2^50 - 1 thousandths: above the 15 digits a Lua number prints exactly with tostring.
    let limits = Limits {
        requests: u64::MAX,
        tokens: (1 << 50) + 12_345,
        window: HOUR,
    };
    let amount = (1u64 << 50) - 1;
    taken(take(&redis, &key, limits, amount).await);
    assert_eq!(redis.tokens_in_redis(&key, limits).await.unwrap(), amount);
    taken(take(&redis, &key, limits, 12_346).await);
    assert_eq!(
        redis.tokens_in_redis(&key, limits).await.unwrap(),
        amount + 12_346
    );
    wait(take(&redis, &key, limits, 1).await);
}

#[tokio::test]
async fn client_clocks_far_apart_share_one_window() {
    let Some(_) = redis().await else { return };
    let prefix = prefix("skew");
    let key = BudgetKey::new(None, "qwen-plus");
    let limits = Limits {
        requests: 5_000,
        tokens: u64::MAX,
        window: HOUR,
    };
    let here = store(&prefix);
    for _ in 0..3 {
        taken(take(&here, &key, limits, 0).await);
    }
    // Another replica whose clock is ten days ahead (tokio's clock is the only one the crate
    // reads on the client).
    let (key2, prefix2) = (key.clone(), prefix.clone());
    let there = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let before = tokio::time::Instant::now();
            tokio::time::advance(Duration::from_secs(10 * 86_400)).await;
            tokio::time::resume();
            assert!(tokio::time::Instant::now() - before >= Duration::from_secs(10 * 86_400));
            let there = store(&prefix2);
            let mut answers = Vec::new();
            for _ in 0..3 {
                answers.push(take(&there, &key2, limits, 0).await);
            }
            answers
        })
    })
    .join()
    .unwrap();
    taken(there[0]);
    taken(there[1]);
    let their_wait = wait(there[2]);
    let our_wait = wait(take(&here, &key, limits, 0).await);
    // Both see the same window, by the server's clock: about an hour, not ten days off.
    for w in [their_wait, our_wait] {
        assert!(
            w > Duration::from_secs(3500) && w <= HOUR + SECOND * 40,
            "{w:?}"
        );
    }
}

#[tokio::test]
async fn keys_carry_the_prefix_and_a_hash_tag_and_expire_when_idle() {
    let Some(mut connection) = redis().await else {
        return;
    };
    let prefix = prefix("expiry");
    let redis_store = store(&prefix);
    let key = BudgetKey::new(Some("acct"), "qwen-plus");
    let [requests, tokens] = redis_store.key_names(&key);
    assert_eq!(requests, format!("{prefix}:v1:{{acct/qwen-plus}}:rq"));
    assert_eq!(tokens, format!("{prefix}:v1:{{acct/qwen-plus}}:tk"));
    let limits = Limits {
        requests: 1_000,
        tokens: 10_000,
        window: Duration::from_millis(200),
    };
    taken(take(&redis_store, &key, limits, 5_000).await);
    for name in [&requests, &tokens] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut connection)
            .await
            .unwrap();
        // The window (200 ms) plus a second.
        assert!(ttl > 0 && ttl <= 1_300, "{name}: {ttl}");
    }
    // A waiting answer writes nothing.
    wait(take(&redis_store, &key, limits, 1_000).await);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&requests)
        .arg(&tokens)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(exists, 0, "idle keys are left in Redis");
    // An unlimited dimension keeps no key.
    let unlimited = BudgetKey::new(None, "qwen-free");
    let [requests, tokens] = redis_store.key_names(&unlimited);
    let free = Limits {
        requests: 1_000,
        tokens: u64::MAX,
        window: HOUR,
    };
    taken(take(&redis_store, &unlimited, free, 5_000).await);
    let exists: (i64, i64) = redis::pipe()
        .cmd("EXISTS")
        .arg(&requests)
        .cmd("EXISTS")
        .arg(&tokens)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(exists, (1, 0));
}

/// A chat service that counts what reaches it in `sent`.
fn counting(
    sent: Arc<AtomicU64>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future: Send,
> + Clone
+ Send
+ Sync {
    service_fn(move |_req: Request<Full<Bytes>>| {
        sent.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"{}")))) }
    })
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed_with_rate_limited_local() {
    // Port 1 on loopback: refused at once. No Redis needed.
    let store = RedisStore::new("redis://127.0.0.1:1")
        .unwrap()
        .timeout(Duration::from_millis(300))
        .retry_every(Duration::from_millis(100));
    let budget = TokenBudget::new(Quota::per_minute(600, 0)).store(store.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let server = counting(sent.clone());
    let service = budget.layer(server);
    for _ in 0..3 {
        let err = tokio::time::timeout(Duration::from_secs(5), service.clone().oneshot(chat("m")))
            .await
            .expect("never hangs")
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
        assert!(err.retry_after().is_some());
        assert!(err.message().unwrap().contains("Redis"), "{err}");
        assert!(err.message().unwrap().contains("LocalShare"), "{err}");
    }
    assert!(store.is_unavailable());
    assert_eq!(sent.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_redis_that_never_answers_times_out() {
    // A listener that accepts and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let holder = held.clone();
    let accept = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let store = RedisStore::new(&format!("redis://{address}"))
        .unwrap()
        .timeout(Duration::from_millis(200));
    let key = BudgetKey::new(None, "m");
    let limits = Limits {
        requests: 1_000,
        tokens: u64::MAX,
        window: SECOND,
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        match store.try_take(&key, limits, 0) {
            tower_dashscope::budget::StoreFuture::Pending(answer) => answer.await,
            tower_dashscope::budget::StoreFuture::Ready(answer) => answer.unwrap(),
        }
    })
    .await
    .expect("the store's own timeout ends the call");
    let err = answer.unwrap_err().downcast::<DashScopeError>().unwrap();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
    let message = err.message().unwrap();
    assert!(
        message.contains("did not answer") || message.contains("timed out"),
        "{err}"
    );
    accept.abort();
}

/// A loopback proxy to the test Redis that can be cut and restored.
struct Proxy {
    address: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (flag, tasks) = (up.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            address,
            up,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// host:port of the test Redis.
fn redis_address() -> String {
    let client = redis::Client::open(redis_url().as_str()).unwrap();
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("the proxy test needs a TCP Redis, not {other:?}"),
    }
}

#[tokio::test]
async fn degrades_to_an_explicit_local_share_and_returns_to_redis() {
    let Some(_) = redis().await else { return };
    let proxy = Proxy::start(redis_address()).await;
    let store = RedisStore::new(&format!("redis://{}", proxy.address))
        .unwrap()
        .prefix(prefix("degrade"))
        .timeout(Duration::from_millis(500))
        .retry_every(Duration::from_millis(100))
        .when_unavailable(WhenUnavailable::LocalShare { replicas: 4 });
    let key = BudgetKey::new(None, "qwen-plus");
    // 8 requests an hour; tokens count what Redis holds (1,000 per take).
    let limits = Limits {
        requests: 8_000,
        tokens: 1_000_000,
        window: HOUR,
    };
    taken(take(&store, &key, limits, 1_000).await);
    assert!(!store.is_unavailable());
    assert_eq!(store.tokens_in_redis(&key, limits).await.unwrap(), 1_000);

    proxy.cut();
    // Redis is gone: this process admits its share, 8 / 4 = 2 requests, and no more.
    taken(take(&store, &key, limits, 1_000).await);
    assert!(store.is_unavailable());
    taken(take(&store, &key, limits, 1_000).await);
    let wait = wait(take(&store, &key, limits, 1_000).await);
    assert!(wait > Duration::from_secs(3000), "{wait:?}");

    proxy.restore();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Back to Redis: what Redis holds counts again (7 more requests fit there).
    taken(take(&store, &key, limits, 1_000).await);
    assert!(!store.is_unavailable());
    assert_eq!(store.tokens_in_redis(&key, limits).await.unwrap(), 2_000);
}

#[tokio::test]
async fn fail_closed_recovers_when_redis_answers_again() {
    let Some(_) = redis().await else { return };
    let proxy = Proxy::start(redis_address()).await;
    let store = RedisStore::new(&format!("redis://{}", proxy.address))
        .unwrap()
        .prefix(prefix("closed"))
        .timeout(Duration::from_millis(500))
        .retry_every(Duration::from_millis(100));
    let budget = TokenBudget::new(Quota::per_minute(600, 0)).store(store.clone());
    let sent = Arc::new(AtomicU64::new(0));
    let server = counting(sent.clone());
    let service = budget.layer(server);
    service.clone().oneshot(chat("m")).await.unwrap();
    proxy.cut();
    let err = service.clone().oneshot(chat("m")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RateLimited(RateLimitKind::Local));
    assert!(store.is_unavailable());
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(150)).await;
    service.clone().oneshot(chat("m")).await.unwrap();
    assert!(!store.is_unavailable());
    assert_eq!(sent.load(Ordering::SeqCst), 2);
}
