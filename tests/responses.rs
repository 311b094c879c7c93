//! `POST /v1/responses` (OpenAI's Responses API) on the call pipeline: whole and streamed
//! (events passed on by name), billed exactly from the usage, cached and reasoning tokens
//! at their own rates.
#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use neuropia::billing::Decimal;
use reqwest::Method;
use serde_json::{Value, json};

async fn costs(app: &TestApp, user: uuid::Uuid) -> Vec<(i32, i32, i32, i32, Decimal)> {
    app.settle_journal().await;
    sqlx::query_as(
        "SELECT input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost
         FROM data.usage_log WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_billed_whole_and_streamed() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.set_model(
        "gpt-resp",
        json!({"targets": [{"provider": "openai", "custom_host": format!("http://{}/v1", mock.addr),
            "api_key": "sk-test", "override_params": {"model": "gpt-4.1"}}]}),
    )
    .await;
    let (status, body) = app
        .send(
            Method::PUT,
            "/api/admin/provider-rates",
            &app.admin_token,
            Some(
                json!({"provider": "openai", "model": "gpt-4.1", "input_rate": "0.002",
                "output_rate": "0.008", "cached_input_rate": "0.0005",
                "reasoning_output_rate": "0.01"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let Customer { user, key, .. } = app
        .customer("responses@example.com", "100", json!({"name": "r"}))
        .await;
    mock.state.cached_tokens.store(4, Ordering::SeqCst);
    mock.state.reasoning_tokens.store(3, Ordering::SeqCst);

    let post = |body: Value| {
        let (app, key) = (&app, &key);
        async move {
            app.client
                .post(app.url("/v1/responses"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = post(json!({"model": "gpt-resp", "input": "Hello", "instructions": "Be brief."})).await;
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    assert_eq!(whole["output"][0]["content"][0]["text"], ANSWER);
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (&sent["model"], &sent["instructions"]),
        (&json!("gpt-4.1"), &json!("Be brief."))
    );
    assert!(
        sent["max_output_tokens"].as_u64().is_some(),
        "the reserved ceiling went upstream"
    );

    let r = post(
        json!({"model": "gpt-resp", "input": [{"role": "user", "content": "Hello"}],
        "stream": true, "max_output_tokens": 50}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    assert!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count()
            >= 2
    );
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert!(
        sent.get("stream_options").is_none(),
        "a chat-only field is not added"
    );

    // 12 input (4 cached), 8 output (3 reasoning):
    // 8 * 0.002 + 4 * 0.0005 + 5 * 0.008 + 3 * 0.01 = 0.016 + 0.002 + 0.04 + 0.03 = 0.088.
    assert_eq!(costs(&app, user).await, vec![(12, 8, 4, 3, d("0.088")); 2]);

    for (body, status) in [
        (json!({"model": "gpt-resp"}), 400),
        (json!({"model": "gpt-resp", "input": ""}), 400),
        (json!({"model": "nope", "input": "x"}), 404),
    ] {
        assert_eq!(post(body.clone()).await.status(), status, "{body}");
    }
    assert_eq!(costs(&app, user).await.len(), 2, "refusals are not billed");
    app.no_reservation_left(user).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_strict_durability_the_completed_event_follows_the_commit() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| {
        c.billing_durability = neuropia::config::Durability::Strict;
    })
    .await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { user, key, .. } = app
        .customer("strict-responses@example.com", "100", json!({"name": "s"}))
        .await;
    let r = app
        .client
        .post(app.url("/v1/responses"))
        .bearer_auth(&key)
        .json(&json!({"model": "qwen-turbo", "input": "Hello", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.starts_with("event: response.completed"), "{last}");
    // The event came after the commit: the row is there without waiting for the ledger.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);
    app.stop().await;
}
