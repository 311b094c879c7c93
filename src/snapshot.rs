//! The routing snapshot: slowly-changing configuration read lock-free on the hot path.
//!
//! It holds the model plans, provider rates, tenant settings and per-user markup overrides.
//! The ConfigActor builds a new snapshot from PostgreSQL and swaps it in whole
//! ([`arc_swap::ArcSwap`]); readers never lock and never see half an update.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use uuid::Uuid;

use crate::billing::{Decimal, Price, Rate};
use crate::upstream::plan::Plan;

pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

/// A public model name and the plan that serves it.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    pub model: String,
    pub provider: String,
    pub plan: Plan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantSettings {
    pub markup_percent: Decimal,
    pub overdue_threshold: Decimal,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub models: HashMap<String, Arc<ModelRoute>>,
    /// provider -> model -> rate.
    pub rates: HashMap<String, HashMap<String, Rate>>,
    pub tenants: HashMap<Uuid, TenantSettings>,
    pub user_markups: HashMap<Uuid, Decimal>,
}

impl Snapshot {
    pub fn handle(self) -> SnapshotHandle {
        Arc::new(ArcSwap::from_pointee(self))
    }

    pub fn model(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.models.get(name)
    }

    pub fn rate(&self, provider: &str, model: &str) -> Option<&Rate> {
        self.rates.get(provider)?.get(model)
    }

    /// The markup that applies to `user`: its own override, else its tenant's.
    pub fn markup(&self, tenant_id: Uuid, user_id: Uuid) -> Decimal {
        if let Some(m) = self.user_markups.get(&user_id) {
            return *m;
        }
        self.tenants
            .get(&tenant_id)
            .map(|t| t.markup_percent)
            .unwrap_or(Decimal::ZERO)
    }

    pub fn overdue_threshold(&self, tenant_id: Uuid) -> Decimal {
        self.tenants
            .get(&tenant_id)
            .map(|t| t.overdue_threshold)
            .unwrap_or(Decimal::ZERO)
    }

    /// What `user` pays on (`provider`, `model`), or `None` when that pair has no rate.
    pub fn price(
        &self,
        tenant_id: Uuid,
        user_id: Uuid,
        provider: &str,
        model: &str,
    ) -> Option<Price> {
        let rate = self.rate(provider, model)?;
        Some(Price::new(rate, self.markup(tenant_id, user_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            },
        );
        s.user_markups.insert(u2, Decimal::from(5));
        let mut models = HashMap::new();
        models.insert(
            "m".to_string(),
            Rate {
                input_rate: Decimal::ONE,
                output_rate: Decimal::TWO,
                currency: "USD".into(),
            },
        );
        s.rates.insert("p".into(), models);
        assert_eq!(s.markup(tenant, u1), Decimal::from(20));
        assert_eq!(s.markup(tenant, u2), Decimal::from(5));
        assert_eq!(s.markup(Uuid::new_v4(), u1), Decimal::ZERO);
        let price = s.price(tenant, u2, "p", "m").expect("priced");
        assert_eq!(price.markup_percent, Decimal::from(5));
        assert!(s.price(tenant, u2, "p", "other").is_none());
    }
}
