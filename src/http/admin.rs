//! Platform-admin endpoints: provider rates, model plans, tenant settings, fault injection.
//! Every configuration write is followed by a snapshot reload, so the next request uses it.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody};
use crate::actors::Fault;
use crate::actors::balances::BalanceError;
use crate::actors::ledger::LedgerMsg;
use crate::app::AppState;
use crate::billing::{AmountRule, Decimal, Rate, de_money, de_opt_money};
use crate::db;
use crate::upstream::plan::Plan;

async fn reload(app: &AppState) -> Result<(), ApiError> {
    app.reload_config()
        .await
        .map_err(|e| ApiError::Unavailable(format!("saved, but the reload failed: {e}")))
}

fn check_name(value: &str, what: &str) -> Result<(), ApiError> {
    let ok = (1..=128).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be 1-128 characters of [A-Za-z0-9-_./:@]"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRate {
    provider: String,
    model: String,
    #[serde(deserialize_with = "de_money")]
    input_rate: Decimal,
    #[serde(deserialize_with = "de_money")]
    output_rate: Decimal,
    currency: Option<String>,
}

pub async fn put_rate(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<PutRate>,
) -> Result<axum::Json<Value>, ApiError> {
    caller.require_platform_admin()?;
    check_name(&body.provider, "provider")?;
    check_name(&body.model, "model")?;
    let rate = Rate {
        input_rate: AmountRule::RATE
            .named("input_rate")
            .check(body.input_rate)
            .map_err(ApiError::bad_request)?,
        output_rate: AmountRule::RATE
            .named("output_rate")
            .check(body.output_rate)
            .map_err(ApiError::bad_request)?,
        currency: body.currency.unwrap_or_else(|| "USD".into()),
    };
    let c = &rate.currency;
    if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
        return Err(ApiError::bad_request(
            "currency must be a three-letter ISO code such as USD",
        ));
    }
    db::config::upsert_rate(&app.pool, &body.provider, &body.model, &rate).await?;
    reload(&app).await?;
    Ok(axum::Json(json!({
        "provider": body.provider,
        "model": body.model,
        "input_rate": rate.input_rate.to_string(),
        "output_rate": rate.output_rate.to_string(),
        "currency": rate.currency,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutModelConfig {
    model: String,
    /// A Portkey-format plan.
    config: Option<Value>,
    /// Shorthand for a one-target plan on this provider.
    provider: Option<String>,
}

pub async fn put_model_config(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<PutModelConfig>,
) -> Result<axum::Json<Value>, ApiError> {
    caller.require_platform_admin()?;
    check_name(&body.model, "model")?;
    let plan = match (&body.config, &body.provider) {
        (Some(config), None) => Plan::from_json(config).map_err(ApiError::bad_request)?,
        (None, Some(provider)) => {
            check_name(provider, "provider")?;
            let plan = Plan::single(provider, &body.model);
            plan.check().map_err(ApiError::bad_request)?;
            plan
        }
        _ => {
            return Err(ApiError::bad_request(
                "give either config (a Portkey-format plan) or provider",
            ));
        }
    };
    db::config::upsert_model_config(&app.pool, &body.model, &plan).await?;
    reload(&app).await?;
    Ok(axum::Json(
        json!({"model": body.model, "config": plan.redacted()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    name: Option<String>,
    #[serde(default, deserialize_with = "de_opt_money")]
    markup_percent: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_money")]
    overdue_threshold: Option<Decimal>,
}

pub async fn patch_tenant(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(tenant_id): IdPath,
    JsonBody(body): JsonBody<PatchTenant>,
) -> Result<axum::Json<Value>, ApiError> {
    caller.require_platform_admin()?;
    if let Some(name) = &body.name
        && (name.trim().is_empty() || name.len() > 128)
    {
        return Err(ApiError::bad_request("name must be 1 to 128 characters"));
    }
    let markup = body
        .markup_percent
        .map(|m| AmountRule::PERCENT.check(m))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let threshold = body
        .overdue_threshold
        .map(|t| {
            AmountRule {
                allow_zero: true,
                ..AmountRule::MONEY
            }
            .named("overdue_threshold")
            .check(t)
        })
        .transpose()
        .map_err(ApiError::bad_request)?;
    let tenant = db::config::update_tenant(
        &app.pool,
        tenant_id,
        body.name.as_deref().map(str::trim),
        markup,
        threshold,
    )
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            ApiError::Conflict("a tenant with this name exists".into())
        } else {
            e.into()
        }
    })?
    .ok_or_else(|| ApiError::NotFound("tenant not found".into()))?;
    reload(&app).await?;
    Ok(axum::Json(json!(tenant)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectFault {
    actor: String,
    fault: String,
}

/// `POST /api/admin/faults`: exists only with `NEUROPIA_FAULTS=1`.
pub async fn inject_fault(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<InjectFault>,
) -> Result<axum::Json<Value>, ApiError> {
    if !app.config.faults {
        return Err(ApiError::NotFound("fault injection is disabled".into()));
    }
    caller.require_platform_admin()?;
    let fault = match body.fault.as_str() {
        "panic" => Fault::Panic,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown fault kind {other:?}"
            )));
        }
    };
    let unknown = || ApiError::NotFound(format!("no actor named {:?}", body.actor));
    if body.actor == "ledger" {
        app.tree
            .ledger
            .get()
            .cast(LedgerMsg::Fault(fault))
            .map_err(|_| unknown())?;
    } else if let Some(id) = body.actor.strip_prefix("balance:") {
        let user_id = uuid::Uuid::parse_str(id).map_err(|_| unknown())?;
        app.balances
            .inject(user_id, fault)
            .await
            .map_err(|e| match e {
                BalanceError::UnknownUser => unknown(),
                other => ApiError::Unavailable(format!("{other:?}")),
            })?;
    } else {
        return Err(unknown());
    }
    tracing::warn!(actor = %body.actor, fault = %body.fault, "fault injected");
    Ok(axum::Json(
        json!({"actor": body.actor, "fault": body.fault, "injected": true}),
    ))
}
