//! BalanceActor `balance:<user_id>`: the one writer of a user's money while it lives.
//!
//! It admits calls against open reservations, settles them into the charge journal, takes
//! top-ups, and runs the status machine. Its state is a cache of
//! `committed balance + the user's journal entries not yet committed`; the ledger writer
//! tells it after each commit what PostgreSQL now holds ([`BalanceMsg::Durable`]), so the
//! cache re-anchors on the database with every flush.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::actors::{Held, Probe, Traffic};
use crate::billing::{AccountStatus, Decimal};
use crate::db::ledger::BalanceAfter;
use crate::db::users::StoredBalance;
use crate::journal::{Committed, EntryKind, Journal, NewEntry, PendingEntry, UsageRecord};
use crate::snapshot::SnapshotHandle;

pub struct BalanceActor;

/// A user's money as read from PostgreSQL plus the journal, under the commit lock.
#[derive(Debug, Clone)]
pub struct LoadedBalance {
    pub stored: StoredBalance,
    pub pending: Vec<PendingEntry>,
}

pub struct BalanceArgs {
    pub user_id: Uuid,
    pub loaded: LoadedBalance,
    pub journal: Arc<Journal>,
    pub snapshot: SnapshotHandle,
    pub journal_max: usize,
    pub probe: Arc<Probe>,
}

/// How long a reservation may stay open (longer than any call: upstream timeouts are
/// per attempt, and a stream is billed when it ends, not when the reservation lapses).
const RESERVATION_TTL: Duration = Duration::from_secs(30 * 60);

pub struct BalanceState {
    probe: Arc<Probe>,
    held: Held<BalanceMsg>,
    user_id: Uuid,
    tenant_id: Uuid,
    durable_balance: Decimal,
    durable_status: AccountStatus,
    durable_version: i64,
    /// A newer committed state from another instance, kept until this instance's own
    /// entries have committed (only then does `durable + unflushed` stay exact).
    remote: Option<BalanceAfter>,
    /// This user's journal entries not yet known to be committed, oldest first.
    unflushed: VecDeque<PendingEntry>,
    balance: Decimal,
    status: AccountStatus,
    /// Open reservations and when each was made.
    reservations: HashMap<Uuid, (Decimal, Instant)>,
    reserved: Decimal,
    journal: Arc<Journal>,
    snapshot: SnapshotHandle,
    journal_max: usize,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The account is `pending` or `overdue` (402).
    NotActive(AccountStatus),
    /// The reservation does not fit: balance minus open reservations plus the tenant's
    /// overdraft allowance is less than it (402).
    InsufficientFunds,
    /// The charge journal is over its limit: the database is not keeping up (503).
    JournalFull,
}

/// The result of a settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Charged {
        balance: Decimal,
        status: AccountStatus,
    },
    /// The journal already holds this request's charge; nothing changed.
    Duplicate,
}

/// The reply to a credit: the state after it and a receiver that fires once it is
/// committed (`None` when the top-up was a duplicate of one still pending).
#[derive(Debug)]
pub struct CreditReply {
    pub applied: bool,
    pub balance: Decimal,
    pub status: AccountStatus,
    pub committed: Option<oneshot::Receiver<Committed>>,
}

/// A read-only view for the API and operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BalanceView {
    pub user_id: Uuid,
    #[serde(serialize_with = "crate::billing::ser_money")]
    pub balance: Decimal,
    pub status: AccountStatus,
    #[serde(serialize_with = "crate::billing::ser_money")]
    pub reserved: Decimal,
    pub open_reservations: usize,
    /// Entries applied here but not yet committed to PostgreSQL.
    pub not_durable: usize,
}

/// One charge to settle.
#[derive(Debug)]
pub struct ChargeRequest {
    pub request_id: Uuid,
    pub amount: Decimal,
    pub usage: UsageRecord,
}

pub enum BalanceMsg {
    /// Reserves `amount` for a call. Admitted when the account is active and the amount
    /// fits: `amount <= balance - open reservations + overdraft` (the tenant's allowance).
    /// Replies with the balance it admitted on and the balance version that includes (for
    /// the check against other instances' reservations and commits), or the refusal.
    Reserve {
        request_id: Uuid,
        amount: Decimal,
        overdraft: Decimal,
        reply: RpcReplyPort<Result<(Decimal, i64), Refusal>>,
    },
    /// Drops a reservation whose call was not billed. No reply.
    Release { request_id: Uuid },
    /// Charges a finished call: drops its reservation, journals the charge, moves the
    /// balance and status. Replies how it went.
    Settle {
        charge: Box<ChargeRequest>,
        reply: RpcReplyPort<Settled>,
    },
    /// Credits a top-up or a redemption (`kind`). Replies with the new state and a commit
    /// receiver.
    Credit {
        request_id: String,
        amount: Decimal,
        kind: EntryKind,
        reply: RpcReplyPort<CreditReply>,
    },
    /// PostgreSQL's state after a ledger commit that included this user. No reply.
    Durable(BalanceAfter),
    /// PostgreSQL's state after another instance's commit (a `balance_update` notice) or
    /// a periodic re-read. Applied when newer than what this actor knows. No reply.
    Remote(BalanceAfter),
    /// Replies with the current view.
    Get { reply: RpcReplyPort<BalanceView> },
    /// Stops the actor if it holds no open reservation (its balance and pending charges
    /// are rebuilt from PostgreSQL and the journal on the next use). Sent by the supervisor
    /// to actors idle longer than `NEUROPIA_PASSIVATE_SECS`. No reply.
    Passivate,
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for BalanceMsg {
    fn is_external(&self) -> bool {
        !matches!(self, Self::Passivate)
    }

    fn keeps_alive(&self) -> bool {
        matches!(
            self,
            Self::Reserve { .. } | Self::Release { .. } | Self::Settle { .. } | Self::Credit { .. }
        )
    }
}

pub type BalanceRef = ActorRef<BalanceMsg>;

impl BalanceActor {
    pub async fn spawn(
        args: BalanceArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<BalanceRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, BalanceActor, args, supervisor).await?;
        Ok(r)
    }
}

impl BalanceState {
    fn new(args: BalanceArgs) -> Self {
        let stored = args.loaded.stored;
        let mut s = Self {
            probe: args.probe,
            held: Held::default(),
            user_id: args.user_id,
            tenant_id: stored.tenant_id,
            durable_balance: stored.balance,
            durable_status: stored.status,
            durable_version: stored.version,
            remote: None,
            unflushed: args.loaded.pending.into(),
            balance: stored.balance,
            status: stored.status,
            reservations: HashMap::new(),
            reserved: Decimal::ZERO,
            journal: args.journal,
            snapshot: args.snapshot,
            journal_max: args.journal_max,
        };
        s.rebuild();
        s
    }

    /// balance = committed + uncommitted deltas; status = the newest entry's decision.
    fn rebuild(&mut self) {
        self.balance =
            self.durable_balance + self.unflushed.iter().map(|e| e.delta).sum::<Decimal>();
        self.status = self
            .unflushed
            .back()
            .map(|e| e.status_after)
            .unwrap_or(self.durable_status);
    }

    fn reserve(
        &mut self,
        request_id: Uuid,
        amount: Decimal,
        overdraft: Decimal,
    ) -> Result<(Decimal, i64), Refusal> {
        if self.status != AccountStatus::Active {
            return Err(Refusal::NotActive(self.status));
        }
        let fits = |s: &Self| s.balance - s.reserved + overdraft >= amount;
        if !fits(self) {
            self.expire_reservations();
            if !fits(self) {
                return Err(Refusal::InsufficientFunds);
            }
        }
        if self.journal.depth() >= self.journal_max {
            return Err(Refusal::JournalFull);
        }
        if let Some((old, _)) = self
            .reservations
            .insert(request_id, (amount, Instant::now()))
        {
            self.reserved -= old;
        }
        self.reserved += amount;
        Ok((self.balance, self.durable_version))
    }

    fn release(&mut self, request_id: Uuid) {
        if let Some((amount, _)) = self.reservations.remove(&request_id) {
            self.reserved -= amount;
        }
    }

    /// Drops reservations older than any call can last: their release was lost (a
    /// timed-out reserve applied late whose release was dropped, say) and they would
    /// otherwise hold the user's funds until this actor restarts.
    fn expire_reservations(&mut self) {
        let before = self.reservations.len();
        self.reservations
            .retain(|_, (_, at)| at.elapsed() < RESERVATION_TTL);
        if self.reservations.len() != before {
            self.reserved = self.reservations.values().map(|(a, _)| *a).sum();
            tracing::warn!(user_id = %self.user_id, expired = before - self.reservations.len(),
                "expired reservations whose release was lost");
        }
    }

    /// Journals an entry and, only if the journal took it, applies it here.
    fn apply(
        &mut self,
        request_id: String,
        delta: Decimal,
        status_after: AccountStatus,
        kind: EntryKind,
        ack: Option<oneshot::Sender<Committed>>,
    ) -> bool {
        let entry = NewEntry {
            request_id,
            user_id: self.user_id,
            delta,
            status_after,
            balance_after: self.balance + delta,
            kind,
            ack,
        };
        match self.journal.append(entry) {
            Ok(seq) => {
                self.unflushed.push_back(PendingEntry {
                    seq,
                    delta,
                    status_after,
                });
                self.balance += delta;
                self.status = status_after;
                true
            }
            Err(_) => false,
        }
    }

    fn settle(&mut self, charge: ChargeRequest) -> Settled {
        self.release(charge.request_id);
        let balance = self.balance - charge.amount;
        let status = self.status.after_charge(balance);
        let applied = self.apply(
            charge.request_id.to_string(),
            -charge.amount,
            status,
            EntryKind::Charge(Box::new(charge.usage)),
            None,
        );
        if applied {
            Settled::Charged {
                balance: self.balance,
                status: self.status,
            }
        } else {
            Settled::Duplicate
        }
    }

    fn credit(&mut self, request_id: String, amount: Decimal, kind: EntryKind) -> CreditReply {
        let threshold = self.snapshot.load().overdue_threshold(self.tenant_id);
        let balance = self.balance + amount;
        let status = self.status.after_credit(balance, threshold);
        let (tx, rx) = oneshot::channel();
        let applied = self.apply(request_id, amount, status, kind, Some(tx));
        CreditReply {
            applied,
            balance: self.balance,
            status: self.status,
            committed: applied.then_some(rx),
        }
    }

    /// Re-anchors on PostgreSQL after a commit that covered this user's entries up to
    /// `after.up_to_seq`. A report older than what is known is ignored; one with the same
    /// version (a batch whose entries were all duplicates: nothing moved) still retires
    /// those entries, undoing what they wrongly applied here.
    fn durable(&mut self, after: BalanceAfter) {
        if after.version < self.durable_version {
            return;
        }
        self.durable_balance = after.balance;
        self.durable_status = after.status;
        self.durable_version = after.version;
        while self
            .unflushed
            .front()
            .is_some_and(|e| e.seq <= after.up_to_seq)
        {
            self.unflushed.pop_front();
        }
        self.rebuild();
        if let Some(remote) = self.remote.take() {
            self.remote(remote);
        }
    }

    /// Takes another instance's committed state if it is newer than this actor's. While
    /// this actor has entries of its own not yet committed, it cannot tell which of them
    /// the newer state includes, so it keeps the state for when they have committed (their
    /// commit's own report is newer still, or this one is applied then).
    fn remote(&mut self, after: BalanceAfter) {
        if after.version <= self.durable_version {
            return;
        }
        if !self.unflushed.is_empty() {
            if self
                .remote
                .as_ref()
                .is_none_or(|r| r.version < after.version)
            {
                self.remote = Some(after);
            }
            return;
        }
        self.durable_balance = after.balance;
        self.durable_status = after.status;
        self.durable_version = after.version;
        self.rebuild();
    }

    fn view(&self) -> BalanceView {
        BalanceView {
            user_id: self.user_id,
            balance: self.balance,
            status: self.status,
            reserved: self.reserved,
            open_reservations: self.reservations.len(),
            not_durable: self.unflushed.len(),
        }
    }
}

impl Actor for BalanceActor {
    type Msg = BalanceMsg;
    type State = BalanceState;
    type Arguments = BalanceArgs;

    async fn pre_start(
        &self,
        _myself: BalanceRef,
        args: BalanceArgs,
    ) -> Result<BalanceState, ActorProcessingErr> {
        Ok(BalanceState::new(args))
    }

    async fn handle(
        &self,
        myself: BalanceRef,
        msg: BalanceMsg,
        state: &mut BalanceState,
    ) -> Result<(), ActorProcessingErr> {
        let user_id = state.user_id;
        let Some(msg) = state
            .probe
            .pass(|| format!("balance:{user_id}"), &mut state.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            BalanceMsg::Reserve {
                request_id,
                amount,
                overdraft,
                reply,
            } => {
                let _ = reply.send(state.reserve(request_id, amount, overdraft));
            }
            BalanceMsg::Release { request_id } => state.release(request_id),
            BalanceMsg::Settle { charge, reply } => {
                let _ = reply.send(state.settle(*charge));
            }
            BalanceMsg::Credit {
                request_id,
                amount,
                kind,
                reply,
            } => {
                let _ = reply.send(state.credit(request_id, amount, kind));
            }
            BalanceMsg::Durable(after) => state.durable(after),
            BalanceMsg::Remote(after) => state.remote(after),
            BalanceMsg::Get { reply } => {
                let _ = reply.send(state.view());
            }
            BalanceMsg::Passivate => {
                // Open reservations live only here; everything else is in PostgreSQL and
                // the journal, which a new actor reads.
                if state.reservations.is_empty() {
                    myself.stop(Some(crate::actors::PASSIVATED.into()));
                }
            }
            BalanceMsg::Poke => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::Usage;
    use crate::snapshot::Snapshot;
    use std::collections::HashSet;

    fn state(balance: i64, status: AccountStatus) -> BalanceState {
        BalanceState::new(BalanceArgs {
            user_id: Uuid::new_v4(),
            loaded: LoadedBalance {
                stored: StoredBalance {
                    tenant_id: Uuid::new_v4(),
                    balance: Decimal::from(balance),
                    status,
                    version: 1,
                },
                pending: vec![],
            },
            journal: Arc::new(Journal::new()),
            snapshot: Snapshot::default().handle(),
            journal_max: 1000,
            probe: Probe::new(),
        })
    }

    fn charge(amount: i64) -> ChargeRequest {
        ChargeRequest {
            request_id: Uuid::new_v4(),
            amount: Decimal::from(amount),
            usage: UsageRecord {
                tenant_id: Uuid::new_v4(),
                virtual_key_id: Uuid::new_v4(),
                provider: "mock".into(),
                model: "m".into(),
                usage: Usage::default(),
                input_rate: Decimal::ZERO,
                output_rate: Decimal::ZERO,
                markup_percent: Decimal::ZERO,
                cached_input_rate: None,
                cache_write_rate: None,
                reasoning_output_rate: None,
                platform_cost: Decimal::ZERO,
                usage_source: "upstream",
                budget_held: false,
                trace: None,
            },
        }
    }

    #[test]
    fn admission_needs_active_status_and_a_reservation_that_fits() {
        let zero = Decimal::ZERO;
        let mut s = state(10, AccountStatus::Pending);
        assert_eq!(
            s.reserve(Uuid::new_v4(), Decimal::ONE, zero),
            Err(Refusal::NotActive(AccountStatus::Pending))
        );
        let mut s = state(10, AccountStatus::Active);
        assert_eq!(
            s.reserve(Uuid::new_v4(), Decimal::from(11), zero),
            Err(Refusal::InsufficientFunds),
            "one call larger than the balance"
        );
        assert!(s.reserve(Uuid::new_v4(), Decimal::from(6), zero).is_ok());
        assert_eq!(
            s.reserve(Uuid::new_v4(), Decimal::from(6), zero),
            Err(Refusal::InsufficientFunds),
            "6 + 6 > 10"
        );
        assert!(
            s.reserve(Uuid::new_v4(), Decimal::from(4), zero).is_ok(),
            "exactly fits"
        );
        assert_eq!(
            s.reserve(Uuid::new_v4(), Decimal::ONE, zero),
            Err(Refusal::InsufficientFunds)
        );
        // An overdraft allowance of 3 lets 3 more through, and no more.
        assert!(
            s.reserve(Uuid::new_v4(), Decimal::from(3), Decimal::from(3))
                .is_ok()
        );
        assert_eq!(
            s.reserve(Uuid::new_v4(), Decimal::new(1, 2), Decimal::from(3)),
            Err(Refusal::InsufficientFunds)
        );
    }

    #[test]
    fn settling_charges_once_and_turns_overdue_at_zero() {
        let mut s = state(10, AccountStatus::Active);
        let c = charge(4);
        let id = c.request_id;
        s.reserve(id, Decimal::from(5), Decimal::ZERO)
            .expect("reserve");
        let again = ChargeRequest {
            request_id: id,
            ..charge(4)
        };
        assert!(matches!(s.settle(c), Settled::Charged { .. }));
        assert_eq!(s.reserved, Decimal::ZERO);
        assert_eq!(s.settle(again), Settled::Duplicate);
        assert_eq!(s.balance, Decimal::from(6));
        assert!(matches!(
            s.settle(charge(6)),
            Settled::Charged {
                status: AccountStatus::Overdue,
                ..
            }
        ));
        assert_eq!(s.journal.pending_sum(s.user_id), Decimal::from(-10));
    }

    #[test]
    fn durable_reanchors_on_the_database() {
        let mut s = state(10, AccountStatus::Active);
        s.settle(charge(3));
        s.settle(charge(2));
        let seqs: Vec<u64> = s.unflushed.iter().map(|e| e.seq).collect();
        // The first charge committed; the database also saw an outside +100 credit.
        let batch = s.journal.take_batch(0, 1);
        s.journal
            .complete(0, batch[0].seq, &HashSet::from([batch[0].seq]));
        s.durable(BalanceAfter {
            user_id: s.user_id,
            balance: Decimal::from(107),
            status: AccountStatus::Active,
            version: 2,
            up_to_seq: seqs[0],
        });
        assert_eq!(s.balance, Decimal::from(105));
        // A stale report changes nothing.
        s.durable(BalanceAfter {
            user_id: s.user_id,
            balance: Decimal::from(1),
            status: AccountStatus::Overdue,
            version: 1,
            up_to_seq: seqs[1],
        });
        assert_eq!(s.balance, Decimal::from(105));
        assert_eq!(s.status, AccountStatus::Active);
        // A duplicate (already in the ledger) is retired by a same-version report.
        let dup = s.credit(
            "already-there".into(),
            Decimal::from(50),
            EntryKind::TopUp { note: None },
        );
        assert_eq!(dup.balance, Decimal::from(155));
        let seq = s.unflushed.back().map(|e| e.seq).unwrap_or_default();
        s.durable(BalanceAfter {
            user_id: s.user_id,
            balance: Decimal::from(107),
            status: AccountStatus::Active,
            version: 2,
            up_to_seq: seq,
        });
        assert_eq!(s.balance, Decimal::from(107));
    }

    #[test]
    fn other_instances_changes_apply_once_own_entries_have_committed() {
        let mut s = state(10, AccountStatus::Active);
        let user_id = s.user_id;
        let remote = |balance: i64, status, version| BalanceAfter {
            user_id,
            balance: Decimal::from(balance),
            status,
            version,
            up_to_seq: 0,
        };
        // Nothing of its own on the way: another instance's top-up applies at once.
        let topped = remote(110, AccountStatus::Active, 3);
        s.remote(topped);
        assert_eq!(s.balance, Decimal::from(110));
        assert_eq!(s.durable_version, 3);
        // An older notice changes nothing.
        let stale = remote(1, AccountStatus::Overdue, 2);
        s.remote(stale);
        assert_eq!(s.balance, Decimal::from(110));
        // With a charge of its own uncommitted, a newer remote state waits: it may or may
        // not include that charge.
        s.settle(charge(4));
        let seq = s.unflushed.back().map(|e| e.seq).unwrap_or_default();
        let other = remote(100, AccountStatus::Active, 4);
        s.remote(other);
        assert_eq!(s.balance, Decimal::from(106), "own view kept meanwhile");
        // Its own commit came first (version 4 would then include it): the kept notice
        // (version 5: the other instance's charge of 6 after it) applies afterwards.
        let newer = remote(100, AccountStatus::Active, 5);
        s.remote(newer);
        let batch = s.journal.take_batch(0, 10);
        s.journal
            .complete(0, seq, &batch.iter().map(|e| e.seq).collect());
        s.durable(BalanceAfter {
            user_id: s.user_id,
            balance: Decimal::from(106),
            status: AccountStatus::Active,
            version: 4,
            up_to_seq: seq,
        });
        assert_eq!(s.balance, Decimal::from(100));
        assert_eq!(s.durable_version, 5);
        assert!(s.remote.is_none());
    }

    #[test]
    fn top_ups_follow_the_threshold_rule() {
        let mut s = state(0, AccountStatus::Pending);
        let r = s.credit(
            "t1".into(),
            Decimal::from(5),
            EntryKind::TopUp { note: None },
        );
        assert!(r.applied && r.committed.is_some());
        assert_eq!(
            (r.balance, r.status),
            (Decimal::from(5), AccountStatus::Active)
        );
        s.settle(charge(7));
        assert_eq!(s.status, AccountStatus::Overdue);
        let r = s.credit(
            "t2".into(),
            Decimal::from(1),
            EntryKind::TopUp { note: None },
        );
        assert_eq!(r.status, AccountStatus::Overdue, "balance -1 is not >= 0");
        let r = s.credit(
            "t3".into(),
            Decimal::from(2),
            EntryKind::TopUp { note: None },
        );
        assert_eq!((r.balance, r.status), (Decimal::ONE, AccountStatus::Active));
        let dup = s.credit(
            "t3".into(),
            Decimal::from(2),
            EntryKind::TopUp { note: None },
        );
        assert!(!dup.applied && dup.committed.is_none());
        assert_eq!(dup.balance, Decimal::ONE);
    }
}
