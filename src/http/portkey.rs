//! Portkey configs of tenants and users (platform admin), through the brief's functions
//! `create/update/deactivate/activate_portkey_config` and `get_active_portkey_config`.
//! A user's active config, else its tenant's, replaces the model's plan for its calls.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::audit::{self, Audit, Change};
use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody, MaybeJson};
use super::keys::Reason;
use super::types::{ErrorBody, query};
use crate::db::portkey::PortkeyRow;
use crate::db::{self, DbError};
use crate::plan::Plan;
use crate::state::AppState;

fn not_found() -> ApiError {
    ApiError::NotFound("portkey config not found".into())
}

fn sql_error(e: DbError) -> ApiError {
    // The config functions' own refusals are worth repeating; nothing else is.
    const OURS: [&str; 3] = [
        "the user is not in this tenant",
        "a config needs a tenant or a user",
        "config_json must be an object",
    ];
    match e {
        DbError::NotFound => ApiError::NotFound("portkey config, user or tenant not found".into()),
        DbError::Invalid(_) => ApiError::bad_request(e.said(&OURS).unwrap_or("invalid config")),
        e => e.into(),
    }
}

fn check_plan(app: &AppState, config: &Value) -> Result<(), ApiError> {
    let plan = Plan::from_json(config).map_err(ApiError::bad_request)?;
    plan.check_hosts(app.config.allow_private_upstreams)
        .map_err(ApiError::bad_request)?;
    // Targets that name their model are checked now; the others take the model a call
    // asks for.
    app.snapshot
        .load()
        .one_currency(&plan, "")
        .map_err(ApiError::bad_request)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConfig {
    /// The tenant the config applies to (all its users without a config of their own).
    pub tenant_id: Option<Uuid>,
    /// The user it applies to (overrides the tenant's).
    pub user_id: Option<Uuid>,
    #[schema(example = "eu-fallback")]
    pub config_name: String,
    /// A Portkey-format plan.
    #[schema(value_type = Object)]
    pub config: Value,
    /// When it takes effect (default now).
    pub effective_from: Option<DateTime<Utc>>,
    pub notes: Option<String>,
}

/// Creates a tenant's or user's Portkey config (`data.create_portkey_config`).
#[utoipa::path(post, path = "/api/admin/portkey-configs", tag = "pricing",
    request_body = CreateConfig, security(("jwt" = [])),
    responses((status = 201, body = PortkeyRow), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    audit: Audit,
    JsonBody(body): JsonBody<CreateConfig>,
) -> Result<(StatusCode, axum::Json<PortkeyRow>), ApiError> {
    caller.require_platform_admin()?;
    if body.config_name.trim().is_empty() || body.config_name.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "config_name must be 1 to 128 characters",
        ));
    }
    if body.tenant_id.is_none() && body.user_id.is_none() {
        return Err(ApiError::bad_request("give a tenant_id or a user_id"));
    }
    if let Some(user) = body.user_id {
        super::access::user(&app, &caller, user).await?;
    }
    check_plan(&app, &body.config)?;
    let id = db::portkey::create(
        &app.pool,
        db::portkey::NewConfig {
            tenant_id: body.tenant_id,
            user_id: body.user_id,
            name: body.config_name.trim(),
            json: &body.config,
            effective_from: body.effective_from,
            notes: body.notes.as_deref(),
            by: caller.id(),
        },
    )
    .await
    .map_err(sql_error)?;
    super::reload(&app).await?;
    let row = db::portkey::get(&app.pool, id)
        .await?
        .ok_or_else(not_found)?;
    audit
        .record(&caller, config_change("portkey_config.create", None, &row))
        .await;
    Ok((StatusCode::CREATED, axum::Json(row)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConfigFilter {
    pub tenant_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ConfigList {
    pub data: Vec<PortkeyRow>,
}

/// Portkey configs, newest first, optionally of one tenant or user.
#[utoipa::path(get, path = "/api/admin/portkey-configs", tag = "pricing",
    params(ConfigFilter), security(("jwt" = [])),
    responses((status = 200, body = ConfigList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    q: Result<Query<ConfigFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<ConfigList>, ApiError> {
    caller.require_platform_admin()?;
    let q = query(q)?;
    let (limit, offset) = super::types::Page {
        limit: q.limit,
        offset: q.offset,
    }
    .bounds()?;
    let data = db::portkey::list(&app.pool, q.tenant_id, q.user_id, limit, offset).await?;
    Ok(axum::Json(ConfigList { data }))
}

/// One Portkey config.
#[utoipa::path(get, path = "/api/admin/portkey-configs/{id}", tag = "pricing",
    params(("id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = PortkeyRow), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<axum::Json<PortkeyRow>, ApiError> {
    caller.require_platform_admin()?;
    db::portkey::get(&app.pool, id)
        .await?
        .map(axum::Json)
        .ok_or_else(not_found)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    pub effective_from: Option<DateTime<Utc>>,
    pub notes: Option<String>,
}

/// Changes a config (`data.update_portkey_config`); the next call uses it.
#[utoipa::path(put, path = "/api/admin/portkey-configs/{id}", tag = "pricing",
    params(("id" = Uuid, Path)), request_body = UpdateConfig, security(("jwt" = [])),
    responses((status = 200, body = PortkeyRow), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<UpdateConfig>,
) -> Result<axum::Json<PortkeyRow>, ApiError> {
    caller.require_platform_admin()?;
    if let Some(config) = &body.config {
        check_plan(&app, config)?;
    }
    let before = db::portkey::get(&app.pool, id).await?;
    db::portkey::update(
        &app.pool,
        id,
        body.config.as_ref(),
        body.effective_from,
        body.notes.as_deref(),
        caller.id(),
    )
    .await
    .map_err(sql_error)?;
    super::reload(&app).await?;
    let row = db::portkey::get(&app.pool, id)
        .await?
        .ok_or_else(not_found)?;
    audit
        .record(
            &caller,
            config_change("portkey_config.update", before.as_ref(), &row),
        )
        .await;
    Ok(axum::Json(row))
}

/// A change to a Portkey config, as the audit log records it (api keys redacted).
fn config_change(action: &'static str, before: Option<&PortkeyRow>, after: &PortkeyRow) -> Change {
    Change {
        action,
        target_type: "portkey_config",
        target_id: after.id.to_string(),
        tenant_id: after.tenant_id,
        before: before.and_then(audit::json),
        after: audit::json(after),
    }
}

async fn set_active(
    app: AppState,
    (caller, audit): (Caller, Audit),
    id: Uuid,
    active: bool,
    MaybeJson(body): MaybeJson<Reason>,
) -> Result<axum::Json<PortkeyRow>, ApiError> {
    caller.require_platform_admin()?;
    let reason = body.and_then(|b| b.reason);
    let before = db::portkey::get(&app.pool, id).await?;
    db::portkey::set_active(&app.pool, id, active, reason.as_deref(), caller.id())
        .await
        .map_err(sql_error)?;
    super::reload(&app).await?;
    let row = db::portkey::get(&app.pool, id)
        .await?
        .ok_or_else(not_found)?;
    let action = if active {
        "portkey_config.activate"
    } else {
        "portkey_config.deactivate"
    };
    audit
        .record(&caller, config_change(action, before.as_ref(), &row))
        .await;
    Ok(axum::Json(row))
}

/// Deactivates a config (`data.deactivate_portkey_config`).
#[utoipa::path(post, path = "/api/admin/portkey-configs/{id}/deactivate", tag = "pricing",
    params(("id" = Uuid, Path)), request_body(content = Reason, description = "optional"),
    security(("jwt" = [])),
    responses((status = 200, body = PortkeyRow), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deactivate(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    body: MaybeJson<Reason>,
) -> Result<axum::Json<PortkeyRow>, ApiError> {
    set_active(app, (caller, audit), id, false, body).await
}

/// Activates a config again (`data.activate_portkey_config`).
#[utoipa::path(post, path = "/api/admin/portkey-configs/{id}/activate", tag = "pricing",
    params(("id" = Uuid, Path)), request_body(content = Reason, description = "optional"),
    security(("jwt" = [])),
    responses((status = 200, body = PortkeyRow), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn activate(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    body: MaybeJson<Reason>,
) -> Result<axum::Json<PortkeyRow>, ApiError> {
    set_active(app, (caller, audit), id, true, body).await
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActiveQuery {
    pub tenant_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct ActiveConfig {
    /// `{config_id, config_name, scope, config_json}` or `null`.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
}

/// The config that applies to a (tenant, user) now (`data.get_active_portkey_config`).
#[utoipa::path(get, path = "/api/admin/portkey-configs/active", tag = "pricing",
    params(ActiveQuery), security(("jwt" = [])),
    responses((status = 200, body = ActiveConfig), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn active(
    State(app): State<AppState>,
    caller: Caller,
    q: Result<Query<ActiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<ActiveConfig>, ApiError> {
    caller.require_platform_admin()?;
    let q = query(q)?;
    let config = db::portkey::active(&app.pool, q.tenant_id, q.user_id).await?;
    Ok(axum::Json(ActiveConfig { config }))
}
