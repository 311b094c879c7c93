//! Tenants and their users. Platform admins create and change tenants; a tenant admin
//! sees its own tenant, creates users in it, lists them and reads the tenant's usage.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::access;
use super::audit::{self, Audit, Change};
use super::auth::create_user;
use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody};
use super::types::{ErrorBody, Page, query};
use super::users::{Usage, UsageQuery, usage_report};
use crate::auth::Role;
use crate::billing::{AmountRule, Decimal, de_opt_money};
use crate::db;
use crate::db::tenants::{Tenant, TenantError};
use crate::db::usage::Scope;
use crate::db::users::Profile;
use crate::state::AppState;

fn tenant_error(e: TenantError) -> ApiError {
    match e {
        TenantError::NameTaken => ApiError::Conflict("a tenant with this name exists".into()),
        TenantError::Db(e) => e.into(),
    }
}

fn check_tenant_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 128 {
        return Err(ApiError::bad_request("name must be 1 to 128 characters"));
    }
    Ok(())
}

fn money_or_zero(name: &'static str) -> AmountRule {
    AmountRule {
        allow_zero: true,
        ..AmountRule::MONEY
    }
    .named(name)
}

/// Checks the optional money settings of a tenant.
fn settings<'a>(
    name: Option<&'a str>,
    markup: Option<Decimal>,
    threshold: Option<Decimal>,
    overdraft: Option<Decimal>,
) -> Result<db::tenants::TenantSettings<'a>, ApiError> {
    let check = |v: Option<Decimal>, rule: AmountRule| {
        v.map(|v| rule.check(v))
            .transpose()
            .map_err(ApiError::bad_request)
    };
    Ok(db::tenants::TenantSettings {
        name,
        markup_percent: check(markup, AmountRule::PERCENT)?,
        overdue_threshold: check(threshold, money_or_zero("overdue_threshold"))?,
        overdraft_limit: check(overdraft, money_or_zero("overdraft_limit"))?,
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(example = "acme")]
    pub name: String,
    /// Percent (`15` = 15 %); default 0.
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "15")]
    pub markup_percent: Option<Decimal>,
    /// Default 0.
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "5")]
    pub overdue_threshold: Option<Decimal>,
    /// How far below zero one call's reservation may take a user's balance; default 0 (a
    /// call is admitted only when its worst case fits the balance).
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "0")]
    pub overdraft_limit: Option<Decimal>,
}

/// Creates a tenant (platform admin).
#[utoipa::path(post, path = "/api/admin/tenants", tag = "tenants",
    request_body = CreateTenant, security(("jwt" = [])),
    responses((status = 201, body = Tenant), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    audit: Audit,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<(StatusCode, axum::Json<Tenant>), ApiError> {
    caller.require_platform_admin()?;
    check_tenant_name(&body.name)?;
    let settings = settings(
        Some(body.name.trim()),
        body.markup_percent,
        body.overdue_threshold,
        body.overdraft_limit,
    )?;
    let tenant = db::tenants::create(&app.pool, settings)
        .await
        .map_err(tenant_error)?;
    audit
        .record(&caller, tenant_change("tenant.create", None, &tenant))
        .await;
    super::reload(&app).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant)))
}

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    pub data: Vec<Tenant>,
}

/// Every tenant (platform admin).
#[utoipa::path(get, path = "/api/admin/tenants", tag = "tenants", security(("jwt" = [])),
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<TenantList>, ApiError> {
    caller.require_platform_admin()?;
    Ok(axum::Json(TenantList {
        data: db::tenants::list(&app.pool).await?,
    }))
}

/// One tenant (platform admin, or the tenant's admin).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = Tenant), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
) -> Result<axum::Json<Tenant>, ApiError> {
    access::tenant(&app, &caller, tenant_id)
        .await
        .map(axum::Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "15")]
    pub markup_percent: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "5")]
    pub overdue_threshold: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "0")]
    pub overdraft_limit: Option<Decimal>,
}

/// Changes a tenant's name, markup, threshold or overdraft allowance (platform admin; the
/// tenant's own admin may change its overdue threshold only). The next call is charged and
/// admitted with the new settings.
#[utoipa::path(patch, path = "/api/admin/tenants/{tenant_id}", tag = "tenants",
    params(("tenant_id" = Uuid, Path)), request_body = UpdateTenant, security(("jwt" = [])),
    responses((status = 200, body = Tenant), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<UpdateTenant>,
) -> Result<axum::Json<Tenant>, ApiError> {
    if caller.role() == Role::User {
        return Err(ApiError::Forbidden(
            "only platform and tenant admins change tenants".into(),
        ));
    }
    caller.require_tenant(tenant_id)?;
    let money_terms =
        body.name.is_some() || body.markup_percent.is_some() || body.overdraft_limit.is_some();
    if money_terms && !caller.is_platform_admin() {
        return Err(ApiError::Forbidden(
            "only a platform admin changes a tenant's name, markup or overdraft".into(),
        ));
    }
    if let Some(name) = &body.name {
        check_tenant_name(name)?;
    }
    let settings = settings(
        body.name.as_deref().map(str::trim),
        body.markup_percent,
        body.overdue_threshold,
        body.overdraft_limit,
    )?;
    let before = db::tenants::get(&app.pool, tenant_id).await?;
    let tenant = db::tenants::update(&app.pool, tenant_id, settings)
        .await
        .map_err(tenant_error)?
        .ok_or_else(access::tenant_not_found)?;
    audit
        .record(
            &caller,
            tenant_change("tenant.update", before.as_ref(), &tenant),
        )
        .await;
    super::reload(&app).await?;
    Ok(axum::Json(tenant))
}

/// A change to a tenant, as the audit log records it.
fn tenant_change(action: &'static str, before: Option<&Tenant>, after: &Tenant) -> Change {
    Change {
        action,
        target_type: "tenant",
        target_id: after.tenant_id.to_string(),
        tenant_id: Some(after.tenant_id),
        before: before.and_then(audit::json),
        after: audit::json(after),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantUser {
    #[schema(example = "bob@acme.example")]
    pub email: String,
    #[schema(example = "a-long-password-2")]
    pub password: String,
    #[schema(example = "bob")]
    pub username: String,
    /// `user` (default) or, for platform admins only, `tenant_admin`.
    pub role: Option<Role>,
}

/// Creates a user in a tenant (platform admin, or the tenant's admin). The user starts
/// `pending`, like a self-registered one.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/users", tag = "tenants",
    params(("tenant_id" = Uuid, Path)), request_body = CreateTenantUser, security(("jwt" = [])),
    responses((status = 201, body = Profile), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user_in(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<CreateTenantUser>,
) -> Result<(StatusCode, axum::Json<Profile>), ApiError> {
    caller.require_tenant(tenant_id)?;
    if tenant_id == db::users::PLATFORM_TENANT {
        return Err(ApiError::bad_request(
            "the platform tenant holds platform admins only",
        ));
    }
    access::tenant(&app, &caller, tenant_id).await?;
    let role = body.role.unwrap_or(Role::User);
    match role {
        Role::User => {}
        Role::TenantAdmin if caller.is_platform_admin() => {}
        Role::TenantAdmin => {
            return Err(ApiError::Forbidden(
                "only a platform admin creates tenant admins".into(),
            ));
        }
        Role::PlatformAdmin => {
            return Err(ApiError::bad_request(
                "platform admins are not created through a tenant",
            ));
        }
    }
    let user_id = create_user(
        &app,
        body.email.trim(),
        body.password,
        body.username.trim(),
        tenant_id,
        role,
    )
    .await?;
    let profile = db::users::get_profile(&app.pool, user_id)
        .await?
        .ok_or_else(access::user_not_found)?;
    audit
        .record(
            &caller,
            Change {
                action: "user.create",
                target_type: "user",
                target_id: user_id.to_string(),
                tenant_id: Some(tenant_id),
                before: None,
                after: audit::json(&profile),
            },
        )
        .await;
    Ok((StatusCode::CREATED, axum::Json(profile)))
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub data: Vec<Profile>,
}

/// A tenant's users, oldest first (platform admin, or the tenant's admin): those of a role
/// below the caller's, and the caller itself.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/users", tag = "tenants",
    params(("tenant_id" = Uuid, Path), Page), security(("jwt" = [])),
    responses((status = 200, body = UserList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn users(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<UserList>, ApiError> {
    let (limit, offset) = query(page)?.bounds()?;
    caller.require_tenant(tenant_id)?;
    let viewer = (caller.id(), caller.role());
    let data = db::users::list_tenant_users(&app.pool, tenant_id, viewer, limit, offset).await?;
    Ok(axum::Json(UserList { data }))
}

/// A tenant's usage: rows, or totals by day, model, key or user; totals equal the ledger
/// (platform admin, or the tenant's admin).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/usage", tag = "tenants",
    params(("tenant_id" = Uuid, Path), UsageQuery), security(("jwt" = [])),
    responses((status = 200, body = Usage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn usage(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Usage>, ApiError> {
    let q = query(q)?;
    caller.require_tenant(tenant_id)?;
    Ok(axum::Json(
        usage_report(&app, Scope::Tenant(tenant_id), q).await?,
    ))
}
