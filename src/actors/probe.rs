//! What operators and testers see of, and do to, one actor.
//!
//! ractor has no mailbox length, so every actor has a [`Probe`] shared with whoever sends
//! to it: senders count what they send (through [`Handle`]), the actor counts what it
//! handles, and the difference is the backlog. The probe also carries the faults injected
//! into the actor (`panic_next`, `delay`, `drop`), which the actor applies at the start of
//! each message ([`Probe::gate`]) without the fault having to wait in the mailbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ractor::concurrency::Duration as RDuration;
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, MessagingErr, RpcReplyPort};

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic while handling the next message (`panic`: as soon as possible).
    PanicNext(u32),
    /// Hold each message `ms` milliseconds before handling it, for `for_ms`.
    Delay { ms: u64, for_ms: u64 },
    /// Swallow the next `n` messages without handling or answering them (callers time out).
    Drop(u32),
}

/// The start of every injected panic's message.
pub const INJECTED: &str = "injected fault: ";

/// Makes injected panics print one line instead of a backtrace (they are asked for: an
/// operator's `panic` fault, a test's), leaving every other panic to the hook there was.
/// Idempotent.
pub fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if message.starts_with(INJECTED) {
                eprintln!("{message} (as injected; no backtrace)");
            } else {
                previous(info);
            }
        }));
    });
}

/// Faults injected into a named actor. Its supervisor keeps them per child name and hands
/// them to each new incarnation, so `panic_next 3` means three panics, not one.
#[derive(Debug)]
pub struct Faults {
    panic_next: AtomicU32,
    drop_next: AtomicU32,
    delay_ms: AtomicU64,
    /// Milliseconds since `origin` until which messages are delayed.
    delay_until: AtomicU64,
    injected: AtomicU64,
    origin: Instant,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            panic_next: AtomicU32::new(0),
            drop_next: AtomicU32::new(0),
            delay_ms: AtomicU64::new(0),
            delay_until: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// One incarnation's counters, and the faults of the actor's name.
#[derive(Debug)]
pub struct Probe {
    sent: AtomicU64,
    handled: AtomicU64,
    /// Milliseconds from `started` to the last use (`touch`).
    last_ms: AtomicU64,
    started: Instant,
    faults: Arc<Faults>,
}

/// What the actor does with a message.
pub enum Gate {
    Handle,
    Swallow,
}

/// A probe's figures.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProbeStats {
    pub uptime_secs: f64,
    pub messages_handled: u64,
    pub backlog: u64,
    pub faults_injected: u64,
}

impl Probe {
    /// A probe with no faults (an actor nobody restarts under the same name).
    pub fn new() -> Arc<Self> {
        Self::with_faults(Faults::new())
    }

    /// A probe for a new incarnation of an actor whose faults are `faults`.
    pub fn with_faults(faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            sent: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            started: Instant::now(),
            faults,
        })
    }

    /// The faults of this actor's name, for its next incarnation.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn unsent(&self) {
        self.sent.fetch_sub(1, Ordering::Relaxed);
    }

    /// The fault gate, the first thing every actor's `handle` does: applies injected
    /// faults to `msg` and returns it to be handled, or `None` when an injected `drop`
    /// swallowed it. A swallowed message is held (not dropped), so whoever waits for its
    /// reply waits as for a message lost in transit: until its timeout.
    pub async fn pass<M: Traffic, S: std::fmt::Display>(
        &self,
        actor: impl FnOnce() -> S,
        held: &mut Held<M>,
        msg: M,
    ) -> Option<M> {
        if msg.keeps_alive() {
            self.touch();
        }
        match self.gate(actor, msg.is_external()).await {
            Gate::Handle => Some(msg),
            Gate::Swallow => {
                held.hold(msg);
                None
            }
        }
    }

    /// Called by the actor at the start of each message: applies injected faults.
    /// `counted`: the message came through a [`Handle`] (not a timer or the actor's own
    /// task), so it counts against the backlog.
    /// `actor` names the actor in the panic message (only built when it panics).
    pub async fn gate<S: std::fmt::Display>(
        &self,
        actor: impl FnOnce() -> S,
        counted: bool,
    ) -> Gate {
        if counted {
            self.handled.fetch_add(1, Ordering::Relaxed);
        }
        let f = &self.faults;
        if f.panic_next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("{INJECTED}{} panics", actor());
        }
        // Only messages from outside are lost: an actor's own timers and task results
        // (the ledger's "batch written") are not traffic a caller could lose.
        if counted
            && f.drop_next
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            return Gate::Swallow;
        }
        if f.delay_until.load(Ordering::Acquire) > f.now_ms() {
            let ms = f.delay_ms.load(Ordering::Acquire);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Gate::Handle
    }

    pub fn inject(&self, fault: Fault) {
        let f = &self.faults;
        f.injected.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::PanicNext(n) => {
                f.panic_next.fetch_add(n, Ordering::AcqRel);
            }
            Fault::Drop(n) => {
                f.drop_next.fetch_add(n, Ordering::AcqRel);
            }
            Fault::Delay { ms, for_ms } => {
                f.delay_ms.store(ms, Ordering::Release);
                f.delay_until.store(f.now_ms() + for_ms, Ordering::Release);
            }
        }
    }

    /// Marks the actor as used now (by the request path; operators' reads do not count).
    pub fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the actor was last used (or since it started).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Lifts every pending fault (`clear`).
    pub fn clear(&self) {
        let f = &self.faults;
        f.panic_next.store(0, Ordering::Release);
        f.drop_next.store(0, Ordering::Release);
        f.delay_until.store(0, Ordering::Release);
    }

    pub fn stats(&self) -> ProbeStats {
        let handled = self.handled.load(Ordering::Relaxed);
        ProbeStats {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            messages_handled: handled,
            backlog: self.sent.load(Ordering::Relaxed).saturating_sub(handled),
            faults_injected: self.faults.injected.load(Ordering::Relaxed),
        }
    }
}

/// Messages an actor swallowed under a `drop` fault: held (so their callers' reply ports
/// stay open and they time out, as with a lost message) and let go after a minute.
pub struct Held<M>(Vec<(Instant, M)>);

impl<M> Default for Held<M> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<M> Held<M> {
    pub fn hold(&mut self, msg: M) {
        self.0
            .retain(|(at, _)| at.elapsed() < Duration::from_secs(60));
        self.0.push((Instant::now(), msg));
    }
}

/// What the fault gate needs to know of a message.
pub trait Traffic {
    /// Sent through a [`Handle`] by someone else (not a timer or the actor's own task's
    /// result): counted against the backlog, and the kind of message a `drop` loses.
    fn is_external(&self) -> bool {
        true
    }

    /// Real use: the actor is not idle (passivation waits).
    fn keeps_alive(&self) -> bool {
        false
    }
}

/// An actor reference that counts what is sent to it.
pub struct Handle<M: Message> {
    pub actor: ActorRef<M>,
    pub probe: Arc<Probe>,
}

impl<M: Message> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            probe: self.probe.clone(),
        }
    }
}

impl<M: Message> Handle<M> {
    pub fn new(actor: ActorRef<M>, probe: Arc<Probe>) -> Self {
        Self { actor, probe }
    }

    pub fn cast(&self, msg: M) -> Result<(), MessagingErr<M>> {
        self.probe.sent();
        let r = self.actor.cast(msg);
        if r.is_err() {
            self.probe.unsent();
        }
        r
    }

    /// Same as `ActorRef::call` (so `ractor::call_t!` works on a handle).
    pub async fn call<R, F>(
        &self,
        msg_builder: F,
        timeout: Option<RDuration>,
    ) -> Result<CallResult<R>, MessagingErr<M>>
    where
        F: FnOnce(RpcReplyPort<R>) -> M,
        R: Send + 'static,
    {
        self.probe.sent();
        let r = self.actor.call(msg_builder, timeout).await;
        if r.is_err() {
            self.probe.unsent();
        }
        r
    }

    pub fn get_id(&self) -> ractor::ActorId {
        self.actor.get_id()
    }

    pub fn get_status(&self) -> ractor::ActorStatus {
        self.actor.get_status()
    }
}

/// A reference to an actor that its supervisor may replace.
pub struct Live<M: ractor::Message>(Arc<ArcSwap<Handle<M>>>);

impl<M: ractor::Message> Clone for Live<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: ractor::Message> Live<M> {
    pub fn new(r: Handle<M>) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(r)))
    }

    pub fn get(&self) -> Handle<M> {
        (**self.0.load()).clone()
    }

    pub(super) fn set(&self, r: Handle<M>) {
        self.0.store(Arc::new(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn faults_apply_in_order_and_count() {
        let p = Probe::new();
        p.inject(Fault::Drop(2));
        assert!(matches!(p.gate(|| "a", true).await, Gate::Swallow));
        assert!(matches!(p.gate(|| "a", true).await, Gate::Swallow));
        assert!(matches!(p.gate(|| "a", true).await, Gate::Handle));
        p.inject(Fault::Delay {
            ms: 30,
            for_ms: 10_000,
        });
        let t = Instant::now();
        assert!(matches!(p.gate(|| "a", true).await, Gate::Handle));
        assert!(t.elapsed() >= Duration::from_millis(30));
        p.inject(Fault::PanicNext(1));
        let panicked = tokio::spawn({
            let p = p.clone();
            async move { p.gate(|| "a", true).await }
        })
        .await
        .is_err();
        assert!(panicked);
        let s = p.stats();
        assert_eq!((s.messages_handled, s.faults_injected), (5, 3));
    }

    #[tokio::test]
    async fn a_new_incarnation_inherits_the_faults_left() {
        let first = Probe::new();
        first.inject(Fault::PanicNext(2));
        let p = first.clone();
        assert!(
            tokio::spawn(async move { p.gate(|| "a", true).await })
                .await
                .is_err()
        );
        let second = Probe::with_faults(first.faults());
        assert_eq!(second.stats().messages_handled, 0, "counters start afresh");
        let p = second.clone();
        assert!(
            tokio::spawn(async move { p.gate(|| "a", true).await })
                .await
                .is_err()
        );
        assert!(
            matches!(second.gate(|| "a", true).await, Gate::Handle),
            "two panics only"
        );
        assert_eq!(second.stats().faults_injected, 1);
    }
}
