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

pub async fn create(
    pool: &PgPool,
    name: &str,
    markup_percent: Decimal,
    overdue_threshold: Decimal,
) -> Result<Tenant, TenantError> {
    sqlx::query_as(
        "INSERT INTO data.tenant (name, markup_percent, overdue_threshold) VALUES ($1, $2, $3)
         RETURNING tenant_id, name, markup_percent, overdue_threshold",
    )
    .bind(name)
    .bind(markup_percent)
    .bind(overdue_threshold)
    .fetch_one(pool)
    .await
    .map_err(name_taken)
}

pub async fn get(pool: &PgPool, tenant_id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, name, markup_percent, overdue_threshold FROM data.tenant
         WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<Tenant>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, name, markup_percent, overdue_threshold FROM data.tenant ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// Changes a tenant's settings; `None` leaves a field as it is. Returns `None` when the
/// tenant does not exist.
pub async fn update(
    pool: &PgPool,
    tenant_id: Uuid,
    name: Option<&str>,
    markup_percent: Option<Decimal>,
    overdue_threshold: Option<Decimal>,
) -> Result<Option<Tenant>, TenantError> {
    sqlx::query_as(
        "UPDATE data.tenant SET
             name = coalesce($2, name),
             markup_percent = coalesce($3, markup_percent),
             overdue_threshold = coalesce($4, overdue_threshold),
             updated_at = now()
         WHERE tenant_id = $1
         RETURNING tenant_id, name, markup_percent, overdue_threshold",
    )
    .bind(tenant_id)
    .bind(name)
    .bind(markup_percent)
    .bind(overdue_threshold)
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
