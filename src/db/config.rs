//! Configuration tables: provider rates, model plans, tenants. Read whole into a
//! [`Snapshot`]; written by the admin API.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::billing::Rate;
use crate::plan::Plan;
use crate::snapshot::{ModelRoute, PortkeyConfig, Snapshot, TenantSettings};

/// Reads every table the snapshot is made of. A stored plan that no longer parses is
/// skipped with an error in the log rather than taking the whole gateway down.
pub async fn load_snapshot(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let mut snap = Snapshot::default();

    let rows = sqlx::query(
        "SELECT provider, model, input_rate, output_rate, currency, cached_input_rate,
                cache_write_rate, reasoning_output_rate
         FROM data.provider_rate",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let provider: String = r.try_get("provider")?;
        let model: String = r.try_get("model")?;
        let rate = Rate {
            input_rate: r.try_get("input_rate")?,
            output_rate: r.try_get("output_rate")?,
            currency: r.try_get("currency")?,
            cached_input_rate: r.try_get("cached_input_rate")?,
            cache_write_rate: r.try_get("cache_write_rate")?,
            reasoning_output_rate: r.try_get("reasoning_output_rate")?,
        };
        snap.rates
            .entry(provider)
            .or_insert_with(HashMap::new)
            .insert(model, rate);
    }

    let rows = sqlx::query(
        "SELECT model, provider, config, default_max_tokens, max_output_tokens, image_tokens
         FROM data.model_configs WHERE is_active",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let model: String = r.try_get("model")?;
        let provider: String = r.try_get("provider")?;
        let config: serde_json::Value = r.try_get("config")?;
        let limits = ModelLimits {
            default_max_tokens: r.try_get("default_max_tokens")?,
            max_output_tokens: r.try_get("max_output_tokens")?,
            image_tokens: r.try_get("image_tokens")?,
        };
        let tokens = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
        match Plan::from_json(&config) {
            Ok(plan) => {
                snap.models.insert(
                    model.clone(),
                    Arc::new(ModelRoute {
                        model,
                        provider,
                        plan: Arc::new(plan),
                        default_max_tokens: tokens(limits.default_max_tokens),
                        max_output_tokens: tokens(limits.max_output_tokens),
                        image_tokens: tokens(limits.image_tokens),
                    }),
                );
            }
            Err(e) => tracing::error!(%model, error = %e, "stored model plan is invalid; skipped"),
        }
    }

    let rows = sqlx::query(
        "SELECT tenant_id, markup_percent, overdue_threshold, overdraft_limit FROM data.tenant",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        snap.tenants.insert(
            r.try_get("tenant_id")?,
            TenantSettings {
                markup_percent: r.try_get("markup_percent")?,
                overdue_threshold: r.try_get("overdue_threshold")?,
                overdraft_limit: r.try_get("overdraft_limit")?,
            },
        );
    }

    load_portkey_configs(pool, &mut snap).await?;

    let rows = sqlx::query(
        "SELECT user_id, markup_percent FROM data.user_profile WHERE markup_percent IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        snap.user_markups
            .insert(r.try_get("user_id")?, r.try_get("markup_percent")?);
    }
    let rows = sqlx::query("SELECT tenant_id, model, markup_percent FROM data.tenant_model_markup")
        .fetch_all(pool)
        .await?;
    for r in rows {
        snap.model_markups
            .entry(r.try_get("tenant_id")?)
            .or_default()
            .insert(r.try_get("model")?, r.try_get("markup_percent")?);
    }
    snap.suspended = sqlx::query_scalar("SELECT id FROM auth.login WHERE suspended_at IS NOT NULL")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    Ok(snap)
}

/// The newest effective active config per user and per tenant, and when the next one
/// becomes effective.
async fn load_portkey_configs(pool: &PgPool, snap: &mut Snapshot) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, tenant_id, user_id, config_name, config_json FROM data.portkey_configs
         WHERE is_active AND effective_from <= now()
         ORDER BY effective_from DESC, created_at DESC",
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        let id: Uuid = r.try_get("id")?;
        let json: serde_json::Value = r.try_get("config_json")?;
        let plan = match Plan::from_json(&json) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(config_id = %id, error = %e, "Portkey config is not a valid plan; ignored");
                continue;
            }
        };
        let config = Arc::new(PortkeyConfig {
            id,
            name: r.try_get("config_name")?,
            plan: Arc::new(plan),
        });
        let user: Option<Uuid> = r.try_get("user_id")?;
        let tenant: Option<Uuid> = r.try_get("tenant_id")?;
        match (user, tenant) {
            (Some(u), _) => {
                snap.user_configs.entry(u).or_insert(config);
            }
            (None, Some(t)) => {
                snap.tenant_configs.entry(t).or_insert(config);
            }
            (None, None) => {}
        }
    }
    snap.next_change = sqlx::query_scalar(
        "SELECT min(effective_from) FROM data.portkey_configs WHERE is_active AND effective_from > now()",
    )
    .fetch_one(pool)
    .await?;
    Ok(())
}

pub async fn upsert_rate(
    pool: &PgPool,
    provider: &str,
    model: &str,
    rate: &Rate,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO data.provider_rate (provider, model, input_rate, output_rate, currency,
             cached_input_rate, cache_write_rate, reasoning_output_rate)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (provider, model) DO UPDATE SET
             input_rate = EXCLUDED.input_rate, output_rate = EXCLUDED.output_rate,
             currency = EXCLUDED.currency, cached_input_rate = EXCLUDED.cached_input_rate,
             cache_write_rate = EXCLUDED.cache_write_rate,
             reasoning_output_rate = EXCLUDED.reasoning_output_rate, updated_at = now()",
    )
    .bind(provider)
    .bind(model)
    .bind(rate.input_rate)
    .bind(rate.output_rate)
    .bind(&rate.currency)
    .bind(rate.cached_input_rate)
    .bind(rate.cache_write_rate)
    .bind(rate.reasoning_output_rate)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores the plan for a public model name (the plan's JSON keeps any platform key it has;
/// it is never returned unredacted).
/// A model's token bounds as stored (`None`: the gateway's defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelLimits {
    /// Output ceiling reserved (and sent upstream) for calls that set no `max_tokens`.
    pub default_max_tokens: Option<i32>,
    /// The most output tokens a call may ask for.
    pub max_output_tokens: Option<i32>,
    /// Prompt tokens reserved per image or other non-text part.
    pub image_tokens: Option<i32>,
}

pub async fn upsert_model_config(
    pool: &PgPool,
    model: &str,
    plan: &Plan,
    limits: ModelLimits,
) -> Result<(), sqlx::Error> {
    let provider = plan
        .targets
        .first()
        .map(|t| t.provider.as_str())
        .unwrap_or("");
    let config = serde_json::to_value(plan).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query(
        "INSERT INTO data.model_configs
             (model, provider, config, default_max_tokens, max_output_tokens, image_tokens)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (model) DO UPDATE SET provider = EXCLUDED.provider,
             config = EXCLUDED.config, default_max_tokens = EXCLUDED.default_max_tokens,
             max_output_tokens = EXCLUDED.max_output_tokens,
             image_tokens = EXCLUDED.image_tokens, is_active = true, updated_at = now()",
    )
    .bind(model)
    .bind(provider)
    .bind(config)
    .bind(limits.default_max_tokens)
    .bind(limits.max_output_tokens)
    .bind(limits.image_tokens)
    .execute(pool)
    .await?;
    Ok(())
}
