//! KeyActor `key:<key_id>`: one per virtual key in use. It serialises everything that
//! decides whether the key may make a call right now: active flag, expiry, address and
//! model allow-lists ([`Gate`]), rpm
//! (a governor GCRA limiter of its own, so each key has its own quota) and tpm (a 60 s
//! window of estimated-then-corrected tokens).
//!
//! With the Redis rate-limit backend the actor checks only the flag and the allow-list
//! (`share` 0) and Redis counts rpm and tpm ([`crate::ratelimit`]); while Redis is
//! unreachable it counts them here at `limit / instances` (`share` = instances).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use uuid::Uuid;

use super::gate::Gate;
use super::window::TokenWindow;
use crate::actors::{Held, Probe, Traffic};
use crate::db::keys::KeyRecord;
use std::sync::Arc;

pub struct KeyActor;

pub struct KeyArgs {
    pub record: KeyRecord,
    pub probe: Arc<Probe>,
}

pub struct KeyState {
    probe: Arc<Probe>,
    held: Held<KeyMsg>,
    record: KeyRecord,
    /// The record's active flag, expiry and allow-lists, parsed.
    gate: Gate,
    rpm: Option<DefaultDirectRateLimiter>,
    /// Requests admitted over the last 60 s (governor cannot be read without spending).
    rpm_seen: TokenWindow,
    tpm: Option<TokenWindow>,
    clock: DefaultClock,
    /// The divisor the local limits are built with (1: the key's own limits).
    share: u32,
    /// The `share` of the last admission (0: counted in Redis), for operators.
    last_share: u32,
}

/// Who the key belongs to, handed to the request once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    /// The key has a tpm window: the call's actual tokens must be reported back
    /// ([`KeyMsg::Record`], or to Redis when `global`). Without one there is nothing to
    /// correct, and no message to send.
    pub counts_tokens: bool,
    /// rpm and tpm are still to be checked in Redis (the actor was asked with `share` 0).
    pub global: bool,
    /// The key has a spend budget: the call must hold its worst case of it.
    pub budgeted: bool,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// Why a key may not make this call. Domain outcomes, never actor failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Deactivated (401).
    Inactive,
    /// The model is not on the key's allow-list (403).
    ModelNotAllowed,
    /// Requests per minute exhausted (429).
    Rpm { retry_after: Duration },
    /// Tokens per minute exhausted (429); `None` when the request alone exceeds the limit.
    Tpm { retry_after: Option<Duration> },
    /// Past the key's expiry (401).
    Expired,
    /// The caller's address is not on the key's allow-list (403).
    IpNotAllowed,
}

pub enum KeyMsg {
    /// Checks and takes one request (and `estimated_tokens` of the tpm window) for
    /// `model`. Replies with the key's owner, or why not.
    /// `share`: 0 leaves rpm and tpm to Redis; n > 0 counts them here at `limit / n`.
    Admit {
        model: String,
        estimated_tokens: u64,
        share: u32,
        /// The caller's address, for the key's allow-list.
        client: Option<IpAddr>,
        reply: RpcReplyPort<Result<Admission, Denied>>,
    },
    /// Replaces an admitted estimate with the tokens the call actually used. No reply.
    Record {
        estimated_tokens: u64,
        actual_tokens: u64,
    },
    /// The key changed in PostgreSQL: take the new record (limits, allow-list, active
    /// flag). The rpm limiter restarts if its quota changed; the tpm window keeps its count.
    /// No reply.
    Replace(Box<KeyRecord>),
    /// Replies with what the key is and may do.
    Describe { reply: RpcReplyPort<KeyView> },
    /// Replies with a summary of the key's state for operators.
    Summary(RpcReplyPort<serde_json::Value>),
    /// Stops the actor if nothing of its state would be lost: no call admitted in the last
    /// minute (its rpm and tpm windows are empty, as a new actor's are). Sent by the
    /// supervisor to actors idle longer than `NEUROPIA_PASSIVATE_SECS`. No reply.
    Passivate,
    /// Does nothing (applies an injected fault at once).
    Poke,
}

/// A read-only view of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub gate: Gate,
}

impl Traffic for KeyMsg {
    fn is_external(&self) -> bool {
        !matches!(self, Self::Passivate)
    }

    fn keeps_alive(&self) -> bool {
        matches!(
            self,
            Self::Admit { .. } | Self::Record { .. } | Self::Describe { .. }
        )
    }
}

pub type KeyRef = ActorRef<KeyMsg>;

impl KeyActor {
    pub async fn spawn(
        args: KeyArgs,
        supervisor: ractor::ActorCell,
    ) -> Result<KeyRef, ractor::SpawnErr> {
        let (r, _) = Actor::spawn_linked(None, KeyActor, args, supervisor).await?;
        Ok(r)
    }
}

impl KeyView {
    /// Whether the key may call `model` from `client` at all (rate limits aside).
    pub fn permits(&self, model: &str, client: Option<IpAddr>) -> Result<(), Denied> {
        self.gate.permits(model, client)
    }
}

/// A limit's share for one of `share` instances (at least 1).
fn divided<T: From<u32> + std::ops::Div<Output = T> + Ord>(limit: T, share: u32) -> T {
    let share = share.max(1);
    (limit / T::from(share)).max(T::from(1))
}

fn rpm_limiter(rpm: Option<u32>, share: u32) -> Option<DefaultDirectRateLimiter> {
    rpm.map(|r| divided(r, share))
        .and_then(NonZeroU32::new)
        .map(|n| RateLimiter::direct(Quota::per_minute(n)))
}

impl KeyState {
    fn new(record: KeyRecord, probe: Arc<Probe>) -> Self {
        Self {
            probe,
            held: Held::default(),
            rpm: rpm_limiter(record.rpm, 1),
            rpm_seen: TokenWindow::new(u64::MAX),
            tpm: record.tpm.map(TokenWindow::new),
            gate: Gate::of(&record),
            record,
            clock: DefaultClock::default(),
            share: 1,
            last_share: 1,
        }
    }

    /// Nothing admitted in the last minute: every window is empty.
    fn quiet(&self, now: Instant) -> bool {
        self.rpm_seen.used(now) == 0 && self.tpm.as_ref().is_none_or(|w| w.used(now) == 0)
    }

    fn summary(&self) -> serde_json::Value {
        let now = Instant::now();
        serde_json::json!({
            "key_id": self.record.id,
            "user_id": self.record.user_id,
            "is_active": self.record.is_active,
            "allowed_models": self.record.allowed_models.len(),
            "rpm_limit": self.record.rpm,
            "requests_last_minute": self.rpm_seen.used(now),
            "rpm_headroom": self.record.rpm.map(|l| u64::from(l).saturating_sub(self.rpm_seen.used(now))),
            "tpm_limit": self.record.tpm,
            "tpm_used": self.tpm.as_ref().map(|w| w.used(now)),
            "tpm_headroom": self.tpm.as_ref().map(|w| w.limit().saturating_sub(w.used(now))),
            "limits_counted": match self.last_share {
                0 => "redis".to_owned(),
                1 => "local".to_owned(),
                n => format!("local, 1/{n} of the limits (Redis unreachable)"),
            },
        })
    }

    fn replace(&mut self, record: KeyRecord) {
        if record.rpm != self.record.rpm {
            self.rpm = rpm_limiter(record.rpm, self.share);
        }
        self.set_tpm(record.tpm);
        self.gate = Gate::of(&record);
        self.record = record;
    }

    fn set_tpm(&mut self, tpm: Option<u64>) {
        match (tpm.map(|l| divided(l, self.share)), &mut self.tpm) {
            (Some(limit), Some(w)) => w.set_limit(limit),
            (Some(limit), None) => self.tpm = Some(TokenWindow::new(limit)),
            (None, _) => self.tpm = None,
        }
    }

    /// Rebuilds the local limits for `share` instances (the rpm limiter restarts; the tpm
    /// window keeps its count).
    fn reshare(&mut self, share: u32) {
        self.share = share;
        self.rpm = rpm_limiter(self.record.rpm, share);
        self.set_tpm(self.record.tpm);
    }

    fn admit(
        &mut self,
        model: &str,
        estimated_tokens: u64,
        share: u32,
        client: Option<IpAddr>,
    ) -> Result<Admission, Denied> {
        let r = &self.record;
        self.gate.permits(model, client)?;
        self.last_share = share;
        if share == 0 {
            // Redis counts rpm and tpm; this instance only remembers that it was busy.
            self.rpm_seen.take(Instant::now(), 1);
            return Ok(Admission {
                key_id: r.id,
                user_id: r.user_id,
                tenant_id: r.tenant_id,
                counts_tokens: r.tpm.is_some(),
                global: r.rpm.is_some() || r.tpm.is_some(),
                budgeted: r.budgeted,
                rpm: r.rpm,
                tpm: r.tpm,
            });
        }
        if share != self.share {
            self.reshare(share);
        }
        let r = &self.record;
        // Check tpm before taking an rpm cell, so a refused request costs no rpm.
        let now = Instant::now();
        if let Some(w) = &self.tpm
            && let Err(retry_after) = w.check(now, estimated_tokens)
        {
            return Err(Denied::Tpm { retry_after });
        }
        if let Some(limiter) = &self.rpm
            && let Err(not_until) = limiter.check()
        {
            return Err(Denied::Rpm {
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        if let Some(w) = &mut self.tpm {
            w.take(now, estimated_tokens);
        }
        self.rpm_seen.take(now, 1);
        Ok(Admission {
            key_id: r.id,
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            counts_tokens: self.tpm.is_some(),
            global: false,
            budgeted: r.budgeted,
            rpm: r.rpm,
            tpm: r.tpm,
        })
    }
}

impl Actor for KeyActor {
    type Msg = KeyMsg;
    type State = KeyState;
    type Arguments = KeyArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<KeyMsg>,
        args: KeyArgs,
    ) -> Result<KeyState, ActorProcessingErr> {
        Ok(KeyState::new(args.record, args.probe))
    }

    async fn handle(
        &self,
        myself: ActorRef<KeyMsg>,
        msg: KeyMsg,
        state: &mut KeyState,
    ) -> Result<(), ActorProcessingErr> {
        let key_id = state.record.id;
        let Some(msg) = state
            .probe
            .pass(|| format!("key:{key_id}"), &mut state.held, msg)
            .await
        else {
            return Ok(());
        };
        match msg {
            KeyMsg::Admit {
                model,
                estimated_tokens,
                share,
                client,
                reply,
            } => {
                let _ = reply.send(state.admit(&model, estimated_tokens, share, client));
            }
            KeyMsg::Record {
                estimated_tokens,
                actual_tokens,
            } => {
                if let Some(w) = &mut state.tpm {
                    w.correct(Instant::now(), estimated_tokens, actual_tokens);
                }
            }
            KeyMsg::Replace(record) => state.replace(*record),
            KeyMsg::Describe { reply } => {
                let _ = reply.send(KeyView {
                    key_id: state.record.id,
                    user_id: state.record.user_id,
                    tenant_id: state.record.tenant_id,
                    gate: state.gate.clone(),
                });
            }
            KeyMsg::Summary(reply) => {
                let _ = reply.send(state.summary());
            }
            KeyMsg::Passivate => {
                if state.quiet(Instant::now()) {
                    myself.stop(Some(crate::actors::PASSIVATED.into()));
                }
            }
            KeyMsg::Poke => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyHash;

    fn record(rpm: Option<u32>, tpm: Option<u64>, models: &[&str]) -> KeyRecord {
        KeyRecord {
            id: Uuid::new_v4(),
            hash: KeyHash::of("vk_x"),
            user_id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            name: "k".into(),
            rpm,
            tpm,
            allowed_models: models.iter().map(|s| s.to_string()).collect(),
            is_active: true,
            updated_at: chrono::Utc::now(),
            expires_at: None,
            budgeted: false,
            allowed_ips: vec![],
        }
    }

    #[test]
    fn rpm_allows_exactly_the_quota_in_a_burst() {
        let mut s = KeyState::new(record(Some(30), None, &[]), Probe::new());
        let served = (0..100)
            .filter(|_| s.admit("m", 10, 1, None).is_ok())
            .count();
        assert_eq!(served, 30);
        match s.admit("m", 10, 1, None) {
            Err(Denied::Rpm { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2))
            }
            other => panic!("expected rpm denial, got {other:?}"),
        }
    }

    #[test]
    fn allow_list_and_active_flag_are_enforced() {
        let mut s = KeyState::new(record(None, None, &["a"]), Probe::new());
        assert!(s.admit("a", 1, 1, None).is_ok());
        assert_eq!(s.admit("b", 1, 1, None), Err(Denied::ModelNotAllowed));
        let mut off = s.record.clone();
        off.is_active = false;
        s.replace(off);
        assert_eq!(s.admit("a", 1, 1, None), Err(Denied::Inactive));
    }

    #[test]
    fn replacing_the_record_applies_at_once() {
        let mut s = KeyState::new(record(Some(1), Some(100), &[]), Probe::new());
        assert!(s.admit("m", 60, 1, None).is_ok());
        let mut changed = s.record.clone();
        changed.is_active = false;
        s.replace(changed.clone());
        assert_eq!(s.admit("m", 1, 1, None), Err(Denied::Inactive));
        changed.is_active = true;
        changed.rpm = Some(5);
        changed.tpm = Some(80);
        s.replace(changed);
        assert!(
            s.admit("m", 20, 1, None).is_ok(),
            "new rpm quota, 60 + 20 <= 80"
        );
        assert!(
            matches!(s.admit("m", 1, 1, None), Err(Denied::Tpm { .. })),
            "tpm count kept"
        );
    }

    #[test]
    fn tpm_refusals_do_not_spend_rpm() {
        let mut s = KeyState::new(record(Some(2), Some(100), &[]), Probe::new());
        assert!(s.admit("m", 100, 1, None).is_ok());
        assert!(matches!(s.admit("m", 1, 1, None), Err(Denied::Tpm { .. })));
        assert!(matches!(
            s.admit("m", 1000, 1, None),
            Err(Denied::Tpm { retry_after: None })
        ));
        // One rpm cell is left despite the two tpm refusals.
        s.tpm = None;
        assert!(s.admit("m", 1, 1, None).is_ok());
        assert!(matches!(s.admit("m", 1, 1, None), Err(Denied::Rpm { .. })));
    }

    #[test]
    fn redis_share_counts_nothing_here_and_fallback_divides_the_limits() {
        let mut s = KeyState::new(record(Some(30), Some(900), &[]), Probe::new());
        for _ in 0..100 {
            let a = s.admit("m", 10, 0, None).expect("Redis counts");
            assert!(a.global && a.counts_tokens);
            assert_eq!((a.rpm, a.tpm), (Some(30), Some(900)));
        }
        // Redis down, three instances: this one serves a third of the limits.
        let served = (0..100)
            .filter(|_| s.admit("m", 10, 3, None).is_ok())
            .count();
        assert_eq!(served, 10);
        let mut s = KeyState::new(record(None, Some(900), &[]), Probe::new());
        assert!(s.admit("m", 300, 3, None).is_ok());
        assert!(
            matches!(s.admit("m", 1, 3, None), Err(Denied::Tpm { .. })),
            "900 / 3 = 300 tokens"
        );
        // Back to one instance's full limits: the window keeps its count.
        assert!(s.admit("m", 600, 1, None).is_ok());
        assert!(matches!(s.admit("m", 1, 1, None), Err(Denied::Tpm { .. })));
        // A key without limits is not sent to Redis at all.
        let mut s = KeyState::new(record(None, None, &[]), Probe::new());
        assert!(!s.admit("m", 1, 0, None).expect("admitted").global);
    }
}
