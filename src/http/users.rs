//! Per-user endpoints: top-ups, virtual keys, balance, usage.
//!
//! Who may act on `/api/users/{id}/...`: the user itself, a tenant admin of the user's
//! tenant, a platform admin. Anyone else gets 404, so the existence of other accounts does
//! not leak.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody};
use crate::actors::balances::BalanceError;
use crate::app::AppState;
use crate::auth::Role;
use crate::billing::{AmountRule, Decimal, de_money};
use crate::db;
use crate::journal::Committed;

fn user_not_found() -> ApiError {
    ApiError::NotFound("user not found".into())
}

/// Checks that `caller` may act on `user_id` and that the user exists.
pub async fn authorize(app: &AppState, caller: &Caller, user_id: Uuid) -> Result<(), ApiError> {
    let claims = &caller.0;
    if claims.role == Role::User && claims.sub != user_id {
        return Err(user_not_found());
    }
    let tenant = db::users::tenant_of(&app.pool, user_id)
        .await?
        .ok_or_else(user_not_found)?;
    if claims.role == Role::TenantAdmin && tenant != claims.tenant_id {
        return Err(user_not_found());
    }
    Ok(())
}

fn balance_error(e: BalanceError) -> ApiError {
    match e {
        BalanceError::UnknownUser => user_not_found(),
        BalanceError::Refused(r) => ApiError::internal(format!("unexpected refusal {r:?}")),
        BalanceError::Unavailable(e) => ApiError::Unavailable(format!("balance unavailable: {e}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[serde(deserialize_with = "de_money")]
    amount: Decimal,
    /// Idempotency key: the same id credits once.
    request_id: Option<String>,
    note: Option<String>,
}

fn check_request_id(id: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "request_id must be 1-64 characters of [A-Za-z0-9-_.:]",
        ))
    }
}

pub async fn top_up(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    JsonBody(body): JsonBody<TopUp>,
) -> Result<axum::Json<Value>, ApiError> {
    caller.require_platform_admin()?;
    let amount = AmountRule::MONEY
        .check(body.amount)
        .map_err(ApiError::bad_request)?;
    let request_id = body
        .request_id
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    check_request_id(&request_id)?;
    if body.note.as_ref().is_some_and(|n| n.len() > 500) {
        return Err(ApiError::bad_request("note must be at most 500 bytes"));
    }
    let ledger_id = format!("topup:{user_id}:{request_id}");
    let reply = app
        .balances
        .top_up(user_id, ledger_id, amount, body.note)
        .await
        .map_err(balance_error)?;
    let Some(committed) = reply.committed else {
        return Err(ApiError::Conflict(
            "a top-up with this request_id is already being credited".into(),
        ));
    };
    {
        match tokio::time::timeout(Duration::from_secs(10), committed).await {
            Ok(Ok(Committed::Inserted)) => {}
            Ok(Ok(Committed::Duplicate)) => {
                return Err(ApiError::Conflict(
                    "a top-up with this request_id was already credited".into(),
                ));
            }
            _ => {
                return Err(ApiError::Unavailable(
                    "the top-up is recorded but not yet durable; retry with the same request_id"
                        .into(),
                ));
            }
        }
    }
    Ok(axum::Json(json!({
        "user_id": user_id,
        "request_id": request_id,
        "balance": reply.balance.normalize().to_string(),
        "status": reply.status,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    description: Option<String>,
    rate_limit_rpm: Option<i64>,
    rate_limit_tpm: Option<i64>,
    #[serde(default)]
    allowed_models: Vec<String>,
}

fn limit(v: Option<i64>, what: &str) -> Result<Option<i32>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if (1..=1_000_000_000).contains(&n) => Ok(i32::try_from(n).ok()),
        Some(_) => Err(ApiError::bad_request(format!(
            "{what} must be between 1 and 1000000000"
        ))),
    }
}

pub async fn create_key(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    authorize(&app, &caller, user_id).await?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::bad_request("name must be 1 to 128 characters"));
    }
    if body.description.as_ref().is_some_and(|d| d.len() > 1000) {
        return Err(ApiError::bad_request(
            "description must be at most 1000 bytes",
        ));
    }
    let rpm = limit(body.rate_limit_rpm, "rate_limit_rpm")?;
    let tpm = limit(body.rate_limit_tpm, "rate_limit_tpm")?;
    if body.allowed_models.len() > 100
        || body
            .allowed_models
            .iter()
            .any(|m| m.is_empty() || m.len() > 128)
    {
        return Err(ApiError::bad_request(
            "allowed_models takes at most 100 names of 1 to 128 characters",
        ));
    }
    let (id, plaintext) = db::keys::create(
        &app.pool,
        db::keys::NewKey {
            user_id,
            name,
            description: body.description.as_deref(),
            rpm,
            tpm,
            allowed_models: &body.allowed_models,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": id,
            "virtual_key": plaintext,
            "name": name,
            "rate_limit_rpm": rpm,
            "rate_limit_tpm": tpm,
            "allowed_models": body.allowed_models,
            "note": "this is the only time the key is shown; store it now",
        })),
    ))
}

pub async fn list_keys(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
) -> Result<axum::Json<Value>, ApiError> {
    authorize(&app, &caller, user_id).await?;
    let keys = db::keys::list_for_user(&app.pool, user_id).await?;
    Ok(axum::Json(json!({"data": keys})))
}

pub async fn balance(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
) -> Result<axum::Json<Value>, ApiError> {
    authorize(&app, &caller, user_id).await?;
    let view = app.balances.get(user_id).await.map_err(balance_error)?;
    Ok(axum::Json(json!({
        "user_id": user_id,
        "balance": view.balance.normalize().to_string(),
        "status": view.status,
        "reserved": view.reserved.normalize().to_string(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
}

pub async fn usage(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    authorize(&app, &caller, user_id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let rows = sqlx::query(
        "SELECT request_id, virtual_key_id, provider, model, input_tokens, output_tokens,
                cost, usage_source, created_at
         FROM data.usage_log
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
               AND ($3::timestamptz IS NULL OR created_at < $3)
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(user_id)
    .bind(q.from)
    .bind(q.to)
    .bind(limit)
    .fetch_all(&app.pool)
    .await?;
    let totals = sqlx::query(
        "SELECT count(*) AS requests, coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
                coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
                coalesce(sum(cost), 0) AS cost
         FROM data.usage_log
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR created_at >= $2)
               AND ($3::timestamptz IS NULL OR created_at < $3)",
    )
    .bind(user_id)
    .bind(q.from)
    .bind(q.to)
    .fetch_one(&app.pool)
    .await?;
    let data = rows
        .iter()
        .map(|r| -> Result<Value, sqlx::Error> {
            let cost: Decimal = r.try_get("cost")?;
            Ok(json!({
                "request_id": r.try_get::<String, _>("request_id")?,
                "virtual_key_id": r.try_get::<Option<Uuid>, _>("virtual_key_id")?,
                "provider": r.try_get::<String, _>("provider")?,
                "model": r.try_get::<String, _>("model")?,
                "input_tokens": r.try_get::<i32, _>("input_tokens")?,
                "output_tokens": r.try_get::<i32, _>("output_tokens")?,
                "cost": cost.normalize().to_string(),
                "usage_source": r.try_get::<String, _>("usage_source")?,
                "created_at": r.try_get::<DateTime<Utc>, _>("created_at")?,
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cost: Decimal = totals.try_get("cost")?;
    Ok(axum::Json(json!({
        "data": data,
        "totals": {
            "requests": totals.try_get::<i64, _>("requests")?,
            "input_tokens": totals.try_get::<i64, _>("input_tokens")?,
            "output_tokens": totals.try_get::<i64, _>("output_tokens")?,
            "cost": cost.normalize().to_string(),
        }
    })))
}
