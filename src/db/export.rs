//! Usage exports: every call of a user or a tenant, charged (`data.usage_log`) and, on
//! request, failed (`data.call_failure`, no charge), as rows paged by a cursor or as totals
//! grouped by any combination of day, model, key and user.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use super::usage::{Range, Scope};
use crate::billing::{Decimal, ser_money};

/// One call: `status` 200 and its charge, or the failure's status and code (no charge).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CallRow {
    pub created_at: DateTime<Utc>,
    pub request_id: String,
    pub user_id: Uuid,
    pub virtual_key_id: Option<Uuid>,
    pub provider: Option<String>,
    pub model: String,
    pub input_tokens: i32,
    pub output_tokens: i32,
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "0.035")]
    pub cost: Decimal,
    pub status: i32,
    pub error_code: Option<String>,
}

/// Where a page of rows starts: after this call (by time, then request id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub request_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}|{}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.request_id
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (at, id) = s.split_once('|')?;
        Some(Self {
            at: DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
            request_id: id.to_owned(),
        })
    }
}

/// The calls of the scope in `range`, oldest first, from after `after`.
const CALLS: &str = "
    SELECT created_at, request_id, user_id, virtual_key_id, provider, model, input_tokens,
           output_tokens, cost, status, error_code
    FROM (SELECT created_at, request_id, user_id, tenant_id, virtual_key_id, provider, model,
                 input_tokens, output_tokens, cost, 200 AS status, NULL::text AS error_code
            FROM data.usage_log
          UNION ALL
          SELECT created_at, request_id, user_id, tenant_id, virtual_key_id, NULL, model,
                 0, 0, 0, status, error_code
            FROM data.call_failure WHERE $5) c
    WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR tenant_id = $2)
      AND ($3::timestamptz IS NULL OR created_at >= $3)
      AND ($4::timestamptz IS NULL OR created_at < $4)";

pub async fn rows(
    pool: &PgPool,
    scope: Scope,
    range: Range,
    failed: bool,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<CallRow>, sqlx::Error> {
    let (user, tenant) = scope.ids();
    let sql = format!(
        "{CALLS} AND ($6::timestamptz IS NULL OR (created_at, request_id) > ($6, $7))
         ORDER BY created_at, request_id LIMIT $8"
    );
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(user)
        .bind(tenant)
        .bind(range.from)
        .bind(range.to)
        .bind(failed)
        .bind(after.map(|c| c.at))
        .bind(after.map(|c| c.request_id.as_str()))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A dimension totals can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Day,
    Model,
    Key,
    User,
}

impl Dimension {
    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Model => "model",
            Self::Key => "key",
            Self::User => "user",
        }
    }

    /// Its SQL, from a fixed list (never from the request).
    fn sql(self) -> &'static str {
        match self {
            Self::Day => "(date_trunc('day', created_at AT TIME ZONE 'UTC'))::date::text",
            Self::Model => "model",
            Self::Key => "virtual_key_id::text",
            Self::User => "user_id::text",
        }
    }
}

/// Totals for one combination of the dimensions asked for.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupRow {
    /// The group's value for each dimension, in the order asked.
    pub group: Vec<Option<String>>,
    pub requests: i64,
    pub failures: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "1.75")]
    pub cost: Decimal,
}

pub async fn groups(
    pool: &PgPool,
    scope: Scope,
    range: Range,
    failed: bool,
    by: &[Dimension],
    limit: i64,
) -> Result<Vec<GroupRow>, sqlx::Error> {
    let (user, tenant) = scope.ids();
    let cols: Vec<String> = by
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{} AS g{i}", d.sql()))
        .collect();
    let positions: Vec<String> = (1..=by.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {cols}, count(*) FILTER (WHERE status = 200) AS requests,
                count(*) FILTER (WHERE status <> 200) AS failures,
                coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
                coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
                coalesce(sum(cost), 0) AS cost
         FROM ({CALLS}) calls GROUP BY {positions} ORDER BY {positions} LIMIT $6",
        cols = cols.join(", "),
        positions = positions.join(", "),
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(user)
        .bind(tenant)
        .bind(range.from)
        .bind(range.to)
        .bind(failed)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(GroupRow {
                group: (0..by.len())
                    .map(|i| r.try_get::<Option<String>, _>(i))
                    .collect::<Result<_, _>>()?,
                requests: r.try_get("requests")?,
                failures: r.try_get("failures")?,
                input_tokens: r.try_get("input_tokens")?,
                output_tokens: r.try_get("output_tokens")?,
                cost: r.try_get("cost")?,
            })
        })
        .collect()
}
