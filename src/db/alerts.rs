//! Alerts: tenant (and user) webhooks, the outbox of events waiting for them, and the
//! crossings that fill it (`migrations/0015_alerts.sql`). Deliveries are in
//! `crate::alerts`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::billing::Decimal;

/// In the ledger's transaction: the users whose balance went below a webhook's threshold,
/// or whose status changed, in this commit (`rows`: the balance update's, with the old
/// balance and status). One outbox row per crossing and webhook.
pub(super) async fn on_balances(tx: &mut PgConnection, rows: &[PgRow]) -> Result<(), sqlx::Error> {
    let mut users = Vec::with_capacity(rows.len());
    let mut old_balance: Vec<Decimal> = Vec::with_capacity(rows.len());
    let mut new_balance: Vec<Decimal> = Vec::with_capacity(rows.len());
    let mut old_status: Vec<String> = Vec::with_capacity(rows.len());
    let mut new_status: Vec<String> = Vec::with_capacity(rows.len());
    for r in rows {
        users.push(r.try_get::<Uuid, _>("user_id")?);
        old_balance.push(r.try_get("old_balance")?);
        new_balance.push(r.try_get("balance")?);
        old_status.push(r.try_get("old_status")?);
        new_status.push(r.try_get("status")?);
    }
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO data.alert_outbox (webhook_id, tenant_id, event, payload)
         SELECT w.id, w.tenant_id, e.event,
                e.payload || jsonb_build_object('user_id', c.user_id, 'tenant_id', w.tenant_id)
         FROM UNNEST($1::uuid[], $2::numeric[], $3::numeric[], $4::text[], $5::text[])
              AS c(user_id, old_balance, new_balance, old_status, new_status)
         JOIN data.user_profile p ON p.user_id = c.user_id
         JOIN data.alert_webhook w
           ON w.tenant_id = p.tenant_id AND (w.user_id IS NULL OR w.user_id = c.user_id)
         CROSS JOIN LATERAL (
             SELECT 'balance.low' AS event,
                    jsonb_build_object('balance', c.new_balance::text,
                                       'threshold', w.low_balance_threshold::text) AS payload
             WHERE w.low_balance_threshold IS NOT NULL
               AND c.old_balance >= w.low_balance_threshold
               AND c.new_balance < w.low_balance_threshold
             UNION ALL
             SELECT 'account.status',
                    jsonb_build_object('from', c.old_status, 'to', c.new_status,
                                       'balance', c.new_balance::text)
             WHERE c.old_status <> c.new_status
         ) e",
    )
    .bind(&users)
    .bind(&old_balance)
    .bind(&new_balance)
    .bind(&old_status)
    .bind(&new_status)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A webhook as its owners see it: the secret never comes back.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub url: String,
    #[serde(serialize_with = "crate::billing::ser_opt_money")]
    #[schema(value_type = Option<String>, example = "5")]
    pub low_balance_threshold: Option<Decimal>,
    pub created_at: DateTime<Utc>,
}

/// Sets the webhook of a tenant (`user_id` `None`) or of one of its users.
pub async fn put_webhook(
    pool: &PgPool,
    tenant_id: Uuid,
    user_id: Option<Uuid>,
    url: &str,
    secret: &str,
    low_balance_threshold: Option<Decimal>,
) -> Result<Webhook, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO data.alert_webhook (tenant_id, user_id, url, secret, low_balance_threshold)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET url = EXCLUDED.url,
             secret = EXCLUDED.secret, low_balance_threshold = EXCLUDED.low_balance_threshold
         RETURNING id, tenant_id, user_id, url, low_balance_threshold, created_at",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(url)
    .bind(secret)
    .bind(low_balance_threshold)
    .fetch_one(pool)
    .await
}

pub async fn webhooks(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Webhook>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, user_id, url, low_balance_threshold, created_at
         FROM data.alert_webhook WHERE tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await
}

pub async fn delete_webhook(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM data.alert_webhook WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// An event and how its delivery went.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Alert {
    pub id: i64,
    pub event_id: Uuid,
    pub webhook_id: Uuid,
    pub event: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// A tenant's events, newest first.
pub async fn alerts(pool: &PgPool, tenant_id: Uuid, limit: i64) -> Result<Vec<Alert>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, event_id, webhook_id, event, payload, created_at, attempts, delivered_at,
                CASE WHEN delivered_at IS NULL THEN next_attempt_at END AS next_attempt_at,
                last_status, last_error
         FROM data.alert_outbox WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(tenant_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// An event to send now, with where and how to sign it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub id: i64,
    pub event_id: Uuid,
    pub event: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    pub url: String,
    pub secret: String,
}

/// Claims up to `limit` events due now: each is pushed `lease_secs` into the future, so no
/// other instance sends it meanwhile.
pub async fn claim(pool: &PgPool, limit: i64, lease_secs: i32) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (SELECT id FROM data.alert_outbox
                       WHERE delivered_at IS NULL AND next_attempt_at <= now()
                       ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE data.alert_outbox o
            SET next_attempt_at = now() + make_interval(secs => $2), attempts = o.attempts + 1
           FROM due, data.alert_webhook w
          WHERE o.id = due.id AND w.id = o.webhook_id
         RETURNING o.id, o.event_id, o.event, o.payload, o.created_at, o.attempts, w.url, w.secret",
    )
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
}

/// Records a delivery attempt: delivered, or tried again after `retry_secs`.
pub async fn attempted(
    pool: &PgPool,
    id: i64,
    status: Option<u16>,
    error: Option<&str>,
    retry_secs: Option<i32>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE data.alert_outbox SET
             last_status = $2, last_error = $3,
             delivered_at = CASE WHEN $4::int IS NULL THEN now() END,
             next_attempt_at = CASE WHEN $4::int IS NULL THEN next_attempt_at
                                    ELSE now() + make_interval(secs => $4) END
         WHERE id = $1",
    )
    .bind(id)
    .bind(status.map(i32::from))
    .bind(error)
    .bind(retry_secs)
    .execute(pool)
    .await?;
    Ok(())
}
