//! Wholesaler controls on a key: spend budgets held like balances under a burst, expiry,
//! and a client address allow-list.

mod common;

use common::*;
use futures::future::join_all;
use neuropia::billing::Decimal;
use neuropia::db::users::DEFAULT_TENANT;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// One mock call (12 in, 8 out) costs (12 * 0.001 + 8 * 0.002) * 1.25 = 0.035; its
/// reservation, (16 estimated * 0.001 + 8 * 0.002) * 1.25 = 0.04.
const CHARGE: &str = "0.035";
const RESERVE: &str = "0.04";

async fn priced(mock: &MockUpstream) -> TestApp {
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", mock, "0.001", "0.002")
        .await;
    app.set_markup(DEFAULT_TENANT, "25").await;
    app
}

async fn key_id(app: &TestApp, token: &str, user: Uuid, name: &str) -> String {
    let (_, keys) = app
        .get(&format!("/api/users/{user}/virtual-keys"), token)
        .await;
    keys["data"]
        .as_array()
        .expect("a key list")
        .iter()
        .find(|k| k["name"] == name)
        .expect("the key is listed")["id"]
        .as_str()
        .expect("an id")
        .to_owned()
}

async fn spent(app: &TestApp, token: &str, id: &str) -> Value {
    let (s, k) = app.get(&format!("/api/virtual-keys/{id}"), token).await;
    assert_eq!(s, 200, "{k}");
    k
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("a JSON body");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_300_on_a_key_with_budget_for_50_spends_within_it_exactly() {
    let mock = mock_upstream().await;
    mock.state
        .delay_ms
        .store(20, std::sync::atomic::Ordering::SeqCst);
    let app = priced(&mock).await;
    let (user, token) = app.register("budget@example.com").await;
    app.top_up(user, "1000").await;
    let charge = d(CHARGE);
    let budget = charge * Decimal::from(50);
    let key = app
        .create_key(
            &token,
            user,
            json!({"name": "capped", "budget_total": budget.to_string()}),
        )
        .await;
    let id = key_id(&app, &token, user, "capped").await;
    assert_eq!(spent(&app, &token, &id).await["budget_total"], "1.75");

    let calls = (0..300)
        .map(|_| async { error_code(app.chat(&key, &chat_body("qwen-turbo")).await).await });
    let results = join_all(calls).await;
    let served = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results
        .iter()
        .filter(|(s, c)| *s == 402 && c == "key_budget_exceeded")
        .count();
    assert_eq!(served + refused, 300, "{results:?}");
    assert!(served > 0 && served <= 50, "served {served}");

    // Then, once the burst's charges are committed (until then their holds count at the
    // worst case), one at a time until what is left cannot hold one call's worst case.
    app.settle_journal().await;
    let mut more = 0;
    loop {
        let (status, code) = error_code(app.chat(&key, &chat_body("qwen-turbo")).await).await;
        if status == 402 {
            assert_eq!(code, "key_budget_exceeded");
            break;
        }
        assert_eq!(status, 200);
        more += 1;
        assert!(served + more <= 50, "past the budget");
    }
    eprintln!("budget for 50: {served} served in the burst of 300, {more} after it");
    app.settle_journal().await;
    let k = spent(&app, &token, &id).await;
    let total = d(k["spent_total"].as_str().unwrap());
    assert_eq!(total, charge * Decimal::from((served + more) as u64), "{k}");
    assert!(total <= budget && budget - total < d(RESERVE), "{k}");
    assert_eq!(k["spent_this_month"], k["spent_total"]);
    // The holds all went: the refused calls' at once, the served ones with their charges.
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM data.key_budget_hold")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(holds, 0);
    // The balance paid exactly what the key spent; the upstream saw only the served calls.
    assert_eq!(app.db_balance(user).await.0, d("1000") - total);
    assert_eq!(mock.calls(), served + more);

    // A higher budget serves again; a monthly one below what was spent refuses.
    let patch = |body: Value| {
        let (app, token, id) = (&app, token.clone(), id.clone());
        async move {
            app.send(
                Method::PATCH,
                &format!("/api/virtual-keys/{id}"),
                &token,
                Some(body),
            )
            .await
        }
    };
    let (s, _) = patch(json!({"budget_total": "2"})).await;
    assert_eq!(s, 200);
    assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
    let (s, _) = patch(json!({"budget_monthly": "1"})).await;
    assert_eq!(s, 200);
    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 402);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this month"),
        "{body}"
    );
    let (s, _) = patch(json!({"budget_total": null, "budget_monthly": null})).await;
    assert_eq!(s, 200);
    assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
    for bad in [
        json!({"budget_total": "-1"}),
        json!({"budget_monthly": "abc"}),
    ] {
        let (s, body) = patch(bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_address_allow_lists_refuse_with_their_codes() {
    let mock = mock_upstream().await;
    let app = priced(&mock).await;
    let (user, token) = app.register("gates@example.com").await;
    app.top_up(user, "10").await;
    let past = "2020-01-01T00:00:00Z";
    let expired = app
        .create_key(&token, user, json!({"name": "old", "expires_at": past}))
        .await;
    assert_eq!(
        error_code(app.chat(&expired, &chat_body("qwen-turbo")).await).await,
        (401, "key_expired".to_owned())
    );
    let models = |key: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        error_code(models(expired.clone()).await).await.1,
        "key_expired"
    );
    let old = key_id(&app, &token, user, "old").await;
    let (s, _) = app
        .send(
            Method::PATCH,
            &format!("/api/virtual-keys/{old}"),
            &token,
            Some(json!({"expires_at": "2999-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        app.chat(&expired, &chat_body("qwen-turbo")).await.status(),
        200
    );

    // The tests call from 127.0.0.1.
    let elsewhere = app
        .create_key(
            &token,
            user,
            json!({"name": "office", "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"]}),
        )
        .await;
    assert_eq!(
        error_code(app.chat(&elsewhere, &chat_body("qwen-turbo")).await).await,
        (403, "ip_not_allowed".to_owned())
    );
    assert_eq!(
        error_code(models(elsewhere.clone()).await).await.1,
        "ip_not_allowed"
    );
    let office = key_id(&app, &token, user, "office").await;
    let (s, k) = app
        .send(
            Method::PATCH,
            &format!("/api/virtual-keys/{office}"),
            &token,
            Some(json!({"allowed_ips": ["10.0.0.0/8", "127.0.0.1"]})),
        )
        .await;
    assert_eq!(s, 200, "{k}");
    assert_eq!(k["allowed_ips"], json!(["10.0.0.0/8", "127.0.0.1/32"]));
    assert_eq!(
        app.chat(&elsewhere, &chat_body("qwen-turbo"))
            .await
            .status(),
        200
    );
    for bad in [
        json!(["10.0.0.0/33"]),
        json!(["example.com"]),
        json!(vec!["10.0.0.1"; 33]),
    ] {
        let (s, body) = app
            .send(
                Method::PATCH,
                &format!("/api/virtual-keys/{office}"),
                &token,
                Some(json!({ "allowed_ips": bad })),
            )
            .await;
        assert_eq!(s, 400, "{body}");
    }
    app.settle_journal().await;
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(refused, 2, "only the two served calls were billed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_a_tenant_admin_set_may_only_be_lowered_by_the_user() {
    let app = TestApp::spawn().await;
    let tenant = app.create_tenant("resellers", "0", "0").await;
    let (_, admin) = app
        .tenant_user(
            &app.admin_token,
            tenant,
            "reseller@ctl.example",
            "tenant_admin",
        )
        .await;
    let (user, token) = app
        .tenant_user(&admin, tenant, "customer@ctl.example", "user")
        .await;
    app.create_key(
        &admin,
        user,
        json!({"name": "resold", "budget_monthly": "20", "expires_at": "2999-01-01T00:00:00Z",
               "allowed_ips": ["10.0.0.0/8", "192.0.2.0/24"]}),
    )
    .await;
    let id = key_id(&app, &token, user, "resold").await;
    let path = format!("/api/virtual-keys/{id}");
    for (body, status) in [
        (json!({"budget_monthly": "25"}), 403),
        (json!({"budget_monthly": null}), 403),
        (json!({"expires_at": null}), 403),
        (json!({"expires_at": "3999-01-01T00:00:00Z"}), 403),
        (json!({"allowed_ips": []}), 403),
        (json!({"allowed_ips": ["0.0.0.0/0"]}), 403),
        (json!({"budget_monthly": "15"}), 200),
        (json!({"expires_at": "2998-01-01T00:00:00Z"}), 200),
        (json!({"allowed_ips": ["10.0.0.0/8"]}), 200),
    ] {
        let (s, out) = app
            .send(Method::PATCH, &path, &token, Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body}: {out}");
    }
    let (s, out) = app
        .send(
            Method::PATCH,
            &path,
            &admin,
            Some(json!({"budget_monthly": "30"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), out["budget_monthly"].as_str()),
        (200, Some("30"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holder_reads_its_limits_spend_and_balance_with_the_key_alone() {
    let mock = mock_upstream().await;
    let app = priced(&mock).await;
    let (user, token) = app.register("self@example.com").await;
    app.top_up(user, "5").await;
    let key = app
        .create_key(
            &token,
            user,
            json!({"name": "mine", "budget_total": "1", "rate_limit_rpm": 60,
                   "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    for _ in 0..2 {
        assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
    }
    app.settle_journal().await;
    let get = |path: &'static str, key: String| {
        let app = &app;
        async move {
            let r = app
                .client
                .get(app.url(path))
                .bearer_auth(key)
                .send()
                .await
                .expect("a response");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("JSON"))
        }
    };
    let (s, info) = get("/api/key/info", key.clone()).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(
        (
            &info["key"]["spent_total"],
            &info["key"]["budget_total"],
            &info["key"]["rate_limit_rpm"],
            &info["account"]["balance"],
            &info["account"]["status"],
            &info["available"],
        ),
        (
            &json!("0.07"),
            &json!("1"),
            &json!(60),
            &json!("4.93"),
            &json!("active"),
            &json!("0.93")
        ),
        "{info}"
    );
    assert!(!info.to_string().contains(&key), "never the secret");
    let (s, sub) = get("/v1/dashboard/billing/subscription", key.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(
        sub["hard_limit_usd"],
        json!(1.0),
        "0.07 spent + 0.93 left: {sub}"
    );
    assert_eq!(sub["access_until"], json!(32472144000_i64));
    let (s, usage) = get("/v1/dashboard/billing/usage", key.clone()).await;
    assert_eq!((s, &usage["total_usage"]), (200, &json!(7.0)), "{usage}");
    let (_, later) = get(
        "/v1/dashboard/billing/usage?start_date=2999-01-01&end_date=2999-02-01",
        key.clone(),
    )
    .await;
    assert_eq!(later["total_usage"], json!(0.0));
    for bad in [
        "/v1/dashboard/billing/usage?start_date=yesterday",
        "/v1/dashboard/billing/usage?start_date=2026-02-01&end_date=2026-01-01",
    ] {
        let r = app
            .client
            .get(app.url(bad))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let (s, _) = get("/api/key/info", "vk_nope".into()).await;
    assert_eq!(s, 401);
    let id = key_id(&app, &token, user, "mine").await;
    let (s, _) = app
        .post(
            &format!("/api/virtual-keys/{id}/deactivate"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = get("/api/key/info", key.clone()).await;
    assert_eq!(s, 401, "a revoked key reads nothing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_allow_list_reads_the_client_behind_a_trusted_proxy() {
    let mock = mock_upstream().await;
    // The tests' peer, 127.0.0.1, is the trusted proxy: the client is what it reports.
    let app = TestApp::spawn_with(|c| c.trusted_proxies = "127.0.0.1/32".into()).await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, token) = app.register("proxied@example.com").await;
    app.top_up(user, "10").await;
    let key = app
        .create_key(
            &token,
            user,
            json!({"name": "office", "allowed_ips": ["203.0.113.0/24"]}),
        )
        .await;
    let from = |client: &'static str| {
        let (app, key) = (&app, key.clone());
        async move {
            let r = app
                .client
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(key)
                .header("x-forwarded-for", client)
                .json(&chat_body("qwen-turbo"))
                .send()
                .await
                .expect("a response");
            error_code(r).await
        }
    };
    assert_eq!(from("203.0.113.7").await.0, 200);
    assert_eq!(
        from("198.51.100.7").await,
        (403, "ip_not_allowed".to_owned())
    );
    // A client cannot pick its address: the header's rightmost untrusted entry counts.
    assert_eq!(
        from("203.0.113.7, 198.51.100.7").await,
        (403, "ip_not_allowed".to_owned())
    );
    assert_eq!(
        app.chat(&key, &chat_body("qwen-turbo")).await.status(),
        403,
        "the proxy itself"
    );
    app.stop().await;
}
