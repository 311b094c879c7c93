//! [`AppState`]: the handles every request shares (configuration, pool, snapshot,
//! journal, the key and balance actors, upstreams, throttles), cheap to clone.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::actors::balances::Balances;
use crate::actors::keys::Keys;
use crate::actors::root::{RootMsg, RootRef, Tree};
use crate::auth::Jwt;
use crate::cache::Cache;
use crate::clientip::TrustedProxies;
use crate::config::Config;
use crate::journal::Journal;
use crate::snapshot::SnapshotHandle;
use crate::throttle::{LoginThrottle, RegisterThrottle};
use crate::upstream::Upstreams;

/// Handles shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    /// This process's id among the instances sharing the database (in `/health`).
    pub instance: uuid::Uuid,
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub cache: Cache,
    pub jwt: Jwt,
    pub snapshot: SnapshotHandle,
    pub journal: Arc<Journal>,
    pub keys: Keys,
    pub balances: Balances,
    pub tree: Tree,
    pub root: RootRef,
    pub upstreams: Upstreams,
    pub throttle: LoginThrottle,
    pub registrations: RegisterThrottle,
    /// Whose `X-Forwarded-For` is believed (`NEUROPIA_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    pub started: std::time::Instant,
    /// Failed calls, written in the background for customers to see.
    pub failures: crate::db::failures::Failures,
    /// Injected `db_fail` faults (outlive the ledger writer's restarts).
    pub ledger_fault: Arc<crate::actors::ledger::WriteFault>,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }

    /// Asks the configuration actor to rebuild the routing snapshot and waits for it.
    pub async fn reload_config(&self) -> Result<(), String> {
        let config = self.tree.config.get();
        ractor::call_t!(config, crate::actors::config::ConfigMsg::Reload, 10_000)
            .map_err(|e| format!("config actor: {e}"))?
    }
}

impl AppState {
    /// Drains the journal into PostgreSQL and stops the actor tree.
    pub async fn shutdown(&self) {
        let drained = ractor::call_t!(self.root, RootMsg::Drain, 35_000);
        let depth = self.journal.depth();
        if drained.is_err() || depth > 0 {
            tracing::error!(depth, "could not drain the charge journal before stopping");
        } else {
            tracing::info!(
                written = self.journal.written(),
                "charge journal drained: every entry since start is in PostgreSQL"
            );
        }
        self.root
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await
            .ok();
    }
}
