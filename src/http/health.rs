//! `GET /health`: up or degraded for anyone; the state of the database, Redis, the
//! upstreams and the actor tree for platform admins (or everyone, with
//! `NEUROPIA_HEALTH_DETAILS=1`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ractor::ActorStatus;
use serde_json::{Value, json};

use crate::actors::breaker::{BreakerMsg, UpstreamsMsg};
use crate::actors::root::RootMsg;
use crate::state::AppState;

fn status(s: ActorStatus) -> &'static str {
    match s {
        ActorStatus::Running => "running",
        ActorStatus::Unstarted => "unstarted",
        ActorStatus::Starting => "starting",
        ActorStatus::Upgrading => "upgrading",
        ActorStatus::Draining => "draining",
        ActorStatus::Stopping => "stopping",
        ActorStatus::Stopped => "stopped",
    }
}

/// `{"status": "ok" | "degraded"}`; 503 when the database is down. A platform admin's
/// token (or `NEUROPIA_HEALTH_DETAILS=1`) adds the database, Redis, upstreams, rate limits,
/// configuration flow and actor tree.
#[utoipa::path(get, path = "/health", tag = "operations",
    security((), ("jwt" = [])),
    responses((status = 200, description = "healthy"), (status = 503, description = "database unreachable")))]
pub async fn health(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    let details =
        app.config.health_details || super::extract::is_platform_admin(&app, &headers).await;
    let database = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&app.pool)
        .await
        .is_ok();
    let redis = match app.cache.connection() {
        None if app.config.redis_url.is_empty() => "disabled",
        None => "unreachable",
        Some(mut conn) => {
            let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() { "ok" } else { "unreachable" }
        }
    };
    let ok = database;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let global_limits = app.keys.limiter.as_ref().is_none_or(|l| l.stats().global);
    let overall = if ok && redis != "unreachable" && global_limits {
        "ok"
    } else {
        "degraded"
    };
    if !details {
        return (code, axum::Json(json!({ "status": overall })));
    }
    let t = &app.tree;
    let restarts: serde_json::Map<String, Value> =
        ractor::call_t!(app.root, RootMsg::Children, 1_000)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, record)| (name.to_owned(), json!(record.restarts)))
            .collect();
    let actors = json!({
        "neuropia": status(app.root.get_status()),
        "config": status(t.config.get().get_status()),
        "keys": status(t.keys.get().get_status()),
        "balances": status(t.balances.get().get_status()),
        "ledger": status(t.ledger.get().get_status()),
        "upstreams": status(t.upstreams.get().get_status()),
        "restarts": restarts,
        "key_actors": app.keys.stats().await,
        "balance_actors": app.balances.stats().await,
    });
    let config = ractor::call_t!(
        t.config.get(),
        crate::actors::config::ConfigMsg::Stats,
        1_000
    )
    .ok();
    let mut upstreams = Vec::new();
    if let Ok(breakers) = ractor::call_t!(t.upstreams.get(), UpstreamsMsg::Views, 1_000) {
        for b in breakers {
            if let Ok(view) = ractor::call_t!(b, BreakerMsg::View, 1_000) {
                upstreams.push(view);
            }
        }
    }
    upstreams.sort_by(|a, b| a.target.cmp(&b.target));
    (
        code,
        axum::Json(json!({
            "upstreams": upstreams,
            "config": config,
            "cache": app.cache.stats(),
            "rate_limits": match &app.keys.limiter {
                Some(l) => json!(l.stats()),
                None => json!({"backend": "local", "global": false, "instances": app.config.instances}),
            },
            "status": overall,
            "instance": app.instance,
            "database": if database { "ok" } else { "unreachable" },
            "redis": redis,
            "actors": actors,
            "journal_depth": app.journal.depth(),
            "faults": app.config.faults,
        })),
    )
}
