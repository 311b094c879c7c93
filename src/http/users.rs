//! A user's own views: profile, live balance, ledger, prices and usage. Each is open to the
//! user itself, its tenant's admins and platform admins; anyone else gets 404.

use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access;
use super::error::ApiError;
use super::extract::{Caller, IdPath};
use super::types::{ErrorBody, query};
use crate::actors::balances::BalanceError;
use crate::billing::{AccountStatus, Decimal, ser_money};
use crate::db;
use crate::db::usage::{GroupBy, LedgerEntry, Range, Scope, UsageGroup, UsageRow, UsageTotals};
use crate::snapshot::MarkupSource;
use crate::state::AppState;

pub fn balance_error(e: BalanceError) -> ApiError {
    match e {
        BalanceError::UnknownUser => access::user_not_found(),
        BalanceError::Refused(r) => ApiError::internal(format!("unexpected refusal {r:?}")),
        BalanceError::Unavailable(e) => {
            ApiError::degraded("the balance is unavailable; retry shortly", e)
        }
    }
}

/// A user's profile.
#[utoipa::path(get, path = "/api/users/{user_id}", tag = "users",
    params(("user_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = db::users::Profile),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn profile(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
) -> Result<axum::Json<db::users::Profile>, ApiError> {
    access::user(&app, &caller, user_id).await?;
    db::users::get_profile(&app.pool, user_id)
        .await?
        .map(axum::Json)
        .ok_or_else(access::user_not_found)
}

#[derive(Serialize, ToSchema)]
pub struct Balance {
    pub user_id: Uuid,
    /// Every charge already applied, committed or not.
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "9.99997056")]
    pub balance: Decimal,
    #[schema(value_type = String, example = "active")]
    pub status: AccountStatus,
    /// Held by calls in flight.
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "0")]
    pub reserved: Decimal,
}

/// The live balance, from the user's balance actor.
#[utoipa::path(get, path = "/api/users/{user_id}/balance", tag = "users",
    params(("user_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = Balance),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn balance(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
) -> Result<axum::Json<Balance>, ApiError> {
    access::user(&app, &caller, user_id).await?;
    let view = app.balances.get(user_id).await.map_err(balance_error)?;
    Ok(axum::Json(Balance {
        user_id,
        balance: view.balance,
        status: view.status,
        reserved: view.reserved,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Entries older than this entry id (the `next_before` of the previous page).
    pub before: Option<i64>,
    /// At most this many entries (1 to 500, default 50).
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    pub data: Vec<LedgerEntry>,
    /// Pass as `before` for the next page; `null` on the last page.
    pub next_before: Option<i64>,
}

/// Every balance movement (top-ups, redemptions, charges), newest first.
#[utoipa::path(get, path = "/api/users/{user_id}/ledger", tag = "users",
    params(("user_id" = Uuid, Path), LedgerQuery), security(("jwt" = [])),
    responses((status = 200, body = LedgerPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ledger(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<LedgerPage>, ApiError> {
    let q = query(q)?;
    access::user(&app, &caller, user_id).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let data = db::usage::ledger_page(&app.pool, user_id, q.before, limit).await?;
    let next_before = if data.len() as i64 == limit {
        data.last().map(|e| e.id)
    } else {
        None
    };
    Ok(axum::Json(LedgerPage { data, next_before }))
}

#[derive(Serialize, ToSchema)]
pub struct TargetPrice {
    pub provider: String,
    /// The upstream model this target calls.
    pub model: String,
    pub currency: String,
    /// Wholesale, per token.
    #[schema(value_type = String)]
    pub input_rate: String,
    #[schema(value_type = String)]
    pub output_rate: String,
    /// What this customer pays per token: rate * (1 + markup / 100).
    #[schema(value_type = String)]
    pub input_price: String,
    #[schema(value_type = String)]
    pub output_price: String,
    /// The same, per million tokens.
    #[schema(value_type = String)]
    pub input_price_per_million: String,
    #[schema(value_type = String)]
    pub output_price_per_million: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModelPrice {
    pub model: String,
    /// `single`, `fallback` or `loadbalance`: which target answers decides the price.
    pub strategy: String,
    /// The markup paid on this model (percent).
    #[schema(value_type = String, example = "15")]
    pub markup_percent: String,
    /// `model` (the tenant's markup for this model), `user` or `tenant`.
    #[schema(value_type = String, example = "tenant")]
    pub markup_source: MarkupSource,
    /// `null` prices mean the target has no rate yet (calls to the model get 503).
    pub targets: Vec<Option<TargetPrice>>,
}

#[derive(Serialize, ToSchema)]
pub struct Prices {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    /// The markup on models without a markup of their own (percent).
    #[schema(value_type = String, example = "15")]
    pub markup_percent: String,
    /// `user` when the user has its own markup, else `tenant`.
    #[schema(value_type = String, example = "tenant")]
    pub markup_source: MarkupSource,
    pub models: Vec<ModelPrice>,
}

fn money(d: Decimal) -> String {
    d.normalize().to_string()
}

/// What this user pays per token for every model, target by target.
#[utoipa::path(get, path = "/api/users/{user_id}/prices", tag = "users",
    params(("user_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = Prices),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn prices(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
) -> Result<axum::Json<Prices>, ApiError> {
    let tenant_id = access::user(&app, &caller, user_id).await?;
    let snap = app.snapshot.load();
    let markup = snap.markup(tenant_id, user_id);
    let source = if snap.user_markups.contains_key(&user_id) {
        MarkupSource::User
    } else {
        MarkupSource::Tenant
    };
    let million = Decimal::from(1_000_000);
    let mut models: Vec<ModelPrice> = snap
        .models
        .values()
        .map(|route| {
            let (markup, markup_source) = snap.markup_for(tenant_id, user_id, &route.model);
            ModelPrice {
                model: route.model.clone(),
                strategy: format!("{:?}", route.plan.strategy.mode).to_lowercase(),
                markup_percent: money(markup),
                markup_source,
                targets: route
                    .plan
                    .targets
                    .iter()
                    .map(|t| {
                        let upstream = t.model(&route.model);
                        let rate = snap.rate(&t.provider, upstream)?;
                        let factor = Decimal::ONE + markup / Decimal::ONE_HUNDRED;
                        let (input, output) = (rate.input_rate * factor, rate.output_rate * factor);
                        Some(TargetPrice {
                            provider: t.provider.clone(),
                            model: upstream.to_owned(),
                            currency: rate.currency.clone(),
                            input_rate: money(rate.input_rate),
                            output_rate: money(rate.output_rate),
                            input_price: money(input),
                            output_price: money(output),
                            input_price_per_million: money(input * million),
                            output_price_per_million: money(output * million),
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(axum::Json(Prices {
        user_id,
        tenant_id,
        markup_percent: money(markup),
        markup_source: source,
        models,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Inclusive start (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Exclusive end (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// `day`, `model` or `key` (and `user` for a tenant): totals per group instead of rows.
    pub group_by: Option<GroupBy>,
    /// Rows to return without `group_by` (1 to 1000, default 100), newest first.
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// The newest rows (without `group_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<UsageRow>>,
    /// Totals per group (with `group_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<UsageGroup>>,
    /// Totals over the whole range.
    pub totals: UsageTotals,
    /// What the ledger charged over the same range: always equal to `totals.cost`.
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String)]
    pub ledger_charges: Decimal,
}

/// Usage rows or groups and totals for a user or a tenant.
pub async fn usage_report(app: &AppState, scope: Scope, q: UsageQuery) -> Result<Usage, ApiError> {
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from >= to
    {
        return Err(ApiError::bad_request("from must be before to"));
    }
    if matches!(scope, Scope::User(_)) && q.group_by == Some(GroupBy::User) {
        return Err(ApiError::bad_request("group_by=user is for tenant usage"));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let range = Range {
        from: q.from,
        to: q.to,
    };
    let (data, groups) = match q.group_by {
        None => (
            Some(db::usage::rows(&app.pool, scope, range, limit).await?),
            None,
        ),
        Some(by) => (
            None,
            Some(db::usage::groups(&app.pool, scope, range, by).await?),
        ),
    };
    Ok(Usage {
        data,
        groups,
        totals: db::usage::total(&app.pool, scope, range).await?,
        ledger_charges: db::usage::ledger_charges(&app.pool, scope, range).await?,
    })
}

/// A user's usage: rows, or totals by day, model or key; totals equal the ledger.
#[utoipa::path(get, path = "/api/users/{user_id}/usage", tag = "users",
    params(("user_id" = Uuid, Path), UsageQuery), security(("jwt" = [])),
    responses((status = 200, body = Usage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn usage(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Usage>, ApiError> {
    let q = query(q)?;
    access::user(&app, &caller, user_id).await?;
    Ok(axum::Json(
        usage_report(&app, Scope::User(user_id), q).await?,
    ))
}
