//! Money under concurrency: bursts on one key, rpm under a burst, and a balance actor
//! panicking mid-burst. Every served call is charged exactly once.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use neuropia::billing::Decimal;
use neuropia::db::users::DEFAULT_TENANT;
use serde_json::json;
use uuid::Uuid;

/// Fires `n` concurrent chats; returns (status, x-request-id) per call.
async fn burst(
    app: &TestApp,
    key: &str,
    model: &str,
    n: usize,
) -> Vec<(u16, Option<String>, Option<String>)> {
    let body = chat_body(model);
    let calls = (0..n).map(|_| {
        let body = body.clone();
        async move {
            let r = app.chat(key, &body).await;
            let status = r.status().as_u16();
            let id = r
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, id, retry)
        }
    });
    join_all(calls).await
}

async fn usage_ids(app: &TestApp, user: Uuid) -> HashSet<String> {
    sqlx::query_scalar::<_, String>("SELECT request_id FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_all(app.pool())
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The calls the ledger's charge rows account for (a row sums one flush's calls).
async fn charge_count(app: &TestApp, user: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0) FROM data.balance_ledger
         WHERE user_id = $1 AND kind = 'charge'",
    )
    .bind(user)
    .fetch_one(app.pool())
    .await
    .unwrap()
}

/// Rates and markup so that one mock call (12 in, 8 out) costs exactly 0.035:
/// (12 * 0.001 + 8 * 0.002) * 1.25.
async fn priced_app(mock: &MockUpstream) -> TestApp {
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", mock, "0.001", "0.002")
        .await;
    app.set_markup(DEFAULT_TENANT, "25").await;
    app
}

const CHARGE: &str = "0.035";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_300_on_a_key_funded_for_50_charges_every_served_call_once() {
    let mock = mock_upstream().await;
    // A little upstream latency keeps many calls in flight at once.
    mock.state
        .delay_ms
        .store(20, std::sync::atomic::Ordering::SeqCst);
    let app = priced_app(&mock).await;
    let (user, token) = app.register("burst@example.com").await;
    let key = app.create_key(&token, user, json!({"name": "burst"})).await;
    let charge = d(CHARGE);
    let funded = charge * Decimal::from(50);
    app.top_up(user, &funded.to_string()).await;

    let results = burst(&app, &key, "qwen-turbo", 300).await;
    let served: Vec<&String> = results
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .filter_map(|(_, id, _)| id.as_ref())
        .collect();
    let refused = results.iter().filter(|(s, _, _)| *s == 402).count();
    assert_eq!(
        served.len() + refused,
        300,
        "only 200 or 402 expected: {results:?}"
    );
    assert!(
        !served.is_empty() && served.len() <= 51,
        "served {}",
        served.len()
    );

    app.settle_journal().await;
    let (balance, status) = app.db_balance(user).await;
    let n = Decimal::from(served.len() as u64);
    assert_eq!(
        balance,
        funded - n * charge,
        "every served call charged exactly once"
    );
    assert_eq!(app.api_balance(user).await.0, balance);
    let ids = usage_ids(&app, user).await;
    assert_eq!(ids.len(), served.len());
    assert!(
        served.iter().all(|id| ids.contains(*id)),
        "one usage row per served call"
    );
    assert_eq!(charge_count(&app, user).await, served.len() as i64);
    assert_eq!(
        mock.calls(),
        served.len(),
        "refused calls never reached the upstream"
    );

    // A call is admitted only when its reservation fits ((16 prompt-estimate * 0.001 +
    // 8 * 0.002) * 1.25 = 0.04), and reservations cover the actual charge: never below zero.
    assert!(balance >= Decimal::ZERO, "no overdraft: {balance}");

    // Calls keep being served until what is left cannot cover one reservation, then 402;
    // the account stays active (it never went below zero).
    let mut extra = 0;
    loop {
        let r = app.chat(&key, &chat_body("qwen-turbo")).await;
        match r.status().as_u16() {
            200 => extra += 1,
            402 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "insufficient_balance");
                break;
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(extra <= 50, "never refused");
    }
    app.settle_journal().await;
    let (balance, status_after) = app.db_balance(user).await;
    let total = Decimal::from((served.len() + extra) as u64);
    assert_eq!(balance, funded - total * charge);
    assert!(balance >= Decimal::ZERO && balance < d("0.04"), "{balance}");
    assert_eq!(
        (status.as_str(), status_after.as_str()),
        ("active", "active")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rpm_30_under_100_concurrent_calls_serves_exactly_30() {
    let mock = mock_upstream().await;
    let app = priced_app(&mock).await;
    let Customer { user, key, .. } = app
        .customer(
            "rpm@example.com",
            "1000",
            json!({"name": "rpm", "rate_limit_rpm": 30}),
        )
        .await;

    let results = burst(&app, &key, "qwen-turbo", 100).await;
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    let limited: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(ok, 30);
    assert_eq!(limited.len(), 70);
    for (_, _, retry) in &limited {
        let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!((1..=2).contains(&secs), "Retry-After {secs}");
    }
    app.settle_journal().await;
    assert_eq!(usage_ids(&app, user).await.len(), 30);
    let (balance, _) = app.db_balance(user).await;
    assert_eq!(balance, d("1000") - Decimal::from(30) * d(CHARGE));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_balance_actor_panicking_mid_burst_is_restarted_and_money_stays_exact() {
    let mock = mock_upstream().await;
    mock.state
        .delay_ms
        .store(5, std::sync::atomic::Ordering::SeqCst);
    let app = priced_app(&mock).await;
    let Customer { user, key, .. } = app
        .customer("crash@example.com", "1000", json!({"name": "crash"}))
        .await;

    let fault = json!({"actor": format!("balance:{user}"), "fault": "panic"});
    let faults = async {
        for i in 1..=3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let (status, body) = app
                .post("/api/admin/faults", &app.admin_token, fault.clone())
                .await;
            assert_eq!(status, 200, "{body}");
            // Wait for this panic to happen and be supervised before the next one.
            let mut restarts = 0;
            for _ in 0..500 {
                let (_, health) = app.get("/health", &app.admin_token).await;
                restarts = health["actors"]["balance_actors"]["restarts"]
                    .as_u64()
                    .unwrap_or(0);
                if restarts >= i {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(restarts, i);
        }
    };
    let (results, ()) = tokio::join!(burst(&app, &key, "qwen-turbo", 400), faults);

    let served: Vec<&String> = results
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .filter_map(|(_, id, _)| id.as_ref())
        .collect();
    let unavailable = results.iter().filter(|(s, _, _)| *s == 503).count();
    assert_eq!(
        served.len() + unavailable,
        400,
        "only 200 or 503: {results:?}"
    );
    assert!(
        served.len() >= 300,
        "most calls survive the crashes: {}",
        served.len()
    );

    app.settle_journal().await;
    let ids = usage_ids(&app, user).await;
    assert_eq!(ids.len(), served.len(), "one usage row per served call");
    assert!(served.iter().all(|id| ids.contains(*id)));
    let (balance, status) = app.db_balance(user).await;
    assert_eq!(
        balance,
        d("1000") - Decimal::from(served.len() as u64) * d(CHARGE)
    );
    assert_eq!(status, "active");
    // The restarted actor agrees with the database.
    assert_eq!(app.api_balance(user).await, (balance, "active".into()));

    let (_, health) = app.get("/health", &app.admin_token).await;
    assert_eq!(
        health["actors"]["balance_actors"]["restarts"], 3,
        "{health}"
    );
    assert_eq!(health["actors"]["balance_actors"]["live"], 1, "{health}");
    assert_eq!(health["actors"]["balances"], "running");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_users_bursting_at_once_are_each_charged_exactly_across_ledger_lanes() {
    let mock = mock_upstream().await;
    let app = priced_app(&mock).await;
    assert!(
        app.state.journal.lanes() > 1,
        "the default ledger has several lanes"
    );
    let mut users = Vec::new();
    for i in 0..12 {
        let Customer { user, key, .. } = app
            .customer(&format!("lanes{i}@example.com"), "10", json!({"name": "l"}))
            .await;
        users.push((user, key));
    }
    // 12 users x 25 calls, all at once: their charges spread over the lanes, which commit
    // side by side.
    let bursts = users
        .iter()
        .map(|(_, key)| burst(&app, key, "qwen-turbo", 25));
    let results = join_all(bursts).await;
    app.settle_journal().await;
    for ((user, _), calls) in users.iter().zip(results) {
        let served = calls.iter().filter(|(s, _, _)| *s == 200).count();
        assert_eq!(served, 25, "{user}: every call served");
        let expected = d("10") - d(CHARGE) * Decimal::from(served);
        assert_eq!(
            app.db_balance(*user).await.0,
            expected,
            "{user}: PostgreSQL"
        );
        assert_eq!(
            app.api_balance(*user).await.0,
            expected,
            "{user}: balance actor"
        );
        assert_eq!(charge_count(&app, *user).await, 25, "{user}: ledger rows");
        let ids: HashSet<String> = calls.into_iter().filter_map(|(_, id, _)| id).collect();
        assert_eq!(
            usage_ids(&app, *user).await,
            ids,
            "{user}: one usage row per call"
        );
    }
    app.stop().await;
}
