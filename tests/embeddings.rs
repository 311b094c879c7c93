//! `POST /v1/embeddings` and `GET /v1/models/{model}`: the same admission, routing and
//! exact billing as chat, on the input's tokens alone.
#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use common::*;
use neuropia::billing::Decimal;
use serde_json::{Value, json};

async fn embed(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/v1/embeddings"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_admitted_routed_and_billed_on_their_input() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.set_model(
        "embed",
        json!({"targets": [{"provider": "dashscope", "custom_host": mock.dashscope_host(),
            "use_platform_key": true, "override_params": {"model": "text-embedding-v3"}}]}),
    )
    .await;
    app.set_rate("dashscope", "text-embedding-v3", "0.0007", "0.002")
        .await;
    app.set_model(
        "claude-embed",
        json!({"targets": [{"provider": "anthropic", "custom_host": format!("http://{}/v1", mock.addr),
            "api_key": "sk-ant"}]}),
    )
    .await;
    app.set_rate("anthropic", "claude-embed", "0.001", "0.001")
        .await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { user, key, .. } = app
        .customer(
            "embed@example.com",
            "10",
            json!({"name": "e", "allowed_models": ["embed", "claude-embed"]}),
        )
        .await;

    let asked = json!({"model": "embed", "input": ["first text", "second text"],
        "encoding_format": "float", "dimensions": 8});
    let (status, body) = embed(&app, &key, &asked).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["model"], "text-embedding-v3", "the target's model");
    assert_eq!(
        (
            &sent["input"],
            &sent["encoding_format"],
            &sent["dimensions"]
        ),
        (&asked["input"], &json!("float"), &json!(8)),
        "passed on as sent"
    );
    assert!(
        sent.get("max_tokens").is_none(),
        "no output ceiling is added"
    );

    // Billed exactly: 12 input tokens at 0.0007, nothing produced.
    app.settle_journal().await;
    let (balance, _) = app.db_balance(user).await;
    assert_eq!(balance, d("10") - d("0.0084"));
    let row: (i32, i32, Decimal) = sqlx::query_as(
        "SELECT input_tokens, output_tokens, cost FROM data.usage_log WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(row, (12, 0, d("0.0084")));

    // Errors, as chat has them, and nothing billed for them.
    for (body, status) in [
        (json!({"model": "embed"}), 400),
        (json!({"model": "embed", "input": []}), 400),
        (
            json!({"model": "embed", "input": "x", "dimensions": -1}),
            400,
        ),
        (json!({"model": "nope", "input": "x"}), 404),
        (json!({"model": "qwen-turbo", "input": "x"}), 403),
        (json!({"model": "claude-embed", "input": "x"}), 400),
    ] {
        let (got, reply) = embed(&app, &key, &body).await;
        assert_eq!(got, status, "{body} -> {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    let (got, _) = embed(&app, "vk_unknown", &asked).await;
    assert_eq!(got, 401);
    mock.state
        .fail_status
        .store(500, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(embed(&app, &key, &asked).await.0, 502);
    app.settle_journal().await;
    assert_eq!(app.db_balance(user).await.0, d("10") - d("0.0084"));
    app.no_reservation_left(user).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_retrieved_only_by_a_key_that_may_use_it() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    app.route_to_mock("qwen-max", &mock, "0.001", "0.002").await;
    let Customer { key, .. } = app
        .customer(
            "models@example.com",
            "1",
            json!({"name": "m", "allowed_models": ["qwen-turbo"]}),
        )
        .await;
    let get = |model: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            let r = app
                .client
                .get(app.url(&format!("/v1/models/{model}")))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = get("qwen-turbo").await;
    assert_eq!(
        (status, &body["id"], &body["object"]),
        (200, &json!("qwen-turbo"), &json!("model"))
    );
    let (status, body) = get("qwen-max").await;
    assert_eq!(status, 404, "not this key's: {body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(get("nothing").await.0, 404);
    app.stop().await;
}
