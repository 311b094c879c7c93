//! The official OpenAI Python SDK works against the gateway unchanged: a plain call, a
//! streamed call with usage, `models.list()`, and its typed errors. `scripts/test` provides
//! the SDK in a virtualenv (NEUROPIA_TEST_PYTHON).

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_unchanged() {
    let python = std::env::var("NEUROPIA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, token) = app.register("sdk@example.com").await;
    app.top_up(user, "10").await;
    let key = app.create_key(&token, user, json!({"name": "sdk"})).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("GW", &app.base)
        .env("KEY", &key)
        .env("MODEL", "qwen-turbo")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} could not run ({e}); scripts/test installs the SDK"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed (run scripts/test, which installs the SDK):\n{stderr}"
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    assert_eq!(seen["plain"], ANSWER, "{seen}");
    assert_eq!(seen["plain_usage"], 20);
    assert_eq!(seen["stream"], ANSWER);
    assert_eq!(seen["stream_usage"], 20);
    assert_eq!(seen["models"], json!(["qwen-turbo"]));
    assert_eq!(seen["bad_key"], 401);
    assert_eq!(seen["bad_model"], 404);
    app.settle_journal().await;
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(calls, 2, "the plain and the streamed call were billed");
    app.stop().await;
}
