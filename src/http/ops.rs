//! Operations: the live supervision tree (JSON, an HTML view, `neuropia actors`) and fault
//! injection (only with `NEUROPIA_FAULTS=1`).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::Html;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::audit::{Audit, Change};
use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::types::{ErrorBody, query};
use crate::actors::balances::{BalanceError, BalanceMsg, BalancesMsg};
use crate::actors::breaker::{BreakerMsg, UpstreamsMsg};
use crate::actors::config::ConfigMsg;
use crate::actors::keys::{KeyMsg, KeysMsg};
use crate::actors::ledger::LedgerMsg;
use crate::actors::tree::{self, Node};
use crate::actors::{Fault, Handle, Probe, Window};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TreeQuery {
    /// Children shown per supervisor (1 to 1000, default 50).
    pub limit: Option<usize>,
    /// Children skipped per supervisor (default 0), to page through large trees.
    pub offset: Option<usize>,
    /// Only children whose name contains this (a key id, a user id, a provider); the
    /// paging and `children_total` count those only.
    pub find: Option<String>,
}

/// The live supervision tree (platform admin).
#[utoipa::path(get, path = "/api/admin/actors", tag = "operations",
    params(TreeQuery), security(("jwt" = [])),
    responses((status = 200, body = Node), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn actors(
    State(app): State<AppState>,
    caller: Caller,
    q: Result<Query<TreeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Node>, ApiError> {
    caller.require_platform_admin()?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let find = q
        .find
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty());
    if find.as_ref().is_some_and(|f| f.len() > 200) {
        return Err(ApiError::bad_request("find is at most 200 characters"));
    }
    let window = Window {
        offset: q.offset.unwrap_or(0),
        limit,
        find,
    };
    let tree = tree::render(
        &app.root,
        &app.tree,
        app.started.elapsed(),
        app.journal.depth(),
        &window,
    )
    .await
    .map_err(|e| ApiError::degraded("the actor tree did not answer", e))?;
    Ok(axum::Json(tree))
}

/// An HTML page that draws the tree and refreshes itself (it asks for a platform admin's
/// token and keeps it in the browser's local storage).
#[utoipa::path(get, path = "/api/admin/actors/view", tag = "operations",
    responses((status = 200, description = "text/html")))]
pub async fn actors_view() -> Html<&'static str> {
    Html(include_str!("actors.html"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InjectFault {
    /// `config`, `keys`, `balances`, `ledger`, `upstreams`, `key:<key id>`,
    /// `balance:<user id>` or `upstream:<provider>@<base url>`.
    #[schema(example = "ledger")]
    pub actor: String,
    /// `panic`, `panic_next`, `delay`, `drop`, `db_fail` (ledger),
    /// `listener_disconnect` (config), or `clear` (lift the actor's pending faults).
    #[schema(example = "panic")]
    pub fault: String,
    /// `panic_next`, `drop`: how many messages (default 1).
    pub count: Option<u32>,
    /// `delay`: milliseconds per message.
    pub ms: Option<u64>,
    /// `delay`, `db_fail`: for how long, in seconds (default 10).
    pub seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Injected {
    pub actor: String,
    pub fault: String,
    pub injected: bool,
}

/// A named actor's probe and a way to wake it.
enum Target {
    Config(Handle<ConfigMsg>),
    Keys(Handle<KeysMsg>),
    Balances(Handle<BalancesMsg>),
    Ledger(Handle<LedgerMsg>),
    Upstreams(Handle<UpstreamsMsg>),
    Key(Handle<KeyMsg>),
    Balance(Handle<BalanceMsg>),
    Breaker(Handle<BreakerMsg>),
}

impl Target {
    fn probe(&self) -> &Probe {
        match self {
            Self::Config(h) => &h.probe,
            Self::Keys(h) => &h.probe,
            Self::Balances(h) => &h.probe,
            Self::Ledger(h) => &h.probe,
            Self::Upstreams(h) => &h.probe,
            Self::Key(h) => &h.probe,
            Self::Balance(h) => &h.probe,
            Self::Breaker(h) => &h.probe,
        }
    }

    fn poke(&self) {
        let _ = match self {
            Self::Config(h) => h.cast(ConfigMsg::Poke).is_ok(),
            Self::Keys(h) => h.cast(KeysMsg::Poke).is_ok(),
            Self::Balances(h) => h.cast(BalancesMsg::Poke).is_ok(),
            Self::Ledger(h) => h.cast(LedgerMsg::Poke).is_ok(),
            Self::Upstreams(h) => h.cast(UpstreamsMsg::Poke).is_ok(),
            Self::Key(h) => h.cast(KeyMsg::Poke).is_ok(),
            Self::Balance(h) => h.cast(BalanceMsg::Poke).is_ok(),
            Self::Breaker(h) => h.cast(BreakerMsg::Poke).is_ok(),
        };
    }
}

async fn find(app: &AppState, name: &str) -> Result<Target, ApiError> {
    let unknown = || ApiError::NotFound(format!("no live actor named {name:?}"));
    let t = &app.tree;
    Ok(match name {
        "config" => Target::Config(t.config.get()),
        "keys" => Target::Keys(t.keys.get()),
        "balances" => Target::Balances(t.balances.get()),
        "ledger" => Target::Ledger(t.ledger.get()),
        "upstreams" => Target::Upstreams(t.upstreams.get()),
        _ => {
            if let Some(id) = name.strip_prefix("key:") {
                let key_id = Uuid::parse_str(id).map_err(|_| unknown())?;
                let keys = t.keys.get();
                let found =
                    ractor::call_t!(keys, |reply| KeysMsg::Find { key_id, reply }, 1_000)
                        .map_err(|e| ApiError::degraded("the key supervisor did not answer", e))?;
                Target::Key(found.ok_or_else(unknown)?)
            } else if let Some(id) = name.strip_prefix("balance:") {
                let user_id = Uuid::parse_str(id).map_err(|_| unknown())?;
                Target::Balance(app.balances.handle(user_id).await.map_err(|e| match e {
                    BalanceError::UnknownUser => unknown(),
                    other => ApiError::degraded(
                        "the balance supervisor did not answer",
                        format!("{other:?}"),
                    ),
                })?)
            } else if let Some(target) = name.strip_prefix("upstream:") {
                let b = app.upstreams.breakers.get(target).ok_or_else(unknown)?;
                Target::Breaker(b.actor.clone())
            } else {
                return Err(unknown());
            }
        }
    })
}

/// Injects a fault into a named actor; exists only with `NEUROPIA_FAULTS=1`. Every
/// injection is logged and counted (`faults_injected` in the tree, and in metrics).
#[utoipa::path(post, path = "/api/admin/faults", tag = "operations",
    request_body = InjectFault, security(("jwt" = [])),
    responses((status = 200, body = Injected), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn inject_fault(
    State(app): State<AppState>,
    caller: Caller,
    audit: Audit,
    JsonBody(body): JsonBody<InjectFault>,
) -> Result<axum::Json<Injected>, ApiError> {
    if !app.config.faults {
        return Err(ApiError::NotFound("fault injection is disabled".into()));
    }
    caller.require_platform_admin()?;
    let count = body.count.unwrap_or(1);
    if !(1..=10_000).contains(&count) {
        return Err(ApiError::bad_request("count must be between 1 and 10000"));
    }
    let seconds = body.seconds.unwrap_or(10.0);
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        return Err(ApiError::bad_request("seconds must be in (0, 3600]"));
    }
    let for_ms = (seconds * 1000.0) as u64;
    let kind = body.fault.as_str();
    if ![
        "panic",
        "panic_next",
        "delay",
        "drop",
        "db_fail",
        "listener_disconnect",
        "clear",
    ]
    .contains(&kind)
    {
        return Err(ApiError::bad_request(format!(
            "unknown fault kind {kind:?}"
        )));
    }
    let target = find(&app, &body.actor).await?;
    match (kind, &target) {
        ("panic", _) => {
            target.probe().inject(Fault::PanicNext(1));
            target.poke();
        }
        ("panic_next", _) => target.probe().inject(Fault::PanicNext(count)),
        ("drop", _) => target.probe().inject(Fault::Drop(count)),
        ("delay", _) => {
            let ms = body
                .ms
                .filter(|ms| (1..=60_000).contains(ms))
                .ok_or_else(|| ApiError::bad_request("delay needs ms between 1 and 60000"))?;
            target.probe().inject(Fault::Delay { ms, for_ms });
        }
        ("clear", _) => {
            target.probe().clear();
            if let Target::Ledger(_) = target {
                app.ledger_fault.clear();
            }
        }
        ("db_fail", Target::Ledger(_)) => {
            app.ledger_fault.fail_for(Duration::from_millis(for_ms));
        }
        ("listener_disconnect", Target::Config(h)) => {
            let _ = h.cast(ConfigMsg::DropListener);
        }
        (kind, _) => {
            return Err(ApiError::bad_request(format!(
                "fault {kind:?} does not apply to {:?}",
                body.actor
            )));
        }
    }
    if kind != "clear" {
        crate::metrics::fault_injected(kind);
    }
    tracing::warn!(actor = %body.actor, fault = %kind, count, for_ms, "fault injected");
    let change = Change {
        action: "fault.inject",
        target_type: "actor",
        target_id: body.actor.clone(),
        tenant_id: None,
        before: None,
        after: Some(
            serde_json::json!({"fault": kind, "count": count, "ms": body.ms,
            "seconds": seconds}),
        ),
    };
    audit.record(&caller, change).await;
    Ok(axum::Json(Injected {
        actor: body.actor,
        fault: body.fault,
        injected: true,
    }))
}
