//! BalanceSupervisor `balances`: spawns a [`BalanceActor`] per user in use and restarts
//! one that fails, rebuilding its state from PostgreSQL plus the journal.
//!
//! The load task takes the journal's commit lock (read half) before reading the database
//! and the supervisor releases it only after the new actor is in the directory. A ledger
//! commit therefore lands either wholly before the read (the database has it, the journal
//! no longer does) or after the registration (the actor is there to be told).

mod balance;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sqlx::PgPool;
use tokio::sync::OwnedRwLockReadGuard;
use uuid::Uuid;

use crate::reservations::Shared;

pub use balance::{
    BalanceActor, BalanceArgs, BalanceMsg, BalanceRef, BalanceView, ChargeRequest, CreditReply,
    LoadedBalance, Refusal, Settled,
};

use super::Live;
use super::client::{Children, ResolveMsg};
use super::{
    ChildBook, ChildPage, Exit, Handle, Held, Probe, ResolveError, SupervisorStats, Traffic, Window,
};
use crate::billing::Decimal;
use crate::db;
use crate::journal::{EntryKind, Journal};
use crate::snapshot::SnapshotHandle;

pub type BalanceDirectory = Arc<DashMap<Uuid, BalanceHandle>>;

/// A live balance actor with its probe.
pub type BalanceHandle = Handle<BalanceMsg>;

pub struct BalanceSupervisor;

/// How many times a settle is sent before the call is reported as not charged (over
/// about 1.5 s of backoff plus the actor timeouts).
const SETTLE_ROUNDS: u32 = 6;

#[derive(Clone)]
pub struct BalancesArgs {
    pub pool: PgPool,
    pub directory: BalanceDirectory,
    pub journal: Arc<Journal>,
    pub snapshot: SnapshotHandle,
    pub journal_max: usize,
    pub probe: Arc<Probe>,
    /// Balance actors idle this long are asked to stop (`None`: never).
    pub passivate_after: Option<Duration>,
    /// Several instances: a new actor re-reads its committed balance once registered, in
    /// case another instance's notice arrived while it was loading (and found no actor).
    pub recheck_after_load: bool,
}

pub struct BalancesState {
    args: BalancesArgs,
    held: Held<BalancesMsg>,
    book: ChildBook<Uuid, BalanceHandle>,
}

pub enum BalancesMsg {
    /// Replies with the live actor of `user_id`, spawning it (after loading the user's
    /// money) if needed; `NotFound` when the user does not exist.
    Resolve {
        user_id: Uuid,
        reply: RpcReplyPort<Result<BalanceHandle, ResolveError>>,
    },
    /// A load finished; `guard` keeps ledger commits out until the actor is registered.
    Loaded {
        user_id: Uuid,
        result: Result<Option<LoadedBalance>, String>,
        guard: OwnedRwLockReadGuard<()>,
    },
    /// Replies with the count of live children and restarts.
    Stats(RpcReplyPort<SupervisorStats>),
    /// Replies with a page of children for the operators' tree.
    Children {
        window: Window,
        reply: RpcReplyPort<ChildPage<BalanceMsg>>,
    },
    /// Asks the balance actors idle longer than `passivate_after` to stop (timer). No reply.
    Sweep,
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for BalancesMsg {
    fn is_external(&self) -> bool {
        !matches!(self, Self::Loaded { .. } | Self::Sweep)
    }
}

pub type BalancesRef = ActorRef<BalancesMsg>;

impl BalanceSupervisor {
    pub async fn spawn(
        args: BalancesArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<BalancesRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, BalanceSupervisor, args, supervisor).await?;
        Ok(r)
    }
}

/// Reads a user's committed money and pending journal entries, consistently.
pub async fn load_balance(
    pool: &PgPool,
    journal: &Journal,
    user_id: Uuid,
) -> (
    Result<Option<LoadedBalance>, String>,
    OwnedRwLockReadGuard<()>,
) {
    let guard = journal.commit_lock.clone().read_owned().await;
    let result = db::users::stored_balance(pool, user_id)
        .await
        .map(|stored| {
            stored.map(|stored| LoadedBalance {
                stored,
                pending: journal.pending_for(user_id),
            })
        })
        .map_err(|e| e.to_string());
    (result, guard)
}

/// Tells a freshly registered actor the committed balance read now (newer than its load if
/// another instance committed in between; ignored otherwise).
fn recheck(pool: &PgPool, user_id: Uuid, actor: &BalanceHandle) {
    let (pool, actor) = (pool.clone(), actor.clone());
    tokio::spawn(async move {
        if let Ok(list) = db::users::committed_balances(&pool, &[user_id]).await {
            for after in list {
                let _ = actor.cast(BalanceMsg::Remote(after));
            }
        }
    });
}

fn start_load(myself: &BalancesRef, args: &BalancesArgs, user_id: Uuid) {
    let (myself, pool, journal) = (myself.clone(), args.pool.clone(), args.journal.clone());
    tokio::spawn(async move {
        let (result, guard) = load_balance(&pool, &journal, user_id).await;
        let _ = myself.cast(BalancesMsg::Loaded {
            user_id,
            result,
            guard,
        });
    });
}

impl Actor for BalanceSupervisor {
    type Msg = BalancesMsg;
    type State = BalancesState;
    type Arguments = BalancesArgs;

    async fn pre_start(
        &self,
        myself: BalancesRef,
        args: BalancesArgs,
    ) -> Result<BalancesState, ActorProcessingErr> {
        args.directory.clear();
        if let Some(after) = args.passivate_after {
            myself.send_interval(crate::actors::sweep_every(after), || BalancesMsg::Sweep);
        }
        Ok(BalancesState {
            args,
            held: Held::default(),
            book: ChildBook::default(),
        })
    }

    async fn handle(
        &self,
        myself: BalancesRef,
        msg: BalancesMsg,
        state: &mut BalancesState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = state
            .args
            .probe
            .pass(|| "balances", &mut state.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            BalancesMsg::Poke => {}
            BalancesMsg::Sweep => {
                if let Some(after) = state.args.passivate_after {
                    crate::actors::passivate_idle(&state.args.directory, after, || {
                        BalanceMsg::Passivate
                    });
                }
            }
            BalancesMsg::Children { window, reply } => {
                let _ = reply.send(state.book.page_live(&state.args.directory, &window));
            }
            BalancesMsg::Resolve { user_id, reply } => {
                if let Some(r) = state.args.directory.get(&user_id) {
                    let _ = reply.send(Ok(r.clone()));
                } else if state.book.wait(user_id, reply) {
                    start_load(&myself, &state.args, user_id);
                }
            }
            BalancesMsg::Stats(reply) => {
                let _ = reply.send(state.book.stats());
            }
            BalancesMsg::Loaded {
                user_id,
                result,
                guard,
            } => {
                let live = state.args.directory.get(&user_id).map(|r| r.clone());
                let answer = match (live, result) {
                    // Another load already put a live actor in place: keep that one.
                    (Some(live), _) => Ok(live),
                    (None, Ok(Some(loaded))) => {
                        let probe = Probe::with_faults(state.book.faults(&user_id));
                        let args = BalanceArgs {
                            user_id,
                            loaded,
                            journal: state.args.journal.clone(),
                            snapshot: state.args.snapshot.clone(),
                            journal_max: state.args.journal_max,
                            probe: probe.clone(),
                        };
                        match BalanceActor::spawn(args, myself.get_cell()).await {
                            Ok(actor) => {
                                let child = Handle::new(actor, probe);
                                let name = format!("balance:{user_id}");
                                state.book.started(user_id, child.get_id(), name);
                                state.args.directory.insert(user_id, child.clone());
                                if state.args.recheck_after_load {
                                    recheck(&state.args.pool, user_id, &child);
                                }
                                Ok(child)
                            }
                            Err(e) => Err(ResolveError::Unavailable(e.to_string())),
                        }
                    }
                    (None, Ok(None)) => Err(ResolveError::NotFound),
                    (None, Err(e)) => {
                        tracing::warn!(error = %e, %user_id, "loading a balance failed");
                        Err(ResolveError::Unavailable(e))
                    }
                };
                drop(guard);
                state.book.answer(&user_id, answer);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: BalancesRef,
        event: SupervisionEvent,
        state: &mut BalancesState,
    ) -> Result<(), ActorProcessingErr> {
        tracing::debug!(event = ?event, "balances supervision event");
        let Some((
            Exit {
                key: user_id,
                failure,
                ..
            },
            reload,
        )) = state.book.exit_live(&event, &state.args.directory)
        else {
            return Ok(());
        };
        if let Some(reason) = failure {
            tracing::warn!(actor = %format!("balance:{user_id}"), %reason,
                "balance actor failed; restarting");
            if reload {
                start_load(&myself, &state.args, user_id);
            }
        }
        Ok(())
    }
}

/// Why a balance operation could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalanceError {
    UnknownUser,
    Refused(Refusal),
    Unavailable(String),
}

/// The request path's handle on the balance actors.
#[derive(Clone)]
pub struct Balances {
    children: Children<Uuid, BalanceMsg, BalancesMsg>,
    /// With several instances: every instance's open reservations, in Redis.
    pub shared: Option<crate::reservations::GlobalReservations>,
}

fn balance_error(e: ResolveError) -> BalanceError {
    match e {
        ResolveError::NotFound => BalanceError::UnknownUser,
        ResolveError::Unavailable(e) => BalanceError::Unavailable(e),
    }
}

impl Balances {
    pub fn new(
        supervisor: Live<BalancesMsg>,
        directory: BalanceDirectory,
        timeout: Duration,
        shared: Option<crate::reservations::GlobalReservations>,
    ) -> Self {
        let resolve: ResolveMsg<Uuid, BalanceMsg, BalancesMsg> =
            |user_id, reply| BalancesMsg::Resolve { user_id, reply };
        Self {
            children: Children::new("balance", supervisor, directory, timeout, resolve),
            shared,
        }
    }

    /// The live balance actors, by user id.
    pub fn directory(&self) -> &BalanceDirectory {
        &self.children.directory
    }

    /// The user's live actor (spawning it if needed).
    pub async fn handle(&self, user_id: Uuid) -> Result<BalanceHandle, BalanceError> {
        self.children.resolve(user_id).await.map_err(balance_error)
    }

    async fn call<T: Send + 'static>(
        &self,
        user_id: Uuid,
        attempts: u32,
        make: impl FnMut(RpcReplyPort<T>) -> BalanceMsg,
    ) -> Result<T, BalanceError> {
        self.children
            .call(user_id, attempts, make)
            .await
            .map(|(answer, _)| answer)
            .map_err(balance_error)
    }

    /// Reserves `amount` for a call: on the user's actor, then (with several instances)
    /// against every instance's open reservations.
    pub async fn reserve(
        &self,
        user_id: Uuid,
        request_id: Uuid,
        amount: Decimal,
        overdraft: Decimal,
    ) -> Result<(), BalanceError> {
        let result = self
            .call(user_id, 3, |reply| BalanceMsg::Reserve {
                request_id,
                amount,
                overdraft,
                reply,
            })
            .await;
        let (balance, version) = match result {
            Ok(r) => r.map_err(BalanceError::Refused)?,
            Err(e) => {
                // A timed-out reserve may still be applied later: undo it in mailbox order.
                self.release_here(user_id, request_id);
                return Err(e);
            }
        };
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        match shared
            .reserve(user_id, request_id, amount, balance + overdraft, version)
            .await
        {
            Shared::Reserved | Shared::Skipped => Ok(()),
            Shared::Refused => {
                self.release_here(user_id, request_id);
                Err(BalanceError::Refused(Refusal::InsufficientFunds))
            }
        }
    }

    /// Drops a reservation (best effort: a dead actor took its reservations with it, and a
    /// shared one left behind expires).
    pub fn release(&self, user_id: Uuid, request_id: Uuid) {
        self.release_here(user_id, request_id);
        if let Some(shared) = &self.shared {
            shared.release(user_id, request_id);
        }
    }

    fn release_here(&self, user_id: Uuid, request_id: Uuid) {
        if let Some(r) = self.children.directory.get(&user_id) {
            let _ = r.cast(BalanceMsg::Release { request_id });
        }
    }

    /// Settles a charge. A charge must not be lost, so this retries across actor restarts
    /// for longer than other calls; the journal makes a repeated settle a no-op.
    pub async fn settle(
        &self,
        user_id: Uuid,
        charge: ChargeRequest,
    ) -> Result<Settled, BalanceError> {
        let charge = Arc::new(charge);
        // A served call must be charged: a settle that was not answered (the actor was
        // stuck, or dropped the message) is sent again. That is safe: the journal and the
        // ledger take a request id once, so a late first attempt makes the retry a duplicate.
        let mut last = BalanceError::Unavailable("not tried".into());
        for round in 0..SETTLE_ROUNDS {
            let result = self
                .call(user_id, 12, |reply| BalanceMsg::Settle {
                    charge: Box::new(ChargeRequest {
                        request_id: charge.request_id,
                        amount: charge.amount,
                        usage: charge.usage.clone(),
                    }),
                    reply,
                })
                .await;
            match result {
                Err(BalanceError::Unavailable(e)) => {
                    tracing::warn!(%user_id, request_id = %charge.request_id, round, error = %e,
                        "settle not answered; sending it again");
                    last = BalanceError::Unavailable(e);
                    // Time for a restarting supervisor or actor to come back.
                    tokio::time::sleep(Duration::from_millis(50 << round)).await;
                }
                other => {
                    // A journaled charge (or a duplicate of one) keeps its shared
                    // reservation until the ledger commits it (the other instances then
                    // learn it from the notice); a failed settle lets it go now.
                    if other.is_err()
                        && let Some(shared) = &self.shared
                    {
                        shared.release(user_id, charge.request_id);
                    }
                    return other;
                }
            }
        }
        Err(last)
    }

    /// Credits a top-up or a redemption (idempotent by `request_id`: a retried attempt
    /// carries the same id, which the journal and the ledger refuse twice).
    pub async fn credit(
        &self,
        user_id: Uuid,
        request_id: String,
        amount: Decimal,
        kind: EntryKind,
    ) -> Result<CreditReply, BalanceError> {
        self.call(user_id, 3, |reply| BalanceMsg::Credit {
            request_id: request_id.clone(),
            amount,
            kind: kind.clone(),
            reply,
        })
        .await
    }

    pub async fn get(&self, user_id: Uuid) -> Result<BalanceView, BalanceError> {
        self.call(user_id, 3, |reply| BalanceMsg::Get { reply })
            .await
    }

    pub async fn stats(&self) -> Option<SupervisorStats> {
        let supervisor = self.children.supervisor();
        ractor::call_t!(supervisor, BalancesMsg::Stats, 1_000).ok()
    }
}
