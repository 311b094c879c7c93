//! ConfigActor `config`: owns the routing snapshot. A reload reads the configuration tables
//! in a task and swaps the new snapshot in whole; readers on the hot path never wait.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sqlx::PgPool;

use crate::db;
use crate::snapshot::{Snapshot, SnapshotHandle};

pub struct ConfigActor;

#[derive(Clone)]
pub struct ConfigArgs {
    pub pool: PgPool,
    pub snapshot: SnapshotHandle,
}

pub struct ConfigState {
    args: ConfigArgs,
    loading: bool,
    /// Callers waiting for the load in progress.
    waiters: Vec<RpcReplyPort<Result<(), String>>>,
    /// Callers that asked while a load was running: they need a load that starts after
    /// their change, so they wait for the next one.
    next: Vec<RpcReplyPort<Result<(), String>>>,
    reloads: u64,
}

pub enum ConfigMsg {
    /// Rebuilds the snapshot from PostgreSQL; replies once a snapshot that includes every
    /// change committed before this message is in place.
    Reload(RpcReplyPort<Result<(), String>>),
    /// A load finished (sent by the actor's own task).
    Loaded(Result<Snapshot, String>),
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

fn start_load(myself: &ConfigRef, pool: &PgPool) {
    let (myself, pool) = (myself.clone(), pool.clone());
    tokio::spawn(async move {
        let result = db::config::load_snapshot(&pool)
            .await
            .map_err(|e| e.to_string());
        let _ = myself.cast(ConfigMsg::Loaded(result));
    });
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
        // A restarted ConfigActor may have missed changes: reload at once.
        start_load(&myself, &args.pool);
        Ok(ConfigState {
            args,
            loading: true,
            waiters: Vec::new(),
            next: Vec::new(),
            reloads: 0,
        })
    }

    async fn handle(
        &self,
        myself: ConfigRef,
        msg: ConfigMsg,
        state: &mut ConfigState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConfigMsg::Reload(reply) => {
                if state.loading {
                    state.next.push(reply);
                } else {
                    state.waiters.push(reply);
                    state.loading = true;
                    start_load(&myself, &state.args.pool);
                }
            }
            ConfigMsg::Loaded(result) => {
                let outcome = match result {
                    Ok(snapshot) => {
                        state.args.snapshot.store(std::sync::Arc::new(snapshot));
                        state.reloads += 1;
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "configuration reload failed");
                        Err(e)
                    }
                };
                for w in state.waiters.drain(..) {
                    let _ = w.send(outcome.clone());
                }
                state.loading = false;
                if !state.next.is_empty() {
                    state.waiters = std::mem::take(&mut state.next);
                    state.loading = true;
                    start_load(&myself, &state.args.pool);
                }
            }
        }
        Ok(())
    }
}
