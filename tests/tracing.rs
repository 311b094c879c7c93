//! OpenTelemetry: with an OTLP endpoint set, a paid call is one trace whose spans reach a
//! loopback OTLP/HTTP receiver, which decodes them: one span per stage, the client's
//! `traceparent` honoured, attributes present, no key material anywhere.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::HeaderMap;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Default, Clone)]
struct Received {
    /// Every span received, with its resource's `service.name`.
    spans: Vec<(String, Value)>,
    authorization: Vec<String>,
    bodies: Vec<String>,
}

/// An OTLP/HTTP receiver (JSON) on a loopback port.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let store = store.clone();
            async move {
                let request: Value = serde_json::from_str(&body).expect("OTLP JSON");
                let mut r = store.lock().expect("not poisoned");
                r.bodies.push(body);
                if let Some(a) = headers.get("authorization") {
                    r.authorization
                        .push(a.to_str().expect("ASCII header").to_owned());
                }
                let list = |v: &Value, what: &str| -> Vec<Value> {
                    v.as_array()
                        .unwrap_or_else(|| panic!("{what} is a list: {v}"))
                        .clone()
                };
                for rs in list(&request["resourceSpans"], "resourceSpans") {
                    let service = list(&rs["resource"]["attributes"], "resource attributes")
                        .into_iter()
                        .find(|a| a["key"] == "service.name")
                        .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_owned))
                        .expect("a service.name");
                    for ss in list(&rs["scopeSpans"], "scopeSpans") {
                        for span in list(&ss["spans"], "spans") {
                            r.spans.push((service.clone(), span));
                        }
                    }
                }
                Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn str_attr<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key)?["stringValue"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_call_is_one_trace_with_a_span_per_stage() {
    let (collector, received) = receiver().await;
    let mock = mock_upstream().await;
    let db = format!("neuropia_test_{}", Uuid::new_v4().simple());
    let port = free_port();
    let mut command = gateway_command(&db, port);
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer collector-token",
        )
        .env("OTEL_SERVICE_NAME", "neuropia-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let _gateway = spawn_gateway(command, port).await;
    let api = Api::connect(format!("http://127.0.0.1:{port}")).await;

    // One retry on 503: the first attempt fails, the second answers.
    api.set_model(
        "traced-model",
        json!({"strategy": {"mode": "single"}, "targets": [{"provider": "dashscope",
            "custom_host": mock.dashscope_host(), "use_platform_key": true,
            "retry": {"attempts": 1, "on_status_codes": [503]},
            "override_params": {"model": "qwen-turbo"}}]}),
    )
    .await;
    api.set_rate("dashscope", "qwen-turbo", "0.001", "0.002")
        .await;
    let (user, token) = api.register("traced@example.com").await;
    api.top_up(user, "10").await;
    let key = api
        .create_key(&token, user, json!({"name": "traced"}))
        .await;
    mock.state
        .fail_next
        .store(1, std::sync::atomic::Ordering::SeqCst);

    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = api
        .client
        .post(api.url("/v1/chat/completions"))
        .header("x-virtual-key", &key)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({"model": "traced-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    r.bytes().await.unwrap();

    // Every stage arrives, the ledger's commit last.
    let stages = [
        "admission",
        "reservation",
        "upstream.attempt",
        "settle",
        "ledger.commit",
    ];
    let of_call = |r: &Received| -> Vec<Value> {
        r.spans
            .iter()
            .filter(|(_, s)| s["traceId"] == client_trace)
            .map(|(_, s)| s.clone())
            .collect()
    };
    eventually(20, "every stage of the call is exported", || {
        let received = received.clone();
        async move {
            let spans = of_call(&received.lock().unwrap());
            let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
            names.contains(&"POST /v1/chat/completions")
                && stages.iter().all(|stage| names.contains(stage))
        }
    })
    .await;

    let r = received.lock().unwrap().clone();
    let spans = of_call(&r);
    let by_name =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let root = by_name("POST /v1/chat/completions")[0];
    // The client's span is the server span's parent.
    assert_eq!(root["parentSpanId"], client_span);
    assert_eq!(root["kind"], 2);
    assert_eq!(
        str_attr(root, "neuropia.request_id"),
        Some(request_id.as_str())
    );
    assert_eq!(str_attr(root, "gen_ai.request.model"), Some("traced-model"));
    assert_eq!(
        attr(root, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    let key_id = str_attr(root, "neuropia.key_id")
        .expect("the key id")
        .to_owned();
    assert!(Uuid::parse_str(&key_id).is_ok());

    // Each stage is a child of the server span, carries the request id, and lies within
    // a sane time range.
    let root_id = root["spanId"].as_str().unwrap();
    let nanos = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u64>().unwrap();
    for stage in stages {
        for s in by_name(stage) {
            assert_eq!(s["parentSpanId"], root_id, "{stage}");
            assert_eq!(
                str_attr(s, "neuropia.request_id"),
                Some(request_id.as_str()),
                "{stage}"
            );
            assert!(
                nanos(s, "startTimeUnixNano") <= nanos(s, "endTimeUnixNano"),
                "{stage}"
            );
            assert!(
                nanos(s, "startTimeUnixNano") >= nanos(root, "startTimeUnixNano"),
                "{stage}"
            );
        }
    }
    for stage in ["admission", "reservation", "settle", "ledger.commit"] {
        assert_eq!(by_name(stage)[0]["status"]["code"], 1, "{stage} succeeded");
        assert_eq!(
            str_attr(by_name(stage)[0], "neuropia.key_id"),
            Some(key_id.as_str())
        );
    }

    // Two attempts at the one target: the first failed with the 503, the retry answered.
    let mut attempts = by_name("upstream.attempt");
    attempts.sort_by_key(|s| {
        attr(s, "neuropia.attempt").unwrap()["intValue"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["status"]["code"], 2);
    assert_eq!(attempts[1]["status"]["code"], 1);
    assert_eq!(attempts[1]["kind"], 3);
    assert_eq!(str_attr(attempts[1], "gen_ai.system"), Some("dashscope"));
    assert_eq!(
        str_attr(attempts[1], "gen_ai.request.model"),
        Some("qwen-turbo")
    );
    assert!(nanos(attempts[0], "endTimeUnixNano") <= nanos(attempts[1], "startTimeUnixNano"));
    // Each attempt told the upstream its own span as the W3C trace context.
    let sent: Vec<String> = attempts
        .iter()
        .map(|a| format!("00-{client_trace}-{}-01", a["spanId"].as_str().unwrap()))
        .collect();
    assert_eq!(*mock.state.traceparents.lock().unwrap(), sent);

    // The settle span holds what was billed: the mock's usage at the rates.
    let settle = by_name("settle")[0];
    let usage: HashMap<&str, &Value> = ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"]
        .into_iter()
        .map(|k| (k, &attr(settle, k).unwrap()["intValue"]))
        .collect();
    let billed = sqlx_row(&db, &request_id).await;
    assert_eq!(
        usage["gen_ai.usage.input_tokens"],
        &json!(billed.0.to_string())
    );
    assert_eq!(
        usage["gen_ai.usage.output_tokens"],
        &json!(billed.1.to_string())
    );
    assert_eq!(d(str_attr(settle, "neuropia.charge").unwrap()), billed.2);

    // Exported with the configured service name and the collector's header; no key
    // material in any export.
    assert!(
        r.spans
            .iter()
            .all(|(service, _)| service == "neuropia-under-test")
    );
    assert!(
        r.authorization
            .iter()
            .all(|a| a == "Bearer collector-token")
    );
    assert!(!r.authorization.is_empty());
    for body in &r.bodies {
        assert!(!body.contains(&key), "the virtual key is never exported");
        assert!(
            !body.contains(PLATFORM_KEY),
            "the platform key is never exported"
        );
        assert!(!body.contains("collector-token"));
    }
}

/// The call's usage row: input tokens, output tokens, charge.
async fn sqlx_row(db: &str, request_id: &str) -> (i64, i64, neuropia::billing::Decimal) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&format!("{}/{db}", server_url()))
        .await
        .expect("the test database");
    let row: (i32, i32, neuropia::billing::Decimal) = sqlx::query_as(
        "SELECT input_tokens, output_tokens, cost FROM data.usage_log WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_one(&mut conn)
    .await
    .expect("the call's usage row");
    (i64::from(row.0), i64::from(row.1), row.2)
}
