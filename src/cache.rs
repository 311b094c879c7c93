//! The Redis cache of the brief: `virtual_key:{sha256}` (a key's record, read by a cold key
//! actor before PostgreSQL) and `portkey_config:{id}` (a Portkey config's JSON, for other
//! services that read a config by id; the gateway itself routes from its snapshot).
//!
//! Redis is never the only copy of anything, so every failure degrades to a miss:
//!
//! - operations on one key run in order on one of a few shard tasks (a read queued after
//!   a delete sees the delete), each with a short timeout;
//! - a failure marks Redis down: reads answer "miss" at once and writes are skipped;
//! - before the cache is trusted again (and at start), a monitor sweeps it: the entries of
//!   every key changed in PostgreSQL since the cache went down (at start: within the
//!   entries' time to live) are deleted, so whatever a skipped or lost write left stale is
//!   gone. Then `recovered` wakes whoever repopulates it.
//! - a gateway that starts while Redis is unreachable keeps trying to connect (the
//!   monitor), and uses the cache once it has connected and swept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Mutex;

use crate::redis_conn::RedisConn;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::auth::KeyHash;
use crate::db::keys::KeyRecord;

const SHARDS: usize = 8;
const READ_TIMEOUT: Duration = Duration::from_millis(50);
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
const TTL_SECS: u64 = 24 * 3600;

enum Op {
    GetKey(KeyHash, oneshot::Sender<Option<KeyRecord>>),
    SetKey(KeyHash, String),
    DelKey(KeyHash),
    SetPortkey(Uuid, String),
    DelPortkey(Uuid),
}

/// What operators see of the cache.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheStats {
    pub enabled: bool,
    pub up: bool,
    /// Entries changed since this time must be swept before the cache is trusted.
    pub sweep_from: Option<DateTime<Utc>>,
    pub hits: u64,
    pub misses: u64,
    pub writes: u64,
    pub errors: u64,
    pub sweeps: u64,
}

struct Inner {
    shards: Vec<mpsc::UnboundedSender<Op>>,
    /// `None` until the first connection succeeds.
    conn: arc_swap::ArcSwapOption<RedisConn>,
    url: crate::config::Secret,
    cluster: bool,
    up: AtomicBool,
    sweep_from: Mutex<Option<DateTime<Utc>>>,
    recovered: Notify,
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    sweeps: AtomicU64,
}

/// A handle on the cache; cheap to clone. Without Redis every read is a miss.
#[derive(Clone, Default)]
pub struct Cache(Option<Arc<Inner>>);

fn key_name(hash: &KeyHash) -> String {
    format!("virtual_key:{}", hash.to_hex())
}

fn portkey_name(id: Uuid) -> String {
    format!("portkey_config:{id}")
}

impl Cache {
    /// A cache over `conn` (or, when Redis was unreachable at start, over the connection
    /// the monitor makes to `url` once it can); spawns the shard tasks and the monitor,
    /// which sweeps with `pool` before the cache is first used.
    pub fn new(
        conn: Option<RedisConn>,
        url: crate::config::Secret,
        cluster: bool,
        pool: PgPool,
    ) -> Self {
        let mut shards = Vec::with_capacity(SHARDS);
        let mut receivers = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let (tx, rx) = mpsc::unbounded_channel();
            shards.push(tx);
            receivers.push(rx);
        }
        let inner = Arc::new(Inner {
            shards,
            conn: arc_swap::ArcSwapOption::from(conn.map(Arc::new)),
            url,
            cluster,
            up: AtomicBool::new(false),
            // Entries older than their time to live are gone; younger ones may be stale.
            sweep_from: Mutex::new(Some(
                Utc::now() - chrono::Duration::seconds(TTL_SECS as i64 + 60),
            )),
            recovered: Notify::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
        });
        for rx in receivers {
            tokio::spawn(shard(Arc::downgrade(&inner), rx));
        }
        tokio::spawn(monitor(Arc::downgrade(&inner), pool));
        Self(Some(inner))
    }

    pub fn disabled() -> Self {
        Self(None)
    }

    /// The cache's connection, once it has one (for `/health`).
    pub fn connection(&self) -> Option<RedisConn> {
        self.0.as_ref()?.conn.load_full().map(|c| (*c).clone())
    }

    fn send(&self, shard: usize, op: Op) {
        if let Some(inner) = &self.0 {
            let _ = inner.shards[shard % SHARDS].send(op);
        }
    }

    /// The cached record of the key with this hash; `None` on a miss or when Redis is
    /// unavailable (never waits longer than a few tens of milliseconds).
    pub async fn get_key(&self, hash: KeyHash) -> Option<KeyRecord> {
        let inner = self.0.as_ref()?;
        if !inner.up.load(Ordering::Acquire) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.send(usize::from(hash.0[0]), Op::GetKey(hash, tx));
        let found = rx.await.ok().flatten();
        let counter = if found.is_some() {
            &inner.hits
        } else {
            &inner.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn set_key(&self, record: &KeyRecord) {
        if let Ok(json) = serde_json::to_string(record) {
            self.send(usize::from(record.hash.0[0]), Op::SetKey(record.hash, json));
        }
    }

    pub fn del_key(&self, hash: KeyHash) {
        self.send(usize::from(hash.0[0]), Op::DelKey(hash));
    }

    pub fn set_portkey(&self, id: Uuid, json: String) {
        self.send(usize::from(id.as_bytes()[0]), Op::SetPortkey(id, json));
    }

    pub fn del_portkey(&self, id: Uuid) {
        self.send(usize::from(id.as_bytes()[0]), Op::DelPortkey(id));
    }

    /// Resolves each time Redis comes back (and its stale entries are purged).
    pub async fn recovered(&self) {
        match &self.0 {
            Some(inner) => inner.recovered.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Distrusts the entries of keys changed since `since` (notifications after it may have
    /// been lost): they are swept before the cache is used again.
    pub fn invalidate_since(&self, since: DateTime<Utc>) {
        if let Some(inner) = &self.0 {
            inner.distrust(since);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let Some(i) = &self.0 else {
            return CacheStats::default();
        };
        CacheStats {
            enabled: true,
            up: i.up.load(Ordering::Acquire),
            sweep_from: i.sweep_from.lock().ok().and_then(|g| *g),
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            writes: i.writes.load(Ordering::Relaxed),
            errors: i.errors.load(Ordering::Relaxed),
            sweeps: i.sweeps.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn distrust(&self, since: DateTime<Utc>) {
        if let Ok(mut from) = self.sweep_from.lock() {
            *from = Some(from.map_or(since, |f| f.min(since)));
        }
        self.up.store(false, Ordering::Release);
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.load(Ordering::Acquire) {
            tracing::warn!(error = %e, op = what, "Redis unavailable; serving from PostgreSQL");
        }
        // Writes from now on are skipped: sweep what changes from (a little before) now.
        self.distrust(Utc::now() - chrono::Duration::seconds(5));
    }
}

async fn shard(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Op>) {
    while let Some(op) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        let conn = inner.conn.load_full();
        let (true, Some(conn)) = (inner.up.load(Ordering::Acquire), conn) else {
            // Reads miss; a skipped write is covered by the sweep before the cache is up.
            if let Op::GetKey(_, tx) = op {
                let _ = tx.send(None);
            }
            continue;
        };
        let mut conn = (*conn).clone();
        match op {
            Op::GetKey(hash, tx) => {
                let read = tokio::time::timeout(
                    READ_TIMEOUT,
                    conn.get::<_, Option<String>>(key_name(&hash)),
                )
                .await;
                let record = match read {
                    Ok(Ok(Some(json))) => serde_json::from_str::<KeyRecord>(&json)
                        .ok()
                        .map(|r| KeyRecord { hash, ..r }),
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        inner.failed("get", e);
                        None
                    }
                    Err(_) => {
                        inner.failed("get", "timed out");
                        None
                    }
                };
                let _ = tx.send(record);
            }
            write => {
                let result = tokio::time::timeout(WRITE_TIMEOUT, async {
                    match write {
                        Op::SetKey(hash, json) => {
                            conn.set_ex::<_, _, ()>(key_name(&hash), json, TTL_SECS)
                                .await
                        }
                        Op::DelKey(hash) => conn.del::<_, ()>(key_name(&hash)).await,
                        Op::SetPortkey(id, json) => {
                            conn.set_ex::<_, _, ()>(portkey_name(id), json, TTL_SECS)
                                .await
                        }
                        Op::DelPortkey(id) => conn.del::<_, ()>(portkey_name(id)).await,
                        Op::GetKey(..) => Ok(()),
                    }
                })
                .await;
                match result {
                    Ok(Ok(())) => {
                        inner.writes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => inner.failed("write", e),
                    Err(_) => inner.failed("write", "timed out"),
                }
            }
        }
    }
}

/// Deletes every entry that may be stale because its key or config changed since
/// `since`: entries under a key's previous hash, and entries whose version differs from
/// the database's (or whose key is no longer active). Entries that match stay.
async fn sweep(conn: &mut RedisConn, pool: &PgPool, since: DateTime<Utc>) -> Result<(), String> {
    let (changed, _) = crate::db::keys::changed_since(pool, Some(since))
        .await
        .map_err(|e| e.to_string())?;
    let configs = crate::db::portkey::changed_since(pool, since)
        .await
        .map_err(|e| e.to_string())?;
    let mut stale: Vec<String> = configs.into_iter().map(portkey_name).collect();
    stale.extend(
        changed
            .iter()
            .filter_map(|c| c.previous.as_ref().map(key_name)),
    );
    for chunk in changed.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|c| key_name(&c.hash)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&names)
            .query_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        for ((c, name), value) in chunk.iter().zip(names).zip(values) {
            let Some(json) = value else { continue };
            let current = serde_json::from_str::<KeyRecord>(&json)
                .is_ok_and(|r| r.updated_at == c.updated_at && c.is_active);
            if !current {
                stale.push(name);
            }
        }
    }
    for chunk in stale.chunks(1000) {
        conn.del::<_, ()>(chunk).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn monitor(inner: std::sync::Weak<Inner>, pool: PgPool) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        if inner.up.load(Ordering::Acquire) {
            continue;
        }
        let conn = match inner.conn.load_full() {
            Some(c) => c,
            None => match RedisConn::connect(&inner.url, inner.cluster).await {
                Ok(c) => {
                    tracing::info!("connected to Redis");
                    let c = Arc::new(c);
                    inner.conn.store(Some(c.clone()));
                    c
                }
                Err(_) => continue,
            },
        };
        let mut conn = (*conn).clone();
        let pong = tokio::time::timeout(
            Duration::from_millis(300),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        if !matches!(pong, Ok(Ok(_))) {
            continue;
        }
        let from = inner.sweep_from.lock().ok().and_then(|mut g| g.take());
        if let Some(since) = from {
            match tokio::time::timeout(Duration::from_secs(30), sweep(&mut conn, &pool, since))
                .await
            {
                Ok(Ok(())) => {
                    inner.sweeps.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    tracing::warn!(result = ?other.map(|r| r.err()), "sweeping the Redis cache failed");
                    inner.distrust(since);
                    continue;
                }
            }
        }
        // Distrusted again while sweeping: sweep again before going up.
        if inner.sweep_from.lock().ok().is_some_and(|g| g.is_some()) {
            continue;
        }
        inner.up.store(true, Ordering::Release);
        tracing::info!("Redis cache available");
        inner.recovered.notify_waiters();
    }
}
