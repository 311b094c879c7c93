//! Usage and ledger reads: rows, groups and totals for a user or a whole tenant.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::billing::{Decimal, ser_money};

/// Whose usage: one user, or every user of a tenant.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    User(Uuid),
    Tenant(Uuid),
}

impl Scope {
    pub(super) fn ids(self) -> (Option<Uuid>, Option<Uuid>) {
        match self {
            Self::User(u) => (Some(u), None),
            Self::Tenant(t) => (None, Some(t)),
        }
    }
}

/// A time range; open ends are `None`. `from` is inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub request_id: String,
    pub user_id: Uuid,
    pub virtual_key_id: Option<Uuid>,
    pub provider: String,
    pub model: String,
    pub input_tokens: i32,
    pub output_tokens: i32,
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "0.00002944")]
    pub cost: Decimal,
    /// `upstream` (reported by the provider) or `estimated` (counted by the gateway).
    pub usage_source: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct UsageTotals {
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "0.05")]
    pub cost: Decimal,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageGroup {
    /// The day (`2026-11-26`, UTC), the model, the key id or the user id.
    pub group: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Grouping for usage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Day,
    Model,
    Key,
    User,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Model => "model",
            Self::Key => "key",
            Self::User => "user",
        }
    }
}

pub async fn rows(
    pool: &PgPool,
    scope: Scope,
    range: Range,
    limit: i64,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    let (user, tenant) = scope.ids();
    let rows = sqlx::query(
        "SELECT request_id, user_id, virtual_key_id, provider, model, input_tokens, output_tokens,
                cost, usage_source, created_at
         FROM data.usage_log
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR tenant_id = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
         ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(user)
    .bind(tenant)
    .bind(range.from)
    .bind(range.to)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageRow {
                request_id: r.try_get("request_id")?,
                user_id: r.try_get("user_id")?,
                virtual_key_id: r.try_get("virtual_key_id")?,
                provider: r.try_get("provider")?,
                model: r.try_get("model")?,
                input_tokens: r.try_get("input_tokens")?,
                output_tokens: r.try_get("output_tokens")?,
                cost: r.try_get("cost")?,
                usage_source: r.try_get("usage_source")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

fn totals(r: &sqlx::postgres::PgRow) -> Result<UsageTotals, sqlx::Error> {
    Ok(UsageTotals {
        requests: r.try_get("requests")?,
        input_tokens: r.try_get("input_tokens")?,
        output_tokens: r.try_get("output_tokens")?,
        cost: r.try_get("cost")?,
    })
}

pub async fn total(pool: &PgPool, scope: Scope, range: Range) -> Result<UsageTotals, sqlx::Error> {
    let (user, tenant) = scope.ids();
    let row = sqlx::query(
        "SELECT count(*) AS requests, coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
                coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
                coalesce(sum(cost), 0) AS cost
         FROM data.usage_log
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR tenant_id = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)",
    )
    .bind(user)
    .bind(tenant)
    .bind(range.from)
    .bind(range.to)
    .fetch_one(pool)
    .await?;
    totals(&row)
}

pub async fn groups(
    pool: &PgPool,
    scope: Scope,
    range: Range,
    by: GroupBy,
) -> Result<Vec<UsageGroup>, sqlx::Error> {
    let (user, tenant) = scope.ids();
    let rows = sqlx::query(
        "SELECT CASE $5
                    WHEN 'day' THEN to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                    WHEN 'model' THEN model
                    WHEN 'key' THEN coalesce(virtual_key_id::text, '')
                    ELSE user_id::text
                END AS grp,
                count(*) AS requests, coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
                coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
                coalesce(sum(cost), 0) AS cost
         FROM data.usage_log
         WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR tenant_id = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR created_at < $4)
         GROUP BY 1 ORDER BY 1",
    )
    .bind(user)
    .bind(tenant)
    .bind(range.from)
    .bind(range.to)
    .bind(by.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageGroup {
                group: r.try_get("grp")?,
                totals: totals(r)?,
            })
        })
        .collect()
}

/// What the ledger charged in the range (positive): equals the usage total's cost, since
/// every usage row is written with its ledger row, in one transaction, with one time.
pub async fn ledger_charges(
    pool: &PgPool,
    scope: Scope,
    range: Range,
) -> Result<Decimal, sqlx::Error> {
    let (user, tenant) = scope.ids();
    sqlx::query_scalar(
        "SELECT coalesce(-sum(l.amount), 0) FROM data.balance_ledger l
         JOIN data.user_profile p USING (user_id)
         WHERE l.kind = 'charge'
           AND ($1::uuid IS NULL OR l.user_id = $1) AND ($2::uuid IS NULL OR p.tenant_id = $2)
           AND ($3::timestamptz IS NULL OR l.created_at >= $3)
           AND ($4::timestamptz IS NULL OR l.created_at < $4)",
    )
    .bind(user)
    .bind(tenant)
    .bind(range.from)
    .bind(range.to)
    .fetch_one(pool)
    .await
}

/// One balance movement.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub request_id: String,
    /// `topup`, `charge` or `redemption`.
    pub kind: String,
    /// Signed: credits positive, charges negative.
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "-0.00002944")]
    pub amount: Decimal,
    pub status_after: String,
    pub note: Option<String>,
    /// A `charge` row sums the calls of one flush: how many (their `usage_log` rows hold
    /// each call). Absent for credits, and for charges written one per call before.
    pub calls: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// The newest entries before `before` (an entry id), newest first.
pub async fn ledger_page(
    pool: &PgPool,
    user_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, request_id, kind, amount, status_after, note, calls, created_at
         FROM data.balance_ledger
         WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LedgerEntry {
                id: r.try_get("id")?,
                request_id: r.try_get("request_id")?,
                kind: r.try_get("kind")?,
                amount: r.try_get("amount")?,
                status_after: r.try_get("status_after")?,
                note: r.try_get("note")?,
                calls: r.try_get("calls")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}
/// What one key's calls were charged in `range` (committed charges).
pub async fn key_spend(pool: &PgPool, key_id: Uuid, range: Range) -> Result<Decimal, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(sum(cost), 0) FROM data.usage_log
         WHERE virtual_key_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
           AND ($3::timestamptz IS NULL OR created_at < $3)",
    )
    .bind(key_id)
    .bind(range.from)
    .bind(range.to)
    .fetch_one(pool)
    .await
}
