//! Secrets never reach the logs (every target at TRACE), Redis or API responses: virtual
//! keys (old and rotated), passwords, platform keys, tokens.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::ErrorKind::Other)?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_log_no_cache_and_no_response() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, token) = app.register("secretive@example.com").await;
    app.top_up(user, "10").await;
    let (_, created) = app
        .post(
            &format!("/api/users/{user}/virtual-keys"),
            &token,
            json!({"name": "k"}),
        )
        .await;
    let key = created["virtual_key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    let mut responses = String::new();
    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 200);
    responses += &r.text().await.expect("body");
    let (_, cfg) = app
        .get(&format!("/api/config/virtual-keys/{key}"), &token)
        .await;
    responses += &cfg.to_string();
    let (_, rotated) = app
        .post(&format!("/api/virtual-keys/{id}/rotate"), &token, json!({}))
        .await;
    let new_key = rotated["virtual_key"].as_str().expect("key").to_owned();
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&new_key)
        .json(&chat_body("qwen-turbo"))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 401);
    let (_, listed) = app
        .get(&format!("/api/users/{user}/virtual-keys"), &token)
        .await;
    responses += &listed.to_string();
    let (_, models) = app.get("/api/admin/model-configs", &app.admin_token).await;
    responses += &models.to_string();
    app.settle_journal().await;

    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Everything in Redis (SCAN and MGET in batches: other runs may have left many keys).
    let mut cached = String::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(5_000)
            .query_async(&mut redis)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            cached += &keys.join("\n");
            for v in values.into_iter().flatten() {
                cached += &v;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(cached.contains(&id), "the key's cache entry was read");
    app.stop().await;

    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf8");
    assert!(
        text.len() > 10_000 && text.contains("TRACE"),
        "the capture works: {} bytes",
        text.len()
    );
    for (name, secret) in [
        ("virtual key", key.as_str()),
        ("rotated virtual key", new_key.as_str()),
        ("user password", USER_PASSWORD),
        ("admin password", ADMIN_PASSWORD),
        ("platform key", PLATFORM_KEY),
        ("token", token.as_str()),
    ] {
        assert!(!text.contains(secret), "{name} in the logs");
        assert!(!cached.contains(secret), "{name} in Redis");
        assert!(!responses.contains(secret), "{name} in a response");
    }
}
