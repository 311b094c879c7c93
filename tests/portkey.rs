//! UPSTREAM_MODE=portkey against the real Portkey gateway (`@portkey-ai/gateway` from npm,
//! run with node on loopback): the plan travels in `x-portkey-config`, Portkey falls back
//! to the second target (a mock reached through `custom_host`), and the call is billed at
//! the rates of the target Portkey reports in `x-portkey-last-used-option-index`.
//! `scripts/test` installs the gateway (NEUROPIA_TEST_PORTKEY).

mod common;

use std::time::{Duration, Instant};

use common::*;
use neuropia::billing::Decimal;
use serde_json::{Value, json};

fn server_js() -> String {
    std::env::var("NEUROPIA_TEST_PORTKEY").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!(
            "{home}/.cache/neuropia/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_run_through_the_real_portkey_gateway() {
    let js = server_js();
    assert!(
        std::path::Path::new(&js).exists(),
        "the Portkey gateway is not installed at {js}: run scripts/test, which installs it"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let _portkey = tokio::process::Command::new("node")
        .arg(&js)
        .arg(format!("--port={port}"))
        .arg("--headless")
        .env("NODE_ENV", "production")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the Portkey gateway");
    let portkey_url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if client
            .get(&portkey_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Portkey did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mock = mock_upstream().await;
    // A port nothing listens on (not 9: fetch refuses its "bad ports" before connecting).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let url = portkey_url.clone();
    let app = TestApp::spawn_with(move |c| {
        c.upstream_mode = neuropia::config::UpstreamMode::Portkey;
        c.portkey_gateway_url = url;
    })
    .await;
    app.set_model("via-portkey", json!({"strategy": {"mode": "fallback"}, "targets": [
        // Nothing listens there: Portkey must fall back to the second target.
        {"provider": "openai", "custom_host": format!("http://127.0.0.1:{closed}/v1"), "api_key": "sk-first",
         "override_params": {"model": "first-model"}},
        {"provider": "openai", "custom_host": format!("http://{}/v1", mock.addr), "api_key": "sk-second",
         "override_params": {"model": "second-model"}}]})).await;
    // Dearer, but a call's worst case on it (24 tokens) still fits the balance.
    app.set_rate("openai", "first-model", "0.1", "0.1").await;
    app.set_rate("openai", "second-model", "0.001", "0.002")
        .await;
    let Customer { user, key, .. } = app
        .customer("portkey@example.com", "10", json!({"name": "pk"}))
        .await;

    let r = app.chat(&key, &chat_body("via-portkey")).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(
        mock.state.bodies.lock().expect("bodies")[0]["model"],
        "second-model"
    );
    assert_eq!(
        mock.state.authorizations.lock().expect("auth")[0],
        "Bearer sk-second",
        "the platform key travelled in the config"
    );

    // Streaming through Portkey is not exercised: Portkey 1.15.2 (and 1.9.8) on Node 20
    // answer every streamed call to a custom host with 500 (`TypeError: immutable` in its
    // ResponseService.updateHeaders), whatever the upstream sends. The gateway maps that
    // to a 502 like any upstream failure.
    let mut streamed = chat_body("via-portkey");
    streamed["stream"] = json!(true);
    let r = app.chat(&key, &streamed).await;
    assert!(r.status() == 200 || r.status() == 502, "{}", r.status());

    app.settle_journal().await;
    let rows: Vec<(String, String, i32, i32, Decimal)> = sqlx::query_as(
        "SELECT provider, model, input_tokens, output_tokens, cost FROM data.usage_log
         WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.pool())
    .await
    .expect("usage");
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(
            row,
            ("openai".into(), "second-model".into(), 12, 8, d("0.028")),
            "billed at the second target's rates"
        );
    }
    app.stop().await;
}
