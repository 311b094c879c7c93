//! The routing snapshot: slowly-changing configuration read lock-free on the hot path.
//!
//! It holds the model plans, provider rates, tenant settings, per-user markup overrides and
//! the suspended users.
//! The ConfigActor builds a new snapshot from PostgreSQL and swaps it in whole
//! ([`arc_swap::ArcSwap`]); readers never lock and never see half an update.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use uuid::Uuid;

use crate::billing::{Decimal, Price, Rate};
use crate::plan::Plan;

pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// A public model name and the plan that serves it.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    pub model: String,
    pub provider: String,
    pub plan: Arc<Plan>,
    /// Output ceiling for calls that set no `max_tokens` (also sent upstream).
    pub default_max_tokens: Option<u32>,
    /// The most output tokens a call may ask for (`None`: `NEUROPIA_MAX_OUTPUT_TOKENS`).
    pub max_output_tokens: Option<u32>,
    /// Prompt tokens reserved per image or other non-text part (`None`:
    /// `NEUROPIA_IMAGE_TOKENS`).
    pub image_tokens: Option<u32>,
}

/// An active Portkey config of a tenant or a user (the brief's `data.portkey_configs`).
#[derive(Debug, Clone)]
pub struct PortkeyConfig {
    pub id: Uuid,
    pub name: String,
    pub plan: Arc<Plan>,
}

/// Which plan a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "source", content = "config_id", rename_all = "snake_case")]
pub enum PlanSource {
    /// The user's own Portkey config.
    UserConfig(Uuid),
    /// The tenant's Portkey config.
    TenantConfig(Uuid),
    /// The model's plan (`data.model_configs`).
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantSettings {
    pub markup_percent: Decimal,
    pub overdue_threshold: Decimal,
    /// How far below zero a reservation may take a user's balance.
    pub overdraft_limit: Decimal,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub models: HashMap<String, Arc<ModelRoute>>,
    /// provider -> model -> rate.
    pub rates: HashMap<String, HashMap<String, Rate>>,
    pub tenants: HashMap<Uuid, TenantSettings>,
    pub user_markups: HashMap<Uuid, Decimal>,
    /// Users whose calls are refused until reinstated.
    pub suspended: HashSet<Uuid>,
    /// Per tenant, markups for single public models (they beat the tenant's and a user's).
    pub model_markups: HashMap<Uuid, HashMap<String, Decimal>>,
    /// The active Portkey config of each user that has one, and of each tenant.
    pub user_configs: HashMap<Uuid, Arc<PortkeyConfig>>,
    pub tenant_configs: HashMap<Uuid, Arc<PortkeyConfig>>,
    /// When a config that is not yet effective becomes so (the snapshot must be rebuilt).
    pub next_change: Option<chrono::DateTime<chrono::Utc>>,
}

impl Snapshot {
    pub fn handle(self) -> SnapshotHandle {
        Arc::new(ArcSwap::from_pointee(self))
    }

    pub fn model(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.models.get(name)
    }

    /// The plan a call of `model` by `user` of `tenant` uses: the user's active Portkey
    /// config, else the tenant's, else the model's plan. `None` for an unknown model.
    pub fn plan_for(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
        model: &str,
    ) -> Option<(Arc<Plan>, PlanSource)> {
        let route = self.models.get(model)?;
        if let Some(c) = self.user_configs.get(&user_id) {
            return Some((c.plan.clone(), PlanSource::UserConfig(c.id)));
        }
        if let Some(c) = self.tenant_configs.get(&tenant_id) {
            return Some((c.plan.clone(), PlanSource::TenantConfig(c.id)));
        }
        Some((route.plan.clone(), PlanSource::Model))
    }

    /// Refuses a plan whose targets are priced in different currencies (a balance is in
    /// one currency, and the gateway does not convert); targets not priced yet pass.
    pub fn one_currency(&self, plan: &crate::plan::Plan, requested: &str) -> Result<(), String> {
        let mut seen: Vec<&str> = plan
            .targets
            .iter()
            .filter_map(|t| self.rate(&t.provider, t.model(requested)))
            .map(|r| r.currency.as_str())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() > 1 {
            return Err(format!(
                "the plan's targets are priced in different currencies ({}): a plan's targets \
                 must share one currency",
                seen.join(", ")
            ));
        }
        Ok(())
    }

    pub fn rate(&self, provider: &str, model: &str) -> Option<&Rate> {
        self.rates.get(provider)?.get(model)
    }

    /// The markup `user` pays on the public model `requested`, and where it comes from:
    /// the tenant's markup for that model, else the user's own, else the tenant's.
    pub fn markup_for(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
        requested: &str,
    ) -> (Decimal, MarkupSource) {
        if let Some(m) = self
            .model_markups
            .get(&tenant_id)
            .and_then(|by_model| by_model.get(requested))
        {
            return (*m, MarkupSource::Model);
        }
        let source = if self.user_markups.contains_key(&user_id) {
            MarkupSource::User
        } else {
            MarkupSource::Tenant
        };
        (self.markup(tenant_id, user_id), source)
    }

    /// The markup that applies to `user` on any model without its own: its own override,
    /// else its tenant's.
    pub fn markup(&self, tenant_id: Uuid, user_id: Uuid) -> Decimal {
        if let Some(m) = self.user_markups.get(&user_id) {
            return *m;
        }
        self.tenants
            .get(&tenant_id)
            .map(|t| t.markup_percent)
            .unwrap_or(Decimal::ZERO)
    }

    /// How far below zero a reservation may take a balance of `tenant_id` (0 when unknown).
    pub fn overdraft(&self, tenant_id: Uuid) -> Decimal {
        self.tenants
            .get(&tenant_id)
            .map(|t| t.overdraft_limit)
            .unwrap_or(Decimal::ZERO)
    }

    pub fn overdue_threshold(&self, tenant_id: Uuid) -> Decimal {
        self.tenants
            .get(&tenant_id)
            .map(|t| t.overdue_threshold)
            .unwrap_or(Decimal::ZERO)
    }

    /// What `user` pays for the public model `requested` served by (`provider`, `model`),
    /// or `None` when that pair has no rate.
    pub fn price(
        &self,
        (tenant_id, user_id): (Uuid, Uuid),
        requested: &str,
        provider: &str,
        model: &str,
    ) -> Option<Price> {
        let rate = self.rate(provider, model)?;
        let (markup, _) = self.markup_for(tenant_id, user_id, requested);
        Some(Price::new(rate, markup))
    }
}

/// Where a markup comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkupSource {
    /// The tenant's markup for that model.
    Model,
    /// The user's own markup.
    User,
    /// The tenant's markup.
    Tenant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_config_beats_tenant_config_beats_model_plan() {
        let (tenant, user, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut s = Snapshot::default();
        s.models.insert(
            "m".into(),
            Arc::new(ModelRoute {
                model: "m".into(),
                provider: "mock".into(),
                plan: Arc::new(Plan::single("mock", "m")),
                default_max_tokens: None,
                max_output_tokens: None,
                image_tokens: None,
            }),
        );
        assert_eq!(
            s.plan_for(tenant, user, "m").map(|p| p.1),
            Some(PlanSource::Model)
        );
        assert!(s.plan_for(tenant, user, "unknown").is_none());
        let config = |provider: &str| {
            Arc::new(PortkeyConfig {
                id: Uuid::new_v4(),
                name: "c".into(),
                plan: Arc::new(Plan::single(provider, "x")),
            })
        };
        let t = config("openai");
        s.tenant_configs.insert(tenant, t.clone());
        assert_eq!(
            s.plan_for(tenant, user, "m").map(|p| p.1),
            Some(PlanSource::TenantConfig(t.id))
        );
        let u = config("dashscope");
        s.user_configs.insert(user, u.clone());
        let (plan, source) = s.plan_for(tenant, user, "m").expect("plan");
        assert_eq!(
            (plan.targets[0].provider.as_str(), source),
            ("dashscope", PlanSource::UserConfig(u.id))
        );
        assert_eq!(
            s.plan_for(tenant, other, "m").map(|p| p.1),
            Some(PlanSource::TenantConfig(t.id))
        );
    }

    #[test]
    fn user_markup_overrides_tenant_markup() {
        let tenant = Uuid::new_v4();
        let (u1, u2) = (Uuid::new_v4(), Uuid::new_v4());
        let mut s = Snapshot::default();
        s.tenants.insert(
            tenant,
            TenantSettings {
                markup_percent: Decimal::from(20),
                overdue_threshold: Decimal::ONE,
                overdraft_limit: Decimal::ZERO,
            },
        );
        s.user_markups.insert(u2, Decimal::from(5));
        let mut models = HashMap::new();
        models.insert(
            "m".to_string(),
            Rate::plain(Decimal::ONE, Decimal::TWO, "USD"),
        );
        s.rates.insert("p".into(), models);
        assert_eq!(s.markup(tenant, u1), Decimal::from(20));
        assert_eq!(s.markup(tenant, u2), Decimal::from(5));
        assert_eq!(s.markup(Uuid::new_v4(), u1), Decimal::ZERO);
        let price = s.price((tenant, u2), "m", "p", "m").expect("priced");
        assert_eq!(price.markup_percent, Decimal::from(5));
        assert!(s.price((tenant, u2), "other", "p", "other").is_none());
        s.model_markups
            .entry(tenant)
            .or_default()
            .insert("m".into(), Decimal::from(40));
        assert_eq!(
            s.markup_for(tenant, u2, "m"),
            (Decimal::from(40), MarkupSource::Model),
            "the model's markup beats the user's"
        );
        assert_eq!(
            s.markup_for(tenant, u2, "n"),
            (Decimal::from(5), MarkupSource::User)
        );
        assert_eq!(
            s.markup_for(tenant, u1, "n"),
            (Decimal::from(20), MarkupSource::Tenant)
        );
    }
}
