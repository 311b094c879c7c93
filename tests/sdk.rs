//! The official OpenAI Python SDK works against the gateway unchanged: a plain call, a
//! streamed call with usage, `models.list()` and `models.retrieve()`, embeddings (base64, as
//! the SDK asks by default), and its typed errors. `scripts/test` provides
//! the SDK in a virtualenv (NEUROPIA_TEST_PYTHON).

mod common;

use common::*;
use neuropia::billing::Decimal;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_works_unchanged() {
    let python = std::env::var("NEUROPIA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    app.set_model(
        "text-embedding-v3",
        json!({"targets": [{"provider": "dashscope", "custom_host": mock.dashscope_host(),
            "use_platform_key": true}]}),
    )
    .await;
    app.set_rate("dashscope", "text-embedding-v3", "0.0005", "0")
        .await;
    let Customer { user, key, .. } = app
        .customer(
            "sdk@example.com",
            "10",
            json!({"name": "sdk", "allowed_models": ["qwen-turbo", "text-embedding-v3"]}),
        )
        .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("GW", &app.base)
        .env("KEY", &key)
        .env("MODEL", "qwen-turbo")
        .env("EMBED_MODEL", "text-embedding-v3")
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
    assert_eq!(seen["models"], json!(["qwen-turbo", "text-embedding-v3"]));
    assert_eq!(seen["retrieved"], "qwen-turbo");
    assert_eq!(seen["missing_model"], 404);
    assert_eq!(seen["embeddings"], json!([8, 8]), "decoded from base64");
    assert_eq!(seen["responses"], ANSWER);
    assert_eq!(seen["responses_usage"], json!([12, 8]));
    assert_eq!(seen["responses_stream"], ANSWER);
    assert_eq!(seen["responses_stream_usage"], 20);
    assert_eq!(seen["embedding_usage"], 12);
    assert_eq!(seen["bad_key"], 401);
    assert_eq!(seen["bad_model"], 404);
    app.settle_journal().await;
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(
        calls, 5,
        "two chat calls, two responses and the embeddings were billed"
    );
    let embedded: Decimal = sqlx::query_scalar(
        "SELECT cost FROM data.usage_log WHERE user_id = $1 AND model = 'text-embedding-v3'",
    )
    .bind(user)
    .fetch_one(app.pool())
    .await
    .expect("the embeddings row");
    assert_eq!(embedded, d("0.006"), "12 input tokens at 0.0005");
    app.stop().await;
}

/// The official OpenAI Node SDK works unchanged too: chat, a stream with usage, embeddings,
/// `models.retrieve`, Responses, and its typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_node_sdk_works_unchanged() {
    let sdk = std::env::var("NEUROPIA_TEST_OPENAI_NODE")
        .expect("NEUROPIA_TEST_OPENAI_NODE: run scripts/test, which installs the Node SDK");
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    app.set_model(
        "text-embedding-v3",
        json!({"targets": [{"provider": "dashscope", "custom_host": mock.dashscope_host(),
            "use_platform_key": true}]}),
    )
    .await;
    app.set_rate("dashscope", "text-embedding-v3", "0.0005", "0")
        .await;
    let Customer { user, key, .. } = app
        .customer("node@example.com", "10", json!({"name": "node"}))
        .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk.cjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .env("OPENAI_NODE", &sdk)
        .env("GW", &app.base)
        .env("KEY", &key)
        .env("MODEL", "qwen-turbo")
        .env("EMBED_MODEL", "text-embedding-v3")
        .output()
        .await
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Node SDK script failed:\n{stderr}"
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    assert_eq!(seen["plain"], ANSWER, "{seen}");
    assert_eq!(seen["plain_usage"], 20);
    assert_eq!(seen["stream"], ANSWER);
    assert_eq!(seen["stream_usage"], 20);
    assert_eq!(seen["embeddings"], json!([8, 8]));
    assert_eq!(seen["retrieved"], "qwen-turbo");
    assert_eq!(seen["responses"], ANSWER);
    assert_eq!(seen["missing_model"], 404);
    assert_eq!(seen["bad_key"], 401);
    app.settle_journal().await;
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(
        calls, 4,
        "two chat calls, the embeddings and the response were billed"
    );
    app.stop().await;
}

/// The OpenAPI document passes a standard validator (client generators and documentation
/// viewers refuse an invalid one), and `/docs` renders it for a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_browsable() {
    let python = std::env::var("NEUROPIA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc = r.text().await.unwrap();
    let mut check = tokio::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             validate(json.load(sys.stdin))\n\
             print('valid')",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} could not run ({e}); scripts/test installs it"));
    use tokio::io::AsyncWriteExt;
    let mut stdin = check.stdin.take().unwrap();
    stdin.write_all(doc.as_bytes()).await.unwrap();
    drop(stdin);
    let out = check.wait_with_output().await.unwrap();
    let why = String::from_utf8_lossy(&out.stderr);
    let last = why
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(500)
        .collect::<String>();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {last}"
    );
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    for path in doc["paths"].as_object().unwrap().keys() {
        assert!(html.contains(path.as_str()), "{path} missing from /docs");
    }
    app.stop().await;
}
