//! `BILLING_DURABILITY=strict`: the gateway runs as a child process under load and is
//! killed with SIGKILL; after a restart, every call whose response reached a client is in
//! `usage_log`, and the balance is exactly the top-up minus the charges.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use neuropia::billing::Decimal;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::process::Child;
use uuid::Uuid;

/// Starts `neuropia serve` on `port` over database `db` and waits until it answers.
async fn start(db: &str, port: u16, mode: &str) -> Child {
    let mut command = gateway_command(db, port);
    command
        .env("BILLING_DURABILITY", mode)
        .env("JWT_SECRET", "durability-test-secret-0123");
    spawn_gateway(command, port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_durability_loses_no_answered_call_to_kill_9() {
    let mock = mock_upstream().await;
    mock.state.delay_ms.store(3, Ordering::SeqCst);
    let db = format!("neuropia_test_{}", Uuid::new_v4().simple());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut gateway = start(&db, port, "strict").await;

    let api = Api::connect(base.clone()).await;
    api.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, token) = api.register("strict@example.com").await;
    let top_up = d("1000");
    api.top_up(user, "1000").await;
    let key = api.create_key(&token, user, json!({"name": "k9"})).await;

    // 32 clients call in a loop; the gateway is killed while they do.
    let load = Arc::new(Load::default());
    let workers: Vec<_> = (0..32)
        .map(|_| {
            call_until_stopped(
                api.client.clone(),
                format!("{base}/v1/chat/completions"),
                key.clone(),
                load.clone(),
            )
        })
        .collect();
    load.serves(200, "calls served before the kill").await;
    gateway.start_kill().unwrap(); // SIGKILL
    gateway.wait().await.unwrap();
    load.stop.store(true, Ordering::SeqCst);
    let mut answered = HashSet::new();
    for w in workers {
        answered.extend(w.await.unwrap());
    }
    assert!(
        answered.len() >= 100,
        "enough load before the kill: {}",
        answered.len()
    );

    // Restart on the same database: every answered call was charged, exactly once.
    let gateway = start(&db, port, "strict").await;
    let mut conn = PgConnection::connect(&format!("{}/{db}", server_url()))
        .await
        .unwrap();
    let logged = billed_request_ids(&mut conn, user).await;
    let missing: Vec<&String> = answered.difference(&logged).collect();
    assert!(missing.is_empty(), "answered but not billed: {missing:?}");
    let (balance, charges): (Decimal, Decimal) = sqlx::query_as(
        "SELECT p.balance, COALESCE((SELECT -sum(amount) FROM data.balance_ledger
                                      WHERE user_id = p.user_id AND kind = 'charge'), 0)
         FROM data.user_profile p WHERE p.user_id = $1",
    )
    .bind(user)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // One mock call costs (12 * 0.001 + 8 * 0.002) = 0.028.
    assert_eq!(charges, d("0.028") * Decimal::from(logged.len() as u64));
    assert_eq!(balance, top_up - charges);
    // The restarted gateway agrees, and serves again.
    let api = Api::connect(base.clone()).await;
    assert_eq!(api.api_balance(user).await.0, balance);
    assert_eq!(api.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
    eprintln!(
        "kill -9 under load: {} answered, {} billed (the rest were charged but their \
         responses were cut off)",
        answered.len(),
        logged.len()
    );

    drop(gateway);
    drop(conn);
    if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", server_url())).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await;
    }
}
