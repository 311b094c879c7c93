//! The audit log: who changed what through the platform API, when, in which request, from
//! what to what (`migrations/0012_audit.sql`; rows can be added, never changed).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// One change, as recorded.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub actor_id: Uuid,
    pub actor_role: &'a str,
    pub tenant_id: Option<Uuid>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub request_id: Uuid,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
}

pub async fn insert(pool: &PgPool, e: NewEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO data.audit_log (actor_id, actor_role, tenant_id, action, target_type,
                                     target_id, request_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.actor_id)
    .bind(e.actor_role)
    .bind(e.tenant_id)
    .bind(e.action)
    .bind(e.target_type)
    .bind(e.target_id)
    .bind(e.request_id.to_string())
    .bind(e.before)
    .bind(e.after)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Uuid,
    pub actor_role: String,
    pub tenant_id: Option<Uuid>,
    #[schema(example = "virtual_key.update")]
    pub action: String,
    #[schema(example = "virtual_key")]
    pub target_type: String,
    pub target_id: String,
    pub request_id: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

/// Which entries: every filter that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's (a tenant admin's view).
    pub tenant_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only entries older than this id (the next page).
    pub before: Option<i64>,
}

/// A page of entries, newest first.
pub async fn list(pool: &PgPool, f: &Filter, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor_id, actor_role, tenant_id, action, target_type, target_id,
                request_id, before, after
         FROM data.audit_log
         WHERE ($1::uuid IS NULL OR tenant_id = $1)
           AND ($2::uuid IS NULL OR actor_id = $2)
           AND ($3::text IS NULL OR action = $3)
           AND ($4::text IS NULL OR target_type = $4)
           AND ($5::text IS NULL OR target_id = $5)
           AND ($6::timestamptz IS NULL OR at >= $6)
           AND ($7::timestamptz IS NULL OR at < $7)
           AND ($8::bigint IS NULL OR id < $8)
         ORDER BY id DESC LIMIT $9",
    )
    .bind(f.tenant_id)
    .bind(f.actor_id)
    .bind(f.action.as_deref())
    .bind(f.target_type.as_deref())
    .bind(f.target_id.as_deref())
    .bind(f.from)
    .bind(f.to)
    .bind(f.before)
    .bind(limit)
    .fetch_all(pool)
    .await
}
