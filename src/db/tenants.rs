//! Tenants: the operator's customer organisations, with their markup and overdue threshold.

use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::billing::Decimal;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub name: String,
    /// Percent added to the platform cost (`15` = 15 %).
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "15")]
    pub markup_percent: Decimal,
    /// An overdue account comes back to active only when a top-up brings it to this.
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "0")]
    pub overdue_threshold: Decimal,
    /// How far below zero a call's reservation may take a user of this tenant (0: a call
    /// is admitted only when its worst case fits the balance).
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "0")]
    pub overdraft_limit: Decimal,
}

/// A tenant's settings as given to [`create`] and [`update`] (`None`: the default, or
/// unchanged).
#[derive(Debug, Clone, Default)]
pub struct TenantSettings<'a> {
    pub name: Option<&'a str>,
    pub markup_percent: Option<Decimal>,
    pub overdue_threshold: Option<Decimal>,
    pub overdraft_limit: Option<Decimal>,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("a tenant with this name exists")]
    NameTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn name_taken(e: sqlx::Error) -> TenantError {
    if super::is_unique_violation(&e) {
        TenantError::NameTaken
    } else {
        TenantError::Db(e)
    }
}

pub async fn create(pool: &PgPool, t: TenantSettings<'_>) -> Result<Tenant, TenantError> {
    sqlx::query_as(
        "INSERT INTO data.tenant (name, markup_percent, overdue_threshold, overdraft_limit)
         VALUES ($1, coalesce($2, 0), coalesce($3, 0), coalesce($4, 0))
         RETURNING tenant_id, name, markup_percent, overdue_threshold, overdraft_limit",
    )
    .bind(t.name)
    .bind(t.markup_percent)
    .bind(t.overdue_threshold)
    .bind(t.overdraft_limit)
    .fetch_one(pool)
    .await
    .map_err(name_taken)
}

pub async fn get(pool: &PgPool, tenant_id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, name, markup_percent, overdue_threshold, overdraft_limit
         FROM data.tenant WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, name, markup_percent, overdue_threshold, overdraft_limit
         FROM data.tenant ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// Changes a tenant's settings; `None` leaves a field as it is. Returns `None` when the
/// tenant does not exist.
pub async fn update(
    pool: &PgPool,
    tenant_id: Uuid,
    t: TenantSettings<'_>,
) -> Result<Option<Tenant>, TenantError> {
    sqlx::query_as(
        "UPDATE data.tenant SET
             name = coalesce($2, name),
             markup_percent = coalesce($3, markup_percent),
             overdue_threshold = coalesce($4, overdue_threshold),
             overdraft_limit = coalesce($5, overdraft_limit),
             updated_at = now()
         WHERE tenant_id = $1
         RETURNING tenant_id, name, markup_percent, overdue_threshold, overdraft_limit",
    )
    .bind(tenant_id)
    .bind(t.name)
    .bind(t.markup_percent)
    .bind(t.overdue_threshold)
    .bind(t.overdraft_limit)
    .fetch_optional(pool)
    .await
    .map_err(name_taken)
}

/// Finds a tenant by name or creates it (used by the demo seed).
pub async fn ensure(
    pool: &PgPool,
    name: &str,
    markup_percent: Decimal,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO data.tenant (name, markup_percent) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING tenant_id",
    )
    .bind(name)
    .bind(markup_percent)
    .fetch_one(pool)
    .await
}
/// A tenant's markup for one public model.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ModelMarkup {
    pub model: String,
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "30")]
    pub markup_percent: Decimal,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub async fn model_markups(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<Vec<ModelMarkup>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model, markup_percent, updated_at FROM data.tenant_model_markup
         WHERE tenant_id = $1 ORDER BY model",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await
}

/// Sets a tenant's markup for `model`; returns the one it replaced, if any.
pub async fn set_model_markup(
    pool: &PgPool,
    tenant_id: Uuid,
    model: &str,
    markup: Decimal,
) -> Result<Option<Decimal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let old: Option<Decimal> = sqlx::query_scalar(
        "SELECT markup_percent FROM data.tenant_model_markup
         WHERE tenant_id = $1 AND model = $2 FOR UPDATE",
    )
    .bind(tenant_id)
    .bind(model)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO data.tenant_model_markup (tenant_id, model, markup_percent)
         VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, model)
         DO UPDATE SET markup_percent = EXCLUDED.markup_percent, updated_at = now()",
    )
    .bind(tenant_id)
    .bind(model)
    .bind(markup)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(old)
}

/// Removes a tenant's markup for `model`; returns it, or `None` when there was none.
pub async fn delete_model_markup(
    pool: &PgPool,
    tenant_id: Uuid,
    model: &str,
) -> Result<Option<Decimal>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM data.tenant_model_markup WHERE tenant_id = $1 AND model = $2
         RETURNING markup_percent",
    )
    .bind(tenant_id)
    .bind(model)
    .fetch_optional(pool)
    .await
}
