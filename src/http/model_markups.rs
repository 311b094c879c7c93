//! A tenant's markups for single public models: `GET /api/tenants/{tenant_id}/model-markups`,
//! `PUT` and `DELETE .../model-markups/{model}`. A model's markup beats the tenant's and
//! any user's on that model. A platform admin sets any; the tenant's admin none below the
//! tenant's own markup (the platform's terms).

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::access;
use super::audit::{Audit, Change};
use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::types::ErrorBody;
use crate::billing::{AmountRule, Decimal, de_money};
use crate::db;
use crate::db::tenants::ModelMarkup;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct ModelMarkupList {
    pub data: Vec<ModelMarkup>,
}

fn tenant_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request(format!("{raw:?} is not a valid id")))
}

/// A tenant's markups per model.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/model-markups", operation_id = "list_model_markups", tag = "tenants",
    params(("tenant_id" = Uuid, Path)), security(("jwt" = [])),
    responses((status = 200, body = ModelMarkupList), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<axum::Json<ModelMarkupList>, ApiError> {
    let tenant = tenant_id(&raw)?;
    access::tenant(&app, &caller, tenant).await?;
    let data = db::tenants::model_markups(&app.pool, tenant).await?;
    Ok(axum::Json(ModelMarkupList { data }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModelMarkup {
    #[serde(deserialize_with = "de_money")]
    #[schema(value_type = String, example = "30")]
    pub markup_percent: Decimal,
}

fn change(tenant: Uuid, model: &str, before: Option<Decimal>, after: Option<Decimal>) -> Change {
    let value = |m: Option<Decimal>| {
        m.map(|m| serde_json::json!({"model": model, "markup_percent": m.normalize().to_string()}))
    };
    Change {
        action: if after.is_some() {
            "model_markup.set"
        } else {
            "model_markup.delete"
        },
        target_type: "model_markup",
        target_id: format!("{tenant}/{model}"),
        tenant_id: Some(tenant),
        before: value(before),
        after: value(after),
    }
}

/// Sets the tenant's markup for one model (the next call is charged with it).
#[utoipa::path(put, path = "/api/tenants/{tenant_id}/model-markups/{model}", operation_id = "set_model_markup", tag = "tenants",
    params(("tenant_id" = Uuid, Path), ("model" = String, Path)), request_body = SetModelMarkup,
    security(("jwt" = [])),
    responses((status = 200, body = ModelMarkupList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set(
    State(app): State<AppState>,
    caller: Caller,
    Path((raw, model)): Path<(String, String)>,
    audit: Audit,
    JsonBody(body): JsonBody<SetModelMarkup>,
) -> Result<axum::Json<ModelMarkupList>, ApiError> {
    let tenant = tenant_id(&raw)?;
    let floor = access::tenant(&app, &caller, tenant).await?.markup_percent;
    if !app.snapshot.load().models.contains_key(&model) {
        return Err(ApiError::NotFound(format!(
            "model {model:?} does not exist"
        )));
    }
    let markup = AmountRule::PERCENT
        .check(body.markup_percent)
        .map_err(ApiError::bad_request)?;
    if !caller.is_platform_admin() && markup < floor {
        return Err(ApiError::bad_request(format!(
            "markup_percent may not be below the tenant's ({floor})"
        )));
    }
    let before = db::tenants::set_model_markup(&app.pool, tenant, &model, markup).await?;
    audit
        .record(&caller, change(tenant, &model, before, Some(markup)))
        .await;
    super::reload(&app).await?;
    let data = db::tenants::model_markups(&app.pool, tenant).await?;
    Ok(axum::Json(ModelMarkupList { data }))
}

/// Removes the tenant's markup for one model (the tenant's or the user's applies again).
#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/model-markups/{model}", operation_id = "delete_model_markup", tag = "tenants",
    params(("tenant_id" = Uuid, Path), ("model" = String, Path)), security(("jwt" = [])),
    responses((status = 200, body = ModelMarkupList), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    Path((raw, model)): Path<(String, String)>,
    audit: Audit,
) -> Result<axum::Json<ModelMarkupList>, ApiError> {
    let tenant = tenant_id(&raw)?;
    access::tenant(&app, &caller, tenant).await?;
    let Some(before) = db::tenants::delete_model_markup(&app.pool, tenant, &model).await? else {
        return Err(ApiError::NotFound(format!(
            "the tenant has no markup for model {model:?}"
        )));
    };
    audit
        .record(&caller, change(tenant, &model, Some(before), None))
        .await;
    super::reload(&app).await?;
    let data = db::tenants::model_markups(&app.pool, tenant).await?;
    Ok(axum::Json(ModelMarkupList { data }))
}
