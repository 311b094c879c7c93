//! ConfigActor `config`: the brief's configuration flow,
//! `database change -> NOTIFY -> ConfigActor -> snapshot, live actors and Redis`.
//!
//! - It owns the routing snapshot (model plans, rates, tenants, user markups, Portkey
//!   configs). A reload reads the tables in a task and swaps the new snapshot in whole;
//!   readers on the hot path never wait. Reloads coalesce: changes that arrive during one
//!   are covered by the next.
//! - It listens on `virtual_key_update`, `config_update` and `neuropia_config` (see
//!   [`listener`]). A key notification carries the whole key and goes straight to the
//!   KeySupervisor, which pushes it into the live key actor and Redis; anything else
//!   reloads the snapshot.
//! - Every (re)connection of the listener, and a periodic tick, reloads everything: the
//!   snapshot, every live key from PostgreSQL, and (after a reconnect) the Redis cache is
//!   purged, since notifications may have been lost. A payload that cannot be read does
//!   the same, never more.

pub mod listener;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Live;
use super::balances::{BalanceDirectory, BalanceMsg};
use super::keys::KeysMsg;
use super::{Held, Probe, Traffic};
use crate::auth::KeyHash;
use crate::cache::Cache;
use crate::config::Secret;
use crate::db;
use crate::db::keys::KeyRecord;
use crate::snapshot::{Snapshot, SnapshotHandle};

pub struct ConfigActor;

#[derive(Clone)]
pub struct ConfigArgs {
    pub probe: Arc<Probe>,
    pub pool: PgPool,
    pub snapshot: SnapshotHandle,
    pub keys: Live<KeysMsg>,
    pub cache: Cache,
    /// For the dedicated LISTEN connection.
    pub database_url: Secret,
    /// The safety net: reload everything this often.
    pub resync_every: Duration,
    /// Live balance actors, told about balance changes committed by other instances.
    pub balances: BalanceDirectory,
    /// With several instances, this process's id: its own `balance_update` notices are
    /// skipped, and live balances are re-read on every resync. `None` with one instance.
    pub instance: Option<Uuid>,
}

/// What operators see of the configuration flow.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStats {
    pub listener_connected: bool,
    pub listener_connects: u64,
    pub notifications: u64,
    pub malformed_notifications: u64,
    pub reloads: u64,
    pub resyncs: u64,
    pub last_reload_at: Option<DateTime<Utc>>,
    pub last_resync_at: Option<DateTime<Utc>>,
    pub last_listener_error: Option<String>,
}

/// Aborts the listener task when the actor's state goes away (a restart makes a new one).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct ConfigState {
    args: ConfigArgs,
    held: Held<ConfigMsg>,
    loading: bool,
    /// A reload was asked for while one was running: run another when it ends.
    again: bool,
    /// Callers waiting for the load in progress.
    waiters: Vec<RpcReplyPort<Result<(), String>>>,
    /// Callers that asked during a load: they need a load that starts after their change.
    next: Vec<RpcReplyPort<Result<(), String>>>,
    stats: ConfigStats,
    /// Database time of the last incremental key check.
    keys_checked_at: Option<DateTime<Utc>>,
    /// When the listener lost its connection (notifications since may be lost).
    listener_lost_at: Option<DateTime<Utc>>,
    _listener: AbortOnDrop,
}

pub enum ConfigMsg {
    /// Rebuilds the snapshot from PostgreSQL; replies once a snapshot that includes every
    /// change committed before this message is in place.
    Reload(RpcReplyPort<Result<(), String>>),
    /// A load finished (sent by the actor's own task).
    Loaded(Result<Box<Snapshot>, String>),
    /// A notification from the listener.
    Notified { channel: String, payload: String },
    /// The listener (re)connected: notifications may have been lost.
    ListenerUp,
    /// The listener lost its connection; it reconnects by itself.
    ListenerDown(String),
    /// Periodic safety net.
    Tick,
    /// The keys changed since the last periodic check.
    KeysChanged(Vec<db::keys::ChangedKey>, DateTime<Utc>),
    /// Replies with statistics.
    Stats(RpcReplyPort<ConfigStats>),
    /// Terminates the LISTEN connection's backend (injected `listener_disconnect`); the
    /// listener reconnects and everything is reloaded. No reply.
    DropListener,
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for ConfigMsg {
    fn is_external(&self) -> bool {
        matches!(
            self,
            Self::Reload(_) | Self::Stats(_) | Self::DropListener | Self::Poke
        )
    }
}

pub type ConfigRef = ActorRef<ConfigMsg>;

impl ConfigActor {
    pub async fn spawn(
        args: ConfigArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<ConfigRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, ConfigActor, args, supervisor).await?;
        Ok(r)
    }
}

/// A `virtual_key_update` payload.
#[derive(Deserialize)]
struct KeyNotice {
    virtual_key: String,
    old_virtual_key: Option<String>,
    virtual_key_id: Uuid,
    user_id: Uuid,
    tenant_id: Uuid,
    #[serde(default)]
    name: String,
    rate_limits: serde_json::Value,
    allowed_models: Vec<String>,
    is_active: bool,
    updated_at: DateTime<Utc>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    budgeted: bool,
    #[serde(default)]
    allowed_ips: Vec<String>,
}

/// The key record and previous hash a key notification describes.
fn key_notice(payload: &str) -> Result<(KeyRecord, Option<KeyHash>), String> {
    let n: KeyNotice = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let hash = KeyHash::from_hex(&n.virtual_key).ok_or("bad virtual_key hash")?;
    let old = match n.old_virtual_key.as_deref() {
        Some(h) => Some(KeyHash::from_hex(h).ok_or("bad old_virtual_key hash")?),
        None => None,
    };
    let limit = |name: &str| n.rate_limits.get(name).and_then(serde_json::Value::as_u64);
    Ok((
        KeyRecord {
            id: n.virtual_key_id,
            hash,
            user_id: n.user_id,
            tenant_id: n.tenant_id,
            name: n.name,
            rpm: limit("rpm").and_then(|v| u32::try_from(v).ok()),
            tpm: limit("tpm"),
            allowed_models: n.allowed_models,
            is_active: n.is_active,
            updated_at: n.updated_at,
            expires_at: n.expires_at,
            budgeted: n.budgeted,
            allowed_ips: n.allowed_ips,
        },
        old,
    ))
}

/// The id and action of a `config_update` payload.
fn config_notice(payload: &str) -> Result<(Uuid, String), String> {
    #[derive(Deserialize)]
    struct ConfigNotice {
        config_id: Uuid,
        action: String,
    }
    let n: ConfigNotice = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    Ok((n.config_id, n.action))
}

impl ConfigState {
    fn start_load(&mut self, myself: &ConfigRef) {
        self.loading = true;
        let (myself, pool) = (myself.clone(), self.args.pool.clone());
        tokio::spawn(async move {
            let result = db::config::load_snapshot(&pool)
                .await
                .map(Box::new)
                .map_err(|e| e.to_string());
            let _ = myself.cast(ConfigMsg::Loaded(result));
        });
    }

    fn reload(&mut self, myself: &ConfigRef) {
        if self.loading {
            self.again = true;
        } else {
            self.start_load(myself);
        }
    }

    /// Reloads everything: the snapshot and every live key; with `lost_since`, also the
    /// Redis entries of keys changed since then (notifications may have been lost).
    fn resync(&mut self, myself: &ConfigRef, lost_since: Option<DateTime<Utc>>) {
        self.stats.resyncs += 1;
        self.stats.last_resync_at = Some(Utc::now());
        if let Some(since) = lost_since {
            self.args.cache.invalidate_since(since);
        }
        self.reload(myself);
        let _ = self.args.keys.get().cast(KeysMsg::Refresh);
        self.refresh_balances();
    }

    /// Tells every live balance actor PostgreSQL's balance (another instance's changes may
    /// have been missed while the listener was away). An actor with entries of its own on
    /// the way keeps it until they commit.
    fn refresh_balances(&self) {
        if self.args.instance.is_none() {
            return;
        }
        let users: Vec<Uuid> = self.args.balances.iter().map(|e| *e.key()).collect();
        if users.is_empty() {
            return;
        }
        let (pool, directory) = (self.args.pool.clone(), self.args.balances.clone());
        tokio::spawn(async move {
            for chunk in users.chunks(5_000) {
                match db::users::committed_balances(&pool, chunk).await {
                    Ok(list) => {
                        for after in list {
                            if let Some(actor) = directory.get(&after.user_id) {
                                let _ = actor.cast(BalanceMsg::Remote(after));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing live balances failed");
                        return;
                    }
                }
            }
        });
    }

    fn loaded(&mut self, myself: &ConfigRef, result: Result<Box<Snapshot>, String>) {
        let outcome = match result {
            Ok(snapshot) => {
                for config in snapshot
                    .user_configs
                    .values()
                    .chain(snapshot.tenant_configs.values())
                {
                    self.args
                        .cache
                        .set_portkey(config.id, config.plan.redacted().to_string());
                }
                if let Some(at) = snapshot.next_change {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    myself.send_after(wait + Duration::from_millis(5), || ConfigMsg::Tick);
                }
                self.args.snapshot.store(Arc::new(*snapshot));
                self.stats.reloads += 1;
                self.stats.last_reload_at = Some(Utc::now());
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed");
                Err(e)
            }
        };
        for w in self.waiters.drain(..) {
            let _ = w.send(outcome.clone());
        }
        self.loading = false;
        if !self.next.is_empty() || self.again {
            self.waiters = std::mem::take(&mut self.next);
            self.again = false;
            self.start_load(myself);
        }
    }

    fn notified(&mut self, myself: &ConfigRef, channel: &str, payload: &str) {
        self.stats.notifications += 1;
        let parsed = match channel {
            "virtual_key_update" => key_notice(payload).map(|(record, old_hash)| {
                let _ = self.args.keys.get().cast(KeysMsg::Changed {
                    old_hash,
                    record: Some(record),
                    reply: None,
                });
            }),
            "balance_update" => db::notices::parse(payload).map(|(from, balances)| {
                if Some(from) != self.args.instance {
                    for after in balances {
                        if let Some(actor) = self.args.balances.get(&after.user_id) {
                            let _ = actor.cast(BalanceMsg::Remote(after));
                        }
                    }
                }
            }),
            "config_update" => config_notice(payload).map(|(id, action)| {
                if action == "deactivate" {
                    self.args.cache.del_portkey(id);
                }
                self.reload(myself);
            }),
            _ => {
                self.reload(myself);
                Ok(())
            }
        };
        if let Err(e) = parsed {
            self.stats.malformed_notifications += 1;
            tracing::warn!(%channel, error = %e, bytes = payload.len(),
                "unreadable notification; reloading everything");
            // The unreadable one may have been any key change of the last moments.
            self.resync(myself, Some(Utc::now() - chrono::Duration::seconds(60)));
        }
    }

    fn check_keys(&self, myself: &ConfigRef) {
        let since = self
            .keys_checked_at
            .map(|t| t - chrono::Duration::seconds(2));
        let (myself, pool) = (myself.clone(), self.args.pool.clone());
        tokio::spawn(async move {
            match db::keys::changed_since(&pool, since).await {
                Ok((changed, now)) => {
                    let _ = myself.cast(ConfigMsg::KeysChanged(changed, now));
                }
                Err(e) => tracing::warn!(error = %e, "checking changed keys failed"),
            }
        });
    }
}

impl Actor for ConfigActor {
    type Msg = ConfigMsg;
    type State = ConfigState;
    type Arguments = ConfigArgs;

    async fn pre_start(
        &self,
        myself: ConfigRef,
        args: ConfigArgs,
    ) -> Result<ConfigState, ActorProcessingErr> {
        let listener = tokio::spawn(listener::run(args.database_url.clone(), myself.clone()));
        myself.send_interval(args.resync_every, || ConfigMsg::Tick);
        let mut state = ConfigState {
            args,
            held: Held::default(),
            loading: false,
            again: false,
            waiters: Vec::new(),
            next: Vec::new(),
            stats: ConfigStats::default(),
            keys_checked_at: None,
            listener_lost_at: None,
            _listener: AbortOnDrop(listener),
        };
        // A restarted ConfigActor may have missed changes: reload at once.
        state.start_load(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ConfigRef,
        msg: ConfigMsg,
        state: &mut ConfigState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = state
            .args
            .probe
            .pass(|| "config", &mut state.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            ConfigMsg::Poke => {}
            ConfigMsg::DropListener => {
                let pool = state.args.pool.clone();
                tokio::spawn(async move {
                    let killed = sqlx::query_scalar::<_, Option<bool>>(
                        "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE application_name = 'neuropia-listener'
                           AND datname = current_database()",
                    )
                    .fetch_one(&pool)
                    .await;
                    tracing::warn!(result = ?killed, "injected fault: listener connection terminated");
                });
            }
            ConfigMsg::Reload(reply) => {
                if state.loading {
                    state.next.push(reply);
                } else {
                    state.waiters.push(reply);
                    state.start_load(&myself);
                }
            }
            ConfigMsg::Loaded(result) => state.loaded(&myself, result),
            ConfigMsg::Notified { channel, payload } => state.notified(&myself, &channel, &payload),
            ConfigMsg::ListenerUp => {
                state.stats.listener_connected = true;
                state.stats.listener_connects += 1;
                let lost = if state.stats.listener_connects > 1 {
                    tracing::warn!("configuration listener reconnected; reloading everything");
                    let since = state.listener_lost_at.take().unwrap_or_else(Utc::now);
                    Some(since - chrono::Duration::seconds(5))
                } else {
                    None
                };
                state.resync(&myself, lost);
            }
            ConfigMsg::ListenerDown(e) => {
                if state.stats.listener_connected {
                    tracing::warn!(error = %e, "configuration listener lost its connection");
                }
                state.listener_lost_at.get_or_insert_with(Utc::now);
                state.stats.listener_connected = false;
                state.stats.last_listener_error = Some(e);
            }
            ConfigMsg::Tick => {
                state.resync(&myself, None);
                state.check_keys(&myself);
            }
            ConfigMsg::KeysChanged(changed, now) => {
                // Safety net: a key changed since the last check whose notification went
                // astray may be cached stale. Drop its entries; the next use re-reads it.
                if state.keys_checked_at.is_some() {
                    for c in changed {
                        state.args.cache.del_key(c.hash);
                        if let Some(p) = c.previous {
                            state.args.cache.del_key(p);
                        }
                    }
                }
                state.keys_checked_at = Some(now);
            }
            ConfigMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_notices_become_records() {
        let hash = KeyHash::of("vk_a").to_hex();
        let old = KeyHash::of("vk_b").to_hex();
        let payload = serde_json::json!({
            "action": "rotate", "virtual_key": hash, "old_virtual_key": old,
            "virtual_key_id": Uuid::nil(), "user_id": Uuid::nil(), "tenant_id": Uuid::nil(),
            "name": "k", "rate_limits": {"rpm": 5}, "allowed_models": ["m"], "is_active": true,
            "updated_at": "2026-11-26T00:00:00Z", "key_prefix": "vk"
        })
        .to_string();
        let (record, previous) = key_notice(&payload).expect("parsed");
        assert_eq!((record.rpm, record.tpm), (Some(5), None));
        assert_eq!(record.hash, KeyHash::of("vk_a"));
        assert_eq!(previous, Some(KeyHash::of("vk_b")));
        assert!(key_notice("{oops").is_err());
        assert!(key_notice(r#"{"virtual_key": "zz"}"#).is_err());
    }
}
