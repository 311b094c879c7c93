//! Alerts: a webhook receiver on loopback checks every delivery's signature and counts the
//! events: one per crossing (balance below a threshold, status changes: pending -> active,
//! active -> overdue, overdue -> active; a key's budget at 80 % and 100 %), retried after a
//! failure, and delivered after a restart of the gateway.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

const SECRET: &str = "a-webhook-secret-for-tests";

#[derive(Default)]
struct Receiver {
    /// Answer 500 to this many more deliveries.
    fail: AtomicUsize,
    /// Every delivery accepted: event id -> (event, body), and how many times each came.
    events: Mutex<HashMap<String, (String, Value, usize)>>,
    bad_signatures: AtomicUsize,
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let ts = headers["x-neuropia-timestamp"]
        .to_str()
        .expect("a timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("a key");
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if headers["x-neuropia-signature"].to_str().ok() != Some(&format!("sha256={want}")) {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if r.fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    let id = headers["x-neuropia-event-id"]
        .to_str()
        .expect("an id")
        .to_owned();
    assert_eq!(v["id"], json!(id));
    let event = v["event"].as_str().expect("an event").to_owned();
    let mut events = r.events.lock().expect("the events");
    events.entry(id).or_insert((event, v, 0)).2 += 1;
    StatusCode::OK
}

async fn receiver() -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}/hook", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn counts(r: &Receiver) -> HashMap<String, usize> {
    let mut by_event = HashMap::new();
    for (event, _, times) in r.events.lock().expect("the events").values() {
        assert_eq!(*times, 1, "{event} delivered twice");
        *by_event.entry(event.clone()).or_default() += 1;
    }
    by_event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_crossing_is_announced_once_signed_retried_and_kept_across_a_restart() {
    let (recv, url) = receiver().await;
    let mock = mock_upstream().await;
    let db = format!("neuropia_test_{}", Uuid::new_v4().simple());
    let mut app = TestApp::spawn_on(&db, |_| {}).await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let tenant = app.create_tenant("alerted", "0", "0").await;
    let (s, hook) = app
        .send(
            reqwest::Method::PUT,
            &format!("/api/tenants/{tenant}/webhooks"),
            &app.admin_token,
            Some(json!({"url": url, "secret": SECRET, "low_balance_threshold": "0.2"})),
        )
        .await;
    assert_eq!(s, 200, "{hook}");
    assert!(
        !hook.to_string().contains(SECRET),
        "the secret never comes back"
    );
    for bad in [
        json!({"url": "ftp://x", "secret": SECRET}),
        json!({"url": url, "secret": "short"}),
        json!({"url": url, "secret": SECRET, "user_id": Uuid::new_v4()}),
    ] {
        let (s, _) = app
            .send(
                reqwest::Method::PUT,
                &format!("/api/tenants/{tenant}/webhooks"),
                &app.admin_token,
                Some(bad.clone()),
            )
            .await;
        assert!(s == 400 || s == 404, "{bad}: {s}");
    }
    let (user, token) = app
        .tenant_user(&app.admin_token, tenant, "alerts@example.com", "user")
        .await;
    app.top_up(user, "0.3").await;
    // One call costs 12 * 0.001 + 8 * 0.002 = 0.028 (worst case 0.032).
    let capped = app
        .create_key(
            &token,
            user,
            json!({"name": "capped", "budget_total": "0.2"}),
        )
        .await;
    recv.fail.store(1, Ordering::SeqCst);
    let mut served = 0;
    loop {
        let r = app.chat(&capped, &chat_body("qwen-turbo")).await;
        if r.status() == 402 {
            break;
        }
        assert_eq!(r.status(), 200);
        served += 1;
        app.settle_journal().await;
    }
    assert_eq!(served, 7, "0.196 of 0.2");
    for _ in 0..3 {
        assert_eq!(
            app.chat(&capped, &chat_body("qwen-turbo")).await.status(),
            402
        );
    }
    // Spending on past zero (an overdraft of 1) makes the account overdue; a top-up brings
    // it back.
    app.send(
        reqwest::Method::PATCH,
        &format!("/api/admin/tenants/{tenant}"),
        &app.admin_token,
        Some(json!({"overdraft_limit": "1"})),
    )
    .await;
    let free = app.create_key(&token, user, json!({"name": "free"})).await;
    while app.chat(&free, &chat_body("qwen-turbo")).await.status() == 200 {
        app.settle_journal().await;
    }
    app.settle_journal().await;
    app.top_up(user, "1").await;

    let want = HashMap::from([
        ("key.budget_80".to_owned(), 1),
        ("key.budget_100".to_owned(), 1),
        ("balance.low".to_owned(), 1),
        ("account.status".to_owned(), 3),
    ]);
    eventually(20, "every event delivered", || async {
        counts(&recv) == want
    })
    .await;
    assert_eq!(recv.bad_signatures.load(Ordering::SeqCst), 0);
    // The receiver has every event as soon as it answered; the dispatcher records each
    // delivery in the outbox just after.
    let delivered = |alerts: &Value| {
        alerts["data"].as_array().is_some_and(|rows| {
            rows.iter()
                .all(|a| a["delivered_at"].is_string() && a["last_status"] == 200)
        })
    };
    eventually(10, "every delivery recorded", || async {
        let (_, alerts) = app
            .get(&format!("/api/tenants/{tenant}/alerts"), &app.admin_token)
            .await;
        delivered(&alerts)
    })
    .await;
    let (_, alerts) = app
        .get(&format!("/api/tenants/{tenant}/alerts"), &app.admin_token)
        .await;
    let rows = alerts["data"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{alerts}");
    assert!(delivered(&alerts), "{alerts}");
    assert_eq!(
        rows.iter().filter(|a| a["attempts"] == 2).count(),
        1,
        "the first delivery failed once and was tried again: {alerts}"
    );
    let statuses: Vec<(Value, Value)> = recv
        .events
        .lock()
        .unwrap()
        .values()
        .filter(|(e, _, _)| e == "account.status")
        .map(|(_, v, _)| (v["data"]["from"].clone(), v["data"]["to"].clone()))
        .collect();
    assert!(
        statuses.contains(&(json!("pending"), json!("active"))),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(json!("active"), json!("overdue"))),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(json!("overdue"), json!("active"))),
        "{statuses:?}"
    );

    // The receiver goes down; the next crossing waits in the outbox through a restart and
    // is delivered once, by the new process.
    recv.fail.store(usize::MAX, Ordering::SeqCst);
    let (s, _) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/admin/tenants/{tenant}"),
            &app.admin_token,
            Some(json!({"overdraft_limit": "0"})),
        )
        .await;
    assert_eq!(s, 200);
    while app.chat(&free, &chat_body("qwen-turbo")).await.status() == 200 {
        app.settle_journal().await;
    }
    app.settle_journal().await;
    eventually(10, "the balance.low event tried", || async {
        let (_, a) = app
            .get(
                &format!("/api/tenants/{tenant}/alerts?limit=1"),
                &app.admin_token,
            )
            .await;
        a["data"][0]["event"] == "balance.low" && a["data"][0]["attempts"].as_i64() >= Some(1)
    })
    .await;
    app.stop_keep_db().await;
    recv.fail.store(0, Ordering::SeqCst);
    let app = TestApp::spawn_on(&db, |_| {}).await;
    let want = HashMap::from([
        ("key.budget_80".to_owned(), 1),
        ("key.budget_100".to_owned(), 1),
        ("balance.low".to_owned(), 2),
        ("account.status".to_owned(), 3),
    ]);
    // The retry comes after its back-off (at most a few seconds here).
    eventually(
        20,
        "the waiting event delivered after the restart",
        || async { counts(&recv) == want },
    )
    .await;
    app.stop().await;
}
