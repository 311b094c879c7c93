//! Usage exports as CSV or JSON: `GET /api/users/{user_id}/usage/export` and
//! `GET /api/tenants/{tenant_id}/usage/export`. Every call, charged or failed (status and
//! error code, no charge), paged by a cursor past any number of rows, or totals grouped by
//! any combination of day, model, key and user.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::access;
use super::error::ApiError;
use super::extract::{Caller, IdPath};
use super::types::{ErrorBody, query};
use crate::db;
use crate::db::export::{CallRow, Cursor, Dimension, GroupRow};
use crate::db::usage::{Range, Scope};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// Comma-separated dimensions (`day`, `model`, `key`, and `user` for a tenant): totals
    /// per combination instead of rows.
    pub group_by: Option<String>,
    /// Inclusive start (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Exclusive end (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Include failed calls (default true).
    pub include_failed: Option<bool>,
    /// Rows (or groups) per answer: 1 to 10000, default 1000.
    pub limit: Option<i64>,
    /// The `next_after` of the previous page (rows only).
    pub after: Option<String>,
}

const ROW_HEAD: &str = "created_at,request_id,user_id,virtual_key_id,provider,model,input_tokens,output_tokens,cost,status,error_code";

/// A CSV field, quoted when it must be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn row_csv(r: &CallRow) -> String {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        r.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        r.request_id.clone(),
        r.user_id.to_string(),
        opt(r.virtual_key_id.map(|k| k.to_string())),
        opt(r.provider.clone()),
        r.model.clone(),
        r.input_tokens.to_string(),
        r.output_tokens.to_string(),
        r.cost.normalize().to_string(),
        r.status.to_string(),
        opt(r.error_code.clone()),
    ]
    .iter()
    .map(|f| field(f))
    .collect::<Vec<_>>()
    .join(",")
}

fn dimensions(raw: &str, tenant: bool) -> Result<Vec<Dimension>, ApiError> {
    let mut by = Vec::new();
    for name in raw.split(',').map(str::trim) {
        let d = match name {
            "day" => Dimension::Day,
            "model" => Dimension::Model,
            "key" => Dimension::Key,
            "user" if tenant => Dimension::User,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "group_by takes day, model, key{}; not {name:?}",
                    if tenant { " and user" } else { "" }
                )));
            }
        };
        if by.contains(&d) {
            return Err(ApiError::bad_request(format!(
                "group_by names {name} twice"
            )));
        }
        by.push(d);
    }
    Ok(by)
}

async fn export(app: &AppState, scope: Scope, q: ExportQuery) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format is json or csv, not {other:?}"
            )));
        }
    };
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 10000"));
    }
    let range = Range {
        from: q.from,
        to: q.to,
    };
    if let (Some(f), Some(t)) = (range.from, range.to)
        && f > t
    {
        return Err(ApiError::bad_request("from is after to"));
    }
    let failed = q.include_failed.unwrap_or(true);
    let tenant = matches!(scope, Scope::Tenant(_));
    if let Some(raw) = &q.group_by {
        if q.after.is_some() {
            return Err(ApiError::bad_request("after pages rows, not groups"));
        }
        let by = dimensions(raw, tenant)?;
        let groups = db::export::groups(&app.pool, scope, range, failed, &by, limit).await?;
        let names: Vec<&str> = by.iter().map(|d| d.name()).collect();
        return Ok(if csv {
            let mut out = format!(
                "{},requests,failures,input_tokens,output_tokens,cost\n",
                names.join(",")
            );
            for g in &groups {
                out.push_str(&group_csv(g));
                out.push('\n');
            }
            csv_response(out, None)
        } else {
            axum::Json(json!({"group_by": names, "data": groups})).into_response()
        });
    }
    let after = match q.after.as_deref() {
        Some(a) => Some(
            Cursor::decode(a)
                .ok_or_else(|| ApiError::bad_request("after is not a cursor this endpoint gave"))?,
        ),
        None => None,
    };
    let rows = db::export::rows(&app.pool, scope, range, failed, after.as_ref(), limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last())
        .flatten()
        .map(|r| {
            Cursor {
                at: r.created_at,
                request_id: r.request_id.clone(),
            }
            .encode()
        });
    Ok(if csv {
        let mut out = format!("{ROW_HEAD}\n");
        for r in &rows {
            out.push_str(&row_csv(r));
            out.push('\n');
        }
        csv_response(out, next)
    } else {
        axum::Json(json!({"data": rows, "next_after": next})).into_response()
    })
}

fn group_csv(g: &GroupRow) -> String {
    let mut cells: Vec<String> = g
        .group
        .iter()
        .map(|v| field(v.as_deref().unwrap_or("")))
        .collect();
    cells.extend([
        g.requests.to_string(),
        g.failures.to_string(),
        g.input_tokens.to_string(),
        g.output_tokens.to_string(),
        g.cost.normalize().to_string(),
    ]);
    cells.join(",")
}

/// A CSV body; the next page's cursor, if any, in `x-next-after`.
fn csv_response(body: String, next: Option<String>) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"usage.csv\"",
            ),
        ],
        body,
    )
        .into_response();
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert("x-next-after", v);
    }
    r
}

/// A user's calls, charged and failed, as CSV or JSON (the user, its tenant admin, a
/// platform admin).
#[utoipa::path(get, path = "/api/users/{user_id}/usage/export", operation_id = "export_user_usage", tag = "users",
    params(("user_id" = Uuid, Path), ExportQuery), security(("jwt" = [])),
    responses((status = 200, description = "JSON `{data, next_after}` or `{group_by, data}`, or CSV (`x-next-after`)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn user(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    access::user(&app, &caller, user_id).await?;
    export(&app, Scope::User(user_id), q).await
}

/// A tenant's calls, charged and failed, as CSV or JSON (its admin, a platform admin).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/usage/export", operation_id = "export_tenant_usage", tag = "tenants",
    params(("tenant_id" = Uuid, Path), ExportQuery), security(("jwt" = [])),
    responses((status = 200, description = "JSON `{data, next_after}` or `{group_by, data}`, or CSV (`x-next-after`)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn tenant(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    caller.require_tenant(tenant_id)?;
    export(&app, Scope::Tenant(tenant_id), q).await
}
