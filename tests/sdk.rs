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
    let Customer { user, key, .. } = app
        .customer("sdk@example.com", "10", json!({"name": "sdk"}))
        .await;

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
