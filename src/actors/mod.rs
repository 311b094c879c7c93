//! The supervision tree (DESIGN.md section 1):
//!
//! ```text
//! neuropia                 root: owns the long-lived children, drains them on shutdown
//! ├── config               ConfigActor: the routing snapshot
//! ├── keys                 KeySupervisor
//! │   └── key:<key_id>     KeyActor: active flag, allow-list, rpm (governor), tpm window
//! ├── balances             BalanceSupervisor
//! │   └── balance:<user>   BalanceActor: balance, status machine, reservations
//! ├── ledger               LedgerWriter: drains the charge journal into PostgreSQL
//! └── upstreams            UpstreamSupervisor ([`breaker`])
//!     └── upstream:<target> BreakerActor: one circuit breaker per provider target
//! ```
//!
//! Every actor file has the same shape: its `Args`, `State` and `Msg` (with a [`Traffic`]
//! impl for the fault gate), a `spawn`, and `impl Actor` whose `handle` starts with
//! [`Probe::pass`]. The request path reaches key and balance actors through
//! [`client::Children`]; [`tree`] renders the live tree for operators.
//!
//! Names are Neuropia's own directory, not ractor's process-global registry: several
//! gateways can then live in one process (the tests run many), and a supervisor's
//! bookkeeping ([`ChildBook`]) carries what an operator wants to see per child (restarts,
//! last failure, uptime).

pub mod balances;
pub mod breaker;
pub mod client;
pub mod config;
pub mod keys;
pub mod ledger;
pub mod probe;
pub mod root;
pub mod tree;

pub use probe::{Fault, Faults, Handle, Held, Live, Probe, Traffic, quiet_injected_panics};

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{ActorId, RpcReplyPort};

/// The stop reason of a passivated child.
pub const PASSIVATED: &str = "passivated";

/// Children passivated in this process so far, every supervisor together: after a wave of
/// passivations the binary hands the memory they freed back to the operating system.
static PASSIVATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many children have been passivated in this process.
pub fn passivations() -> u64 {
    PASSIVATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A map that shrank to a quarter of its (large) capacity: after passivation, a map sized
/// for 100k live actors keeps their room until it is shrunk.
fn sparse(len: usize, capacity: usize) -> bool {
    capacity > 1_024 && len * 4 < capacity
}

/// Gives back the room of a directory that became [`sparse`].
fn shrink_if_sparse<K: Eq + Hash, V>(map: &dashmap::DashMap<K, V>) {
    if sparse(map.len(), map.capacity()) {
        map.shrink_to_fit();
    }
}

/// How often a supervisor looks for idle children to passivate.
pub fn sweep_every(after: Duration) -> Duration {
    (after / 2).clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// Asks every child of `directory` idle for `after` with nothing waiting in its mailbox
/// to stop; each decides whether it can without losing state.
pub fn passivate_idle<K, M: ractor::Message>(
    directory: &dashmap::DashMap<K, Handle<M>>,
    after: Duration,
    msg: impl Fn() -> M,
) where
    K: Eq + Hash,
{
    for child in directory.iter() {
        let probe = &child.probe;
        if probe.idle() >= after && probe.stats().backlog == 0 {
            // Not counted as sent: the actor does not count it as handled either.
            let _ = child.actor.cast(msg());
        }
    }
    shrink_if_sparse(directory);
}

/// Why a supervisor could not hand out a child.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("not found")]
    NotFound,
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A supervisor's counts, for health and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SupervisorStats {
    pub live: usize,
    pub restarts: u64,
    /// Children stopped after being idle (they come back on their next use).
    pub passivated: u64,
}

/// One child as shown in the operators' tree.
pub struct ChildInfo<M: ractor::Message> {
    pub name: String,
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// `None` while the child is being restarted.
    pub handle: Option<Handle<M>>,
}

/// Which of a supervisor's children the operators' tree shows: those whose name contains
/// `find` (all when `None`), from `offset`, at most `limit`, by name.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub offset: usize,
    pub limit: usize,
    pub find: Option<String>,
}

/// A page of a supervisor's children, by name.
pub struct ChildPage<M: ractor::Message> {
    pub total: usize,
    pub children: Vec<ChildInfo<M>>,
}

/// What a supervisor remembers about one child, alive or being restarted.
#[derive(Debug, Clone)]
pub struct ChildMeta {
    pub name: String,
    pub started_at: Instant,
    pub restarts: u32,
    pub last_failure: Option<String>,
}

/// A supervisor's bookkeeping for children keyed by `K` (a key hash, a user id): which
/// actor is which child, who waits for a child being loaded, how often each restarted.
pub struct ChildBook<K, R> {
    by_actor: HashMap<ActorId, K>,
    meta: HashMap<K, ChildMeta>,
    /// Children by name, in order: pages of a large tree without sorting it each time.
    by_name: BTreeMap<String, K>,
    waiters: HashMap<K, Vec<RpcReplyPort<Result<R, ResolveError>>>>,
    /// Faults injected per child, handed to each incarnation.
    faults: HashMap<K, Arc<Faults>>,
    /// Children that stopped because they were idle, so far.
    passivated: u64,
}

/// A child that exited, as its supervisor learns it.
pub struct Exit<K> {
    pub key: K,
    pub id: ActorId,
    /// Why it failed; `None` for a clean stop (passivated, deleted, shut down).
    pub failure: Option<String>,
}

impl<K: Eq + Hash + Clone, R: Clone> Default for ChildBook<K, R> {
    fn default() -> Self {
        Self {
            by_actor: HashMap::new(),
            meta: HashMap::new(),
            by_name: BTreeMap::new(),
            waiters: HashMap::new(),
            faults: HashMap::new(),
            passivated: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, R: Clone> ChildBook<K, R> {
    /// Queues `reply` for child `k`; true when nobody was loading it yet (the caller starts
    /// the load).
    pub fn wait(&mut self, k: K, reply: RpcReplyPort<Result<R, ResolveError>>) -> bool {
        let first = !self.waiters.contains_key(&k);
        self.waiters.entry(k).or_default().push(reply);
        first
    }

    /// True while a load for `k` is under way.
    pub fn loading(&self, k: &K) -> bool {
        self.waiters.contains_key(k)
    }

    /// Marks `k` as loading with nobody waiting (an eager restart).
    pub fn mark_loading(&mut self, k: K) -> bool {
        let first = !self.waiters.contains_key(&k);
        self.waiters.entry(k).or_default();
        first
    }

    /// Answers everyone waiting for `k`.
    pub fn answer(&mut self, k: &K, result: Result<R, ResolveError>) {
        for port in self.waiters.remove(k).unwrap_or_default() {
            let _ = port.send(result.clone());
        }
    }

    /// Records a started child.
    pub fn started(&mut self, k: K, id: ActorId, name: String) {
        self.by_actor.insert(id, k.clone());
        let meta = self.meta.entry(k.clone()).or_insert_with(|| ChildMeta {
            name: name.clone(),
            started_at: Instant::now(),
            restarts: 0,
            last_failure: None,
        });
        if meta.name != name {
            self.by_name.remove(&meta.name);
        }
        meta.name = name.clone();
        meta.started_at = Instant::now();
        self.by_name.insert(name, k);
    }

    /// Books a child's exit from a supervision event: a failure counts as a restart (its
    /// reason kept), a clean stop drops the child's record, and a stop with the reason
    /// [`PASSIVATED`] counts as a passivation. `None` for other events and unknown actors.
    pub fn exit(&mut self, event: &ractor::SupervisionEvent) -> Option<Exit<K>> {
        let (id, failure) = match event {
            ractor::SupervisionEvent::ActorFailed(cell, err) => {
                (cell.get_id(), Some(err.to_string()))
            }
            ractor::SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if reason.as_deref() == Some(PASSIVATED)
                    && self.by_actor.contains_key(&cell.get_id())
                {
                    self.passivated += 1;
                    PASSIVATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (cell.get_id(), None)
            }
            _ => return None,
        };
        let key = self.exited(id, failure.clone())?;
        Some(Exit { key, id, failure })
    }

    /// [`ChildBook::exit`] for a supervisor whose live children sit in `directory`: also
    /// takes the child out of it, and says whether a failed child must be loaded again
    /// (no caller had a replacement spawned already, and no load is running; the load is
    /// then marked as running).
    pub fn exit_live<M: ractor::Message>(
        &mut self,
        event: &ractor::SupervisionEvent,
        directory: &dashmap::DashMap<K, Handle<M>>,
    ) -> Option<(Exit<K>, bool)> {
        let exit = self.exit(event)?;
        directory.remove_if(&exit.key, |_, h| h.get_id() == exit.id);
        let reload = exit.failure.is_some()
            && !directory.contains_key(&exit.key)
            && self.mark_loading(exit.key.clone());
        Some((exit, reload))
    }

    /// Forgets the actor `id`; returns its key. With `failure`, the child's restart count
    /// goes up and the reason is kept; without, its record is dropped (a clean stop).
    fn exited(&mut self, id: ActorId, failure: Option<String>) -> Option<K> {
        let k = self.by_actor.remove(&id)?;
        match failure {
            Some(reason) => {
                if let Some(meta) = self.meta.get_mut(&k) {
                    meta.restarts += 1;
                    meta.last_failure = Some(reason);
                }
            }
            None => {
                if let Some(meta) = self.meta.remove(&k) {
                    self.by_name.remove(&meta.name);
                }
                self.faults.remove(&k);
                // After a wave of passivations, give back the room of 100k children.
                if sparse(self.by_actor.len(), self.by_actor.capacity()) {
                    self.by_actor.shrink_to_fit();
                    self.meta.shrink_to_fit();
                    self.faults.shrink_to_fit();
                }
            }
        }
        Some(k)
    }

    /// Files the child known as `old` under `new` (a rotated key).
    pub fn rekey(&mut self, old: &K, new: K) {
        for v in self.by_actor.values_mut() {
            if v == old {
                *v = new.clone();
            }
        }
        if let Some(f) = self.faults.remove(old) {
            self.faults.insert(new.clone(), f);
        }
        if let Some(meta) = self.meta.remove(old) {
            self.by_name.insert(meta.name.clone(), new.clone());
            self.meta.insert(new, meta);
        }
    }

    /// The faults of child `k`, for a probe of its next incarnation.
    pub fn faults(&mut self, k: &K) -> Arc<Faults> {
        self.faults
            .entry(k.clone())
            .or_insert_with(Faults::new)
            .clone()
    }

    /// [`ChildBook::page`] for a supervisor whose live children sit in `directory`.
    pub fn page_live<M: ractor::Message>(
        &self,
        directory: &dashmap::DashMap<K, Handle<M>>,
        window: &Window,
    ) -> ChildPage<M> {
        self.page(|k| directory.get(k).map(|h| h.clone()), window)
    }

    /// The children in `window`, sorted by name; `total` counts those that match its
    /// `find`. `handle` finds a child's live actor (`None` while it is being restarted).
    pub fn page<M: ractor::Message>(
        &self,
        handle: impl Fn(&K) -> Option<Handle<M>>,
        window: &Window,
    ) -> ChildPage<M> {
        let matching = || {
            self.by_name
                .iter()
                .filter(|(name, _)| {
                    window
                        .find
                        .as_ref()
                        .is_none_or(|f| name.contains(f.as_str()))
                })
                .map(|(_, k)| k)
        };
        ChildPage {
            total: match window.find {
                None => self.by_name.len(),
                Some(_) => matching().count(),
            },
            children: matching()
                .skip(window.offset)
                .take(window.limit)
                .filter_map(|k| self.meta.get(k).map(|m| (k, m)))
                .map(|(k, m)| ChildInfo {
                    name: m.name.clone(),
                    restarts: m.restarts,
                    last_failure: m.last_failure.clone(),
                    handle: handle(k),
                })
                .collect(),
        }
    }

    pub fn meta(&self, k: &K) -> Option<&ChildMeta> {
        self.meta.get(k)
    }

    pub fn children(&self) -> impl Iterator<Item = (&K, &ChildMeta)> {
        self.meta.iter()
    }

    /// Live children and restarts of children still known (alive or being restarted).
    pub fn stats(&self) -> SupervisorStats {
        SupervisorStats {
            live: self.by_actor.len(),
            restarts: self.meta.values().map(|m| u64::from(m.restarts)).sum(),
            passivated: self.passivated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> RpcReplyPort<Result<u8, ResolveError>> {
        let (tx, _rx) = ractor::concurrency::oneshot();
        tx.into()
    }

    #[test]
    fn one_load_per_child_even_after_an_eager_restart_began() {
        let mut book: ChildBook<u8, u8> = ChildBook::default();
        assert!(book.mark_loading(1), "the restart starts a load");
        assert!(!book.wait(1, port()), "a caller waits for that load");
        assert!(!book.mark_loading(1));
        book.answer(&1, Ok(7));
        assert!(!book.loading(&1));
        assert!(book.wait(1, port()), "a new miss starts a new load");
    }

    #[test]
    fn pages_follow_names_through_starts_rekeys_and_stops() {
        let mut book: ChildBook<u8, u8> = ChildBook::default();
        for (k, name) in [(3u8, "c"), (1, "a"), (2, "b")] {
            book.started(k, ActorId::Local(k.into()), name.into());
        }
        let names = |book: &ChildBook<u8, u8>, offset, limit| -> Vec<String> {
            let window = Window {
                offset,
                limit,
                find: None,
            };
            let page = book.page::<()>(|_| None, &window);
            page.children.into_iter().map(|c| c.name).collect()
        };
        assert_eq!(names(&book, 0, 10), ["a", "b", "c"]);
        assert_eq!(names(&book, 1, 1), ["b"]);
        book.rekey(&2, 9);
        assert_eq!(
            names(&book, 0, 10),
            ["a", "b", "c"],
            "a rotated key keeps its name"
        );
        book.exited(ActorId::Local(1), None);
        assert_eq!(
            names(&book, 0, 10),
            ["b", "c"],
            "a clean stop leaves the tree"
        );
        book.exited(ActorId::Local(3), Some("boom".into()));
        assert_eq!(
            names(&book, 0, 10),
            ["b", "c"],
            "a failed child stays, restarting"
        );
        let all = Window {
            offset: 0,
            limit: 10,
            find: None,
        };
        assert_eq!(book.page::<()>(|_| None, &all).total, 2);
        let found = Window {
            find: Some("c".into()),
            ..all
        };
        let page = book.page::<()>(|_| None, &found);
        assert_eq!(page.total, 1, "the search counts its matches only");
        assert_eq!(page.children[0].name, "c");
    }
}
