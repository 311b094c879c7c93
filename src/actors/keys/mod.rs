//! KeySupervisor `keys`: spawns a [`KeyActor`] the first time a key is used, restarts one
//! that fails, and keeps the directory (key hash -> actor) the request path reads.
//!
//! Loading a key from PostgreSQL happens in a task; the supervisor only books results, so
//! a slow database never blocks its mailbox. Concurrent first uses of one key share a
//! single load.

mod key;
mod window;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sqlx::PgPool;

pub use key::{Admission, Denied, KeyActor, KeyArgs, KeyMsg, KeyRef, KeyView};
pub use window::TokenWindow;

use super::root::Live;
use super::{ChildBook, ResolveError, SupervisorStats};
use crate::auth::KeyHash;
use crate::db;
use crate::db::keys::KeyRecord;

pub type KeyDirectory = Arc<DashMap<KeyHash, KeyRef>>;

pub struct KeySupervisor;

#[derive(Clone)]
pub struct KeysArgs {
    pub pool: PgPool,
    pub directory: KeyDirectory,
}

pub struct KeysState {
    pool: PgPool,
    directory: KeyDirectory,
    book: ChildBook<KeyHash, KeyRef>,
    /// Keys that changed while being loaded: their load may have read the old row.
    stale: std::collections::HashSet<KeyHash>,
}

pub enum KeysMsg {
    /// Replies with the live actor of the key with this hash, spawning it (after loading
    /// the key) if needed; `NotFound` when no such key exists.
    Resolve {
        hash: KeyHash,
        reply: RpcReplyPort<Result<KeyRef, ResolveError>>,
    },
    /// A load finished (sent by the supervisor's own load task).
    Loaded {
        hash: KeyHash,
        result: Result<Option<KeyRecord>, String>,
    },
    /// The key changed in PostgreSQL: push `record` to its live actor (re-filing it under
    /// the new hash after a rotation from `old_hash`), or stop the actor when the key is
    /// gone (`record: None`). Replies once the change is queued ahead of any later call.
    Changed {
        old_hash: Option<KeyHash>,
        record: Option<KeyRecord>,
        reply: RpcReplyPort<()>,
    },
    /// Replies with the count of live children and restarts.
    Stats(RpcReplyPort<SupervisorStats>),
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

impl KeysState {
    fn changed(&mut self, old_hash: Option<KeyHash>, record: Option<KeyRecord>) {
        let new_hash = record.as_ref().map(|r| r.hash);
        for h in [old_hash, new_hash].into_iter().flatten() {
            if self.book.loading(&h) {
                self.stale.insert(h);
            }
        }
        let live = [old_hash, new_hash]
            .into_iter()
            .flatten()
            .find_map(|h| self.directory.get(&h).map(|r| (h, r.clone())));
        let Some((at, actor)) = live else {
            return;
        };
        match record {
            Some(record) => {
                if record.hash != at {
                    self.directory.remove(&at);
                    self.directory.insert(record.hash, actor.clone());
                    self.book.rekey(&at, record.hash);
                }
                let _ = actor.cast(KeyMsg::Replace(Box::new(record)));
            }
            None => {
                self.directory.remove(&at);
                actor.stop(Some("key deleted".into()));
            }
        }
    }
}

fn start_load(myself: &KeysRef, pool: &PgPool, hash: KeyHash) {
    let (myself, pool) = (myself.clone(), pool.clone());
    tokio::spawn(async move {
        let result = db::keys::find_by_hash(&pool, &hash)
            .await
            .map_err(|e| e.to_string());
        let _ = myself.cast(KeysMsg::Loaded { hash, result });
    });
}

impl Actor for KeySupervisor {
    type Msg = KeysMsg;
    type State = KeysState;
    type Arguments = KeysArgs;

    async fn pre_start(
        &self,
        _myself: KeysRef,
        args: KeysArgs,
    ) -> Result<KeysState, ActorProcessingErr> {
        // Children of a previous incarnation died with it: start from an empty directory.
        args.directory.clear();
        Ok(KeysState {
            pool: args.pool,
            directory: args.directory,
            book: ChildBook::default(),
            stale: Default::default(),
        })
    }

    async fn handle(
        &self,
        myself: KeysRef,
        msg: KeysMsg,
        state: &mut KeysState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KeysMsg::Resolve { hash, reply } => {
                if let Some(r) = state.directory.get(&hash) {
                    let _ = reply.send(Ok(r.clone()));
                } else if state.book.wait(hash, reply) {
                    start_load(&myself, &state.pool, hash);
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
                let _ = reply.send(());
            }
            KeysMsg::Loaded { hash, result } => {
                if state.stale.remove(&hash) {
                    // The row changed while it was read: read it again.
                    start_load(&myself, &state.pool, hash);
                    return Ok(());
                }
                let live = state.directory.get(&hash).map(|r| r.clone());
                let answer = match (live, result) {
                    // Another load already put a live actor in place: keep that one.
                    (Some(live), _) => Ok(live),
                    (None, Ok(Some(record))) => {
                        let name = format!("key:{}", record.id);
                        match Actor::spawn_linked(
                            None,
                            KeyActor,
                            KeyArgs { record },
                            myself.get_cell(),
                        )
                        .await
                        {
                            Ok((child, _)) => {
                                state.book.started(hash, child.get_id(), name);
                                state.directory.insert(hash, child.clone());
                                Ok(child)
                            }
                            Err(e) => Err(ResolveError::Unavailable(e.to_string())),
                        }
                    }
                    (None, Ok(None)) => Err(ResolveError::NotFound),
                    (None, Err(e)) => {
                        tracing::warn!(error = %e, "loading a key failed");
                        Err(ResolveError::Unavailable(e))
                    }
                };
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
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let reason = err.to_string();
                if let Some(hash) = state.book.exited(cell.get_id(), Some(reason.clone())) {
                    state
                        .directory
                        .remove_if(&hash, |_, r| r.get_id() == cell.get_id());
                    let name = state.book.meta(&hash).map(|m| m.name.clone());
                    tracing::warn!(actor = ?name, %reason, "key actor failed; restarting");
                    // A caller may already have had a replacement spawned.
                    let replaced = state.directory.contains_key(&hash);
                    if !replaced && state.book.mark_loading(hash) {
                        start_load(&myself, &state.pool, hash);
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(hash) = state.book.exited(cell.get_id(), None) {
                    state
                        .directory
                        .remove_if(&hash, |_, r| r.get_id() == cell.get_id());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Why a key refused a call, or why the call could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitError {
    UnknownKey,
    Denied(Denied),
    Unavailable(String),
}

/// The request path's handle on the key actors.
#[derive(Clone)]
pub struct Keys {
    pub supervisor: Live<KeysMsg>,
    pub directory: KeyDirectory,
    pub timeout: Duration,
}

impl Keys {
    async fn resolve(&self, hash: KeyHash) -> Result<KeyRef, AdmitError> {
        if let Some(r) = self.directory.get(&hash) {
            return Ok(r.clone());
        }
        let ms = self.timeout.as_millis() as u64;
        let supervisor = self.supervisor.get();
        match ractor::call_t!(supervisor, |reply| KeysMsg::Resolve { hash, reply }, ms) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(ResolveError::NotFound)) => Err(AdmitError::UnknownKey),
            Ok(Err(ResolveError::Unavailable(e))) => Err(AdmitError::Unavailable(e)),
            Err(e) => Err(AdmitError::Unavailable(format!("keys supervisor: {e}"))),
        }
    }

    /// Admits one call of `model` with the key whose hash is `hash`. A key actor that died
    /// between lookup and call is resolved again (its supervisor restarts it).
    pub async fn admit(
        &self,
        hash: KeyHash,
        model: &str,
        estimated_tokens: u64,
    ) -> Result<(Admission, KeyRef), AdmitError> {
        let ms = self.timeout.as_millis() as u64;
        let mut last = String::new();
        for attempt in 0..3 {
            let key = self.resolve(hash).await?;
            let model = model.to_owned();
            match ractor::call_t!(
                key,
                |reply| KeyMsg::Admit {
                    model,
                    estimated_tokens,
                    reply
                },
                ms
            ) {
                Ok(Ok(admission)) => return Ok((admission, key)),
                Ok(Err(denied)) => return Err(AdmitError::Denied(denied)),
                Err(ractor::RactorErr::Timeout) => {
                    return Err(AdmitError::Unavailable("key actor timed out".into()));
                }
                Err(e) => {
                    // The actor died: drop it from the directory and resolve again.
                    self.directory
                        .remove_if(&hash, |_, r| r.get_id() == key.get_id());
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
                }
            }
        }
        Err(AdmitError::Unavailable(format!(
            "key actor unavailable: {last}"
        )))
    }

    pub async fn stats(&self) -> Option<SupervisorStats> {
        let supervisor = self.supervisor.get();
        ractor::call_t!(supervisor, KeysMsg::Stats, 1_000).ok()
    }

    /// Pushes a key's new state to its live actor, if any. Returns once later calls are
    /// sure to see it.
    pub async fn changed(
        &self,
        old_hash: Option<KeyHash>,
        record: Option<KeyRecord>,
    ) -> Result<(), String> {
        let supervisor = self.supervisor.get();
        ractor::call_t!(
            supervisor,
            |reply| KeysMsg::Changed {
                old_hash,
                record,
                reply
            },
            self.timeout.as_millis() as u64
        )
        .map_err(|e| format!("keys supervisor: {e}"))
    }

    /// The key's current view (for `/v1/models`), or why it cannot be had.
    pub async fn describe(&self, hash: KeyHash) -> Result<KeyView, AdmitError> {
        let ms = self.timeout.as_millis() as u64;
        let key = self.resolve(hash).await?;
        ractor::call_t!(key, |reply| KeyMsg::Describe { reply }, ms)
            .map_err(|e| AdmitError::Unavailable(format!("key actor: {e}")))
    }
}
