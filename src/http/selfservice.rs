//! Self-service with only a virtual key: `GET /api/key/info` (the key's limits, budgets,
//! spend and expiry, with its owner's balance and status) and the OpenAI-style billing
//! endpoints chat front-ends poll (`/v1/dashboard/billing/subscription` and `/usage`, as
//! one-api and new-api serve them).

use axum::extract::{Query, State};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::calls::{admit_error, balance_error};
use super::error::ApiError;
use super::extract::{ClientAddr, VirtualKey};
use super::types::{ErrorBody, query};
use crate::actors::balances::BalanceView;
use crate::actors::keys::AdmitError;
use crate::billing::{Decimal, ser_money};
use crate::call::CallError;
use crate::db;
use crate::db::keys::KeySummary;
use crate::db::usage::Range;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct KeyInfo {
    pub key: KeySummary,
    /// The owner's balance and status, live.
    #[schema(value_type = Object)]
    pub account: Value,
    /// What the key may still spend now: the least of the balance and what its budgets
    /// leave (holds of calls in flight not counted).
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "8.25")]
    pub available: Decimal,
}

/// The key (usable now, from this address) and its owner's live balance.
async fn key_and_account(
    app: &AppState,
    hash: crate::auth::KeyHash,
    client: std::net::IpAddr,
) -> Result<(KeySummary, BalanceView), ApiError> {
    let view = app.keys.describe(hash).await.map_err(admit_error)?;
    view.gate
        .admits(Some(client))
        .map_err(|d| admit_error(AdmitError::Denied(d)))?;
    if app.snapshot.load().suspended.contains(&view.user_id) {
        return Err(CallError::Suspended.into());
    }
    let key = db::keys::get(&app.pool, view.key_id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid virtual key".into()))?;
    let account = app
        .balances
        .get(view.user_id)
        .await
        .map_err(balance_error)?;
    Ok((key, account))
}

/// What is left to spend: the balance (never below zero) and each budget's remainder.
fn available(key: &KeySummary, account: &BalanceView) -> Decimal {
    let mut left = account.balance.max(Decimal::ZERO);
    if let Some(b) = key.budget_total {
        left = left.min((b - key.spent_total).max(Decimal::ZERO));
    }
    if let Some(b) = key.budget_monthly {
        left = left.min((b - key.spent_this_month).max(Decimal::ZERO));
    }
    left
}

/// The calling key's limits, budgets, spend and expiry, and its owner's balance and status.
#[utoipa::path(get, path = "/api/key/info", operation_id = "key_info", tag = "self-service",
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, body = KeyInfo), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn info(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    ClientAddr(client): ClientAddr,
) -> Result<axum::Json<KeyInfo>, ApiError> {
    let (key, account) = key_and_account(&app, hash, client).await?;
    let available = available(&key, &account);
    Ok(axum::Json(KeyInfo {
        key,
        account: json!({
            "balance": account.balance.normalize().to_string(),
            "status": account.status,
            "reserved": account.reserved.normalize().to_string(),
        }),
        available,
    }))
}

/// OpenAI's old subscription object: `hard_limit_usd` is what the key has spent plus what
/// it may still spend (in the account's currency, whatever the field's name).
#[utoipa::path(get, path = "/v1/dashboard/billing/subscription", operation_id = "billing_subscription", tag = "self-service",
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"object\": \"billing_subscription\", \"hard_limit_usd\", ...}`"),
        (status = 401, body = ErrorBody)))]
pub async fn subscription(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    ClientAddr(client): ClientAddr,
) -> Result<axum::Json<Value>, ApiError> {
    let (key, account) = key_and_account(&app, hash, client).await?;
    let limit = key.spent_total + available(&key, &account);
    // OpenAI's format has JSON numbers here: the exact amount is converted for display
    // only (`/api/key/info` gives it as an exact string); nothing is computed with it.
    let limit = limit.normalize().to_string().parse::<f64>().unwrap_or(0.0);
    Ok(axum::Json(json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "access_until": key.expires_at.map_or(0, |t| t.timestamp()),
    })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageDates {
    /// First day (`YYYY-MM-DD`, UTC), inclusive.
    pub start_date: Option<NaiveDate>,
    /// Last day, exclusive (as OpenAI's endpoint took it).
    pub end_date: Option<NaiveDate>,
}

fn midnight(d: NaiveDate) -> Option<DateTime<Utc>> {
    d.and_hms_opt(0, 0, 0).map(|t| t.and_utc())
}

/// OpenAI's old usage object: what the key spent between the dates, in hundredths
/// (`total_usage`, "cents" in OpenAI's terms).
#[utoipa::path(get, path = "/v1/dashboard/billing/usage", operation_id = "billing_usage", tag = "self-service",
    params(UsageDates), security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"object\": \"list\", \"total_usage\": 12.5}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn usage(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    ClientAddr(client): ClientAddr,
    q: Result<Query<UsageDates>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let q = query(q)?;
    let range = Range {
        from: q.start_date.and_then(midnight),
        to: q.end_date.and_then(midnight),
    };
    if let (Some(from), Some(to)) = (range.from, range.to)
        && from > to
    {
        return Err(ApiError::bad_request("start_date is after end_date"));
    }
    let (key, _) = key_and_account(&app, hash, client).await?;
    let spent = db::usage::key_spend(&app.pool, key.id, range).await?;
    let cents = (spent * Decimal::from(100)).normalize().to_string();
    Ok(axum::Json(json!({
        "object": "list",
        "total_usage": cents.parse::<f64>().unwrap_or(0.0),
    })))
}
