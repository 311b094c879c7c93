//! Reservations shared by several instances (with the Redis backend): a user's open
//! reservations on every instance, so that one instance's admission counts what the others
//! have in flight.
//!
//! Each BalanceActor still admits on its own view (`amount <= balance - its reservations +
//! overdraft`); then one Lua script checks the same rule against *every* instance's open
//! reservations and
//! records this one, atomically: `reserve:{<user id>}` is a hash of request id ->
//! `<micro-units>:<deadline ms>` plus a running `sum`. A release deletes the entry at once.
//! A settled charge's entry stays until the ledger commits the charge; then its amount moves
//! to `c:<balance version of that commit>` (with a running `recent` total), which every
//! instance whose view predates that version keeps counting: no instance admits on a view
//! that lacks a call in flight, settled, or committed but not yet known through its
//! `balance_update` notice. The quick check counts all of `recent`; only when that refuses
//! does the script count exactly (and sweep what is past its deadline). Amounts are in
//! millionths, reservations rounded up and balances down, so the check never admits more
//! than the exact rule would.
//!
//! An entry lives as long as its instance: the instance pushes the deadlines of its open
//! entries forward every `ttl / 3` (so a stream of any length keeps its reservation), and the
//! entries of an instance that died expire within `ttl` and are dropped by the next refusal's
//! sweep. A release that fails is not retried: the entry is no longer refreshed, so it too
//! expires within `ttl`. While Redis is unreachable (the rate limiter's state), admissions
//! use the local view alone.
//!
//! The instance that made a charge counts it twice until its commit (in its own view and in
//! its Redis entry): near the end of a balance, a call to that instance may be refused up to
//! one flush interval early. Nothing is ever admitted beyond the rule.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rust_decimal::prelude::ToPrimitive;
use uuid::Uuid;

use crate::billing::Decimal;
use crate::ratelimit::GlobalLimiter;

const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a committed charge is still counted by instances whose view predates it (its
/// notice arrives in milliseconds; an instance that lost notices resyncs).
const COMMITTED_GRACE: Duration = Duration::from_secs(5);
/// Largest integer a Lua number holds exactly.
const EXACT: i64 = 1 << 53;

/// ARGV: request id, amount, available (the instance's view of the balance plus the
/// overdraft allowance), time to live (ms), the balance version the view is at. Admits when
/// the amount fits what the other reservations and unseen commits leave.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local available = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local known = tonumber(ARGV[5])
local amount = tonumber(ARGV[2])
local function amount_of(v) return tonumber(string.match(v, '^(%-?%d+):')) end
local sum = tonumber(redis.call('HGET', KEYS[1], 'sum') or '0')
local recent = tonumber(redis.call('HGET', KEYS[1], 'recent') or '0')
local mine = redis.call('HGET', KEYS[1], id)
local others = sum - (mine and amount_of(mine) or 0)
if available - others - recent < amount then
  -- The quick check counted every recent commit; now count exactly: drop what is past its
  -- deadline (a dead instance's entries, old commits) and count only the commits newer
  -- than the version this instance's view is at.
  sum = 0
  recent = 0
  local unseen = 0
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= 'sum' and f ~= 'recent' then
      local a, d = string.match(all[i + 1], '^(%-?%d+):(%d+)$')
      if a == nil or tonumber(d) < now then
        redis.call('HDEL', KEYS[1], f)
        if f == id then mine = nil end
      elseif string.sub(f, 1, 2) == 'c:' then
        recent = recent + tonumber(a)
        if tonumber(string.sub(f, 3)) > known then unseen = unseen + tonumber(a) end
      else
        sum = sum + tonumber(a)
      end
    end
  end
  redis.call('HSET', KEYS[1], 'sum', string.format('%d', sum),
    'recent', string.format('%d', recent))
  others = sum - (mine and amount_of(mine) or 0)
  if available - others - unseen < amount then return 0 end
end
redis.call('HSET', KEYS[1], id, ARGV[2] .. ':' .. string.format('%d', now + ttl),
  'sum', string.format('%d', others + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// ARGV: the balance version the commit made, how long to keep counting it (ms), the
/// committed request ids. Their amounts move to `c:<version>` (and the `recent` total),
/// which instances whose view is older than that version still count.
const COMMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    redis.call('HDEL', KEYS[1], ARGV[i])
    moved = moved + tonumber(string.match(v, '^(%-?%d+):'))
  end
end
if moved ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'sum', string.format('%d', -moved))
  local f = 'c:' .. ARGV[1]
  local old = redis.call('HGET', KEYS[1], f)
  local prev = old and tonumber(string.match(old, '^(%-?%d+):')) or 0
  redis.call('HSET', KEYS[1], f, string.format('%d', prev + moved) .. ':' ..
    string.format('%d', now + tonumber(ARGV[2])))
  redis.call('HINCRBY', KEYS[1], 'recent', string.format('%d', moved))
end
return moved
"#;

const RELEASE: &str = r#"
local n = 0
for _, id in ipairs(ARGV) do
  local v = redis.call('HGET', KEYS[1], id)
  if v then
    redis.call('HDEL', KEYS[1], id)
    local a = tonumber(string.match(v, '^(%-?%d+):'))
    if a ~= 0 then redis.call('HINCRBY', KEYS[1], 'sum', string.format('%d', -a)) end
    n = n + 1
  end
end
return n
"#;

/// Moves the deadlines of this instance's open entries (ARGV[2..]) to now + ARGV[1] ms.
const REFRESH: &str = r#"
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    redis.call('HSET', KEYS[1], ARGV[i],
      string.match(v, '^(%-?%d+):') .. ':' .. string.format('%d', deadline))
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"#;

fn name(user_id: Uuid) -> String {
    format!("reserve:{{{user_id}}}")
}

/// `d` in millionths, rounded up or down, within what Lua holds exactly.
fn micros(d: Decimal, up: bool) -> i64 {
    let bound = if d.is_sign_negative() { -EXACT } else { EXACT };
    let Some(scaled) = d.checked_mul(Decimal::from(1_000_000)) else {
        return bound;
    };
    let rounded = if up { scaled.ceil() } else { scaled.floor() };
    rounded.to_i64().unwrap_or(bound).clamp(-EXACT, EXACT)
}

/// How long this instance keeps refreshing an entry whose call never settled nor released
/// (a lost call): as long as a balance actor keeps a reservation.
const LONGEST_CALL: Duration = Duration::from_secs(30 * 60);

/// A handle on the shared reservations; cheap to clone.
#[derive(Clone)]
pub struct GlobalReservations(Arc<Inner>);

struct Inner {
    redis: GlobalLimiter,
    reserve: redis::Script,
    release: redis::Script,
    commit: redis::Script,
    refresh: redis::Script,
    ttl_ms: u64,
    /// This instance's entries in Redis: (user, request id) -> when reserved, until
    /// released or committed.
    open: DashMap<(Uuid, Uuid), std::time::Instant>,
}

/// The shared check's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// Recorded: every instance now counts this reservation.
    Reserved,
    /// The other instances' open reservations leave nothing for this one.
    Refused,
    /// Redis is unreachable: admitted on this instance's view alone.
    Skipped,
}

impl GlobalReservations {
    /// Shares the rate limiter's connection and its view of whether Redis is up. An entry
    /// lives `ttl` past its instance's last refresh (every `ttl / 3`); spawns the refresher.
    pub fn new(redis: GlobalLimiter, ttl: Duration) -> Self {
        let inner = Arc::new(Inner {
            redis,
            reserve: redis::Script::new(RESERVE),
            release: redis::Script::new(RELEASE),
            commit: redis::Script::new(COMMIT),
            refresh: redis::Script::new(REFRESH),
            ttl_ms: ttl.as_millis().max(3) as u64,
            open: DashMap::new(),
        });
        tokio::spawn(refresher(Arc::downgrade(&inner)));
        Self(inner)
    }

    /// Records `amount` for `request_id` if it fits `available` (this instance's view of the
    /// balance, which includes the user's commits up to balance version `version`, plus the
    /// overdraft allowance) minus every instance's open reservations and the charges
    /// committed since `version`.
    pub async fn reserve(
        &self,
        user_id: Uuid,
        request_id: Uuid,
        amount: Decimal,
        available: Decimal,
        version: i64,
    ) -> Shared {
        let inner = &self.0;
        let Some(mut conn) = inner.redis.connection() else {
            return Shared::Skipped;
        };
        let mut call = inner.reserve.key(name(user_id));
        call.arg(request_id.to_string())
            .arg(micros(amount, true))
            .arg(micros(available, false))
            .arg(inner.ttl_ms)
            .arg(version);
        match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(1)) => {
                inner
                    .open
                    .insert((user_id, request_id), std::time::Instant::now());
                Shared::Reserved
            }
            Ok(Ok(_)) => Shared::Refused,
            Ok(Err(e)) => {
                inner.redis.went_down(&e.to_string());
                Shared::Skipped
            }
            Err(_) => {
                inner.redis.went_down("timed out");
                Shared::Skipped
            }
        }
    }

    /// Deletes a reservation whose call was not charged, in the background.
    pub fn release(&self, user_id: Uuid, request_id: Uuid) {
        if self.0.open.remove(&(user_id, request_id)).is_some() {
            self.release_many(vec![(user_id, vec![request_id.to_string()])]);
        }
    }

    /// Marks the reservations of charges just committed at each user's new balance
    /// `version`, in the background: every instance whose view is older than that version
    /// keeps counting them (for `COMMITTED_GRACE`), so none admits on a view that lacks
    /// them while the commit's notice is on its way.
    /// A charge without a version (its user's row was not returned) is released outright.
    pub fn committed<'a>(&self, charges: impl Iterator<Item = (Uuid, Option<i64>, &'a str)>) {
        let mut per_user: std::collections::HashMap<(Uuid, i64), Vec<String>> = Default::default();
        let mut unversioned = Vec::new();
        for (user, version, id) in charges {
            let Ok(request_id) = Uuid::parse_str(id) else {
                continue;
            };
            if self.0.open.remove(&(user, request_id)).is_none() {
                continue;
            }
            match version {
                Some(v) => per_user.entry((user, v)).or_default().push(id.to_owned()),
                None => unversioned.push((user, vec![id.to_owned()])),
            }
        }
        self.release_many(unversioned);
        let grace = COMMITTED_GRACE.as_millis().to_string();
        let calls = per_user
            .into_iter()
            .map(|((user, version), ids)| {
                let args = [version.to_string(), grace.clone()].into_iter().chain(ids);
                (user, args.collect())
            })
            .collect();
        self.run_per_user(&self.0.commit, calls);
    }

    /// Runs the releases on the stored connection even while the limiter counts Redis as
    /// down (they are background work); one that fails leaves an entry nobody refreshes,
    /// which expires within the time to live.
    fn release_many(&self, per_user: Vec<(Uuid, Vec<String>)>) {
        self.run_per_user(&self.0.release, per_user);
    }

    fn run_per_user(&self, script: &redis::Script, calls: Vec<(Uuid, Vec<String>)>) {
        run_per_user(&self.0.redis, script, calls);
    }
}

/// Runs `script` once per user (`reserve:{<user>}`, with that user's arguments) in the
/// background, on the stored connection whether or not the limiter counts Redis as up:
/// this is background work, and a call that fails leaves entries that expire.
fn run_per_user(redis: &GlobalLimiter, script: &redis::Script, calls: Vec<(Uuid, Vec<String>)>) {
    if calls.is_empty() {
        return;
    }
    let Some(mut conn) = redis.stored_connection() else {
        return;
    };
    let script = script.clone();
    tokio::spawn(async move {
        for (user, args) in calls {
            let mut call = script.key(name(user));
            for a in args {
                call.arg(a);
            }
            let _ = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await;
        }
    });
}

/// Every `ttl / 3`, pushes the deadlines of this instance's open entries forward, so they
/// outlive any call while the instance lives.
async fn refresher(inner: std::sync::Weak<Inner>) {
    let every = {
        let Some(i) = inner.upgrade() else { return };
        Duration::from_millis(i.ttl_ms / 3)
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // A call lost without a settle or a release stops being refreshed (and expires)
        // when a balance actor would drop its reservation too.
        inner.open.retain(|_, at| at.elapsed() < LONGEST_CALL);
        let mut per_user: std::collections::HashMap<Uuid, Vec<String>> = Default::default();
        for e in inner.open.iter() {
            let (user, request_id) = *e.key();
            per_user
                .entry(user)
                .or_insert_with(|| vec![inner.ttl_ms.to_string()])
                .push(request_id.to_string());
        }
        run_per_user(&inner.redis, &inner.refresh, per_user.into_iter().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn amounts_round_against_admitting() {
        let d = |s: &str| Decimal::from_str(s).unwrap_or_default();
        assert_eq!(micros(d("0.0320001"), true), 32_001);
        assert_eq!(micros(d("0.0320001"), false), 32_000);
        assert_eq!(micros(d("-0.0000001"), false), -1);
        assert_eq!(micros(d("1e12"), false), EXACT);
        assert_eq!(micros(d("-1e12"), false), -EXACT);
        assert_eq!(micros(Decimal::MAX, false), EXACT, "no overflow");
        assert_eq!(micros(Decimal::MIN, true), -EXACT);
    }
}
