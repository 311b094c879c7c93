//! Credits: top-ups by a platform admin, redemption codes minted by a platform admin and
//! redeemed once by a user. Every credit goes through the user's balance actor and the
//! journal, and the response waits for its commit.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access;
use super::audit::{self, Audit, Change};
use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody};
use super::types::{ErrorBody, Page, query};
use super::users::balance_error;
use crate::billing::{AccountStatus, AmountRule, Decimal, de_money, ser_money};
use crate::db;
use crate::db::codes::CodeSummary;
use crate::journal::{Committed, EntryKind};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Credited {
    pub user_id: Uuid,
    pub request_id: String,
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "10")]
    pub amount: Decimal,
    /// The balance right after this credit.
    #[serde(serialize_with = "ser_money")]
    #[schema(value_type = String, example = "10")]
    pub balance: Decimal,
    #[schema(value_type = String, example = "active")]
    pub status: AccountStatus,
}

/// Credits `amount` under the ledger id `ledger_id` and waits for the commit.
async fn credit(
    app: &AppState,
    user_id: Uuid,
    ledger_id: String,
    amount: Decimal,
    kind: EntryKind,
    duplicate: &str,
) -> Result<(Decimal, AccountStatus), ApiError> {
    let reply = app
        .balances
        .credit(user_id, ledger_id, amount, kind)
        .await
        .map_err(balance_error)?;
    let Some(committed) = reply.committed else {
        return Err(ApiError::Conflict(duplicate.into()));
    };
    match tokio::time::timeout(Duration::from_secs(10), committed).await {
        Ok(Ok(Committed::Inserted)) => Ok((reply.balance, reply.status)),
        Ok(Ok(Committed::Duplicate)) => Err(ApiError::Conflict(duplicate.into())),
        _ => Err(ApiError::Unavailable(
            "the credit is recorded but not yet durable; retry with the same id".into(),
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    /// A decimal string or number: positive, at most 1e12, at most 8 decimals.
    #[serde(deserialize_with = "de_money")]
    #[schema(value_type = String, example = "10.00")]
    pub amount: Decimal,
    /// Idempotency key (`[A-Za-z0-9-_.:]`, up to 64): the same id credits once.
    #[schema(example = "invoice-42")]
    pub request_id: Option<String>,
    pub note: Option<String>,
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

/// Credits a user's balance (platform admin). `pending` becomes `active`; `overdue`
/// becomes `active` once the balance is positive and at least the tenant's threshold.
#[utoipa::path(post, path = "/api/users/{user_id}/topups", tag = "money",
    params(("user_id" = Uuid, Path)), request_body = TopUp, security(("jwt" = [])),
    responses((status = 200, body = Credited), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "this request_id was already credited", body = ErrorBody),
        (status = 503, description = "not yet durable: retry with the same request_id", body = ErrorBody)))]
pub async fn top_up(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<TopUp>,
) -> Result<axum::Json<Credited>, ApiError> {
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
    let (balance, status) = credit(
        &app,
        user_id,
        format!("topup:{user_id}:{request_id}"),
        amount,
        EntryKind::TopUp { note: body.note },
        "a top-up with this request_id was already credited",
    )
    .await?;
    let credited = Credited {
        user_id,
        request_id,
        amount,
        balance,
        status,
    };
    let tenant = db::users::tenant_of(&app.pool, user_id).await?;
    audit
        .record(&caller, credit_change("balance.top_up", tenant, &credited))
        .await;
    Ok(axum::Json(credited))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCodes {
    /// What each code credits.
    #[serde(deserialize_with = "de_money")]
    #[schema(value_type = String, example = "25")]
    pub amount: Decimal,
    /// When the codes stop working.
    pub expires_at: DateTime<Utc>,
    /// How many codes to mint (1 to 100, default 1).
    pub count: Option<usize>,
    pub note: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MintedCode {
    /// The code, shown this once: only its SHA-256 is stored.
    #[schema(example = "NEU-7KQ2-M9XH-4TPA-C3WD")]
    pub code: String,
    #[serde(flatten)]
    pub summary: CodeSummary,
}

#[derive(Serialize, ToSchema)]
pub struct MintedCodes {
    pub data: Vec<MintedCode>,
}

/// Mints redemption codes (platform admin).
#[utoipa::path(post, path = "/api/admin/redemption-codes", tag = "money",
    request_body = NewCodes, security(("jwt" = [])),
    responses((status = 201, body = MintedCodes), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn mint_codes(
    State(app): State<AppState>,
    caller: Caller,
    audit: Audit,
    JsonBody(body): JsonBody<NewCodes>,
) -> Result<(StatusCode, axum::Json<MintedCodes>), ApiError> {
    caller.require_platform_admin()?;
    let amount = AmountRule::MONEY
        .check(body.amount)
        .map_err(ApiError::bad_request)?;
    let count = body.count.unwrap_or(1);
    if !(1..=100).contains(&count) {
        return Err(ApiError::bad_request("count must be between 1 and 100"));
    }
    if body.expires_at <= Utc::now() {
        return Err(ApiError::bad_request("expires_at must be in the future"));
    }
    if body.note.as_ref().is_some_and(|n| n.len() > 500) {
        return Err(ApiError::bad_request("note must be at most 500 bytes"));
    }
    let minted = db::codes::create(
        &app.pool,
        db::codes::NewCodes {
            amount,
            expires_at: body.expires_at,
            note: body.note.as_deref(),
            created_by: caller.id(),
            count,
        },
    )
    .await?;
    let data: Vec<MintedCode> = minted
        .into_iter()
        .map(|(summary, code)| MintedCode { code, summary })
        .collect();
    for m in &data {
        let change = Change {
            action: "redemption_code.create",
            target_type: "redemption_code",
            target_id: m.summary.id.to_string(),
            tenant_id: None,
            before: None,
            after: audit::json(&m.summary),
        };
        audit.record(&caller, change).await;
    }
    Ok((StatusCode::CREATED, axum::Json(MintedCodes { data })))
}

#[derive(Serialize, ToSchema)]
pub struct CodeList {
    pub data: Vec<CodeSummary>,
}

/// Redemption codes, masked, newest first (platform admin).
#[utoipa::path(get, path = "/api/admin/redemption-codes", tag = "money",
    params(Page), security(("jwt" = [])),
    responses((status = 200, body = CodeList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_codes(
    State(app): State<AppState>,
    caller: Caller,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<CodeList>, ApiError> {
    caller.require_platform_admin()?;
    let (limit, offset) = query(page)?.bounds()?;
    let data = db::codes::list(&app.pool, limit, offset).await?;
    Ok(axum::Json(CodeList { data }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    #[schema(example = "NEU-7KQ2-M9XH-4TPA-C3WD")]
    pub code: String,
}

/// Redeems a code into a user's balance: each code credits exactly once, even when
/// redeemed concurrently (the loser gets 409).
#[utoipa::path(post, path = "/api/users/{user_id}/redemptions", tag = "money",
    params(("user_id" = Uuid, Path)), request_body = Redeem, security(("jwt" = [])),
    responses((status = 200, body = Credited), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "no such code (or user)", body = ErrorBody),
        (status = 409, description = "already redeemed", body = ErrorBody),
        (status = 410, description = "expired", body = ErrorBody)))]
pub async fn redeem(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<Redeem>,
) -> Result<axum::Json<Credited>, ApiError> {
    let tenant = access::user(&app, &caller, user_id).await?;
    let code = db::codes::normalise(&body.code);
    if code.is_empty() || code.len() > 64 {
        return Err(ApiError::bad_request("code must be 1 to 64 characters"));
    }
    let found = db::codes::find(&app.pool, &code)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such redemption code".into()))?;
    if found.redeemed_at.is_some() {
        return Err(ApiError::Conflict("this code was already redeemed".into()));
    }
    if found.expires_at <= Utc::now() {
        return Err(ApiError::Gone("this code has expired".into()));
    }
    let (balance, status) = credit(
        &app,
        user_id,
        format!("redeem:{}", found.id),
        found.amount,
        EntryKind::Redemption { code_id: found.id },
        "this code was already redeemed",
    )
    .await?;
    let credited = Credited {
        user_id,
        request_id: format!("redeem:{}", found.id),
        amount: found.amount,
        balance,
        status,
    };
    audit
        .record(
            &caller,
            credit_change("balance.redeem", Some(tenant), &credited),
        )
        .await;
    Ok(axum::Json(credited))
}

/// A credit to a user's balance, as the audit log records it.
fn credit_change(action: &'static str, tenant: Option<Uuid>, credited: &Credited) -> Change {
    Change {
        action,
        target_type: "user",
        target_id: credited.user_id.to_string(),
        tenant_id: tenant,
        before: None,
        after: audit::json(credited),
    }
}
