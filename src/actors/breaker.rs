//! Circuit breakers, one actor per upstream target (`upstream:<provider>@<base url>`),
//! under the `upstreams` supervisor.
//!
//! Closed: calls go through; `failures_to_open` consecutive failures (transport errors,
//! timeouts, 5xx) open it. Open: calls are refused at once (a dead provider costs one
//! failed attempt, not every request's timeout) until `cooldown` has passed; then one call
//! is let through as a probe (half-open): its success closes the breaker, its failure opens
//! it again.
//!
//! The actor publishes its state in an atomic the router reads first, so a healthy target
//! costs no message on the way in, and a success on a clean breaker none on the way out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::actors::{ChildBook, ChildPage, Exit, Handle, Held, Probe, Traffic, Window};

const CLOSED: u8 = 0;
const CLOSED_FAILING: u8 = 1;
const OPEN: u8 = 2;
const HALF_OPEN: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failures_to_open: u32,
    pub cooldown: Duration,
}

/// What the router may do with a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allow,
    /// The one trial call of a half-open breaker: report its outcome.
    Probe,
    /// Open: try again after this long.
    Reject(Duration),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerView {
    pub target: String,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub opens: u64,
    pub failures: u64,
    pub successes: u64,
}

pub struct BreakerActor;

pub struct BreakerArgs {
    pub target: String,
    pub settings: BreakerSettings,
    pub shared: Arc<AtomicU8>,
    pub probe: Arc<Probe>,
}

pub struct BreakerStateData {
    probe: Arc<Probe>,
    held: Held<BreakerMsg>,
    target: String,
    settings: BreakerSettings,
    shared: Arc<AtomicU8>,
    consecutive: u32,
    opened_at: Option<Instant>,
    probing: bool,
    opens: u64,
    failures: u64,
    successes: u64,
}

pub enum BreakerMsg {
    /// Asks whether a call may go to the target. Replies with the permit.
    Permit(RpcReplyPort<Permit>),
    /// The outcome of a call. No reply.
    Report { ok: bool },
    /// Replies with the breaker's state.
    View(RpcReplyPort<BreakerView>),
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for BreakerMsg {}

pub type BreakerRef = ActorRef<BreakerMsg>;

impl BreakerActor {
    pub async fn spawn(
        args: BreakerArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<BreakerRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, BreakerActor, args, supervisor).await?;
        Ok(r)
    }
}

impl BreakerStateData {
    fn publish(&self) {
        let s = match (self.opened_at, self.probing, self.consecutive) {
            (Some(_), true, _) => HALF_OPEN,
            (Some(_), false, _) => OPEN,
            (None, _, 0) => CLOSED,
            (None, _, _) => CLOSED_FAILING,
        };
        self.shared.store(s, Ordering::Release);
    }

    fn permit(&mut self, now: Instant) -> Permit {
        let Some(opened) = self.opened_at else {
            return Permit::Allow;
        };
        if self.probing {
            return Permit::Reject(Duration::from_millis(100));
        }
        let since = now.saturating_duration_since(opened);
        if since < self.settings.cooldown {
            return Permit::Reject(self.settings.cooldown - since);
        }
        self.probing = true;
        self.publish();
        Permit::Probe
    }

    fn report(&mut self, ok: bool, now: Instant) {
        if ok {
            self.successes += 1;
            if self.opened_at.is_some() {
                tracing::info!(target = %self.target, "circuit closed again");
            }
            self.consecutive = 0;
            self.opened_at = None;
            self.probing = false;
        } else {
            self.failures += 1;
            self.consecutive += 1;
            let reopen = self.probing;
            if reopen
                || (self.opened_at.is_none() && self.consecutive >= self.settings.failures_to_open)
            {
                if !reopen {
                    self.opens += 1;
                    tracing::warn!(target = %self.target, failures = self.consecutive, "circuit opened");
                }
                self.opened_at = Some(now);
                self.probing = false;
            }
        }
        self.publish();
    }

    fn view(&self) -> BreakerView {
        BreakerView {
            target: self.target.clone(),
            state: match (self.opened_at, self.probing) {
                (None, _) => BreakerState::Closed,
                (Some(_), true) => BreakerState::HalfOpen,
                (Some(_), false) => BreakerState::Open,
            },
            consecutive_failures: self.consecutive,
            opens: self.opens,
            failures: self.failures,
            successes: self.successes,
        }
    }
}

impl Actor for BreakerActor {
    type Msg = BreakerMsg;
    type State = BreakerStateData;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        _myself: BreakerRef,
        a: BreakerArgs,
    ) -> Result<BreakerStateData, ActorProcessingErr> {
        let s = BreakerStateData {
            probe: a.probe,
            held: Held::default(),
            target: a.target,
            settings: a.settings,
            shared: a.shared,
            consecutive: 0,
            opened_at: None,
            probing: false,
            opens: 0,
            failures: 0,
            successes: 0,
        };
        s.publish();
        Ok(s)
    }

    async fn handle(
        &self,
        _myself: BreakerRef,
        msg: BreakerMsg,
        s: &mut BreakerStateData,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = s
            .probe
            .pass(|| format!("upstream:{}", s.target), &mut s.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            BreakerMsg::Poke => {}
            BreakerMsg::Permit(reply) => {
                let _ = reply.send(s.permit(Instant::now()));
            }
            BreakerMsg::Report { ok } => s.report(ok, Instant::now()),
            BreakerMsg::View(reply) => {
                let _ = reply.send(s.view());
            }
        }
        Ok(())
    }
}

/// A live breaker as the router sees it.
#[derive(Clone)]
pub struct Breaker {
    pub actor: Handle<BreakerMsg>,
    pub shared: Arc<AtomicU8>,
}

impl Breaker {
    /// Open or half-open: calls are being refused.
    pub fn is_open(&self) -> bool {
        self.shared.load(Ordering::Acquire) >= OPEN
    }

    /// For the `neuropia_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> f64 {
        match self.shared.load(Ordering::Acquire) {
            OPEN => 2.0,
            HALF_OPEN => 1.0,
            _ => 0.0,
        }
    }

    /// May a call go out? Reads the published state; asks the actor only when not closed.
    pub async fn permit(&self) -> Permit {
        match self.shared.load(Ordering::Acquire) {
            CLOSED | CLOSED_FAILING => Permit::Allow,
            _ => ractor::call_t!(self.actor, BreakerMsg::Permit, 1_000).unwrap_or(Permit::Allow),
        }
    }

    /// Reports a call's outcome (skipped for a success on a clean, closed breaker).
    pub fn report(&self, ok: bool, permit: Permit) {
        let clean = self.shared.load(Ordering::Acquire) == CLOSED;
        if !(ok && clean && permit == Permit::Allow) {
            let _ = self.actor.cast(BreakerMsg::Report { ok });
        }
    }
}

pub type BreakerDirectory = Arc<DashMap<String, Breaker>>;

/// The `upstreams` supervisor: spawns breakers on first use and restarts failed ones.
pub struct UpstreamSupervisor;

#[derive(Clone)]
pub struct UpstreamsArgs {
    pub directory: BreakerDirectory,
    pub settings: BreakerSettings,
    pub probe: Arc<Probe>,
}

pub struct UpstreamsState {
    args: UpstreamsArgs,
    held: Held<UpstreamsMsg>,
    /// Breakers by target: names, restarts, last failures, faults.
    book: ChildBook<String, Breaker>,
}

pub enum UpstreamsMsg {
    /// Replies with the breaker of `target`, spawning it if needed.
    Get {
        target: String,
        reply: RpcReplyPort<Option<Breaker>>,
    },
    /// Replies with every breaker.
    Views(RpcReplyPort<Vec<Handle<BreakerMsg>>>),
    /// Replies with a page of children for the operators' tree.
    Children {
        window: Window,
        reply: RpcReplyPort<ChildPage<BreakerMsg>>,
    },
    /// Does nothing (applies an injected fault at once).
    Poke,
}

impl Traffic for UpstreamsMsg {}

pub type UpstreamsRef = ActorRef<UpstreamsMsg>;

impl UpstreamSupervisor {
    pub async fn spawn(
        args: UpstreamsArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<UpstreamsRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, UpstreamSupervisor, args, supervisor).await?;
        Ok(r)
    }
}

async fn spawn_breaker(
    state: &mut UpstreamsState,
    myself: &UpstreamsRef,
    target: &str,
) -> Option<Breaker> {
    let shared = Arc::new(AtomicU8::new(CLOSED));
    let probe = Probe::with_faults(state.book.faults(&target.to_owned()));
    let args = BreakerArgs {
        target: target.to_owned(),
        settings: state.args.settings,
        shared: shared.clone(),
        probe: probe.clone(),
    };
    let actor = BreakerActor::spawn(args, myself.get_cell()).await.ok()?;
    let breaker = Breaker {
        actor: Handle::new(actor, probe),
        shared,
    };
    state.book.started(
        target.to_owned(),
        breaker.actor.get_id(),
        format!("upstream:{target}"),
    );
    state
        .args
        .directory
        .insert(target.to_owned(), breaker.clone());
    Some(breaker)
}

impl Actor for UpstreamSupervisor {
    type Msg = UpstreamsMsg;
    type State = UpstreamsState;
    type Arguments = UpstreamsArgs;

    async fn pre_start(
        &self,
        _myself: UpstreamsRef,
        args: UpstreamsArgs,
    ) -> Result<UpstreamsState, ActorProcessingErr> {
        args.directory.clear();
        Ok(UpstreamsState {
            args,
            held: Held::default(),
            book: ChildBook::default(),
        })
    }

    async fn handle(
        &self,
        myself: UpstreamsRef,
        msg: UpstreamsMsg,
        state: &mut UpstreamsState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(msg) = state
            .args
            .probe
            .pass(|| "upstreams", &mut state.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            UpstreamsMsg::Poke => {}
            UpstreamsMsg::Children { window, reply } => {
                let directory = &state.args.directory;
                let page = state
                    .book
                    .page(|t| directory.get(t).map(|b| b.actor.clone()), &window);
                let _ = reply.send(page);
            }
            UpstreamsMsg::Get { target, reply } => {
                let found = match state.args.directory.get(&target).map(|b| b.clone()) {
                    Some(b) => Some(b),
                    None => spawn_breaker(state, &myself, &target).await,
                };
                let _ = reply.send(found);
            }
            UpstreamsMsg::Views(reply) => {
                let _ = reply.send(
                    state
                        .args
                        .directory
                        .iter()
                        .map(|e| e.actor.clone())
                        .collect(),
                );
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: UpstreamsRef,
        event: SupervisionEvent,
        state: &mut UpstreamsState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(Exit {
            key: target,
            failure: Some(error),
            ..
        }) = state.book.exit(&event)
        {
            tracing::warn!(%target, %error, "breaker failed; restarting it closed");
            state.args.directory.remove(&target);
            spawn_breaker(state, &myself, &target).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BreakerStateData {
        BreakerStateData {
            probe: Probe::new(),
            held: Held::default(),
            target: "t".into(),
            settings: BreakerSettings {
                failures_to_open: 3,
                cooldown: Duration::from_secs(10),
            },
            shared: Arc::new(AtomicU8::new(CLOSED)),
            consecutive: 0,
            opened_at: None,
            probing: false,
            opens: 0,
            failures: 0,
            successes: 0,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let mut b = data();
        let t0 = Instant::now();
        b.report(false, t0);
        b.report(true, t0);
        b.report(false, t0);
        b.report(false, t0);
        assert_eq!(b.permit(t0), Permit::Allow, "a success reset the count");
        b.report(false, t0);
        assert_eq!(b.shared.load(Ordering::Acquire), OPEN);
        assert!(
            matches!(b.permit(t0 + Duration::from_secs(5)), Permit::Reject(d) if d == Duration::from_secs(5))
        );
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.permit(later), Permit::Probe);
        assert!(
            matches!(b.permit(later), Permit::Reject(_)),
            "one probe at a time"
        );
        b.report(false, later);
        assert!(
            matches!(b.permit(later + Duration::from_secs(1)), Permit::Reject(_)),
            "failed probe reopens"
        );
        let much_later = later + Duration::from_secs(20);
        assert_eq!(b.permit(much_later), Permit::Probe);
        b.report(true, much_later);
        assert_eq!(b.permit(much_later), Permit::Allow);
        assert_eq!((b.view().state, b.opens), (BreakerState::Closed, 1));
    }
}
