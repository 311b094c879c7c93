//! A key's wholesaler controls: an expiry time, spend budgets (lifetime and per calendar
//! month) enforced with holds, and a client address allow-list
//! (`migrations/0011_key_controls.sql`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::billing::Decimal;

/// How long a budget hold outlives a call that never settled (its instance died): as long
/// as a balance reservation.
const HOLD_TTL_SECS: i32 = 30 * 60;

/// Changes to a key's controls; `None` leaves one as it is, `Some(None)` removes it.
#[derive(Debug, Default, Clone)]
pub struct ControlChanges {
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub budget_total: Option<Option<Decimal>>,
    pub budget_monthly: Option<Option<Decimal>>,
    /// CIDR ranges, already checked; empty allows every address.
    pub allowed_ips: Option<Vec<String>>,
}

/// A key's controls as stored.
#[derive(sqlx::FromRow)]
struct Controls {
    expires_at: Option<DateTime<Utc>>,
    budget_total: Option<Decimal>,
    budget_monthly: Option<Decimal>,
    allowed_ips: Vec<String>,
}

impl ControlChanges {
    pub fn is_empty(&self) -> bool {
        self.expires_at.is_none()
            && self.budget_total.is_none()
            && self.budget_monthly.is_none()
            && self.allowed_ips.is_none()
    }

    /// Whether these changes only tighten `current` (for a role below the one that set
    /// them): an expiry only brought forward, a budget only lowered, an allow-list only
    /// narrowed to some of its ranges.
    fn only_tightens(&self, current: &Controls) -> Result<(), &'static str> {
        let earlier = match (self.expires_at, current.expires_at) {
            (None, _) | (Some(Some(_)), None) => true,
            (Some(None), Some(_)) => false,
            (Some(None), None) => true,
            (Some(Some(new)), Some(old)) => new <= old,
        };
        if !earlier {
            return Err("expires_at was set by a higher role: it may only be brought forward");
        }
        let lower = |new: Option<Option<Decimal>>, old: Option<Decimal>| match (new, old) {
            (None, _) | (Some(Some(_)), None) | (Some(None), None) => true,
            (Some(None), Some(_)) => false,
            (Some(Some(n)), Some(o)) => n <= o,
        };
        if !lower(self.budget_total, current.budget_total)
            || !lower(self.budget_monthly, current.budget_monthly)
        {
            return Err("the budget was set by a higher role: it may only be lowered");
        }
        if let Some(ips) = &self.allowed_ips
            && !current.allowed_ips.is_empty()
            && (ips.is_empty() || !ips.iter().all(|ip| current.allowed_ips.contains(ip)))
        {
            return Err("allowed_ips was set by a higher role: it may only be narrowed");
        }
        Ok(())
    }
}

/// Applies `changes` to key `id` inside the caller's transaction, which already holds the
/// key's row lock; `lower`: the caller's role is below the one that set the key's limits.
/// Tells every instance (`virtual_key_update`) when anything changed.
pub(super) async fn apply(
    tx: &mut PgConnection,
    id: Uuid,
    changes: &ControlChanges,
    lower: bool,
) -> Result<Result<(), &'static str>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Ok(()));
    }
    let current: Controls = sqlx::query_as(
        "SELECT expires_at, budget_total, budget_monthly, allowed_ips
         FROM data.virtual_key WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if lower && let Err(why) = changes.only_tightens(&current) {
        return Ok(Err(why));
    }
    let pick = |new: Option<Option<Decimal>>, old: Option<Decimal>| new.unwrap_or(old);
    sqlx::query(
        "UPDATE data.virtual_key SET expires_at = $2, budget_total = $3, budget_monthly = $4,
                allowed_ips = $5, updated_at = now(),
                budget_alerted = budget_alerted AND budget_total IS NOT DISTINCT FROM $3
                                 AND budget_monthly IS NOT DISTINCT FROM $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(changes.expires_at.unwrap_or(current.expires_at))
    .bind(pick(changes.budget_total, current.budget_total))
    .bind(pick(changes.budget_monthly, current.budget_monthly))
    .bind(changes.allowed_ips.as_ref().unwrap_or(&current.allowed_ips))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "SELECT data.notify_virtual_key(k, 'update', NULL) FROM data.virtual_key k WHERE k.id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(Ok(()))
}

/// Which budget refused a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    Total,
    Monthly,
}

/// Holds `amount` of key `key_id`'s budgets for the call `request_id` if it fits what the
/// key spent plus every open hold, on every instance (the key row's lock orders them).
pub async fn hold(
    pool: &PgPool,
    key_id: Uuid,
    request_id: Uuid,
    amount: Decimal,
) -> Result<Result<(), OverBudget>, sqlx::Error> {
    let refused: Option<String> = sqlx::query_scalar("SELECT data.hold_key_budget($1, $2, $3, $4)")
        .bind(key_id)
        .bind(request_id.to_string())
        .bind(amount)
        .bind(HOLD_TTL_SECS)
        .fetch_one(pool)
        .await?;
    Ok(match refused.as_deref() {
        None => Ok(()),
        Some("monthly") => Err(OverBudget::Monthly),
        // "total", or "missing" (the key was deleted meanwhile): nothing to spend.
        Some(_) => Err(OverBudget::Total),
    })
}

/// Drops the hold of a call that was not charged (a lost release lapses on its own).
pub async fn release(pool: &PgPool, request_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM data.key_budget_hold WHERE request_id = $1")
        .bind(request_id.to_string())
        .execute(pool)
        .await?;
    Ok(())
}

/// In the ledger's transaction: adds newly committed charges to their keys' spend (the
/// month's restarting with a new calendar month) and drops the holds of `request_ids`
/// (the calls of budgeted keys), so a charge moves from held to spent at once.
pub(super) async fn spend(
    tx: &mut PgConnection,
    keys: &[Uuid],
    costs: &[Decimal],
    request_ids: &[&str],
) -> Result<(), sqlx::Error> {
    if !keys.is_empty() {
        spend_keys(tx, keys, costs).await?;
    }
    // Only batches with budgeted keys' calls have holds to drop.
    if !request_ids.is_empty() {
        sqlx::query("DELETE FROM data.key_budget_hold WHERE request_id = ANY($1)")
            .bind(request_ids)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The spend moves, and a key whose spend crosses 80 % of a budget is announced.
async fn spend_keys(
    tx: &mut PgConnection,
    keys: &[Uuid],
    costs: &[Decimal],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH c AS (SELECT key_id, sum(cost) AS cost
                      FROM UNNEST($1::uuid[], $2::numeric[]) AS t(key_id, cost)
                     WHERE key_id IS NOT NULL GROUP BY key_id),
              -- Rows locked in id order: every instance's ledger takes them in the same
              -- order, so two commits touching the same keys never deadlock. NO KEY: the
              -- budget holds' foreign keys hold KEY SHARE locks on them.
              locked AS (SELECT k.id FROM data.virtual_key k JOIN c ON c.key_id = k.id
                          ORDER BY k.id FOR NO KEY UPDATE OF k),
              upd AS (UPDATE data.virtual_key k SET
                          spent_total = k.spent_total + c.cost,
                          spent_month = CASE WHEN k.spent_month_of = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                                             THEN k.spent_month ELSE 0 END + c.cost,
                          spent_month_of = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                      FROM c, locked WHERE k.id = c.key_id AND locked.id = k.id
                      RETURNING k.id, k.user_id, k.name, k.spent_total, k.spent_month,
                                k.budget_total, k.budget_monthly, c.cost)
         SELECT data.queue_alert(user_id, 'key.budget_80', jsonb_build_object(
                    'virtual_key_id', id, 'key_name', name,
                    'budget_total', budget_total, 'budget_monthly', budget_monthly,
                    'spent_total', spent_total, 'spent_this_month', spent_month))
         FROM upd
         WHERE (budget_total > 0 AND spent_total - cost < 0.8 * budget_total
                AND spent_total >= 0.8 * budget_total)
            OR (budget_monthly > 0 AND spent_month - cost < 0.8 * budget_monthly
                AND spent_month >= 0.8 * budget_monthly)",
    )
    .bind(keys)
    .bind(costs)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
