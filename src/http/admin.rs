//! Platform administration: provider rates, model plans, user roles and markups, fault
//! injection. Every configuration write is followed by a snapshot reload, so the next
//! request uses it.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::access;
use super::audit::{self, Audit, Change};
use super::error::ApiError;
use super::extract::{Caller, IdPath, JsonBody};
use super::types::ErrorBody;
use crate::auth::Role;
use crate::billing::{AmountRule, Decimal, Rate, de_money, de_patch_money};
use crate::db;
use crate::db::users::Profile;
use crate::plan::Plan;
use crate::state::AppState;

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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRate {
    #[schema(example = "dashscope")]
    pub provider: String,
    #[schema(example = "qwen-turbo")]
    pub model: String,
    /// Per input token: zero or more, at most 12 decimals.
    #[serde(deserialize_with = "de_money")]
    #[schema(value_type = String, example = "0.0000008")]
    pub input_rate: Decimal,
    /// Per output token.
    #[serde(deserialize_with = "de_money")]
    #[schema(value_type = String, example = "0.000002")]
    pub output_rate: Decimal,
    /// ISO 4217, default `USD`.
    #[schema(example = "USD")]
    pub currency: Option<String>,
    /// Per input token read from the provider's prompt cache (unset: `input_rate`).
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "0.0000002")]
    pub cached_input_rate: Option<Decimal>,
    /// Per input token written to the provider's prompt cache (unset: `input_rate`).
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "0.000001")]
    pub cache_write_rate: Option<Decimal>,
    /// Per reasoning output token (unset: `output_rate`).
    #[serde(default, deserialize_with = "de_opt_money")]
    #[schema(value_type = Option<String>, example = "0.000003")]
    pub reasoning_output_rate: Option<Decimal>,
}

fn de_opt_money<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "de_money")] Decimal);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

#[derive(Serialize, ToSchema)]
pub struct RateView {
    pub provider: String,
    pub model: String,
    #[schema(value_type = String, example = "0.0000008")]
    pub input_rate: String,
    #[schema(value_type = String, example = "0.000002")]
    pub output_rate: String,
    pub currency: String,
    #[schema(value_type = Option<String>)]
    pub cached_input_rate: Option<String>,
    #[schema(value_type = Option<String>)]
    pub cache_write_rate: Option<String>,
    #[schema(value_type = Option<String>)]
    pub reasoning_output_rate: Option<String>,
}

fn rate_view(provider: &str, model: &str, rate: &Rate) -> RateView {
    let text = |r: Option<Decimal>| r.map(|r| r.normalize().to_string());
    RateView {
        provider: provider.to_owned(),
        model: model.to_owned(),
        input_rate: rate.input_rate.normalize().to_string(),
        output_rate: rate.output_rate.normalize().to_string(),
        currency: rate.currency.clone(),
        cached_input_rate: text(rate.cached_input_rate),
        cache_write_rate: text(rate.cache_write_rate),
        reasoning_output_rate: text(rate.reasoning_output_rate),
    }
}

fn optional_rate(rate: Option<Decimal>, name: &'static str) -> Result<Option<Decimal>, ApiError> {
    rate.map(|r| {
        AmountRule::RATE
            .named(name)
            .check(r)
            .map_err(ApiError::bad_request)
    })
    .transpose()
}

/// Sets the wholesale rate of a (provider, model); the next call is billed with it.
#[utoipa::path(put, path = "/api/admin/provider-rates", tag = "pricing",
    request_body = PutRate, security(("jwt" = [])),
    responses((status = 200, body = RateView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_rate(
    State(app): State<AppState>,
    caller: Caller,
    audit: Audit,
    JsonBody(body): JsonBody<PutRate>,
) -> Result<axum::Json<RateView>, ApiError> {
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
        cached_input_rate: optional_rate(body.cached_input_rate, "cached_input_rate")?,
        cache_write_rate: optional_rate(body.cache_write_rate, "cache_write_rate")?,
        reasoning_output_rate: optional_rate(body.reasoning_output_rate, "reasoning_output_rate")?,
    };
    let c = &rate.currency;
    if c.len() != 3 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
        return Err(ApiError::bad_request(
            "currency must be a three-letter ISO code such as USD",
        ));
    }
    let before = app
        .snapshot
        .load()
        .rate(&body.provider, &body.model)
        .map(|r| rate_view(&body.provider, &body.model, r));
    db::config::upsert_rate(&app.pool, &body.provider, &body.model, &rate).await?;
    let after = rate_view(&body.provider, &body.model, &rate);
    audit
        .record(
            &caller,
            Change {
                action: "provider_rate.set",
                target_type: "provider_rate",
                target_id: format!("{}/{}", body.provider, body.model),
                tenant_id: None,
                before: before.as_ref().and_then(audit::json),
                after: audit::json(&after),
            },
        )
        .await;
    super::reload(&app).await?;
    Ok(axum::Json(after))
}

#[derive(Serialize, ToSchema)]
pub struct RateList {
    pub data: Vec<RateView>,
}

/// Every provider rate in force.
#[utoipa::path(get, path = "/api/admin/provider-rates", tag = "pricing", security(("jwt" = [])),
    responses((status = 200, body = RateList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_rates(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<RateList>, ApiError> {
    caller.require_platform_admin()?;
    let snap = app.snapshot.load();
    let mut data: Vec<RateView> = snap
        .rates
        .iter()
        .flat_map(|(p, models)| models.iter().map(move |(m, r)| rate_view(p, m, r)))
        .collect();
    data.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
    Ok(axum::Json(RateList { data }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutModelConfig {
    #[schema(example = "qwen-turbo")]
    pub model: String,
    /// A Portkey-format plan (`strategy.mode` single / fallback / loadbalance, `targets`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Shorthand for a one-target plan on this provider.
    pub provider: Option<String>,
    /// Output ceiling for calls that set no `max_tokens`: reserved, and sent upstream.
    #[schema(example = 1024)]
    pub default_max_tokens: Option<i64>,
    /// The most output tokens a call may ask for (`max_tokens` above it is refused with
    /// 400); default `NEUROPIA_MAX_OUTPUT_TOKENS`.
    #[schema(example = 16384)]
    pub max_output_tokens: Option<i64>,
    /// Prompt tokens reserved per image (or other non-text part) of a message; default
    /// `NEUROPIA_IMAGE_TOKENS`.
    #[schema(example = 1500)]
    pub image_tokens: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelConfigView {
    pub model: String,
    /// The plan, platform keys as `***`.
    #[schema(value_type = Object)]
    pub config: Value,
    pub default_max_tokens: Option<u32>,
    pub max_output_tokens: Option<u32>,
    pub image_tokens: Option<u32>,
}

/// A token setting of a model: `None`, or a whole number in `range`.
fn token_setting(
    v: Option<i64>,
    what: &str,
    range: std::ops::RangeInclusive<i32>,
) -> Result<Option<i32>, ApiError> {
    v.map(|n| {
        i32::try_from(n)
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{what} must be {} to {}",
                    range.start(),
                    range.end()
                ))
            })
    })
    .transpose()
}

/// Sets the routing plan of a public model name; the next call uses it.
#[utoipa::path(put, path = "/api/admin/model-configs", tag = "pricing",
    request_body = PutModelConfig, security(("jwt" = [])),
    responses((status = 200, body = ModelConfigView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_model_config(
    State(app): State<AppState>,
    caller: Caller,
    audit: Audit,
    JsonBody(body): JsonBody<PutModelConfig>,
) -> Result<axum::Json<ModelConfigView>, ApiError> {
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
    plan.check_hosts(app.config.allow_private_upstreams)
        .map_err(ApiError::bad_request)?;
    app.snapshot
        .load()
        .one_currency(&plan, &body.model)
        .map_err(ApiError::bad_request)?;
    let limits = db::config::ModelLimits {
        default_max_tokens: token_setting(
            body.default_max_tokens,
            "default_max_tokens",
            1..=1_000_000,
        )?,
        max_output_tokens: token_setting(
            body.max_output_tokens,
            "max_output_tokens",
            1..=10_000_000,
        )?,
        image_tokens: token_setting(body.image_tokens, "image_tokens", 0..=1_000_000)?,
    };
    if let (Some(default), Some(max)) = (limits.default_max_tokens, limits.max_output_tokens)
        && default > max
    {
        return Err(ApiError::bad_request(
            "default_max_tokens must not exceed max_output_tokens",
        ));
    }
    let before = app
        .snapshot
        .load()
        .models
        .get(&body.model)
        .map(|route| route.plan.redacted());
    db::config::upsert_model_config(&app.pool, &body.model, &plan, limits).await?;
    let tokens = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
    let view = ModelConfigView {
        model: body.model,
        config: plan.redacted(),
        default_max_tokens: tokens(limits.default_max_tokens),
        max_output_tokens: tokens(limits.max_output_tokens),
        image_tokens: tokens(limits.image_tokens),
    };
    audit
        .record(
            &caller,
            Change {
                action: "model_config.set",
                target_type: "model_config",
                target_id: view.model.clone(),
                tenant_id: None,
                before: before.map(|config| serde_json::json!({ "config": config })),
                after: audit::json(&view),
            },
        )
        .await;
    super::reload(&app).await?;
    Ok(axum::Json(view))
}

#[derive(Serialize, ToSchema)]
pub struct ModelConfigList {
    pub data: Vec<ModelConfigView>,
}

/// Every model and its plan (platform keys redacted).
#[utoipa::path(get, path = "/api/admin/model-configs", tag = "pricing", security(("jwt" = [])),
    responses((status = 200, body = ModelConfigList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_model_configs(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<ModelConfigList>, ApiError> {
    caller.require_platform_admin()?;
    let snap = app.snapshot.load();
    let mut data: Vec<ModelConfigView> = snap
        .models
        .values()
        .map(|r| ModelConfigView {
            model: r.model.clone(),
            config: r.plan.redacted(),
            default_max_tokens: r.default_max_tokens,
            max_output_tokens: r.max_output_tokens,
            image_tokens: r.image_tokens,
        })
        .collect();
    data.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(axum::Json(ModelConfigList { data }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// `user` or `tenant_admin` (platform admin only; platform admins are made by
    /// bootstrap only).
    pub role: Option<Role>,
    /// The user's own markup in percent, or `null` to fall back to the tenant's. A tenant
    /// admin may not set it below the tenant's markup.
    #[serde(default, deserialize_with = "de_patch_money")]
    #[schema(value_type = Option<String>, example = "5")]
    pub markup_percent: Option<Option<Decimal>>,
    /// `true` suspends the user (no sign-in, tokens ended, calls with its keys refused
    /// with 403); `false` reinstates it.
    pub suspended: Option<bool>,
}

/// Changes a user's role, markup override or suspension: a platform admin on anyone but
/// another platform admin; a tenant admin on the users of its tenant, markup no lower than
/// the tenant's and role unchanged. Nobody changes their own account here. A new role or a
/// suspension ends the user's tokens at once; a markup or suspension applies to the next
/// call, on every instance.
#[utoipa::path(patch, path = "/api/admin/users/{user_id}", tag = "pricing",
    params(("user_id" = Uuid, Path)), request_body = UpdateUser, security(("jwt" = [])),
    responses((status = 200, body = Profile), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update_user(
    State(app): State<AppState>,
    caller: Caller,
    IdPath(user_id): IdPath,
    audit: Audit,
    JsonBody(body): JsonBody<UpdateUser>,
) -> Result<axum::Json<Profile>, ApiError> {
    if caller.role() == Role::User {
        return Err(ApiError::Forbidden(
            "only platform and tenant admins change users".into(),
        ));
    }
    // Anyone it may not act on is not found.
    let tenant_id = access::user(&app, &caller, user_id).await?;
    if user_id == caller.id() {
        return Err(ApiError::bad_request(
            "nobody changes their own role, markup or suspension",
        ));
    }
    if body.role.is_some() && !caller.is_platform_admin() {
        return Err(ApiError::Forbidden(
            "only a platform admin changes roles".into(),
        ));
    }
    if body.role == Some(Role::PlatformAdmin) {
        return Err(ApiError::bad_request(
            "platform admins are made by NEUROPIA_ADMIN_EMAIL only",
        ));
    }
    let markup = body
        .markup_percent
        .map(|m| m.map(|d| AmountRule::PERCENT.check(d)).transpose())
        .transpose()
        .map_err(ApiError::bad_request)?;
    if let Some(Some(m)) = markup
        && !caller.is_platform_admin()
    {
        let floor = db::tenants::get(&app.pool, tenant_id)
            .await?
            .ok_or_else(access::user_not_found)?
            .markup_percent;
        if m < floor {
            return Err(ApiError::bad_request(format!(
                "markup_percent may not be below the tenant's ({floor})"
            )));
        }
    }
    let change = db::users::UserChange {
        role: body.role,
        markup,
        suspended: body.suspended,
    };
    let before = db::users::get_profile(&app.pool, user_id).await?;
    if !db::users::update_user(&app.pool, user_id, change).await? {
        return Err(access::user_not_found());
    }
    let after = db::users::get_profile(&app.pool, user_id)
        .await?
        .ok_or_else(access::user_not_found)?;
    audit
        .record(
            &caller,
            Change {
                action: "user.update",
                target_type: "user",
                target_id: user_id.to_string(),
                tenant_id: Some(tenant_id),
                before: before.as_ref().and_then(audit::json),
                after: audit::json(&after),
            },
        )
        .await;
    super::reload(&app).await?;
    Ok(axum::Json(after))
}
