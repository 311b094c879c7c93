//! OpenTelemetry traces over OTLP/HTTP (JSON), opt-in: nothing is recorded unless an
//! endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//!
//! A paid call is one trace: the request's server span (a child of the client's
//! `traceparent` when it sends one), and under it one span per stage: `admission`,
//! `reservation`, `upstream.attempt` per target and retry, `settle`, and `ledger.commit`
//! once the call's charge is committed. Attributes carry the request id, key id and model,
//! never key material.
//!
//! When tracing is off, a [`Span`] is a `None`: starting one reads a `OnceLock`, and every
//! setter does nothing. Finished spans go through a bounded channel to one task that posts
//! them in batches; when the channel is full spans are dropped (and counted), never waited
//! for, so a slow collector cannot slow a call.

use std::fmt::Display;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Most spans waiting for export; more are dropped.
const QUEUE: usize = 8_192;
/// Most spans in one export request.
const MAX_BATCH: usize = 512;
/// An export request's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

struct Exporter {
    tx: mpsc::Sender<Box<SpanData>>,
    dropped: AtomicU64,
}

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The full address spans are posted to (`.../v1/traces`).
    pub url: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), such as a collector's token.
    pub headers: Vec<(String, String)>,
    /// `service.name` of the spans' resource.
    pub service: String,
    /// The longest a finished span waits before it is sent.
    pub delay: Duration,
}

/// The `OTEL_*` settings as given.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub endpoint: Option<&'a str>,
    pub traces_endpoint: Option<&'a str>,
    pub headers: Option<&'a str>,
    pub protocol: &'a str,
    pub service: &'a str,
    pub delay_ms: u64,
}

impl ExportConfig {
    /// Checks the settings; `None` when no endpoint is set (tracing off).
    pub fn from_settings(s: Settings<'_>) -> Result<Option<Self>, String> {
        fn given(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|v| !v.is_empty())
        }
        let url = match (given(s.traces_endpoint), given(s.endpoint)) {
            (Some(full), _) => full.to_owned(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("the OTLP endpoint must be an http(s) URL".into());
        }
        if s.protocol.trim() != "http/json" {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={}: only http/json is supported",
                s.protocol
            ));
        }
        if s.delay_ms == 0 || s.delay_ms > 60_000 {
            return Err("OTEL_BSP_SCHEDULE_DELAY must be between 1 and 60000 ms".into());
        }
        let mut headers = Vec::new();
        for pair in given(s.headers).unwrap_or_default().split(',') {
            if pair.trim().is_empty() {
                continue;
            }
            let Some((name, value)) = pair.split_once('=') else {
                return Err("OTEL_EXPORTER_OTLP_HEADERS: expected name=value pairs".into());
            };
            let name = name.trim();
            let value = value.trim();
            let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(value).is_ok();
            if !valid {
                // The value may be a secret: never repeated in the error.
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_HEADERS: header {name:?} is invalid"
                ));
            }
            headers.push((name.to_owned(), value.to_owned()));
        }
        Ok(Some(Self {
            url,
            headers,
            service: s.service.to_owned(),
            delay: Duration::from_millis(s.delay_ms),
        }))
    }
}

/// Starts exporting (once per process; later calls are ignored). Needs a Tokio runtime.
pub fn init(config: ExportConfig) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("the OTLP exporter's HTTP client: {e}"))?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let exporter = Exporter {
        tx,
        dropped: AtomicU64::new(0),
    };
    if EXPORTER.set(exporter).is_ok() {
        tokio::spawn(export(rx, client, config));
    }
    Ok(())
}

/// Whether spans are recorded.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Spans dropped because the export queue was full.
pub fn dropped() -> u64 {
    EXPORTER
        .get()
        .map_or(0, |e| e.dropped.load(Ordering::Relaxed))
}

/// A span's place in its trace, as passed to its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
}

impl SpanContext {
    /// A W3C `traceparent` header (`00-<trace id>-<parent id>-<flags>`); `None` when
    /// malformed or all-zero.
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self { trace_id, span_id })
    }

    /// This span as a `traceparent` header for a callee.
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }
}

/// What a span stands for (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

#[derive(Debug)]
enum Attr {
    Str(String),
    Int(i64),
}

#[derive(Debug)]
struct SpanData {
    context: SpanContext,
    parent: Option<u64>,
    name: String,
    kind: Kind,
    start: u64,
    end: u64,
    attrs: Vec<(&'static str, Attr)>,
    error: Option<String>,
}

/// A span being recorded; sent for export when dropped. Does nothing when tracing is off.
#[derive(Debug, Default)]
#[must_use = "a span ends when dropped"]
pub struct Span(Option<Box<SpanData>>);

impl Span {
    /// A request's server span: a child of the client's `traceparent` when there is a
    /// valid one, else the root of a new trace. `name` is only built when tracing is on.
    pub fn server(name: impl FnOnce() -> String, traceparent: Option<&str>) -> Self {
        if !enabled() {
            return Self(None);
        }
        let remote = traceparent.and_then(SpanContext::from_traceparent);
        let trace_id = remote.map_or_else(|| fastrand::u128(1..), |r| r.trace_id);
        Self::open(
            trace_id,
            remote.map(|r| r.span_id),
            name(),
            Kind::Server,
            now(),
        )
    }

    /// A stage of the call `parent` belongs to (nothing when the call is not traced).
    pub fn child(parent: Option<SpanContext>, name: &'static str, kind: Kind) -> Self {
        Self::child_since(parent, name, kind, SystemTime::now())
    }

    /// A stage that began at `started`.
    pub fn child_since(
        parent: Option<SpanContext>,
        name: &'static str,
        kind: Kind,
        started: SystemTime,
    ) -> Self {
        match parent {
            Some(p) if enabled() => Self::open(
                p.trace_id,
                Some(p.span_id),
                name.to_owned(),
                kind,
                nanos(started),
            ),
            _ => Self(None),
        }
    }

    fn open(trace_id: u128, parent: Option<u64>, name: String, kind: Kind, start: u64) -> Self {
        Self(Some(Box::new(SpanData {
            context: SpanContext {
                trace_id,
                span_id: fastrand::u64(1..),
            },
            parent,
            name,
            kind,
            start,
            end: 0,
            attrs: Vec::with_capacity(6),
            error: None,
        })))
    }

    /// The context to give this span's children.
    pub fn context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|s| s.context)
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        if let Some(s) = &mut self.0 {
            s.attrs.push((key, Attr::Str(value.to_owned())));
        }
    }

    pub fn display(&mut self, key: &'static str, value: impl Display) {
        if let Some(s) = &mut self.0 {
            s.attrs.push((key, Attr::Str(value.to_string())));
        }
    }

    pub fn int(&mut self, key: &'static str, value: i64) {
        if let Some(s) = &mut self.0 {
            s.attrs.push((key, Attr::Int(value)));
        }
    }

    /// Marks the span failed, with a short description (an error kind, never a secret).
    pub fn error(&mut self, description: impl Display) {
        if let Some(s) = &mut self.0 {
            s.error = Some(description.to_string());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some(mut span) = self.0.take() else {
            return;
        };
        span.end = now().max(span.start);
        if let Some(e) = EXPORTER.get()
            && e.tx.try_send(span).is_err()
        {
            e.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn now() -> u64 {
    nanos(SystemTime::now())
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The export task: batches of at most [`MAX_BATCH`] spans, each sent at most
/// `config.delay` after its first span finished.
async fn export(
    mut rx: mpsc::Receiver<Box<SpanData>>,
    client: reqwest::Client,
    config: ExportConfig,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.delay;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&config.service, &batch);
        let spans = batch.len();
        batch.clear();
        let mut request = client.post(&config.url).json(&body);
        for (k, v) in &config.headers {
            request = request.header(k, v);
        }
        let sent = request.send().await;
        let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
        crate::metrics::trace_export(spans, ok);
        // One log line per outage, not one per batch.
        if !ok && !failing {
            let why = match sent {
                Ok(r) => format!("status {}", r.status().as_u16()),
                Err(e) if e.is_timeout() => "timed out".into(),
                Err(_) => "connection failed".into(),
            };
            tracing::warn!(%why, "OTLP trace export failed; spans are dropped until it recovers");
        } else if ok && failing {
            tracing::info!("OTLP trace export recovered");
        }
        failing = !ok;
    }
}

/// An OTLP `ExportTraceServiceRequest` in its JSON form (ids in hex, 64-bit integers as
/// strings).
fn encode(service: &str, spans: &[Box<SpanData>]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attrs: Vec<Value> = s
                .attrs
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Attr::Str(s) => json!({"stringValue": s}),
                        Attr::Int(i) => json!({"intValue": i.to_string()}),
                    };
                    json!({"key": k, "value": value})
                })
                .collect();
            let mut span = json!({
                "traceId": format!("{:032x}", s.context.trace_id),
                "spanId": format!("{:016x}", s.context.span_id),
                "name": s.name,
                "kind": s.kind as u8,
                "startTimeUnixNano": s.start.to_string(),
                "endTimeUnixNano": s.end.to_string(),
                "attributes": attrs,
                "status": match &s.error {
                    Some(m) => json!({"code": 2, "message": m}),
                    None => json!({"code": 1}),
                },
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = json!(format!("{p:016x}"));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
        ]},
        "scopeSpans": [{
            "scope": {"name": "neuropia", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = SpanContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .expect("valid");
        assert_eq!(ok.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ok.span_id, 0x00f067aa0ba902b7);
        assert_eq!(
            ok.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanContext::from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let base = Settings {
            endpoint: None,
            traces_endpoint: None,
            headers: None,
            protocol: "http/json",
            service: "neuropia",
            delay_ms: 1_000,
        };
        assert!(ExportConfig::from_settings(base).expect("valid").is_none());
        let on = |s: Settings<'_>| ExportConfig::from_settings(s).expect("valid").expect("on");
        let c = on(Settings {
            endpoint: Some("http://collector:4318/"),
            headers: Some("authorization=Bearer t0k, x-tenant = a=b ,"),
            ..base
        });
        assert_eq!(c.url, "http://collector:4318/v1/traces");
        assert_eq!(
            c.headers,
            [
                ("authorization".into(), "Bearer t0k".into()),
                ("x-tenant".into(), "a=b".into())
            ]
        );
        let c = on(Settings {
            endpoint: Some("http://ignored"),
            traces_endpoint: Some("https://c.example/otlp/traces"),
            ..base
        });
        assert_eq!(c.url, "https://c.example/otlp/traces");
        for bad in [
            Settings {
                endpoint: Some("collector:4318"),
                ..base
            },
            Settings {
                endpoint: Some("http://c"),
                protocol: "grpc",
                ..base
            },
            Settings {
                endpoint: Some("http://c"),
                delay_ms: 0,
                ..base
            },
            Settings {
                endpoint: Some("http://c"),
                headers: Some("no-equals-sign"),
                ..base
            },
        ] {
            assert!(ExportConfig::from_settings(bad).is_err(), "{bad:?}");
        }
        // A bad header's value (maybe a secret) is not repeated in the error.
        let e = ExportConfig::from_settings(Settings {
            endpoint: Some("http://c"),
            headers: Some("authorization=secret\nvalue"),
            ..base
        })
        .expect_err("invalid");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let span = SpanData {
            context: SpanContext {
                trace_id: 1,
                span_id: 2,
            },
            parent: Some(3),
            name: "settle".into(),
            kind: Kind::Internal,
            start: 10,
            end: 20,
            attrs: vec![
                ("neuropia.request_id", Attr::Str("r".into())),
                ("neuropia.attempt", Attr::Int(2)),
            ],
            error: Some("timeout".into()),
        };
        let body = encode("svc", &[Box::new(span)]);
        let s = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "00000000000000000000000000000001");
        assert_eq!(s["spanId"], "0000000000000002");
        assert_eq!(s["parentSpanId"], "0000000000000003");
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "2");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
    }

    #[test]
    fn spans_cost_nothing_when_off() {
        // No exporter in unit tests: spans are empty and their children too.
        let mut root = Span::server(|| unreachable!("the name is not built"), None);
        root.str("k", "v");
        assert_eq!(root.context(), None);
        assert!(
            Span::child(root.context(), "admission", Kind::Internal)
                .0
                .is_none()
        );
    }
}
