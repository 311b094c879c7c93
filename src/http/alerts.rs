//! Alert webhooks and their deliveries: `PUT /api/tenants/{tenant_id}/webhooks`,
//! `GET .../webhooks`, `DELETE .../webhooks/{id}`, `GET /api/tenants/{tenant_id}/alerts`
//! (the tenant's admin, a platform admin). Events and signing: [`crate::alerts`].

use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::access;
use super::audit::{self, Audit, Change};
use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody};
use super::types::{ErrorBody, query};
use crate::billing::{AmountRule, Decimal, de_opt_money};
use crate::db;
use crate::db::alerts::{Alert, Webhook};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutWebhook {
    /// Where events are posted (http or https).
    #[schema(example = "https://hooks.example.com/neuropia")]
    pub url: String,
    /// Signs each delivery (16 to 256 characters); never returned.
    #[schema(example = "a-long-shared-secret")]
    pub secret: String,
    /// `balance.low` fires when a balance goes below this; absent: never.
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "5")]
    pub low_balance_threshold: Option<Decimal>,
    /// One user's events only (a user of this tenant); absent: every user's.
    pub user_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<Webhook>,
}

/// Sets the tenant's webhook, or one of its users' (replacing the one there was).
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/webhooks", operation_id = "put_webhook",
    tag = "tenants", params(("tenant_id" = Uuid, Path)), request_body = PutWebhook,
    security(("jwt" = [])),
    responses((status = 200, body = Webhook), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<PutWebhook>,
) -> Result<axum::Json<Webhook>, ApiError> {
    access::tenant(&app, &caller, tenant_id).await?;
    let url = body.url.trim();
    if url.len() > 2048 || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::bad_request(
            "url must be an http(s) URL of at most 2048 bytes",
        ));
    }
    if !app.config.allow_private_upstreams
        && let Some(why) = crate::address::refusal(url)
    {
        return Err(ApiError::bad_request(format!("url: {why}")));
    }
    if !(16..=256).contains(&body.secret.len()) {
        return Err(ApiError::bad_request("secret must be 16 to 256 characters"));
    }
    let threshold = body
        .low_balance_threshold
        .map(|t| AmountRule::BUDGET.named("low_balance_threshold").check(t))
        .transpose()
        .map_err(ApiError::bad_request)?;
    if let Some(user) = body.user_id
        && access::user(&app, &caller, user).await? != tenant_id
    {
        return Err(access::user_not_found());
    }
    let hook = db::alerts::put_webhook(
        &app.pool,
        tenant_id,
        body.user_id,
        url,
        &body.secret,
        threshold,
    )
    .await?;
    audit
        .record(
            &caller,
            Change {
                action: "webhook.set",
                target_type: "webhook",
                target_id: hook.id.to_string(),
                tenant_id: Some(tenant_id),
                before: None,
                after: audit::json(&hook),
            },
        )
        .await;
    Ok(axum::Json(hook))
}

/// The tenant's webhooks (secrets never shown).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/webhooks", operation_id = "list_webhooks",
    tag = "tenants", params(("tenant_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
) -> Result<axum::Json<WebhookList>, ApiError> {
    access::tenant(&app, &caller, tenant_id).await?;
    let data = db::alerts::webhooks(&app.pool, tenant_id).await?;
    Ok(axum::Json(WebhookList { data }))
}

/// Removes a webhook (its undelivered events with it).
#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/webhooks/{id}", operation_id = "delete_webhook",
    tag = "tenants", params(("tenant_id" = Uuid, Path), ("id" = Uuid, Path)),
    security(("jwt" = [])),
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    audit: Audit,
) -> Result<axum::Json<WebhookList>, ApiError> {
    access::tenant(&app, &caller, tenant_id).await?;
    if !db::alerts::delete_webhook(&app.pool, tenant_id, id).await? {
        return Err(ApiError::NotFound("no such webhook".into()));
    }
    let change = Change {
        action: "webhook.delete",
        target_type: "webhook",
        target_id: id.to_string(),
        tenant_id: Some(tenant_id),
        before: None,
        after: None,
    };
    audit.record(&caller, change).await;
    let data = db::alerts::webhooks(&app.pool, tenant_id).await?;
    Ok(axum::Json(WebhookList { data }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AlertList {
    pub data: Vec<Alert>,
}

/// The tenant's alert events, newest first, with how their delivery went.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/alerts", operation_id = "list_alerts",
    tag = "tenants", params(("tenant_id" = Uuid, Path), AlertQuery), security(("jwt" = [])),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn alerts(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    q: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<AlertList>, ApiError> {
    let q = query(q)?;
    access::tenant(&app, &caller, tenant_id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let data = db::alerts::alerts(&app.pool, tenant_id, limit).await?;
    Ok(axum::Json(AlertList { data }))
}
