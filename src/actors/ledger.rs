//! LedgerWriter `ledger`: drains the charge journal into PostgreSQL in batches.
//!
//! A batch is written after `flush_every` of quiet or at once when a previous batch just
//! finished and entries are waiting, so batches grow with load by themselves. The journal
//! splits users over lanes; each lane has at most one batch being written, so a user's
//! charges commit in order while the lanes' transactions run side by side. The writes run
//! in tasks; the actor only schedules and books results. After each commit every
//! user in the batch is told PostgreSQL's new balance ([`BalanceMsg::Durable`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sqlx::PgPool;

use super::balances::{BalanceDirectory, BalanceMsg};
use super::{Held, Probe, Traffic};
use crate::db;
use crate::journal::{EntryData, Journal};

pub struct LedgerWriter;

/// An injected `db_fail`: ledger writes fail until a moment. Shared by every incarnation
/// of the writer, so a restart does not cure it.
#[derive(Debug, Default)]
pub struct WriteFault(std::sync::Mutex<Option<Instant>>);

impl WriteFault {
    pub fn fail_for(&self, period: Duration) {
        if let Ok(mut until) = self.0.lock() {
            *until = Some(Instant::now() + period);
        }
        tracing::warn!(
            ms = period.as_millis() as u64,
            "injected fault: ledger writes fail"
        );
    }

    pub fn clear(&self) {
        if let Ok(mut until) = self.0.lock() {
            *until = None;
        }
    }

    fn active(&self) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|u| *u)
            .is_some_and(|t| t > Instant::now())
    }
}

/// How often the writer checks the journal even without a wake-up.
const SAFETY_TICK: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct LedgerArgs {
    pub pool: PgPool,
    pub journal: Arc<Journal>,
    pub balances: BalanceDirectory,
    pub flush_every: Duration,
    pub batch_rows: usize,
    pub probe: Arc<Probe>,
    pub write_fault: Arc<WriteFault>,
    /// This process's id, in its `balance_update` notices; `None` with one instance (no
    /// notices).
    pub notify_as: Option<uuid::Uuid>,
    /// With several instances: the shared reservations of the charges in a batch are
    /// dropped once it commits (the other instances learn the charges from its notice).
    pub shared: Option<crate::reservations::GlobalReservations>,
}

/// What operators see of the ledger.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LedgerStats {
    pub journal_depth: usize,
    pub batches: u64,
    pub rows: u64,
    pub usage_rows: u64,
    pub duplicates: u64,
    pub failures: u64,
    pub last_flush_at: Option<DateTime<Utc>>,
    pub last_flush_ms: Option<f64>,
    pub last_error: Option<String>,
}

pub struct LedgerState {
    args: LedgerArgs,
    held: Held<LedgerMsg>,
    /// Per lane: a batch is being written.
    flushing: Vec<bool>,
    scheduled: bool,
    consecutive_failures: u32,
    stats: LedgerStats,
    drain_waiters: Vec<RpcReplyPort<()>>,
}

#[derive(Debug)]
pub struct FlushReport {
    rows: usize,
    inserted: usize,
    usage_rows: usize,
    elapsed: Duration,
}

pub enum LedgerMsg {
    /// The journal went from empty to non-empty. No reply.
    Kick,
    /// Time to write a batch. No reply.
    Flush,
    /// A lane's batch write finished. No reply.
    Done(usize, Result<FlushReport, String>),
    /// Replies once the journal is empty (used at shutdown).
    Drain(RpcReplyPort<()>),
    /// Replies with statistics.
    Stats(RpcReplyPort<LedgerStats>),
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for LedgerMsg {
    fn is_external(&self) -> bool {
        !matches!(self, Self::Kick | Self::Flush | Self::Done(..))
    }
}

pub type LedgerRef = ActorRef<LedgerMsg>;

impl LedgerWriter {
    pub async fn spawn(
        args: LedgerArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<LedgerRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, LedgerWriter, args, supervisor).await?;
        Ok(r)
    }
}

async fn write(
    args: LedgerArgs,
    lane: usize,
    batch: Vec<Arc<EntryData>>,
) -> Result<FlushReport, String> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let (tx, outcome) = db::ledger::prepare_batch(&args.pool, &batch, args.notify_as)
        .await
        .map_err(|e| e.to_string())?;
    let up_to = batch.iter().map(|e| e.seq).max().unwrap_or(0);
    {
        let _commit = args.journal.commit_lock.write().await;
        tx.commit().await.map_err(|e| e.to_string())?;
        args.journal.complete(lane, up_to, &outcome.inserted);
    }
    if crate::trace::enabled() {
        trace_commits(&batch, started_at);
    }
    if let Some(shared) = &args.shared {
        let versions: std::collections::HashMap<uuid::Uuid, i64> = outcome
            .balances
            .iter()
            .map(|b| (b.user_id, b.version))
            .collect();
        shared.committed(
            batch
                .iter()
                .filter(|e| matches!(e.kind, crate::journal::EntryKind::Charge(_)))
                .map(|e| {
                    let version = versions.get(&e.user_id).copied();
                    (e.user_id, version, e.request_id.as_str())
                }),
        );
    }
    for after in outcome.balances {
        if let Some(actor) = args.balances.get(&after.user_id) {
            let _ = actor.cast(BalanceMsg::Durable(after));
        }
    }
    Ok(FlushReport {
        rows: batch.len(),
        inserted: outcome.inserted.len(),
        usage_rows: outcome.usage_rows,
        elapsed: started.elapsed(),
    })
}

/// One `ledger.commit` span per traced charge of a committed batch, over the batch's write.
fn trace_commits(batch: &[Arc<EntryData>], started: std::time::SystemTime) {
    use crate::trace::{Kind, Span};
    for e in batch {
        let crate::journal::EntryKind::Charge(usage) = &e.kind else {
            continue;
        };
        let mut span = Span::child_since(usage.trace, "ledger.commit", Kind::Internal, started);
        span.str("neuropia.request_id", &e.request_id);
        span.display("neuropia.key_id", usage.virtual_key_id);
        span.int("neuropia.batch_rows", batch.len() as i64);
    }
}

impl LedgerState {
    fn busy(&self) -> bool {
        self.flushing.iter().any(|f| *f)
    }

    /// Starts a write on every idle lane that has entries; answers drain waiters once
    /// nothing is left.
    fn start_flush(&mut self, myself: &LedgerRef) {
        for lane in 0..self.flushing.len() {
            if self.flushing[lane] {
                continue;
            }
            let batch = self.args.journal.take_batch(lane, self.args.batch_rows);
            if batch.is_empty() {
                continue;
            }
            self.flushing[lane] = true;
            let (args, myself) = (self.args.clone(), myself.clone());
            let injected = self.args.write_fault.active();
            tokio::spawn(async move {
                let result = if injected {
                    Err("injected fault: database writes fail".to_owned())
                } else {
                    write(args, lane, batch).await
                };
                let _ = myself.cast(LedgerMsg::Done(lane, result));
            });
        }
        if !self.busy() && self.args.journal.depth() == 0 {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn schedule(&mut self, myself: &LedgerRef, after: Duration) {
        if !self.scheduled {
            self.scheduled = true;
            myself.send_after(after, || LedgerMsg::Flush);
        }
    }
}

impl Actor for LedgerWriter {
    type Msg = LedgerMsg;
    type State = LedgerState;
    type Arguments = LedgerArgs;

    async fn pre_start(
        &self,
        myself: LedgerRef,
        args: LedgerArgs,
    ) -> Result<LedgerState, ActorProcessingErr> {
        // Forward the journal's "no longer empty" signal as messages while this actor lives.
        let (journal, me) = (args.journal.clone(), myself.clone());
        tokio::spawn(async move {
            loop {
                journal.wait_for_wake().await;
                if me.cast(LedgerMsg::Kick).is_err() {
                    // This writer is gone: hand the wake-up on to its successor's forwarder.
                    journal.wake();
                    break;
                }
            }
        });
        // Entries left by a previous incarnation are written at once, and a slow tick makes
        // sure nothing waits for a wake-up that went astray.
        let _ = myself.cast(LedgerMsg::Kick);
        myself.send_interval(SAFETY_TICK, || LedgerMsg::Kick);
        let lanes = args.journal.lanes();
        Ok(LedgerState {
            args,
            held: Held::default(),
            flushing: vec![false; lanes],
            scheduled: false,
            consecutive_failures: 0,
            stats: LedgerStats::default(),
            drain_waiters: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: LedgerRef,
        msg: LedgerMsg,
        state: &mut LedgerState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = state
            .args
            .probe
            .pass(|| "ledger", &mut state.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            LedgerMsg::Kick => {
                if state.flushing.contains(&false) && state.args.journal.depth() > 0 {
                    // Strict durability (flush_every zero): responses wait for the commit,
                    // so write at once; entries arriving meanwhile form the next group.
                    if state.args.journal.depth() >= state.args.batch_rows
                        || state.args.flush_every.is_zero()
                    {
                        state.start_flush(&myself);
                    } else {
                        let every = state.args.flush_every;
                        state.schedule(&myself, every);
                    }
                }
            }
            LedgerMsg::Flush => {
                state.scheduled = false;
                state.start_flush(&myself);
            }
            LedgerMsg::Done(lane, result) => {
                state.flushing[lane] = false;
                match result {
                    Ok(report) => {
                        crate::metrics::ledger_flush(report.elapsed, report.rows);
                        state.consecutive_failures = 0;
                        let s = &mut state.stats;
                        s.batches += 1;
                        s.rows += report.rows as u64;
                        s.usage_rows += report.usage_rows as u64;
                        s.duplicates += (report.rows - report.inserted) as u64;
                        s.last_flush_at = Some(Utc::now());
                        s.last_flush_ms =
                            Some((report.elapsed.as_secs_f64() * 1e6).round() / 1000.0);
                        // Entries that arrived during the write go out at once (on
                        // every idle lane: a busy journal never wakes the writer again).
                        state.start_flush(&myself);
                    }
                    Err(e) => {
                        crate::metrics::ledger_flush_failed();
                        state.consecutive_failures += 1;
                        state.stats.failures += 1;
                        tracing::error!(error = %e, failures = state.consecutive_failures,
                            "ledger flush failed; the batch stays in the journal and is retried");
                        state.stats.last_error = Some(e);
                        let backoff = 10u64 << state.consecutive_failures.min(7);
                        state.schedule(&myself, Duration::from_millis(backoff));
                    }
                }
            }
            LedgerMsg::Drain(reply) => {
                if state.args.journal.depth() == 0 && !state.busy() {
                    let _ = reply.send(());
                } else {
                    state.drain_waiters.push(reply);
                    state.start_flush(&myself);
                }
            }
            LedgerMsg::Stats(reply) => {
                let mut stats = state.stats.clone();
                stats.journal_depth = state.args.journal.depth();
                let _ = reply.send(stats);
            }
            LedgerMsg::Poke => {}
        }
        Ok(())
    }
}
