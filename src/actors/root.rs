//! The root supervisor `neuropia`: spawns `config`, `keys`, `balances` and `ledger`,
//! restarts whichever fails (ractor's default would stop the root instead), and drains the
//! ledger on shutdown.
//!
//! The request path reaches the supervisors through [`Live`] handles, which the root
//! repoints when it restarts a child, so nobody holds a reference to a dead supervisor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::balances::{BalanceSupervisor, BalancesArgs, BalancesMsg};
use super::breaker::{UpstreamSupervisor, UpstreamsArgs, UpstreamsMsg};
use super::config::{ConfigActor, ConfigArgs, ConfigMsg};
use super::keys::{KeySupervisor, KeysArgs, KeysMsg};
use super::ledger::{LedgerArgs, LedgerMsg, LedgerWriter};
use super::{Faults, Handle, Live, Probe};

/// Handles on the root's children.
#[derive(Clone)]
pub struct Tree {
    pub config: Live<ConfigMsg>,
    pub keys: Live<KeysMsg>,
    pub balances: Live<BalancesMsg>,
    pub ledger: Live<LedgerMsg>,
    pub upstreams: Live<UpstreamsMsg>,
}

/// What the ConfigActor needs besides the key supervisor (which the root supplies).
#[derive(Clone)]
pub struct ConfigBase {
    pub pool: sqlx::PgPool,
    pub snapshot: crate::snapshot::SnapshotHandle,
    pub cache: crate::cache::Cache,
    pub database_url: crate::config::Secret,
    pub resync_every: Duration,
    /// The live balance actors, told about other instances' balance changes.
    pub balances: super::balances::BalanceDirectory,
    /// With several instances, this process's id (its own `balance_update` notices are
    /// skipped); `None` with one instance (no notices, no balance re-reads).
    pub instance: Option<uuid::Uuid>,
}

impl ConfigBase {
    fn args(&self, keys: Live<KeysMsg>, probe: Arc<Probe>) -> ConfigArgs {
        ConfigArgs {
            probe,
            pool: self.pool.clone(),
            snapshot: self.snapshot.clone(),
            keys,
            cache: self.cache.clone(),
            database_url: self.database_url.clone(),
            resync_every: self.resync_every,
            balances: self.balances.clone(),
            instance: self.instance,
        }
    }
}

#[derive(Clone)]
pub struct RootArgs {
    pub config: ConfigBase,
    pub keys: KeysArgs,
    pub balances: BalancesArgs,
    pub ledger: LedgerArgs,
    pub upstreams: UpstreamsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Config,
    Keys,
    Balances,
    Ledger,
    Upstreams,
}

impl Child {
    pub fn name(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Keys => "keys",
            Self::Balances => "balances",
            Self::Ledger => "ledger",
            Self::Upstreams => "upstreams",
        }
    }
}

/// Restart count and last failure of one of the root's children.
#[derive(Debug, Clone)]
pub struct ChildRecord {
    pub restarts: u32,
    pub started_at: Instant,
    pub last_failure: Option<String>,
}

pub struct RootState {
    args: RootArgs,
    tree: Tree,
    by_actor: HashMap<ActorId, Child>,
    records: HashMap<Child, ChildRecord>,
}

pub enum RootMsg {
    /// Replies with handles on the children.
    Tree(RpcReplyPort<Tree>),
    /// Writes everything left in the journal, then replies. Used at shutdown.
    Drain(RpcReplyPort<()>),
    /// Replies with each child's name and record, for the operators' tree.
    Children(RpcReplyPort<Vec<(&'static str, ChildRecord)>>),
}

pub type RootRef = ActorRef<RootMsg>;

pub struct Root;

impl Root {
    /// Spawns the whole tree; returns the root and handles on its children.
    pub async fn start(args: RootArgs) -> Result<(RootRef, Tree), String> {
        let (root, _) = Actor::spawn(None, Root, args)
            .await
            .map_err(|e| format!("starting the actor tree: {e}"))?;
        let tree = ractor::call_t!(root, RootMsg::Tree, 5_000)
            .map_err(|e| format!("starting the actor tree: {e}"))?;
        Ok((root, tree))
    }
}

/// Spawns one child with a new probe carrying `faults`.
async fn spawn_child(
    which: Child,
    args: &RootArgs,
    keys: Option<&Live<KeysMsg>>,
    me: ractor::ActorCell,
    faults: Arc<Faults>,
) -> Result<(ractor::ActorCell, Arc<Probe>), ractor::SpawnErr> {
    let probe = Probe::with_faults(faults);
    let p = probe.clone();
    let cell = match which {
        Child::Config => {
            let keys = keys.ok_or_else(|| {
                ractor::SpawnErr::StartupFailed("config needs the keys supervisor".into())
            })?;
            ConfigActor::spawn(args.config.args(keys.clone(), p), me)
                .await?
                .get_cell()
        }
        Child::Keys => KeySupervisor::spawn(
            KeysArgs {
                probe: p,
                ..args.keys.clone()
            },
            me,
        )
        .await?
        .get_cell(),
        Child::Balances => BalanceSupervisor::spawn(
            BalancesArgs {
                probe: p,
                ..args.balances.clone()
            },
            me,
        )
        .await?
        .get_cell(),
        Child::Ledger => LedgerWriter::spawn(
            LedgerArgs {
                probe: p,
                ..args.ledger.clone()
            },
            me,
        )
        .await?
        .get_cell(),
        Child::Upstreams => UpstreamSupervisor::spawn(
            UpstreamsArgs {
                probe: p,
                ..args.upstreams.clone()
            },
            me,
        )
        .await?
        .get_cell(),
    };
    Ok((cell, probe))
}

fn handle<M: ractor::Message>((cell, probe): (ractor::ActorCell, Arc<Probe>)) -> Handle<M> {
    Handle::new(cell.into(), probe)
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: RootRef,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let me = myself.get_cell();
        let keys: Handle<KeysMsg> =
            handle(spawn_child(Child::Keys, &args, None, me.clone(), Faults::new()).await?);
        let keys_live = Live::new(keys.clone());
        let config: Handle<ConfigMsg> = handle(
            spawn_child(
                Child::Config,
                &args,
                Some(&keys_live),
                me.clone(),
                Faults::new(),
            )
            .await?,
        );
        let balances: Handle<BalancesMsg> =
            handle(spawn_child(Child::Balances, &args, None, me.clone(), Faults::new()).await?);
        let ledger: Handle<LedgerMsg> =
            handle(spawn_child(Child::Ledger, &args, None, me.clone(), Faults::new()).await?);
        let upstreams: Handle<UpstreamsMsg> =
            handle(spawn_child(Child::Upstreams, &args, None, me, Faults::new()).await?);
        let mut by_actor = HashMap::new();
        by_actor.insert(config.get_id(), Child::Config);
        by_actor.insert(keys.get_id(), Child::Keys);
        by_actor.insert(balances.get_id(), Child::Balances);
        by_actor.insert(ledger.get_id(), Child::Ledger);
        by_actor.insert(upstreams.get_id(), Child::Upstreams);
        let now = Instant::now();
        let records = [
            Child::Config,
            Child::Keys,
            Child::Balances,
            Child::Ledger,
            Child::Upstreams,
        ]
        .into_iter()
        .map(|c| {
            (
                c,
                ChildRecord {
                    restarts: 0,
                    started_at: now,
                    last_failure: None,
                },
            )
        })
        .collect();
        Ok(RootState {
            args,
            tree: Tree {
                config: Live::new(config),
                keys: keys_live,
                balances: Live::new(balances),
                ledger: Live::new(ledger),
                upstreams: Live::new(upstreams),
            },
            by_actor,
            records,
        })
    }

    async fn handle(
        &self,
        _myself: RootRef,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Tree(reply) => {
                let _ = reply.send(state.tree.clone());
            }
            RootMsg::Children(reply) => {
                let mut list: Vec<(&'static str, ChildRecord)> = state
                    .records
                    .iter()
                    .map(|(c, r)| (c.name(), r.clone()))
                    .collect();
                list.sort_by_key(|(n, _)| *n);
                let _ = reply.send(list);
            }
            RootMsg::Drain(reply) => {
                let (ledger, journal) =
                    (state.tree.ledger.clone(), state.args.ledger.journal.clone());
                // Answer from a task: draining waits on the database. Asked again each
                // second, of whichever writer is current, for up to 30 s: a request lost
                // to a dropped message or a restart must not stall the shutdown.
                tokio::spawn(async move {
                    for _ in 0..30 {
                        let drained = ledger
                            .get()
                            .call(LedgerMsg::Drain, Some(Duration::from_secs(1)))
                            .await;
                        if matches!(drained, Ok(ractor::rpc::CallResult::Success(())))
                            || journal.depth() == 0
                        {
                            break;
                        }
                    }
                    let _ = reply.send(());
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: RootRef,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            _ => return Ok(()),
        };
        let Some(which) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        tracing::warn!(actor = which.name(), failure = ?failure, "child exited; restarting");
        let t = &state.tree;
        let faults = match which {
            Child::Config => t.config.get().probe.faults(),
            Child::Keys => t.keys.get().probe.faults(),
            Child::Balances => t.balances.get().probe.faults(),
            Child::Ledger => t.ledger.get().probe.faults(),
            Child::Upstreams => t.upstreams.get().probe.faults(),
        };
        match spawn_child(
            which,
            &state.args,
            Some(&state.tree.keys),
            myself.get_cell(),
            faults,
        )
        .await
        {
            Ok(new) => {
                state.by_actor.insert(new.0.get_id(), which);
                match which {
                    Child::Config => state.tree.config.set(handle(new)),
                    Child::Keys => state.tree.keys.set(handle(new)),
                    Child::Balances => state.tree.balances.set(handle(new)),
                    Child::Ledger => state.tree.ledger.set(handle(new)),
                    Child::Upstreams => state.tree.upstreams.set(handle(new)),
                }
                if let Some(rec) = state.records.get_mut(&which) {
                    rec.restarts += 1;
                    rec.started_at = Instant::now();
                    rec.last_failure = failure;
                }
            }
            Err(e) => {
                // Without this child the gateway cannot work: fail the root loudly.
                return Err(format!("restarting {} failed: {e}", which.name()).into());
            }
        }
        Ok(())
    }
}
