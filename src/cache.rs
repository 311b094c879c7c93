//! The Redis cache of the brief: `virtual_key:{sha256}` (a key's record, read by a cold key
//! actor before PostgreSQL) and `portkey_config:{id}` (a Portkey config's JSON).
//!
//! Redis is never the only copy of anything, so every failure degrades to a miss:
//!
//! - operations on one key run in order on one of a few shard tasks (a read queued after
//!   a delete sees the delete), each with a short timeout;
//! - a failure marks Redis down: reads answer "miss" at once and writes are skipped, which
//!   marks the cache dirty (it may now hold something stale);
//! - a monitor pings Redis; when it answers again, a dirty cache is purged before it is
//!   trusted, and `recovered` wakes whoever repopulates it. The cache starts dirty, so
//!   entries left by an earlier run are never trusted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
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
    pub dirty: bool,
    pub hits: u64,
    pub misses: u64,
    pub writes: u64,
    pub errors: u64,
    pub purges: u64,
}

struct Inner {
    shards: Vec<mpsc::UnboundedSender<Op>>,
    up: AtomicBool,
    dirty: AtomicBool,
    recovered: Notify,
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    purges: AtomicU64,
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
    /// A cache over `conn`; spawns the shard tasks and the monitor.
    pub fn new(conn: ConnectionManager) -> Self {
        let mut shards = Vec::with_capacity(SHARDS);
        let mut receivers = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            let (tx, rx) = mpsc::unbounded_channel();
            shards.push(tx);
            receivers.push(rx);
        }
        let inner = Arc::new(Inner {
            shards,
            up: AtomicBool::new(false),
            dirty: AtomicBool::new(true),
            recovered: Notify::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            purges: AtomicU64::new(0),
        });
        for rx in receivers {
            tokio::spawn(shard(Arc::downgrade(&inner), conn.clone(), rx));
        }
        tokio::spawn(monitor(Arc::downgrade(&inner), conn));
        Self(Some(inner))
    }

    pub fn disabled() -> Self {
        Self(None)
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

    /// Marks everything cached as untrusted: it is purged before the next use (after a
    /// listener reconnect, when notifications may have been lost).
    pub fn invalidate_all(&self) {
        if let Some(inner) = &self.0 {
            inner.dirty.store(true, Ordering::Release);
            inner.up.store(false, Ordering::Release);
        }
    }

    pub fn stats(&self) -> CacheStats {
        let Some(i) = &self.0 else {
            return CacheStats::default();
        };
        CacheStats {
            enabled: true,
            up: i.up.load(Ordering::Acquire),
            dirty: i.dirty.load(Ordering::Acquire),
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            writes: i.writes.load(Ordering::Relaxed),
            errors: i.errors.load(Ordering::Relaxed),
            purges: i.purges.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn failed(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, op = what, "Redis unavailable; serving from PostgreSQL");
        }
    }
}

async fn shard(
    inner: std::sync::Weak<Inner>,
    mut conn: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    while let Some(op) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        if !inner.up.load(Ordering::Acquire) {
            match op {
                Op::GetKey(_, tx) => {
                    let _ = tx.send(None);
                }
                // A write that cannot happen leaves something stale behind.
                _ => inner.dirty.store(true, Ordering::Release),
            }
            continue;
        }
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

/// Deletes every entry this cache owns.
async fn purge(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    for pattern in ["virtual_key:*", "portkey_config:*"] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                conn.del::<_, ()>(keys).await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}

async fn monitor(inner: std::sync::Weak<Inner>, mut conn: ConnectionManager) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        if inner.up.load(Ordering::Acquire) {
            continue;
        }
        let pong = tokio::time::timeout(
            Duration::from_millis(300),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        if !matches!(pong, Ok(Ok(_))) {
            continue;
        }
        if inner.dirty.swap(false, Ordering::AcqRel) {
            match tokio::time::timeout(Duration::from_secs(30), purge(&mut conn)).await {
                Ok(Ok(())) => {
                    inner.purges.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    inner.dirty.store(true, Ordering::Release);
                    continue;
                }
            }
        }
        inner.up.store(true, Ordering::Release);
        // Writes skipped while it was down had nothing left to change: the purge removed it.
        inner.dirty.store(false, Ordering::Release);
        tracing::info!("Redis cache available");
        inner.recovered.notify_waiters();
    }
}
