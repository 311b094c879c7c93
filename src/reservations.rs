//! Reservations shared by several instances (with the Redis backend): a user's open
//! reservations on every instance, so that one instance's admission counts what the others
//! have in flight.
//!
//! Each BalanceActor still admits on its own view (`balance - its reservations > 0`); then
//! one Lua script checks the same rule against *every* instance's open reservations and
//! records this one, atomically: `reserve:{<user id>}` is a hash of request id ->
//! `<micro-units>:<deadline ms>` plus a running `sum`. A release deletes the entry at once;
//! a settled charge's entry goes when the ledger has committed the charge, whose
//! `balance_update` notice tells the other instances, so none of them admits on a view that
//! lacks it meanwhile. Amounts are in millionths, reservations rounded up and balances
//! down, so the check never admits more than the exact rule would.
//!
//! An entry outlives its call by design (its deadline is twice the upstream timeout): if its
//! instance dies, the entry expires and the refusal path drops it. While Redis is
//! unreachable (the rate limiter's state), admissions use the local view alone.

use std::time::Duration;

use rust_decimal::prelude::ToPrimitive;
use uuid::Uuid;

use crate::billing::Decimal;
use crate::ratelimit::GlobalLimiter;

const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Largest integer a Lua number holds exactly.
const EXACT: i64 = 1 << 53;

const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local available = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local function amount_of(v) return tonumber(string.match(v, '^(%-?%d+):')) end
local total = tonumber(redis.call('HGET', KEYS[1], 'sum') or '0')
local mine = redis.call('HGET', KEYS[1], id)
local others = total - (mine and amount_of(mine) or 0)
if available - others <= 0 then
  -- Before refusing, drop entries past their deadline (their instance died).
  total = 0
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= 'sum' then
      local a, d = string.match(all[i + 1], '^(%-?%d+):(%d+)$')
      if a == nil or tonumber(d) < now then
        redis.call('HDEL', KEYS[1], f)
        if f == id then mine = nil end
      else
        total = total + tonumber(a)
      end
    end
  end
  redis.call('HSET', KEYS[1], 'sum', total)
  others = total - (mine and amount_of(mine) or 0)
  if available - others <= 0 then return 0 end
end
redis.call('HSET', KEYS[1], id, ARGV[2] .. ':' .. string.format('%d', now + ttl),
  'sum', string.format('%d', others + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

const RELEASE: &str = r#"
local n = 0
for _, id in ipairs(ARGV) do
  local v = redis.call('HGET', KEYS[1], id)
  if v then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HINCRBY', KEYS[1], 'sum', -tonumber(string.match(v, '^(%-?%d+):')))
    n = n + 1
  end
end
return n
"#;

fn name(user_id: Uuid) -> String {
    format!("reserve:{{{user_id}}}")
}

/// `d` in millionths, rounded up or down, within what Lua holds exactly.
fn micros(d: Decimal, up: bool) -> i64 {
    let scaled = d * Decimal::from(1_000_000);
    let rounded = if up { scaled.ceil() } else { scaled.floor() };
    rounded
        .to_i64()
        .unwrap_or(if up { EXACT } else { -EXACT })
        .clamp(-EXACT, EXACT)
}

/// A handle on the shared reservations; cheap to clone.
#[derive(Clone)]
pub struct GlobalReservations {
    redis: GlobalLimiter,
    script: redis::Script,
    release: redis::Script,
    ttl_ms: u64,
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
    /// lives `ttl` unless settled or released first.
    pub fn new(redis: GlobalLimiter, ttl: Duration) -> Self {
        Self {
            redis,
            script: redis::Script::new(RESERVE),
            release: redis::Script::new(RELEASE),
            ttl_ms: ttl.as_millis().max(1) as u64,
        }
    }

    /// Records `amount` for `request_id` if `balance` (this instance's view) minus every
    /// instance's open reservations is positive.
    pub async fn reserve(
        &self,
        user_id: Uuid,
        request_id: Uuid,
        amount: Decimal,
        balance: Decimal,
    ) -> Shared {
        let Some(mut conn) = self.redis.connection() else {
            return Shared::Skipped;
        };
        let mut call = self.script.key(name(user_id));
        call.arg(request_id.to_string())
            .arg(micros(amount, true))
            .arg(micros(balance, false))
            .arg(self.ttl_ms);
        match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(1)) => Shared::Reserved,
            Ok(Ok(_)) => Shared::Refused,
            Ok(Err(e)) => {
                self.redis.went_down(&e.to_string());
                Shared::Skipped
            }
            Err(_) => {
                self.redis.went_down("timed out");
                Shared::Skipped
            }
        }
    }

    /// Deletes a reservation whose call was not charged, in the background.
    pub fn release(&self, user_id: Uuid, request_id: Uuid) {
        self.release_many(vec![(user_id, vec![request_id.to_string()])]);
    }

    /// Deletes the reservations of charges just committed (their balance notice is on its
    /// way to the other instances), in the background. Until then every instance counts
    /// them, so no instance admits on a view that lacks them.
    pub fn release_committed<'a>(&self, charges: impl Iterator<Item = (Uuid, &'a str)>) {
        let mut per_user: std::collections::HashMap<Uuid, Vec<String>> = Default::default();
        for (user, id) in charges {
            per_user.entry(user).or_default().push(id.to_owned());
        }
        self.release_many(per_user.into_iter().collect());
    }

    fn release_many(&self, per_user: Vec<(Uuid, Vec<String>)>) {
        if per_user.is_empty() {
            return;
        }
        let Some(mut conn) = self.redis.connection() else {
            return;
        };
        let script = self.release.clone();
        tokio::spawn(async move {
            for (user, ids) in per_user {
                let mut call = script.key(name(user));
                for id in ids {
                    call.arg(id);
                }
                let done =
                    tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await;
                if !matches!(done, Ok(Ok(_))) {
                    // Redis is failing: what is left expires at its deadline.
                    return;
                }
            }
        });
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
    }
}
