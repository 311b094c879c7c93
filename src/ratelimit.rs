//! Global rate limits for several instances (`RATE_LIMIT_BACKEND=redis`): a key's rpm and
//! tpm are counted in Redis by one atomic script, so N instances together admit what one
//! would.
//!
//! The script has the semantics of the key actor's local limiter:
//!
//! - **rpm** is a GCRA (as governor's `Quota::per_minute(n)`): a burst of `n` at once, then
//!   one more every `60 s / n`; the key `ratelimit:{<key id>}:rpm` holds the theoretical
//!   arrival time in microseconds of Redis' own clock (`TIME`), so instance clocks do not
//!   matter.
//! - **tpm** is a sliding 60 s window of one-second buckets (`ratelimit:{<key id>}:tpm`, a
//!   hash second -> tokens). Admission adds the call's estimate at once; the call's actual
//!   tokens later replace it in the current second's bucket.
//! - tpm is checked before an rpm cell is taken, so a refused request costs no rpm; a
//!   request larger than the whole tpm limit can never fit.
//!
//! Both names share the hash tag `{<key id>}`, so they live in one slot of a Redis Cluster.
//!
//! When a script call fails or times out, the limiter is *down*: it logs an error and every
//! instance admits with its local limiter at `limit / NEUROPIA_INSTANCES` (at least 1)
//! until a monitor, pinging every 250 ms, sees Redis again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use uuid::Uuid;

use crate::redis_conn::RedisConn;

/// How long an admission waits for Redis before falling back to the local limiter.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
const MONITOR_EVERY: Duration = Duration::from_millis(250);

const ADMIT: &str = r#"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local est = tonumber(ARGV[3])
if tpm > 0 then
  if est > tpm then return {2, -1} end
  local all = redis.call('HGETALL', KEYS[2])
  local used = 0
  local live = {}
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    local v = tonumber(all[i + 1])
    if s + 60 > sec then
      used = used + v
      live[#live + 1] = {s, v}
    else
      redis.call('HDEL', KEYS[2], all[i])
    end
  end
  if used < 0 then used = 0 end
  if used + est > tpm then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local remaining = used
    for _, e in ipairs(live) do
      if e[2] > 0 then remaining = remaining - e[2] end
      if remaining < 0 then remaining = 0 end
      if remaining + est <= tpm then
        return {2, math.max(1, math.ceil(((e[1] + 60) * 1000000 - now) / 1000))}
      end
    end
    return {2, 60000}
  end
end
if rpm > 0 then
  local interval = 60000000 / rpm
  local tolerance = interval * (rpm - 1)
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  if tat - now > tolerance then
    return {1, math.max(1, math.ceil((tat - tolerance - now) / 1000))}
  end
  local next = tat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX',
    math.ceil((next - now) / 1000) + 1000)
end
if tpm > 0 then
  redis.call('HINCRBY', KEYS[2], sec, est)
  redis.call('EXPIRE', KEYS[2], 61)
end
return {0, 0}
"#;

const CORRECT: &str = r#"
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 61)
return 1
"#;

/// The global limiter's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Requests per minute exhausted; retry after this long.
    Rpm(Duration),
    /// Tokens per minute exhausted; `None` when the request alone exceeds the limit.
    Tpm(Option<Duration>),
}

/// What operators see of the limiter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimiterStats {
    pub backend: &'static str,
    /// Redis answers: limits are global. False: each instance enforces `limit / instances`.
    pub global: bool,
    pub instances: u32,
    pub checks: u64,
    pub fallback_admissions: u64,
    pub failures: u64,
}

struct Inner {
    conn: ArcSwapOption<RedisConn>,
    url: crate::config::Secret,
    cluster: bool,
    down: AtomicBool,
    instances: u32,
    admit: redis::Script,
    correct: redis::Script,
    checks: AtomicU64,
    fallback_admissions: AtomicU64,
    failures: AtomicU64,
}

/// A handle on the global limiter; cheap to clone.
#[derive(Clone)]
pub struct GlobalLimiter(Arc<Inner>);

fn rpm_name(key_id: Uuid) -> String {
    format!("ratelimit:{{{key_id}}}:rpm")
}

fn tpm_name(key_id: Uuid) -> String {
    format!("ratelimit:{{{key_id}}}:tpm")
}

impl GlobalLimiter {
    /// A limiter over `conn` (or, when Redis was unreachable at start, down until the
    /// monitor connects to `url`). Spawns the monitor.
    pub fn start(
        url: crate::config::Secret,
        cluster: bool,
        conn: Option<RedisConn>,
        instances: u32,
    ) -> Self {
        let down = conn.is_none();
        if down {
            tracing::error!(
                instances,
                "rate limits: Redis is unreachable; each instance enforces its limits divided by {instances} until it is back"
            );
            crate::metrics::rate_limit_global(false);
        } else {
            crate::metrics::rate_limit_global(true);
        }
        let inner = Arc::new(Inner {
            conn: ArcSwapOption::from(conn.map(Arc::new)),
            url,
            cluster,
            down: AtomicBool::new(down),
            instances: instances.max(1),
            admit: redis::Script::new(ADMIT),
            correct: redis::Script::new(CORRECT),
            checks: AtomicU64::new(0),
            fallback_admissions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        tokio::spawn(monitor(Arc::downgrade(&inner)));
        Self(inner)
    }

    /// The divisor the key actors apply to their local limits for the next call: 0 when
    /// Redis counts (the actors count nothing), the instance count while it is down (such
    /// an admission is counted in the stats).
    pub fn share(&self) -> u32 {
        if self.0.down.load(Ordering::Acquire) {
            self.0.fallback_admissions.fetch_add(1, Ordering::Relaxed);
            self.0.instances
        } else {
            0
        }
    }

    pub fn instances(&self) -> u32 {
        self.0.instances
    }

    /// The connection, while Redis is up (for the shared reservations).
    pub(crate) fn connection(&self) -> Option<RedisConn> {
        if self.0.down.load(Ordering::Acquire) {
            return None;
        }
        self.0.conn.load_full().map(|c| (*c).clone())
    }

    /// The connection whether or not Redis counts as up (for background work that may as
    /// well try).
    pub(crate) fn stored_connection(&self) -> Option<RedisConn> {
        self.0.conn.load_full().map(|c| (*c).clone())
    }

    pub(crate) fn went_down(&self, error: &str) {
        self.0.failures.fetch_add(1, Ordering::Relaxed);
        if !self.0.down.swap(true, Ordering::AcqRel) {
            tracing::error!(
                error,
                instances = self.0.instances,
                "rate limits: Redis failed; each instance now enforces its limits divided by {} until Redis is back",
                self.0.instances
            );
            crate::metrics::rate_limit_global(false);
        }
    }

    /// Checks and takes one request and `estimated_tokens` of the key's global windows.
    /// `Err` when Redis did not answer: the limiter is now down and the caller must admit
    /// locally ([`GlobalLimiter::share`]).
    pub async fn admit(
        &self,
        key_id: Uuid,
        rpm: Option<u32>,
        tpm: Option<u64>,
        estimated_tokens: u64,
    ) -> Result<Verdict, ()> {
        let Some(conn) = self.0.conn.load_full() else {
            self.went_down("not connected");
            return Err(());
        };
        self.0.checks.fetch_add(1, Ordering::Relaxed);
        let mut conn = (*conn).clone();
        let mut call = self.0.admit.key(rpm_name(key_id));
        call.key(tpm_name(key_id))
            .arg(rpm.unwrap_or(0))
            .arg(tpm.unwrap_or(0))
            .arg(estimated_tokens);
        let answer =
            tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<(i64, i64)>(&mut conn)).await;
        match answer {
            Ok(Ok((0, _))) => Ok(Verdict::Allowed),
            Ok(Ok((1, ms))) => Ok(Verdict::Rpm(Duration::from_millis(ms.max(1) as u64))),
            Ok(Ok((2, ms))) if ms < 0 => Ok(Verdict::Tpm(None)),
            Ok(Ok((2, ms))) => Ok(Verdict::Tpm(Some(Duration::from_millis(ms as u64)))),
            Ok(Ok(other)) => {
                self.went_down(&format!("unexpected answer {other:?}"));
                Err(())
            }
            Ok(Err(e)) => {
                self.went_down(&e.to_string());
                Err(())
            }
            Err(_) => {
                self.went_down("timed out");
                Err(())
            }
        }
    }

    /// Replaces a call's estimate with what it used in the key's global tpm window (in
    /// the background; a lost correction leaves the estimate, which errs on the safe side
    /// when calls use less than estimated).
    pub fn correct(&self, key_id: Uuid, estimated_tokens: u64, actual_tokens: u64) {
        let diff = i128::from(actual_tokens) - i128::from(estimated_tokens);
        if diff == 0 {
            return;
        }
        let Some(conn) = self.0.conn.load_full() else {
            return;
        };
        let script = self.0.correct.clone();
        tokio::spawn(async move {
            let mut conn = (*conn).clone();
            let mut call = script.key(tpm_name(key_id));
            call.arg(i64::try_from(diff).unwrap_or(0));
            let _ = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await;
        });
    }

    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            backend: "redis",
            global: !self.0.down.load(Ordering::Acquire),
            instances: self.0.instances,
            checks: self.0.checks.load(Ordering::Relaxed),
            fallback_admissions: self.0.fallback_admissions.load(Ordering::Relaxed),
            failures: self.0.failures.load(Ordering::Relaxed),
        }
    }
}

/// Connects when there is no connection yet; while down, runs the admission script on a
/// probe key of its own (a write, on the node that owns that slot: `PING` would succeed on
/// a Redis that refuses writes) and brings the limiter back up once it succeeds.
async fn monitor(inner: std::sync::Weak<Inner>) {
    let probe_key = Uuid::new_v4();
    let mut tick = tokio::time::interval(MONITOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        if !inner.down.load(Ordering::Acquire) {
            continue;
        }
        let conn = match inner.conn.load_full() {
            Some(c) => c,
            None => match RedisConn::connect(&inner.url, inner.cluster).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    inner.conn.store(Some(c.clone()));
                    c
                }
                Err(_) => continue,
            },
        };
        let mut c = (*conn).clone();
        let mut probe = inner.admit.key(rpm_name(probe_key));
        probe
            .key(tpm_name(probe_key))
            .arg(u32::MAX)
            .arg(0u64)
            .arg(0u64);
        let answer = tokio::time::timeout(
            Duration::from_millis(300),
            probe.invoke_async::<(i64, i64)>(&mut c),
        )
        .await;
        if matches!(answer, Ok(Ok(_))) {
            inner.down.store(false, Ordering::Release);
            crate::metrics::rate_limit_global(true);
            tracing::warn!("rate limits: Redis is back; limits are global again");
        }
    }
}
