//! Portkey configs of tenants and users, through the brief's SQL functions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DbError;

/// A stored config. `config_json` is returned with platform keys redacted.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PortkeyRow {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    /// Set for a user's own config; `null` for a tenant-wide one.
    pub user_id: Option<Uuid>,
    pub config_name: String,
    #[schema(value_type = Object)]
    pub config_json: Value,
    pub is_active: bool,
    pub effective_from: DateTime<Utc>,
    pub notes: Option<String>,
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Replaces the value of every `api_key` field, at any depth, with `"***"`.
pub fn redact(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, x) in map.iter_mut() {
                    if k == "api_key" {
                        *x = Value::String("***".into());
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

fn row(r: &sqlx::postgres::PgRow) -> Result<PortkeyRow, sqlx::Error> {
    Ok(PortkeyRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        config_name: r.try_get("config_name")?,
        config_json: redact(r.try_get("config_json")?),
        is_active: r.try_get("is_active")?,
        effective_from: r.try_get("effective_from")?,
        notes: r.try_get("notes")?,
        status_reason: r.try_get("status_reason")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub struct NewConfig<'a> {
    pub tenant_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub name: &'a str,
    pub json: &'a Value,
    pub effective_from: Option<DateTime<Utc>>,
    pub notes: Option<&'a str>,
    pub by: Uuid,
}

pub async fn create(pool: &PgPool, c: NewConfig<'_>) -> Result<Uuid, DbError> {
    let id = sqlx::query_scalar("SELECT data.create_portkey_config($1, $2, $3, $4, $5, $6, $7)")
        .bind(c.tenant_id)
        .bind(c.user_id)
        .bind(c.name)
        .bind(c.json)
        .bind(c.effective_from)
        .bind(c.notes)
        .bind(c.by)
        .fetch_one(pool)
        .await?;
    Ok(id)
}

pub async fn update(
    pool: &PgPool,
    id: Uuid,
    json: Option<&Value>,
    effective_from: Option<DateTime<Utc>>,
    notes: Option<&str>,
    by: Uuid,
) -> Result<(), DbError> {
    sqlx::query("SELECT data.update_portkey_config($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(json)
        .bind(effective_from)
        .bind(notes)
        .bind(by)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_active(
    pool: &PgPool,
    id: Uuid,
    active: bool,
    reason: Option<&str>,
    by: Uuid,
) -> Result<(), DbError> {
    let sql = if active {
        "SELECT data.activate_portkey_config($1, $2, $3)"
    } else {
        "SELECT data.deactivate_portkey_config($1, $2, $3)"
    };
    sqlx::query(sql)
        .bind(id)
        .bind(reason)
        .bind(by)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<PortkeyRow>, sqlx::Error> {
    let r = sqlx::query(
        "SELECT id, tenant_id, user_id, config_name, config_json, is_active, effective_from,
                notes, status_reason, created_at, updated_at
         FROM data.portkey_configs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    r.as_ref().map(row).transpose()
}

pub async fn list(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    user_id: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<Vec<PortkeyRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, tenant_id, user_id, config_name, config_json, is_active, effective_from,
                notes, status_reason, created_at, updated_at
         FROM data.portkey_configs
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR user_id = $2)
         ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    rows.iter().map(row).collect()
}

/// Ids of the configs changed at or after `since`.
pub async fn changed_since(pool: &PgPool, since: DateTime<Utc>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM data.portkey_configs WHERE updated_at >= $1")
        .bind(since)
        .fetch_all(pool)
        .await
}

/// `data.get_active_portkey_config`, redacted.
pub async fn active(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
    user_id: Option<Uuid>,
) -> Result<Option<Value>, sqlx::Error> {
    let v: Option<Value> = sqlx::query_scalar("SELECT data.get_active_portkey_config($1, $2)")
        .bind(tenant_id)
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok(v.map(redact))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_api_keys_at_any_depth() {
        let v = redact(json!({"api_key": "a", "targets": [{"api_key": "b", "x": 1},
            {"targets": [{"api_key": "c"}]}]}));
        assert!(!v.to_string().contains("\"a\"") && !v.to_string().contains("\"b\""));
        assert_eq!(v["targets"][1]["targets"][0]["api_key"], "***");
        assert_eq!(v["targets"][0]["x"], 1);
    }
}
