//! `POST /v1/messages` (Anthropic's API) on the call pipeline: natively to an Anthropic
//! target, translated both ways to an OpenAI-format one, tools included; billed exactly;
//! errors in Anthropic's shape; the official Anthropic SDK unchanged.
#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use neuropia::billing::Decimal;
use serde_json::{Value, json};

async fn messages(app: &TestApp, key: &str, body: &Value) -> (u16, String) {
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn charges(app: &TestApp, user: uuid::Uuid) -> Vec<Decimal> {
    app.settle_journal().await;
    sqlx::query_scalar("SELECT cost FROM data.usage_log WHERE user_id = $1 ORDER BY id")
        .bind(user)
        .fetch_all(app.pool())
        .await
        .unwrap()
}

async fn setup() -> (MockUpstream, TestApp, Customer) {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.set_model(
        "claude-native",
        json!({"targets": [{"provider": "anthropic", "custom_host": format!("http://{}/v1", mock.addr),
            "api_key": "sk-ant-test", "override_params": {"model": "claude-x"}}]}),
    )
    .await;
    app.set_rate("anthropic", "claude-x", "0.001", "0.002")
        .await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let customer = app
        .customer("messages@example.com", "10", json!({"name": "m"}))
        .await;
    (mock, app, customer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_natively_to_anthropic_and_translated_elsewhere_and_are_billed_exactly() {
    let (mock, app, Customer { user, key, .. }) = setup().await;
    let ask = |model: &str| {
        json!({"model": model, "max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]})
    };

    // An Anthropic target gets the request as sent, with its own model and key.
    let (status, text) = messages(&app, &key, &ask("claude-native")).await;
    assert_eq!(status, 200, "{text}");
    let m = json_of(&text);
    assert_eq!(
        (&m["type"], &m["content"][0]["text"]),
        (&json!("message"), &json!(ANSWER))
    );
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["system"], "be brief");
    assert_eq!(sent["model"], "claude-x");
    assert_eq!(sent["messages"], ask("x")["messages"]);
    let headers = mock.state.anthropic_headers.lock().unwrap().last().cloned();
    assert_eq!(headers, Some(("sk-ant-test".into(), "2023-06-01".into())));
    // The client's version and beta flags reach an Anthropic target.
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2024-10-22")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&ask("claude-native"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let version = mock.state.anthropic_headers.lock().unwrap().last().cloned();
    assert_eq!(version.map(|h| h.1), Some("2024-10-22".into()));
    let beta = mock.state.anthropic_beta.lock().unwrap().last().cloned();
    assert_eq!(beta.as_deref(), Some("prompt-caching-2024-07-31"));

    // An OpenAI-format target gets chat, and the answer comes back as a message.
    let (status, text) = messages(&app, &key, &ask("qwen-turbo")).await;
    assert_eq!(status, 200, "{text}");
    let m = json_of(&text);
    assert_eq!(m["content"][0]["text"], ANSWER);
    assert_eq!(
        (&m["stop_reason"], &m["usage"]["input_tokens"]),
        (&json!("end_turn"), &json!(12))
    );
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );

    // 12 input and 8 output tokens at 0.001 / 0.002, each time.
    assert_eq!(charges(&app, user).await, vec![d("0.028"); 3]);
    app.no_reservation_left(user).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_round_trip_through_an_openai_format_target() {
    let (mock, app, Customer { user, key, .. }) = setup().await;
    let tools = json!([{"name": "weather", "description": "the weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    mock.state.tool_call.store(true, Ordering::SeqCst);
    let first = json!({"model": "qwen-turbo", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let (status, text) = messages(&app, &key, &first).await;
    assert_eq!(status, 200, "{text}");
    let m = json_of(&text);
    assert_eq!(m["stop_reason"], "tool_use");
    let call = &m["content"][0];
    assert_eq!(
        (&call["type"], &call["name"], &call["input"]),
        (
            &json!("tool_use"),
            &json!("weather"),
            &json!({"city": "Oslo"})
        )
    );
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "weather");

    mock.state.tool_call.store(false, Ordering::SeqCst);
    let second = json!({"model": "qwen-turbo", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                "content": "rain"}]}]});
    let (status, text) = messages(&app, &key, &second).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["content"][0]["text"], ANSWER);
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "rain"})
    );
    assert_eq!(charges(&app, user).await, vec![d("0.028"), d("0.028")]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_round_trip_through_an_anthropic_target_goes_natively() {
    let (mock, app, Customer { user, key, .. }) = setup().await;
    let tools = json!([{"name": "weather", "input_schema": {"type": "object"}}]);
    mock.state.tool_call.store(true, Ordering::SeqCst);
    let first = json!({"model": "claude-native", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let (status, text) = messages(&app, &key, &first).await;
    assert_eq!(status, 200, "{text}");
    let m = json_of(&text);
    assert_eq!(m["stop_reason"], "tool_use");
    let call = m["content"][0].clone();
    assert_eq!(
        (&call["name"], &call["input"]),
        (&json!("weather"), &json!({"city": "Oslo"}))
    );
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["tools"], tools, "Anthropic tools as sent");

    mock.state.tool_call.store(false, Ordering::SeqCst);
    let result = json!([{"type": "tool_result", "tool_use_id": call["id"], "content": "rain"}]);
    let second = json!({"model": "claude-native", "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": result}]});
    let (status, text) = messages(&app, &key, &second).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text)["content"][0]["text"], ANSWER);
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["messages"][2]["content"], result,
        "the tool result as sent"
    );
    assert_eq!(charges(&app, user).await, vec![d("0.028"), d("0.028")]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_errors_and_counts_come_in_anthropics_shape() {
    let (_mock, app, Customer { user, key, .. }) = setup().await;
    let streamed = json!({"model": "qwen-turbo", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Hello"}]});
    // Streamed from an OpenAI-format target (chunks translated as they come) and from an
    // Anthropic one (its events as they are): the same sequence, the same text.
    for model in ["qwen-turbo", "claude-native"] {
        let mut body = streamed.clone();
        body["model"] = json!(model);
        let (status, text) = messages(&app, &key, &body).await;
        assert_eq!(status, 200, "{text}");
        let mut events: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .filter(|e| *e != "ping")
            .collect();
        events.dedup();
        assert_eq!(
            events,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ],
            "{model}: {text}"
        );
        let said: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/delta/text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(said, ANSWER, "{model}");
        assert!(
            text.contains("\"output_tokens\":8"),
            "{model}: the usage is told: {text}"
        );
    }

    let r = app
        .client
        .post(app.url("/v1/messages/count_tokens"))
        .bearer_auth(&key)
        .json(&json!({"model": "qwen-turbo", "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.json::<Value>().await.unwrap()["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    for (body, status, kind) in [
        (
            json!({"model": "qwen-turbo", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "qwen-turbo", "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
            400,
            "invalid_request_error",
        ),
    ] {
        let (got, text) = messages(&app, &key, &body).await;
        let e = json_of(&text);
        assert_eq!(
            (got, &e["type"], &e["error"]["type"]),
            (status, &json!("error"), &json!(kind)),
            "{body} -> {text}"
        );
    }
    let (got, text) = messages(&app, "vk_nobody", &streamed).await;
    assert_eq!(
        (got, json_of(&text)["error"]["type"].clone()),
        (401, json!("authentication_error"))
    );
    // Only the two streamed calls were billed.
    assert_eq!(charges(&app, user).await, vec![d("0.028"), d("0.028")]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_python_sdk_works_unchanged() {
    let python = std::env::var("NEUROPIA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let (_mock, app, Customer { user, key, .. }) = setup().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/anthropic_sdk.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("GW", &app.base)
        .env("KEY", &key)
        .env("MODEL", "claude-native")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} could not run ({e}); scripts/test installs the SDK"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed (run scripts/test):\n{stderr}"
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    assert_eq!(seen["plain"], ANSWER, "{seen}");
    assert_eq!(seen["plain_usage"], json!([12, 8]));
    assert_eq!(seen["stop_reason"], "end_turn");
    assert_eq!(seen["stream"], ANSWER);
    assert_eq!(seen["stream_usage"], json!([12, 8]));
    assert!(seen["counted"].as_u64().unwrap() > 0, "{seen}");
    assert_eq!(seen["bad_key"], json!([401, "authentication_error"]));
    assert_eq!(seen["bad_model"], json!([404, "not_found_error"]));
    assert_eq!(charges(&app, user).await, vec![d("0.028"), d("0.028")]);
    app.stop().await;
}
