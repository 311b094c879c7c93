//! What every request leaves behind: an `x-request-id` (the chat call's id, sent upstream
//! and written to `usage_log`), a `server-timing` header with the gateway's own overhead,
//! and Prometheus metrics. Also `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::state::AppState;
use crate::trace::{Span, SpanContext};

/// Shared by the middleware and the handler of one request.
#[derive(Debug)]
pub struct RequestCtx {
    pub id: Uuid,
    /// Nanoseconds spent waiting for upstreams.
    upstream_ns: AtomicU64,
    /// The (known) model a chat call asked for, for metrics.
    model: OnceLock<String>,
    /// The key a paid call was admitted with (an attribute of its trace).
    key_id: OnceLock<Uuid>,
    /// The request's server span, when it is traced.
    pub trace: Option<SpanContext>,
}

/// A new request id: a version 7 UUID (RFC 9562), whose first 48 bits are the time in
/// milliseconds, so that the ids `usage_log`'s unique index takes arrive in nearly ascending
/// order and each insert lands on the index's rightmost pages, not on a random one (with
/// random ids PostgreSQL spent about a fifth more per batch: docs/benchmarks.md, "fourth
/// round"). The other 74 bits are random, from the thread's own generator (no system
/// call): an id must be unique, it is not a secret.
fn new_request_id() -> Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

impl RequestCtx {
    pub fn new() -> Arc<Self> {
        Self::traced(None)
    }

    fn traced(trace: Option<SpanContext>) -> Arc<Self> {
        Arc::new(Self {
            id: new_request_id(),
            upstream_ns: AtomicU64::new(0),
            model: OnceLock::new(),
            key_id: OnceLock::new(),
            trace,
        })
    }

    pub fn set_key(&self, key_id: Uuid) {
        let _ = self.key_id.set(key_id);
    }

    pub fn add_upstream(&self, spent: Duration) {
        self.upstream_ns
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn set_model(&self, model: &str) {
        let _ = self.model.set(model.to_owned());
    }

    fn upstream(&self) -> Duration {
        Duration::from_nanos(self.upstream_ns.load(Ordering::Relaxed))
    }
}

/// The request's context (a fresh one when the middleware did not run, as in unit tests).
pub fn ctx(req: &Request) -> Arc<RequestCtx> {
    req.extensions()
        .get::<Arc<RequestCtx>>()
        .cloned()
        .unwrap_or_else(RequestCtx::new)
}

/// The middleware around every route.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut span = Span::server(
        || format!("{} {route}", req.method()),
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let ctx = RequestCtx::traced(span.context());
    req.extensions_mut().insert(ctx.clone());
    let method = span.context().map(|_| req.method().clone());
    let mut response = next.run(req).await;
    let total = started.elapsed();
    if let Some(detail) = response
        .extensions_mut()
        .remove::<super::error::LoggedDetail>()
    {
        tracing::warn!(request_id = %ctx.id, %route, status = response.status().as_u16(),
            error = %detail.0, "request failed");
    }
    let upstream = ctx.upstream();
    let overhead = total.saturating_sub(upstream);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.id.to_string()) {
        headers.insert("x-request-id", v);
    }
    let timing = format!(
        "gateway;dur={:.3};desc=\"gateway overhead\", upstream;dur={:.3}, total;dur={:.3}",
        ms(overhead),
        ms(upstream),
        ms(total)
    );
    if let Ok(v) = HeaderValue::from_str(&timing) {
        headers.insert("server-timing", v);
    }
    if let Some(method) = method {
        span.str("http.request.method", method.as_str());
        span.str("http.route", &route);
        span.int(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        );
        span.display("neuropia.request_id", ctx.id);
        if let Some(model) = ctx.model.get() {
            span.str("gen_ai.request.model", model);
        }
        if let Some(key) = ctx.key_id.get() {
            span.display("neuropia.key_id", key);
        }
        if response.status().is_server_error() {
            span.error(response.status());
        }
    }
    drop(span);
    if route != "/metrics" {
        crate::metrics::request(
            &route,
            response.status().as_u16(),
            ctx.model.get().map(String::as_str),
            total,
            overhead,
        );
    }
    response
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prometheus metrics (text format 0.0.4). Gauges describing the actor tree are set from
/// the actors' probes at each scrape, without messaging the key and balance actors.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    use crate::actors::root::RootMsg;

    let t = &app.tree;
    let restarts = |name: &str, records: &[(&str, crate::actors::root::ChildRecord)]| {
        records
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, r)| r.restarts)
    };
    let records = ractor::call_t!(app.root, RootMsg::Children, 1_000).unwrap_or_default();
    let supervisors = [
        ("config", t.config.get().probe),
        ("keys", t.keys.get().probe),
        ("balances", t.balances.get().probe),
        ("ledger", t.ledger.get().probe),
        ("upstreams", t.upstreams.get().probe),
    ];
    for (name, probe) in supervisors {
        let s = probe.stats();
        crate::metrics::actor(
            name,
            s.backlog,
            restarts(name, &records),
            s.messages_handled,
        );
    }
    // Key and balance actors (possibly 100k): counts from their supervisors, backlogs
    // summed from the directories' probes. No per-actor series, no per-actor message.
    if let Some(st) = app.keys.stats().await {
        let backlog = app
            .keys
            .directory()
            .iter()
            .map(|h| h.probe.stats().backlog)
            .sum();
        crate::metrics::children("key", st.live, st.passivated, backlog, st.restarts);
    }
    if let Some(st) = app.balances.stats().await {
        let backlog = app
            .balances
            .directory()
            .iter()
            .map(|h| h.probe.stats().backlog)
            .sum();
        crate::metrics::children("balance", st.live, st.passivated, backlog, st.restarts);
    }
    let breakers = &app.upstreams.breakers;
    let backlog = breakers.iter().map(|b| b.actor.probe.stats().backlog).sum();
    crate::metrics::children("upstream", breakers.len(), 0, backlog, 0);
    for b in app.upstreams.breakers.iter() {
        crate::metrics::breaker(b.key(), b.value().gauge());
    }
    crate::metrics::gauge_set("neuropia_journal_depth", app.journal.depth() as f64);
    crate::metrics::gauge_set(
        "neuropia_trace_spans_dropped",
        crate::trace::dropped() as f64,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::new_request_id;

    #[test]
    fn request_ids_are_unique_and_ascend_with_time() {
        let first = new_request_id();
        assert_eq!(first.get_version_num(), 7);
        let many: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(many.len(), 10_000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = new_request_id();
        // As text too: `usage_log.request_id` is text.
        assert!(first.to_string() < later.to_string());
        assert!(many.iter().all(|id| id.to_string() < later.to_string()));
    }
}
