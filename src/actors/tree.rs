//! The live supervision tree as operators see it (`GET /api/admin/actors`, its HTML view,
//! `neuropia actors`): every supervisor, a page of its children, and what each holds.

use std::time::Duration;

use futures::future::join_all;
use ractor::ActorStatus;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::balances::{BalanceMsg, BalancesMsg};
use super::breaker::{BreakerMsg, UpstreamsMsg};
use super::config::ConfigMsg;
use super::keys::{KeyMsg, KeysMsg};
use super::ledger::LedgerMsg;
use super::root::{RootMsg, RootRef, Tree};
use super::{ChildPage, Handle, Window};

const SUMMARY_MS: u64 = 500;

fn status(s: ActorStatus) -> &'static str {
    match s {
        ActorStatus::Unstarted => "unstarted",
        ActorStatus::Starting => "starting",
        ActorStatus::Running => "running",
        ActorStatus::Upgrading => "upgrading",
        ActorStatus::Draining => "draining",
        ActorStatus::Stopping => "stopping",
        ActorStatus::Stopped => "stopped",
    }
}

/// One actor in the tree.
#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    /// The registry name (`config`, `keys`, `key:<id>`, `balance:<user_id>`, ...).
    pub name: String,
    /// `running`, `stopped`, ... or `restarting` while its supervisor restarts it.
    pub status: String,
    pub restarts: u32,
    pub uptime_secs: Option<f64>,
    pub messages_handled: Option<u64>,
    /// Messages sent to it and not yet handled.
    pub backlog: Option<u64>,
    pub faults_injected: Option<u64>,
    pub last_failure: Option<String>,
    /// What the actor holds: a key's rpm/tpm headroom, a balance, the journal depth, ...
    #[schema(value_type = Object)]
    pub state: Value,
    /// How many children it has (the page below may show fewer).
    pub children_total: usize,
    #[schema(no_recursion)]
    pub children: Vec<Node>,
}

fn node<M: ractor::Message>(
    name: &str,
    handle: Option<&Handle<M>>,
    restarts: u32,
    last_failure: Option<String>,
    state: Value,
) -> Node {
    let stats = handle.map(|h| h.probe.stats());
    Node {
        name: name.to_owned(),
        status: handle
            .map_or("restarting", |h| status(h.get_status()))
            .to_owned(),
        restarts,
        uptime_secs: stats.map(|s| (s.uptime_secs * 10.0).round() / 10.0),
        messages_handled: stats.map(|s| s.messages_handled),
        backlog: stats.map(|s| s.backlog),
        faults_injected: stats.map(|s| s.faults_injected),
        last_failure,
        state,
        children_total: 0,
        children: Vec::new(),
    }
}

/// Asks an actor for a JSON summary, without waiting long.
async fn summary<M: ractor::Message, R: Serialize + Send + 'static>(
    handle: &Handle<M>,
    make: impl FnOnce(ractor::RpcReplyPort<R>) -> M,
) -> Value {
    match handle
        .call(make, Some(Duration::from_millis(SUMMARY_MS)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(v)) => serde_json::to_value(v).unwrap_or(Value::Null),
        _ => json!({"unavailable": "no answer within 500 ms"}),
    }
}

async fn children<M: ractor::Message, R: Serialize + Send + 'static>(
    page: ChildPage<M>,
    make: impl Fn(ractor::RpcReplyPort<R>) -> M + Copy,
) -> (usize, Vec<Node>) {
    let nodes = page.children.into_iter().map(|c| async move {
        let state = match &c.handle {
            Some(h) => summary(h, make).await,
            None => Value::Null,
        };
        node(
            &c.name,
            c.handle.as_ref(),
            c.restarts,
            c.last_failure,
            state,
        )
    });
    (page.total, join_all(nodes).await)
}

/// The live tree: the root, its supervisors and the `window` of each one's
/// children, with what each actor holds. Every actor has 500 ms to answer.
pub async fn render(
    root: &RootRef,
    t: &Tree,
    uptime: Duration,
    journal_depth: usize,
    window: &Window,
) -> Result<Node, String> {
    let records = ractor::call_t!(root, RootMsg::Children, 1_000)
        .map_err(|e| format!("the root did not answer: {e}"))?;
    let record = |name: &str| {
        records
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| (r.restarts, r.last_failure.clone()))
            .unwrap_or((0, None))
    };
    let ms = SUMMARY_MS;

    let config = t.config.get();
    let (r, f) = record("config");
    let config_node = node(
        "config",
        Some(&config),
        r,
        f,
        summary(&config, ConfigMsg::Stats).await,
    );

    let keys = t.keys.get();
    let (r, f) = record("keys");
    let mut keys_node = node(
        "keys",
        Some(&keys),
        r,
        f,
        summary(&keys, KeysMsg::Stats).await,
    );
    if let Ok(page) = ractor::call_t!(
        keys,
        |reply| KeysMsg::Children {
            window: window.clone(),
            reply
        },
        ms
    ) {
        (keys_node.children_total, keys_node.children) = children(page, KeyMsg::Summary).await;
    }

    let balances = t.balances.get();
    let (r, f) = record("balances");
    let mut balances_node = node(
        "balances",
        Some(&balances),
        r,
        f,
        summary(&balances, BalancesMsg::Stats).await,
    );
    if let Ok(page) = ractor::call_t!(
        balances,
        |reply| BalancesMsg::Children {
            window: window.clone(),
            reply
        },
        ms
    ) {
        (balances_node.children_total, balances_node.children) =
            children(page, |reply| BalanceMsg::Get { reply }).await;
    }

    let ledger = t.ledger.get();
    let (r, f) = record("ledger");
    let ledger_node = node(
        "ledger",
        Some(&ledger),
        r,
        f,
        summary(&ledger, LedgerMsg::Stats).await,
    );

    let upstreams = t.upstreams.get();
    let (r, f) = record("upstreams");
    let mut upstreams_node = node("upstreams", Some(&upstreams), r, f, Value::Null);
    if let Ok(page) = ractor::call_t!(
        upstreams,
        |reply| UpstreamsMsg::Children {
            window: window.clone(),
            reply
        },
        ms
    ) {
        (upstreams_node.children_total, upstreams_node.children) =
            children(page, BreakerMsg::View).await;
    }

    let kids = vec![
        config_node,
        keys_node,
        balances_node,
        ledger_node,
        upstreams_node,
    ];
    Ok(Node {
        name: "neuropia".into(),
        status: status(root.get_status()).into(),
        restarts: 0,
        uptime_secs: Some((uptime.as_secs_f64() * 10.0).round() / 10.0),
        messages_handled: None,
        backlog: None,
        faults_injected: None,
        last_failure: None,
        state: json!({"journal_depth": journal_depth}),
        children_total: kids.len(),
        children: kids,
    })
}
