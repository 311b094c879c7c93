//! Prometheus metrics, rendered at `GET /metrics`.
//!
//! One recorder per process (Prometheus text is rendered from it on each scrape). Gauges
//! that describe the actor tree (backlogs, journal depth, breaker states, live actors) are
//! set at scrape time from the tree itself, so they are never stale.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the recorder (once per process).
pub fn install() {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .ok()?
            .install_recorder()
            .ok()
    });
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// One HTTP request answered.
pub fn request(route: &str, status: u16, model: Option<&str>, total: Duration, overhead: Duration) {
    let model = model.unwrap_or("");
    let record = |h: &RequestHandles| {
        h.count.increment(1);
        h.duration.record(total.as_secs_f64());
        h.overhead.record(overhead.as_secs_f64());
    };
    if !installed() {
        return record(&RequestHandles::new(route, status, model));
    }
    // Handles resolved once per thread and label set: no label strings built, no registry
    // lookup per request.
    REQUESTS.with_borrow_mut(|(key, cache)| {
        use std::fmt::Write;
        key.clear();
        let _ = write!(key, "{route}\0{status}\0{model}");
        cached(
            cache,
            key,
            || RequestHandles::new(route, status, model),
            record,
        );
    });
}

/// Uses the handles cached under `key`, made (and kept while the cache has room) on first
/// use.
fn cached<H>(
    cache: &mut HashMap<Box<str>, H>,
    key: &str,
    make: impl FnOnce() -> H,
    with: impl FnOnce(&H),
) {
    if let Some(h) = cache.get(key) {
        return with(h);
    }
    let h = make();
    with(&h);
    if cache.len() < HANDLE_CACHE {
        cache.insert(key.into(), h);
    }
}

/// Most label sets cached per thread (routes, statuses and known models are few).
const HANDLE_CACHE: usize = 4_096;

struct RequestHandles {
    count: Counter,
    duration: Histogram,
    overhead: Histogram,
}

impl RequestHandles {
    fn new(route: &str, status: u16, model: &str) -> Self {
        let labels = [
            ("route", route.to_owned()),
            ("status", status.to_string()),
            ("model", model.to_owned()),
        ];
        Self {
            count: counter!("neuropia_http_requests_total", &labels),
            duration: histogram!("neuropia_http_request_duration_seconds", "route" => route.to_owned()),
            overhead: histogram!("neuropia_gateway_overhead_seconds", "route" => route.to_owned()),
        }
    }
}

thread_local! {
    /// Request handles by `route\0status\0model`, with the buffer that key is built in.
    static REQUESTS: RefCell<(String, HashMap<Box<str>, RequestHandles>)> = RefCell::default();
    /// Upstream attempt histograms by target.
    static UPSTREAMS: RefCell<HashMap<Box<str>, Histogram>> = RefCell::default();
}

fn installed() -> bool {
    HANDLE.get().is_some_and(Option::is_some)
}

/// One OTLP export request of `spans` spans, and whether the collector took it.
pub fn trace_export(spans: usize, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("neuropia_trace_spans_exported_total", "outcome" => outcome).increment(spans as u64);
}

/// A call refused before reaching an upstream (`rpm`, `tpm`, `insufficient_balance`, ...).
pub fn refusal(reason: &'static str) {
    counter!("neuropia_refusals_total", "reason" => reason).increment(1);
}

/// One attempt to deliver an alert, and whether its webhook took it.
pub fn alert_attempt(delivered: bool) {
    let outcome = if delivered { "delivered" } else { "failed" };
    counter!("neuropia_alert_attempts_total", "outcome" => outcome).increment(1);
}

/// A failed call not recorded (the queue of failures to write was full).
pub fn failure_dropped() {
    counter!("neuropia_failed_call_records_dropped_total").increment(1);
}

/// A change saved but not recorded in the audit log (the error is in the log).
pub fn audit_failed() {
    counter!("neuropia_audit_failures_total").increment(1);
}

/// The label of an upstream target (`<provider>@<base URL>`) in the public metrics: the
/// provider and a short hash of the base URL, so an unauthenticated scrape does not list
/// where upstreams are. `/health`'s details (platform admins) show the whole target.
pub fn target_label(target: &str) -> String {
    use sha2::{Digest, Sha256};
    match target.split_once('@') {
        Some((provider, base)) => {
            let digest = Sha256::digest(base.as_bytes());
            let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("{provider}@{short}")
        }
        None => target.to_owned(),
    }
}

/// One upstream attempt.
pub fn upstream(target: &str, elapsed: Duration, outcome: &'static str) {
    if outcome != "ok" {
        counter!("neuropia_upstream_errors_total", "target" => target_label(target), "kind" => outcome)
            .increment(1);
    }
    let duration =
        || histogram!("neuropia_upstream_duration_seconds", "target" => target_label(target));
    if !installed() {
        return duration().record(elapsed.as_secs_f64());
    }
    // The label's hash is computed once per thread and target, not per attempt.
    UPSTREAMS.with_borrow_mut(|cache| {
        cached(cache, target, duration, |h| h.record(elapsed.as_secs_f64()));
    });
}

/// A call the target's open circuit refused without trying.
pub fn upstream_rejected(target: &str) {
    counter!("neuropia_upstream_errors_total", "target" => target_label(target), "kind" => "circuit_open")
        .increment(1);
}

/// How long a strict response waited for its charge's commit.
pub fn strict_wait(elapsed: Duration) {
    histogram!("neuropia_strict_commit_wait_seconds").record(elapsed.as_secs_f64());
}

pub fn fault_injected(kind: &str) {
    counter!("neuropia_faults_injected_total", "kind" => kind.to_owned()).increment(1);
}

/// One ledger batch committed.
pub fn ledger_flush(elapsed: Duration, rows: usize) {
    histogram!("neuropia_ledger_flush_seconds").record(elapsed.as_secs_f64());
    counter!("neuropia_ledger_rows_total").increment(rows as u64);
}

/// One ledger batch that failed (it stays in the journal and is retried).
pub fn ledger_flush_failed() {
    counter!("neuropia_ledger_flush_failures_total").increment(1);
}

/// Tree gauges, set at scrape time.
pub fn actor(name: &str, backlog: u64, restarts: u32, handled: u64) {
    gauge!("neuropia_actor_backlog", "actor" => name.to_owned()).set(backlog as f64);
    gauge!("neuropia_actor_restarts", "actor" => name.to_owned()).set(f64::from(restarts));
    gauge!("neuropia_actor_messages_handled", "actor" => name.to_owned()).set(handled as f64);
}

/// Key or balance actors, summed per kind: alive, stopped when idle, messages waiting,
/// restarts so far.
pub fn children(kind: &str, live: usize, passivated: u64, backlog: u64, restarts: u64) {
    gauge!("neuropia_actors_live", "kind" => kind.to_owned()).set(live as f64);
    gauge!("neuropia_actors_passivated", "kind" => kind.to_owned()).set(passivated as f64);
    gauge!("neuropia_actors_backlog", "kind" => kind.to_owned()).set(backlog as f64);
    gauge!("neuropia_actors_restarts", "kind" => kind.to_owned()).set(restarts as f64);
}

pub fn gauge_set(name: &'static str, value: f64) {
    gauge!(name).set(value);
}

pub fn breaker(target: &str, state: f64) {
    gauge!("neuropia_breaker_state", "target" => target_label(target)).set(state);
}

/// 1 while rate limits are counted in Redis (global), 0 while each instance falls back to
/// its share of them.
pub fn rate_limit_global(global: bool) {
    gauge!("neuropia_rate_limit_global").set(if global { 1.0 } else { 0.0 });
}
