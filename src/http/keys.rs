//! Virtual keys: create, list, read, change, deactivate, activate, rotate, and the brief's
//! configuration lookup. Every change goes through the brief's SQL functions and is pushed
//! to the key's live actor before the response, so the very next call sees it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use super::access;
use super::audit::{Audit, key_change};
use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody, MaybeJson};
use super::key_controls;
use super::types::{ErrorBody, some};
use crate::auth::KeyHash;
use crate::billing::{Decimal, de_opt_money, de_patch_money};
use crate::db::keys::{KeyChanges, KeySummary};
use crate::db::{self, DbError};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(example = "backend")]
    pub name: String,
    pub description: Option<String>,
    /// Requests per minute; absent means unlimited.
    #[schema(example = 60)]
    pub rate_limit_rpm: Option<i64>,
    /// Tokens per minute; absent means unlimited.
    #[schema(example = 100000)]
    pub rate_limit_tpm: Option<i64>,
    /// Models the key may call; empty means all.
    #[serde(default)]
    #[schema(example = json!(["qwen-turbo"]))]
    pub allowed_models: Vec<String>,
    /// From then on the key is refused (401 `key_expired`); absent: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The most the key may spend in all (402 `key_budget_exceeded` past it).
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "50")]
    pub budget_total: Option<Decimal>,
    /// The most it may spend per calendar month (UTC).
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "10")]
    pub budget_monthly: Option<Decimal>,
    /// Client addresses or CIDR ranges it may be used from (at most 32); empty: anywhere.
    #[serde(default)]
    #[schema(example = json!(["203.0.113.0/24"]))]
    pub allowed_ips: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NewKey {
    /// The plaintext key, shown this once: only its SHA-256 is stored.
    #[schema(example = "vk_4cb37ea1e4614048ad903b12603fec88b71695396cd34423a9a54211649cdf9a")]
    pub virtual_key: String,
    #[serde(flatten)]
    pub key: KeySummary,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeySummary>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 128 {
        return Err(ApiError::bad_request("name must be 1 to 128 characters"));
    }
    Ok(())
}

fn check_description(d: Option<&str>) -> Result<(), ApiError> {
    if d.is_some_and(|d| d.len() > 1000) {
        return Err(ApiError::bad_request(
            "description must be at most 1000 bytes",
        ));
    }
    Ok(())
}

fn check_limit(v: i64, what: &str) -> Result<i32, ApiError> {
    if (1..=1_000_000_000).contains(&v) {
        i32::try_from(v).map_err(ApiError::internal)
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be between 1 and 1000000000"
        )))
    }
}

fn check_models(models: &[String]) -> Result<(), ApiError> {
    if models.len() > 100 || models.iter().any(|m| m.is_empty() || m.len() > 128) {
        return Err(ApiError::bad_request(
            "allowed_models takes at most 100 names of 1 to 128 characters",
        ));
    }
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::NotFound("virtual key not found".into())
}

/// Maps a refused key change: loosening what a higher role set is 403.
fn key_change_error(e: db::keys::KeyChangeError) -> ApiError {
    match e {
        db::keys::KeyChangeError::Locked(why) => ApiError::Forbidden(why.into()),
        db::keys::KeyChangeError::Db(e) => key_sql_error(e),
    }
}

/// Maps errors of the key functions: a vanished key is 404, a refused argument 400.
fn key_sql_error(e: DbError) -> ApiError {
    match e {
        DbError::NotFound => not_found(),
        DbError::Invalid(_) => ApiError::bad_request("invalid key settings"),
        e => e.into(),
    }
}

/// Reads the key again and pushes it to its live actor (re-filed after a rotation).
async fn push(app: &AppState, id: Uuid, old_hash: Option<KeyHash>) -> Result<KeySummary, ApiError> {
    let record = db::keys::find_by_id(&app.pool, id).await?;
    app.keys
        .changed(old_hash, record)
        .await
        .map_err(|e| ApiError::degraded("saved, but the key's live state was not updated", e))?;
    db::keys::get(&app.pool, id).await?.ok_or_else(not_found)
}

/// Creates a key for a user (`data.create_virtual_key`).
#[utoipa::path(post, path = "/api/users/{user_id}/virtual-keys", tag = "keys",
    params(("user_id" = Uuid, Path)), request_body = CreateKey, security(("jwt" = [])),
    responses((status = 201, body = NewKey), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, axum::Json<NewKey>), ApiError> {
    let tenant = access::user(&app, &caller, user_id).await?;
    check_name(&body.name)?;
    check_description(body.description.as_deref())?;
    let rpm = body
        .rate_limit_rpm
        .map(|v| check_limit(v, "rate_limit_rpm"))
        .transpose()?;
    let tpm = body
        .rate_limit_tpm
        .map(|v| check_limit(v, "rate_limit_tpm"))
        .transpose()?;
    check_models(&body.allowed_models)?;
    let controls = key_controls::new_key(
        body.expires_at,
        body.budget_total,
        body.budget_monthly,
        body.allowed_ips,
    )?;
    let (id, plaintext) = db::keys::create(
        &app.pool,
        db::keys::NewKey {
            user_id,
            set_by: caller.role(),
            name: body.name.trim(),
            description: body.description.as_deref(),
            rpm,
            tpm,
            allowed_models: &body.allowed_models,
            controls,
        },
    )
    .await
    .map_err(key_sql_error)?;
    let key = db::keys::get(&app.pool, id).await?.ok_or_else(not_found)?;
    audit
        .record(
            &caller,
            key_change("virtual_key.create", tenant, None, &key),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(NewKey {
            virtual_key: plaintext,
            key,
        }),
    ))
}

/// A user's keys, masked.
#[utoipa::path(get, path = "/api/users/{user_id}/virtual-keys", tag = "keys",
    params(("user_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = KeyList),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
) -> Result<axum::Json<KeyList>, ApiError> {
    access::user(&app, &caller, user_id).await?;
    let data = db::keys::list_for_user(&app.pool, user_id).await?;
    Ok(axum::Json(KeyList { data }))
}

/// One key, masked.
#[utoipa::path(get, path = "/api/virtual-keys/{id}", tag = "keys",
    params(("id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = KeySummary),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<axum::Json<KeySummary>, ApiError> {
    Ok(axum::Json(access::key(&app, &caller, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    pub description: Option<String>,
    /// A new limit, or `null` to remove it; absent leaves it.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit_rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit_tpm: Option<Option<i64>>,
    pub allowed_models: Option<Vec<String>>,
    /// A new expiry, or `null` for none.
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// A new lifetime budget, or `null` for none.
    #[serde(default, deserialize_with = "de_patch_money")]
    #[schema(value_type = Option<String>, example = "50")]
    pub budget_total: Option<Option<Decimal>>,
    /// A new monthly budget, or `null` for none.
    #[serde(default, deserialize_with = "de_patch_money")]
    #[schema(value_type = Option<String>, example = "10")]
    pub budget_monthly: Option<Option<Decimal>>,
    /// A new allow-list (`[]`: anywhere).
    pub allowed_ips: Option<Vec<String>>,
}

/// Changes a key (`data.update_virtual_key_by_id`); applies to the next call. Limits,
/// budgets, expiry and address allow-list set by a higher role (a tenant admin, say) may
/// only be tightened (403 otherwise).
#[utoipa::path(patch, path = "/api/virtual-keys/{id}", tag = "keys",
    params(("id" = Uuid, Path)), request_body = UpdateKey, security(("jwt" = [])),
    responses((status = 200, body = KeySummary), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "loosens limits a higher role set", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<UpdateKey>,
) -> Result<axum::Json<KeySummary>, ApiError> {
    let (before, tenant) = access::key_in(&app, &caller, id).await?;
    if let Some(name) = &body.name {
        check_name(name)?;
    }
    check_description(body.description.as_deref())?;
    if let Some(models) = &body.allowed_models {
        check_models(models)?;
    }
    let limit = |v: Option<Option<i64>>, what| -> Result<Option<Option<i32>>, ApiError> {
        v.map(|inner| inner.map(|n| check_limit(n, what)).transpose())
            .transpose()
    };
    let changes = KeyChanges {
        name: body.name.map(|n| n.trim().to_owned()),
        description: body.description,
        rpm: limit(body.rate_limit_rpm, "rate_limit_rpm")?,
        tpm: limit(body.rate_limit_tpm, "rate_limit_tpm")?,
        allowed_models: body.allowed_models,
        controls: key_controls::change(
            body.expires_at,
            body.budget_total,
            body.budget_monthly,
            body.allowed_ips,
        )?,
    };
    db::keys::update(&app.pool, id, &changes, caller.role())
        .await
        .map_err(key_change_error)?;
    let after = push(&app, id, None).await?;
    audit
        .record(
            &caller,
            key_change("virtual_key.update", tenant, Some(&before), &after),
        )
        .await;
    Ok(axum::Json(after))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Recorded with the change and sent in its notification.
    #[schema(example = "leaked in a log")]
    pub reason: Option<String>,
}

fn reason(MaybeJson(body): MaybeJson<Reason>) -> Result<Option<String>, ApiError> {
    let reason = body.and_then(|b| b.reason);
    if reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::bad_request("reason must be at most 500 bytes"));
    }
    Ok(reason)
}

async fn set_active(
    app: AppState,
    (caller, audit): (Caller, Audit),
    id: Uuid,
    active: bool,
    body: MaybeJson<Reason>,
) -> Result<axum::Json<KeySummary>, ApiError> {
    let reason = reason(body)?;
    let (before, tenant) = access::key_in(&app, &caller, id).await?;
    db::keys::set_active(&app.pool, id, active, reason.as_deref(), caller.role())
        .await
        .map_err(key_change_error)?;
    let after = push(&app, id, None).await?;
    let action = if active {
        "virtual_key.activate"
    } else {
        "virtual_key.deactivate"
    };
    audit
        .record(&caller, key_change(action, tenant, Some(&before), &after))
        .await;
    Ok(axum::Json(after))
}

/// Deactivates a key (`data.deactivate_virtual_key`): the very next call with it is 401.
#[utoipa::path(post, path = "/api/virtual-keys/{id}/deactivate", tag = "keys",
    params(("id" = Uuid, Path)), request_body(content = Reason, description = "optional"), security(("jwt" = [])),
    responses((status = 200, body = KeySummary), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn deactivate(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    body: MaybeJson<Reason>,
) -> Result<axum::Json<KeySummary>, ApiError> {
    set_active(app, (caller, audit), id, false, body).await
}

/// Activates a key again (`data.activate_virtual_key`), unless a higher role deactivated it.
#[utoipa::path(post, path = "/api/virtual-keys/{id}/activate", tag = "keys",
    params(("id" = Uuid, Path)), request_body(content = Reason, description = "optional"), security(("jwt" = [])),
    responses((status = 200, body = KeySummary), (status = 401, body = ErrorBody),
        (status = 403, description = "deactivated by a higher role", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn activate(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    body: MaybeJson<Reason>,
) -> Result<axum::Json<KeySummary>, ApiError> {
    set_active(app, (caller, audit), id, true, body).await
}

/// Gives a key a new secret (`data.rotate_virtual_key`): the new plaintext is shown once,
/// the old one is refused at once; limits, allow-list and history stay.
#[utoipa::path(post, path = "/api/virtual-keys/{id}/rotate", tag = "keys",
    params(("id" = Uuid, Path)), request_body(content = Reason, description = "optional"), security(("jwt" = [])),
    responses((status = 200, body = NewKey), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn rotate(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    audit: Audit,
    body: MaybeJson<Reason>,
) -> Result<axum::Json<NewKey>, ApiError> {
    let reason = reason(body)?;
    let (before, tenant) = access::key_in(&app, &caller, id).await?;
    let old = db::keys::find_by_id(&app.pool, id)
        .await?
        .ok_or_else(not_found)?;
    let plaintext = db::keys::rotate(&app.pool, id, reason.as_deref())
        .await
        .map_err(key_sql_error)?;
    let key = push(&app, id, Some(old.hash)).await?;
    audit
        .record(
            &caller,
            key_change("virtual_key.rotate", tenant, Some(&before), &key),
        )
        .await;
    Ok(axum::Json(NewKey {
        virtual_key: plaintext,
        key,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct EffectiveModel {
    pub model: String,
    /// The Portkey-format plan a call of this model would use, platform keys as `***`.
    #[schema(value_type = Object)]
    pub plan: Value,
    /// Where the plan comes from: `{"source": "user_config" | "tenant_config", "config_id"}`
    /// or `{"source": "model"}`.
    #[schema(value_type = Object)]
    pub plan_source: crate::snapshot::PlanSource,
}

#[derive(Serialize, ToSchema)]
pub struct EffectiveConfig {
    pub key: KeySummary,
    pub tenant_id: Uuid,
    /// The markup this key's calls are charged with, in percent.
    #[schema(value_type = String, example = "15")]
    pub markup_percent: String,
    /// Every model the key may call, with its routing plan.
    pub models: Vec<EffectiveModel>,
}

/// The brief's configuration lookup: a key's effective configuration, including the
/// routing plan each allowed model would use. `{key}` is the key's id, or the plaintext
/// key itself (reduced to its hash at once; never logged).
#[utoipa::path(get, path = "/api/config/virtual-keys/{key}", tag = "keys",
    params(("key" = String, Path, description = "key id, or the plaintext key")),
    security(("jwt" = [])),
    responses((status = 200, body = EffectiveConfig),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn effective_config(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<axum::Json<EffectiveConfig>, ApiError> {
    let id = match Uuid::parse_str(&key) {
        Ok(id) => id,
        Err(_) => {
            let record = db::keys::find_by_hash(&app.pool, &KeyHash::of(&key))
                .await?
                .ok_or_else(not_found)?;
            record.id
        }
    };
    let key = access::key(&app, &caller, id).await?;
    let tenant_id = db::users::tenant_of(&app.pool, key.user_id)
        .await?
        .ok_or_else(not_found)?;
    let snap = app.snapshot.load();
    let mut models: Vec<EffectiveModel> = snap
        .models
        .values()
        .filter(|r| key.allowed_models.is_empty() || key.allowed_models.contains(&r.model))
        .filter_map(|r| {
            let (plan, plan_source) = snap.plan_for(tenant_id, key.user_id, &r.model)?;
            Some(EffectiveModel {
                model: r.model.clone(),
                plan: plan.redacted(),
                plan_source,
            })
        })
        .collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(axum::Json(EffectiveConfig {
        markup_percent: snap.markup(tenant_id, key.user_id).normalize().to_string(),
        key,
        tenant_id,
        models,
    }))
}
