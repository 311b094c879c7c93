//! Recording changes made through the platform API in the audit log, and reading it back
//! (`GET /api/admin/audit`: a platform admin everything, a tenant admin its tenant's).

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Caller;
use super::observe::RequestCtx;
use super::types::{ErrorBody, query};
use crate::auth::Role;
use crate::db;
use crate::db::audit::{Entry, Filter, NewEntry};
use crate::db::keys::KeySummary;
use crate::state::AppState;

/// Fields whose values never reach the log, at any depth.
const SECRETS: &[&str] = &[
    "api_key",
    "virtual_key",
    "password",
    "hashed_password",
    "code",
    "token",
    "secret",
];

fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if SECRETS.contains(&k.as_str()) && !x.is_null() {
                    *x = Value::String("***".into());
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A change to record: what was done to which target, and its state before and after.
pub struct Change {
    /// `<target>.<verb>`: `virtual_key.create`, `user.update`, `provider_rate.set`, ...
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    /// The tenant the change concerns (`None`: platform-wide).
    pub tenant_id: Option<Uuid>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Any value as JSON for a [`Change`].
pub fn json<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

/// A change to a key, as the audit log records it.
pub fn key_change(
    action: &'static str,
    tenant: Uuid,
    before: Option<&KeySummary>,
    after: &KeySummary,
) -> Change {
    Change {
        action,
        target_type: "virtual_key",
        target_id: after.id.to_string(),
        tenant_id: Some(tenant),
        before: before.and_then(json),
        after: json(after),
    }
}

/// The request's handle on the audit log.
pub struct Audit {
    app: AppState,
    request_id: Uuid,
}

impl FromRequestParts<AppState> for Audit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let request_id = parts
            .extensions
            .get::<std::sync::Arc<RequestCtx>>()
            .map_or_else(Uuid::new_v4, |c| c.id);
        Ok(Self {
            app: app.clone(),
            request_id,
        })
    }
}

impl Audit {
    /// Records a change `caller` made (secrets redacted). The change is already saved: a
    /// failure to record it is logged as an error and counted, not turned into a refusal.
    pub async fn record(&self, caller: &Caller, mut change: Change) {
        for v in [&mut change.before, &mut change.after]
            .into_iter()
            .flatten()
        {
            redact(v);
        }
        let entry = NewEntry {
            actor_id: caller.id(),
            actor_role: caller.role().as_str(),
            tenant_id: change.tenant_id,
            action: change.action,
            target_type: change.target_type,
            target_id: &change.target_id,
            request_id: self.request_id,
            before: change.before.as_ref(),
            after: change.after.as_ref(),
        };
        if let Err(e) = db::audit::insert(&self.app.pool, entry).await {
            crate::metrics::audit_failed();
            tracing::error!(request_id = %self.request_id, action = change.action,
                target = %change.target_id, error = %e, "a change was not recorded in the audit log");
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub actor_id: Option<Uuid>,
    /// `virtual_key.update`, `user.update`, `tenant.update`, ...
    pub action: Option<String>,
    /// `virtual_key`, `user`, `tenant`, `provider_rate`, `model_config`, `portkey_config`,
    /// `redemption_code`, `actor`.
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// Only a platform admin may ask for another tenant's (or any) entries.
    pub tenant_id: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Entries older than this id (the `next_before` of the previous page).
    pub before: Option<i64>,
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub data: Vec<Entry>,
    /// Pass as `before` for the next page (`null`: no more).
    pub next_before: Option<i64>,
}

/// The audit log, newest first: a platform admin sees every entry, a tenant admin its
/// tenant's.
#[utoipa::path(get, path = "/api/admin/audit", operation_id = "list_audit", tag = "audit",
    params(AuditQuery), security(("jwt" = [])),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let q = query(q)?;
    let tenant_id = match caller.role() {
        Role::PlatformAdmin => q.tenant_id,
        Role::TenantAdmin => {
            let own = caller.0.tenant_id;
            if q.tenant_id.is_some_and(|t| t != own) {
                return Err(ApiError::Forbidden(
                    "a tenant admin reads its own tenant's entries".into(),
                ));
            }
            Some(own)
        }
        Role::User => {
            return Err(ApiError::Forbidden(
                "the audit log is for platform and tenant admins".into(),
            ));
        }
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let filter = Filter {
        tenant_id,
        actor_id: q.actor_id,
        action: q.action,
        target_type: q.target_type,
        target_id: q.target_id,
        from: q.from,
        to: q.to,
        before: q.before,
    };
    let data = db::audit::list(&app.pool, &filter, limit).await?;
    let next_before = (data.len() as i64 == limit)
        .then(|| data.last().map(|e| e.id))
        .flatten();
    Ok(axum::Json(AuditPage { data, next_before }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = serde_json::json!({"virtual_key": "vk_secret", "name": "k",
            "config": {"targets": [{"api_key": "sk-1", "provider": "openai"}]},
            "data": [{"code": "NP-SECRET", "amount": "5"}], "api_key": null});
        redact(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("vk_secret") && !text.contains("sk-1") && !text.contains("NP-SECRET")
        );
        assert_eq!(v["name"], "k");
        assert_eq!(v["data"][0]["amount"], "5");
        assert!(v["api_key"].is_null());
    }
}
