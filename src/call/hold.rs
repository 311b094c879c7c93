//! [`Hold`]: what an admitted call holds until it is charged (its reservation on the
//! owner's balance, its hold on a budgeted key's budget and its token estimate in the key's
//! tpm window), released exactly once on every path, a dropped call included.

use sqlx::PgPool;
use uuid::Uuid;

use crate::actors::balances::Balances;
use crate::actors::keys::{AdmitError, Admitted, Checked, Keys};

/// The call's token estimate, as far as the key has counted it.
enum Estimate {
    /// Nothing counted, or nothing left to give back.
    Settled,
    /// Counted by the key actor; the global check (Redis) is still to come.
    Checked(Checked),
    /// Counted wherever the key's limits live.
    Admitted(Admitted),
}

pub(super) struct Hold {
    balances: Balances,
    user_id: Uuid,
    request_id: Uuid,
    /// A reservation may exist (releasing one that was refused changes nothing).
    reserved: bool,
    /// A budget hold may exist, in this database (the ledger drops it with the charge).
    budget: Option<PgPool>,
    estimate: Estimate,
}

impl Hold {
    /// The key actor counted the call's estimate; nothing is reserved yet.
    pub fn new(balances: &Balances, user_id: Uuid, request_id: Uuid, checked: Checked) -> Self {
        Self {
            balances: balances.clone(),
            user_id,
            request_id,
            reserved: false,
            budget: None,
            estimate: Estimate::Checked(checked),
        }
    }

    /// The reservation (and, for a budgeted key, the budget hold in `budget`'s database)
    /// is about to be made: from now on it is released unless the call is charged.
    pub fn reserving(&mut self, budget: Option<PgPool>) {
        self.reserved = true;
        self.budget = budget;
    }

    /// The rest of the key's admission (its global limits, with several instances).
    pub async fn confirm(&mut self, keys: &Keys, model: &str) -> Result<(), AdmitError> {
        let Estimate::Checked(checked) = std::mem::replace(&mut self.estimate, Estimate::Settled)
        else {
            return Ok(());
        };
        self.estimate = Estimate::Admitted(keys.confirm(checked, model).await?);
        Ok(())
    }

    /// Whether a budget hold may exist for the call (the ledger drops it with the charge).
    pub fn budget_held(&self) -> bool {
        self.budget.is_some()
    }

    /// The call used `tokens` and its charge is being settled, which takes the reservation
    /// over: the estimate becomes the real count and nothing is left to release.
    pub fn charged(&mut self, tokens: u64) {
        if let Estimate::Admitted(a) = std::mem::replace(&mut self.estimate, Estimate::Settled) {
            a.record(tokens);
        }
        self.reserved = false;
        self.budget = None;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.reserved {
            self.balances.release(self.user_id, self.request_id);
        }
        if let Some(pool) = self.budget.take() {
            // A release that fails leaves a hold that lapses on its own.
            let request_id = self.request_id;
            tokio::spawn(async move {
                let _ = crate::db::key_controls::release(&pool, request_id).await;
            });
        }
        match std::mem::replace(&mut self.estimate, Estimate::Settled) {
            Estimate::Checked(c) => c.forget(),
            Estimate::Admitted(a) => a.record(0),
            Estimate::Settled => {}
        }
    }
}
