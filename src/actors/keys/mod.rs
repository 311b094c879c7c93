//! KeySupervisor `keys`: spawns a [`KeyActor`] the first time a key is used, restarts one
//! that fails, keeps the directory (key hash -> actor) the request path reads, and is the
//! one place key changes reach live actors and the Redis cache.
//!
//! - Loading a key runs in a task: Redis first (`virtual_key:{hash}`), then PostgreSQL; the
//!   supervisor only books results, so a slow database never blocks its mailbox.
//!   Concurrent first uses of one key share a single load.
//! - A change (from the API, or from `NOTIFY` through the ConfigActor) is applied in
//!   mailbox order: pushed into the live actor (re-filed under its new hash after a
//!   rotation) and written to Redis. A key that changes while it is being loaded is loaded
//!   again. Records carry the row's `updated_at`; an older record than one already applied
//!   is ignored, so a slow refresh cannot undo a newer change.

mod facade;
mod gate;
mod key;
mod window;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sqlx::PgPool;
use uuid::Uuid;

pub use facade::{AdmitError, Admitted, Checked, Keys};
pub use gate::Gate;
pub use key::{Admission, Denied, KeyActor, KeyArgs, KeyMsg, KeyRef, KeyView};
pub use window::TokenWindow;

use super::{
    ChildBook, ChildPage, Exit, Handle, Held, Probe, ResolveError, SupervisorStats, Traffic, Window,
};
use crate::auth::KeyHash;
use crate::cache::Cache;
use crate::db;
use crate::db::keys::KeyRecord;

pub type KeyDirectory = Arc<DashMap<KeyHash, KeyHandle>>;

/// A live key actor with its probe.
pub type KeyHandle = Handle<KeyMsg>;

pub struct KeySupervisor;

#[derive(Clone)]
pub struct KeysArgs {
    pub pool: PgPool,
    pub directory: KeyDirectory,
    pub cache: Cache,
    pub probe: Arc<Probe>,
    /// Key actors idle this long are asked to stop (`None`: never).
    pub passivate_after: Option<Duration>,
}

pub struct KeysState {
    args: KeysArgs,
    held: Held<KeysMsg>,
    book: ChildBook<KeyHash, KeyHandle>,
    /// Key id of each live child, by hash.
    ids: HashMap<KeyHash, Uuid>,
    /// Keys that changed while being loaded: their load may have read the old row.
    stale: HashSet<KeyHash>,
    /// The newest `updated_at` applied per key id.
    newest: HashMap<Uuid, DateTime<Utc>>,
}

/// Where a loaded record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Database,
}

pub enum KeysMsg {
    /// Replies with the live actor of the key with this hash, spawning it (after loading
    /// the key) if needed; `NotFound` when no such key exists.
    Resolve {
        hash: KeyHash,
        reply: RpcReplyPort<Result<KeyHandle, ResolveError>>,
    },
    /// A load finished (sent by the supervisor's own load task).
    Loaded {
        hash: KeyHash,
        result: Result<Option<(KeyRecord, Source)>, String>,
    },
    /// The key changed: push `record` to its live actor (re-filing it under the new hash
    /// after a rotation from `old_hash`) and to Redis, or stop the actor when the key is
    /// gone (`record: None`). Replies (if asked) once the change is queued ahead of any
    /// later call.
    Changed {
        old_hash: Option<KeyHash>,
        record: Option<KeyRecord>,
        reply: Option<RpcReplyPort<()>>,
    },
    /// Re-reads every live key from PostgreSQL and applies what changed (after a listener
    /// reconnect, when Redis returns, and periodically). No reply.
    Refresh,
    /// The result of a refresh: each live key's hash and its current record (`None` when
    /// deleted).
    Refreshed(Vec<(KeyHash, Option<KeyRecord>)>),
    /// Replies with the count of live children and restarts.
    Stats(RpcReplyPort<SupervisorStats>),
    /// Replies with a page of children for the operators' tree.
    Children {
        window: Window,
        reply: RpcReplyPort<ChildPage<KeyMsg>>,
    },
    /// Replies with the live actor of the key with this id, if any (fault injection).
    Find {
        key_id: Uuid,
        reply: RpcReplyPort<Option<KeyHandle>>,
    },
    /// Asks the key actors idle longer than `passivate_after` to stop (timer). No reply.
    Sweep,
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for KeysMsg {
    fn is_external(&self) -> bool {
        !matches!(self, Self::Loaded { .. } | Self::Refreshed(_) | Self::Sweep)
    }
}

pub type KeysRef = ActorRef<KeysMsg>;

impl KeySupervisor {
    pub async fn spawn(
        args: KeysArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<KeysRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, KeySupervisor, args, supervisor).await?;
        Ok(r)
    }
}

/// Loads a key in a task: from Redis (unless `use_cache` is false), else PostgreSQL.
fn start_load(myself: &KeysRef, args: &KeysArgs, hash: KeyHash, use_cache: bool) {
    let (myself, pool, cache) = (myself.clone(), args.pool.clone(), args.cache.clone());
    tokio::spawn(async move {
        let cached = if use_cache {
            cache.get_key(hash).await
        } else {
            None
        };
        let result = match cached {
            Some(record) => Ok(Some((record, Source::Cache))),
            None => db::keys::find_by_hash(&pool, &hash)
                .await
                .map(|r| r.map(|r| (r, Source::Database)))
                .map_err(|e| e.to_string()),
        };
        let _ = myself.cast(KeysMsg::Loaded { hash, result });
    });
}

impl KeysState {
    /// True when `record` is not older than what was already applied for its key.
    fn fresh(&mut self, record: &KeyRecord) -> bool {
        match self.newest.get(&record.id) {
            Some(seen) if *seen > record.updated_at => false,
            _ => {
                if self.newest.len() > 100_000 {
                    let live: HashSet<Uuid> = self.ids.values().copied().collect();
                    self.newest.retain(|id, _| live.contains(id));
                }
                self.newest.insert(record.id, record.updated_at);
                true
            }
        }
    }

    fn changed(&mut self, old_hash: Option<KeyHash>, record: Option<KeyRecord>) {
        if let Some(r) = &record
            && !self.fresh(r)
        {
            return;
        }
        let new_hash = record.as_ref().map(|r| r.hash);
        for h in [old_hash, new_hash].into_iter().flatten() {
            if self.book.loading(&h) {
                self.stale.insert(h);
            }
        }
        // Redis first: the shard queues keep these ahead of any later read of the key.
        if let Some(old) = old_hash
            && Some(old) != new_hash
        {
            self.args.cache.del_key(old);
        }
        match &record {
            Some(r) if r.is_active => self.args.cache.set_key(r),
            Some(r) => self.args.cache.del_key(r.hash),
            None => {}
        }
        let live = [old_hash, new_hash]
            .into_iter()
            .flatten()
            .find_map(|h| self.args.directory.get(&h).map(|r| (h, r.clone())));
        let Some((at, actor)) = live else {
            return;
        };
        match record {
            Some(record) => {
                if record.hash != at {
                    self.args.directory.remove(&at);
                    self.args.directory.insert(record.hash, actor.clone());
                    self.book.rekey(&at, record.hash);
                    if let Some(id) = self.ids.remove(&at) {
                        self.ids.insert(record.hash, id);
                    }
                }
                let _ = actor.cast(KeyMsg::Replace(Box::new(record)));
            }
            None => {
                self.args.directory.remove(&at);
                self.args.cache.del_key(at);
                actor.actor.stop(Some("key deleted".into()));
            }
        }
    }

    async fn loaded(
        &mut self,
        myself: &KeysRef,
        hash: KeyHash,
        result: Result<Option<(KeyRecord, Source)>, String>,
    ) -> Result<KeyHandle, ResolveError> {
        if let Some(live) = self.args.directory.get(&hash).map(|r| r.clone()) {
            // Another load already put a live actor in place: keep that one.
            return Ok(live);
        }
        let (record, source) = match result {
            Ok(Some(found)) => found,
            Ok(None) => return Err(ResolveError::NotFound),
            Err(e) => {
                tracing::warn!(error = %e, "loading a key failed");
                return Err(ResolveError::Unavailable(e));
            }
        };
        let id = record.id;
        self.newest
            .entry(id)
            .and_modify(|t| *t = (*t).max(record.updated_at))
            .or_insert(record.updated_at);
        if source == Source::Database && record.is_active {
            self.args.cache.set_key(&record);
        }
        let name = format!("key:{id}");
        let probe = Probe::with_faults(self.book.faults(&hash));
        let args = KeyArgs {
            record,
            probe: probe.clone(),
        };
        let actor = KeyActor::spawn(args, myself.get_cell())
            .await
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        let child = Handle::new(actor, probe);
        self.book.started(hash, child.get_id(), name);
        self.ids.insert(hash, id);
        self.args.directory.insert(hash, child.clone());
        Ok(child)
    }

    fn refresh(&self, myself: &KeysRef) {
        let live: Vec<(KeyHash, Uuid)> = self.ids.iter().map(|(h, id)| (*h, *id)).collect();
        if live.is_empty() {
            return;
        }
        let (myself, pool) = (myself.clone(), self.args.pool.clone());
        tokio::spawn(async move {
            let ids: Vec<Uuid> = live.iter().map(|(_, id)| *id).collect();
            match db::keys::find_many_by_id(&pool, &ids).await {
                Ok(records) => {
                    let mut by_id: HashMap<Uuid, KeyRecord> =
                        records.into_iter().map(|r| (r.id, r)).collect();
                    let result = live
                        .into_iter()
                        .map(|(hash, id)| (hash, by_id.remove(&id)))
                        .collect();
                    let _ = myself.cast(KeysMsg::Refreshed(result));
                }
                Err(e) => tracing::warn!(error = %e, "refreshing live keys failed"),
            }
        });
    }
}

impl Actor for KeySupervisor {
    type Msg = KeysMsg;
    type State = KeysState;
    type Arguments = KeysArgs;

    async fn pre_start(
        &self,
        myself: KeysRef,
        args: KeysArgs,
    ) -> Result<KeysState, ActorProcessingErr> {
        // Children of a previous incarnation died with it: start from an empty directory.
        args.directory.clear();
        if let Some(after) = args.passivate_after {
            myself.send_interval(super::sweep_every(after), || KeysMsg::Sweep);
        }
        // When Redis comes back (purged), write the live keys into it again.
        let (cache, me) = (args.cache.clone(), myself.clone());
        tokio::spawn(async move {
            loop {
                cache.recovered().await;
                if me.cast(KeysMsg::Refresh).is_err() {
                    break;
                }
            }
        });
        Ok(KeysState {
            args,
            held: Held::default(),
            book: ChildBook::default(),
            ids: HashMap::new(),
            stale: HashSet::new(),
            newest: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: KeysRef,
        msg: KeysMsg,
        state: &mut KeysState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = state.args.probe.pass(|| "keys", &mut state.held, msg).await else {
            return Ok(());
        };
        match msg {
            KeysMsg::Poke => {}
            KeysMsg::Sweep => {
                if let Some(after) = state.args.passivate_after {
                    super::passivate_idle(&state.args.directory, after, || KeyMsg::Passivate);
                }
            }
            KeysMsg::Children { window, reply } => {
                let _ = reply.send(state.book.page_live(&state.args.directory, &window));
            }
            KeysMsg::Find { key_id, reply } => {
                let found = state
                    .ids
                    .iter()
                    .find(|(_, id)| **id == key_id)
                    .and_then(|(h, _)| state.args.directory.get(h).map(|r| r.clone()));
                let _ = reply.send(found);
            }
            KeysMsg::Resolve { hash, reply } => {
                if let Some(r) = state.args.directory.get(&hash) {
                    let _ = reply.send(Ok(r.clone()));
                } else if state.book.wait(hash, reply) {
                    start_load(&myself, &state.args, hash, true);
                }
            }
            KeysMsg::Stats(reply) => {
                let _ = reply.send(state.book.stats());
            }
            KeysMsg::Changed {
                old_hash,
                record,
                reply,
            } => {
                state.changed(old_hash, record);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            KeysMsg::Refresh => state.refresh(&myself),
            KeysMsg::Refreshed(list) => {
                for (hash, record) in list {
                    state.changed(Some(hash), record);
                }
            }
            KeysMsg::Loaded { hash, result } => {
                let outdated_cache = matches!(&result, Ok(Some((r, Source::Cache)))
                    if state.newest.get(&r.id).is_some_and(|t| *t > r.updated_at));
                if state.stale.remove(&hash) || outdated_cache {
                    // The row changed while it was read, or Redis held an older version:
                    // read it again from PostgreSQL.
                    start_load(&myself, &state.args, hash, false);
                    return Ok(());
                }
                let answer = state.loaded(&myself, hash, result).await;
                state.book.answer(&hash, answer);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: KeysRef,
        event: SupervisionEvent,
        state: &mut KeysState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((
            Exit {
                key: hash, failure, ..
            },
            reload,
        )) = state.book.exit_live(&event, &state.args.directory)
        else {
            return Ok(());
        };
        if !state.args.directory.contains_key(&hash) {
            state.ids.remove(&hash);
        }
        if let Some(reason) = failure {
            let name = state.book.meta(&hash).map(|m| m.name.clone());
            tracing::warn!(actor = ?name, %reason, "key actor failed; restarting");
            if reload {
                start_load(&myself, &state.args, hash, false);
            }
        }
        Ok(())
    }
}
