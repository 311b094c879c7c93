//! The charge journal: every balance movement between the moment a balance actor applies it
//! and the moment the ledger writer has committed it to PostgreSQL.
//!
//! The journal lives in [`crate::state::AppState`], not inside any actor, so it survives the
//! crash of a balance actor or of the ledger writer:
//!
//! - a balance actor appends an entry (in order, with the status it decided) and only then
//!   changes its own state; a restarted balance actor rebuilds its state from the database
//!   plus the user's entries still here ([`Journal::pending_for`]);
//! - the ledger writer moves entries to *in flight*, writes them in one transaction, and
//!   removes them once committed ([`Journal::complete`]); a restarted writer retries what is
//!   in flight first. The database refuses a `request_id` twice, so a retry never double
//!   charges.
//!
//! Committing a batch and removing it from the journal happen under the write half of
//! [`Journal::commit_lock`]; loading a balance takes the read half from its database read
//! until the new actor is registered, so a loader sees each entry either in the database or
//! here, never both and never neither.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, RwLock, oneshot};
use uuid::Uuid;

use crate::billing::{AccountStatus, Decimal, Usage};

/// What a charge was for: the data of its `usage_log` row.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub tenant_id: Uuid,
    pub virtual_key_id: Uuid,
    pub provider: String,
    pub model: String,
    pub usage: Usage,
    pub input_rate: Decimal,
    pub output_rate: Decimal,
    pub markup_percent: Decimal,
    /// The split's own rates, where the provider sets them (`None`: plain rates applied).
    pub cached_input_rate: Option<Decimal>,
    pub cache_write_rate: Option<Decimal>,
    pub reasoning_output_rate: Option<Decimal>,
    pub platform_cost: Decimal,
    /// `upstream` when the upstream reported usage, `estimated` when the gateway counted.
    pub usage_source: &'static str,
    /// The key's budget holds this call (`data.key_budget_hold`): the commit drops the hold.
    pub budget_held: bool,
    /// The call's trace, for its `ledger.commit` span (`None`: not traced).
    pub trace: Option<crate::trace::SpanContext>,
}

#[derive(Debug, Clone)]
pub enum EntryKind {
    Charge(Box<UsageRecord>),
    TopUp {
        note: Option<String>,
    },
    /// A redemption code's credit; the code is marked redeemed in the same transaction.
    Redemption {
        code_id: Uuid,
    },
}

impl EntryKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Charge(_) => "charge",
            Self::TopUp { .. } => "topup",
            Self::Redemption { .. } => "redemption",
        }
    }
}

/// One balance movement. `delta` is signed: charges are negative.
#[derive(Debug, Clone)]
pub struct EntryData {
    pub seq: u64,
    pub request_id: String,
    pub user_id: Uuid,
    pub delta: Decimal,
    pub status_after: AccountStatus,
    pub balance_after: Decimal,
    pub created_at: DateTime<Utc>,
    pub kind: EntryKind,
}

/// An entry as a balance actor needs it to rebuild its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    pub seq: u64,
    pub delta: Decimal,
    pub status_after: AccountStatus,
}

/// Told to whoever waits on an entry once its batch is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The row was inserted and the balance moved.
    Inserted,
    /// A row with this `request_id` was already in the ledger; nothing moved.
    Duplicate,
}

/// A new entry before the journal gives it a sequence number.
#[derive(Debug)]
pub struct NewEntry {
    pub request_id: String,
    pub user_id: Uuid,
    pub delta: Decimal,
    pub status_after: AccountStatus,
    /// The balance the actor saw after this entry (its view: exact on one instance).
    pub balance_after: Decimal,
    pub kind: EntryKind,
    pub ack: Option<oneshot::Sender<Committed>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate;

struct Slot {
    data: Arc<EntryData>,
    ack: Option<oneshot::Sender<Committed>>,
}

/// One writer lane: its entries in order, and the batch being written. A user's entries
/// all go to one lane, so each user's charges are committed in order.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Slot>,
    in_flight: Vec<Slot>,
}

#[derive(Default)]
struct Inner {
    lanes: Vec<Lane>,
    ids: HashSet<String>,
    next_seq: u64,
    /// Who waits for a request id's commit ([`Journal::committed`]).
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
}

pub struct Journal {
    inner: Mutex<Inner>,
    depth: AtomicUsize,
    /// Entries committed since the journal was made (duplicates included).
    written: std::sync::atomic::AtomicU64,
    wake: Notify,
    /// Write: the ledger writer, from commit until the batch left the journal.
    /// Read: a balance loader, from its database read until its actor is registered.
    pub commit_lock: Arc<RwLock<()>>,
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    /// A journal written by one lane.
    pub fn new() -> Self {
        Self::with_lanes(1)
    }

    /// A journal whose entries are split by user over `lanes` lanes, each written by its
    /// own transaction stream, so PostgreSQL can use more than one core.
    pub fn with_lanes(lanes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                next_seq: 1,
                lanes: (0..lanes.max(1)).map(|_| Lane::default()).collect(),
                ..Inner::default()
            }),
            depth: AtomicUsize::new(0),
            written: std::sync::atomic::AtomicU64::new(0),
            wake: Notify::new(),
            commit_lock: Arc::new(RwLock::new(())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave `Inner` half-changed (every method
        // changes it with infallible operations), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries committed to PostgreSQL since the journal was made.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// How many lanes the journal has.
    pub fn lanes(&self) -> usize {
        self.lock().lanes.len()
    }

    fn lane_of(lanes: usize, user_id: Uuid) -> usize {
        (user_id.as_u128() % lanes as u128) as usize
    }

    /// Appends an entry, or refuses a `request_id` the journal already holds.
    pub fn append(&self, entry: NewEntry) -> Result<u64, Duplicate> {
        let mut inner = self.lock();
        if inner.ids.contains(&entry.request_id) {
            return Err(Duplicate);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.ids.insert(entry.request_id.clone());
        let lane = Self::lane_of(inner.lanes.len(), entry.user_id);
        inner.lanes[lane].queue.push_back(Slot {
            data: Arc::new(EntryData {
                seq,
                request_id: entry.request_id,
                user_id: entry.user_id,
                delta: entry.delta,
                status_after: entry.status_after,
                balance_after: entry.balance_after,
                created_at: Utc::now(),
                kind: entry.kind,
            }),
            ack: entry.ack,
        });
        let was_empty = self.depth.fetch_add(1, Ordering::AcqRel) == 0;
        drop(inner);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// Entries not yet committed (queued or in flight).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Signals a waiter as if the journal had just become non-empty.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for the journal's next empty -> non-empty transition (a transition that
    /// happened while nobody waited is remembered once).
    pub async fn wait_for_wake(&self) {
        self.wake.notified().await;
    }

    /// The next batch of `lane` to write: whatever is already in flight there (a batch
    /// that failed or whose writer died), else up to `max` entries from the lane's queue,
    /// which become in flight.
    pub fn take_batch(&self, lane: usize, max: usize) -> Vec<Arc<EntryData>> {
        let mut inner = self.lock();
        let Some(lane) = inner.lanes.get_mut(lane) else {
            return Vec::new();
        };
        if lane.in_flight.is_empty() {
            let n = max.min(lane.queue.len());
            lane.in_flight = lane.queue.drain(..n).collect();
        }
        lane.in_flight.iter().map(|s| s.data.clone()).collect()
    }

    /// Removes a committed batch of `lane` (every in-flight entry with `seq <= up_to`) and
    /// tells each waiter how its entry fared. Entries not named in `inserted` were
    /// duplicates.
    pub fn complete(&self, lane: usize, up_to: u64, inserted: &HashSet<u64>) {
        let mut woken = Vec::new();
        let done: Vec<Slot> = {
            let mut inner = self.lock();
            let Some(slots) = inner.lanes.get_mut(lane) else {
                return;
            };
            let (done, keep): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut slots.in_flight)
                .into_iter()
                .partition(|s| s.data.seq <= up_to);
            slots.in_flight = keep;
            for slot in &done {
                inner.ids.remove(&slot.data.request_id);
                if !inner.waiters.is_empty()
                    && let Some(waiting) = inner.waiters.remove(&slot.data.request_id)
                {
                    woken.extend(waiting);
                }
            }
            self.depth.fetch_sub(done.len(), Ordering::AcqRel);
            self.written.fetch_add(done.len() as u64, Ordering::Relaxed);
            done
        };
        for w in woken {
            let _ = w.send(());
        }
        for slot in done {
            if let Some(ack) = slot.ack {
                let outcome = if inserted.contains(&slot.data.seq) {
                    Committed::Inserted
                } else {
                    Committed::Duplicate
                };
                let _ = ack.send(outcome);
            }
        }
    }

    /// Resolves once the entry of `request_id` is committed; `None` when no such entry is
    /// waiting (it was committed already). Call it after the entry was appended.
    pub fn committed(&self, request_id: &str) -> Option<oneshot::Receiver<()>> {
        let mut inner = self.lock();
        if !inner.ids.contains(request_id) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        inner
            .waiters
            .entry(request_id.to_owned())
            .or_default()
            .push(tx);
        Some(rx)
    }

    /// The user's entries not yet committed, oldest first.
    pub fn pending_for(&self, user_id: Uuid) -> Vec<PendingEntry> {
        let inner = self.lock();
        let lane = &inner.lanes[Self::lane_of(inner.lanes.len(), user_id)];
        lane.in_flight
            .iter()
            .chain(lane.queue.iter())
            .filter(|s| s.data.user_id == user_id)
            .map(|s| PendingEntry {
                seq: s.data.seq,
                delta: s.data.delta,
                status_after: s.data.status_after,
            })
            .collect()
    }

    /// Sum of the user's uncommitted deltas (for invariant checks and inspection).
    pub fn pending_sum(&self, user_id: Uuid) -> Decimal {
        self.pending_for(user_id).iter().map(|e| e.delta).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, user: Uuid, delta: i64) -> NewEntry {
        NewEntry {
            request_id: id.into(),
            user_id: user,
            delta: Decimal::from(delta),
            status_after: AccountStatus::Active,
            balance_after: Decimal::from(delta),
            kind: EntryKind::TopUp { note: None },
            ack: None,
        }
    }

    #[test]
    fn refuses_a_request_id_twice_until_committed() {
        let j = Journal::new();
        let u = Uuid::new_v4();
        assert_eq!(j.append(entry("a", u, 5)), Ok(1));
        assert_eq!(j.append(entry("a", u, 5)), Err(Duplicate));
        let batch = j.take_batch(0, 10);
        assert_eq!(batch.len(), 1);
        j.complete(0, 1, &HashSet::from([1]));
        assert_eq!(j.depth(), 0);
        assert_eq!(j.append(entry("a", u, 5)), Ok(2));
    }

    #[test]
    fn in_flight_batches_are_retried_before_new_entries() {
        let j = Journal::new();
        let u = Uuid::new_v4();
        for i in 0..5 {
            j.append(entry(&format!("r{i}"), u, -1)).expect("append");
        }
        let first: Vec<u64> = j.take_batch(0, 2).iter().map(|e| e.seq).collect();
        assert_eq!(first, vec![1, 2]);
        // The writer died: the same batch comes back.
        let again: Vec<u64> = j.take_batch(0, 2).iter().map(|e| e.seq).collect();
        assert_eq!(again, first);
        assert_eq!(j.pending_sum(u), Decimal::from(-5));
        j.complete(0, 2, &HashSet::from([1, 2]));
        let next: Vec<u64> = j.take_batch(0, 10).iter().map(|e| e.seq).collect();
        assert_eq!(next, vec![3, 4, 5]);
        assert_eq!(j.pending_for(u).len(), 3);
    }

    #[test]
    fn waiters_learn_whether_their_entry_was_inserted() {
        let j = Journal::new();
        let u = Uuid::new_v4();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let mut e1 = entry("x", u, 1);
        e1.ack = Some(tx1);
        let mut e2 = entry("y", u, 1);
        e2.ack = Some(tx2);
        j.append(e1).expect("append");
        j.append(e2).expect("append");
        j.take_batch(0, 10);
        j.complete(0, 2, &HashSet::from([1]));
        assert_eq!(rx1.try_recv().ok(), Some(Committed::Inserted));
        assert_eq!(rx2.try_recv().ok(), Some(Committed::Duplicate));
    }

    #[test]
    fn commit_waiters_by_request_id_wake_when_their_batch_commits() {
        let j = Journal::new();
        let u = Uuid::new_v4();
        assert!(j.committed("a").is_none(), "nothing to wait for");
        j.append(entry("a", u, -1)).expect("append");
        j.append(entry("b", u, -1)).expect("append");
        let mut a = j.committed("a").expect("a is pending");
        let mut b = j.committed("b").expect("b is pending");
        j.take_batch(0, 1);
        j.complete(0, 1, &HashSet::from([1]));
        assert_eq!(a.try_recv(), Ok(()));
        assert!(b.try_recv().is_err(), "b is not committed yet");
        assert!(j.committed("a").is_none());
        j.take_batch(0, 1);
        j.complete(0, 2, &HashSet::from([2]));
        assert_eq!(b.try_recv(), Ok(()));
    }

    #[test]
    fn lanes_keep_each_users_entries_together_and_in_order() {
        let j = Journal::with_lanes(2);
        // Two users in different lanes (the lane is the user id modulo the lane count).
        let a = Uuid::from_u128(2);
        let b = Uuid::from_u128(3);
        for i in 0..3 {
            j.append(entry(&format!("a{i}"), a, -1)).expect("append");
            j.append(entry(&format!("b{i}"), b, -1)).expect("append");
        }
        let lane0: Vec<u64> = j.take_batch(0, 10).iter().map(|e| e.seq).collect();
        let lane1: Vec<u64> = j.take_batch(1, 10).iter().map(|e| e.seq).collect();
        assert_eq!(lane0, vec![1, 3, 5], "user a's entries, oldest first");
        assert_eq!(lane1, vec![2, 4, 6], "user b's entries");
        // Lane 1 commits first: only its entries leave; lane 0's stay pending.
        j.complete(1, 6, &HashSet::from([2, 4, 6]));
        assert_eq!(j.depth(), 3);
        assert_eq!(j.pending_sum(a), Decimal::from(-3));
        assert_eq!(j.pending_sum(b), Decimal::ZERO);
        j.complete(0, 5, &HashSet::from([1, 3, 5]));
        assert_eq!(j.depth(), 0);
    }
}
