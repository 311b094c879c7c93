//! The platform API: key lifecycle reaching live actors, isolation between users and
//! tenants, redemption codes, thresholds, the ledger, prices and usage.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use neuropia::billing::Decimal;
use neuropia::db::users::DEFAULT_TENANT;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn status_of(app: &TestApp, key: &str, model: &str) -> u16 {
    app.chat(key, &chat_body(model)).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_reach_the_live_key_actor_before_the_next_call() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    app.set_model("qwen-plus", json!({"targets": [{"provider": "mock"}]}))
        .await;
    app.set_rate("mock", "qwen-plus", "0.001", "0.002").await;
    let (user, token) = app.register("keys@example.com").await;
    app.top_up(user, "100").await;
    let (status, created) = app
        .post(
            &format!("/api/users/{user}/virtual-keys"),
            &token,
            json!({"name": "main", "rate_limit_tpm": 100000}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["virtual_key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        created["masked_key"]
            .as_str()
            .unwrap()
            .ends_with(&key[key.len() - 4..])
    );
    assert_eq!(
        status_of(&app, &key, "qwen-turbo").await,
        200,
        "the key actor is live"
    );

    let key_path = format!("/api/virtual-keys/{id}");
    let patch = |body: Value| app.send(Method::PATCH, &key_path, &token, Some(body));
    let (s, k) = patch(json!({"allowed_models": ["qwen-plus"], "name": "renamed"})).await;
    assert_eq!(s, 200, "{k}");
    assert_eq!(
        (k["name"].as_str(), k["allowed_models"].clone()),
        (Some("renamed"), json!(["qwen-plus"]))
    );
    assert_eq!(
        status_of(&app, &key, "qwen-turbo").await,
        403,
        "allow-list applied at once"
    );
    assert_eq!(status_of(&app, &key, "qwen-plus").await, 200);

    let (s, _) = patch(json!({"rate_limit_rpm": 1, "allowed_models": []})).await;
    assert_eq!(s, 200);
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 200);
    assert_eq!(
        status_of(&app, &key, "qwen-turbo").await,
        429,
        "rpm applied at once"
    );
    let (s, k) = patch(json!({"rate_limit_rpm": null})).await;
    assert_eq!(
        (
            s.as_u16(),
            k["rate_limit_rpm"].clone(),
            k["rate_limit_tpm"].clone()
        ),
        (200, Value::Null, json!(100000))
    );
    assert_eq!(
        status_of(&app, &key, "qwen-turbo").await,
        200,
        "limit removed"
    );

    for bad in [
        json!({"rate_limit_rpm": 0}),
        json!({"name": ""}),
        json!({"allowed_models": [""]}),
        json!({"bogus": 1}),
    ] {
        let (s, _) = patch(bad.clone()).await;
        assert_eq!(s, 400, "{bad}");
    }

    // Deactivate: refused at once, with the reason kept.
    let (s, k) = app
        .post(
            &format!("/api/virtual-keys/{id}/deactivate"),
            &token,
            json!({"reason": "leaked"}),
        )
        .await;
    assert_eq!(
        (
            s.as_u16(),
            k["is_active"].as_bool(),
            k["status_reason"].as_str()
        ),
        (200, Some(false), Some("leaked"))
    );
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 401);
    let r = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = app
        .send(
            Method::POST,
            &format!("/api/virtual-keys/{id}/activate"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 200);

    // Rotate: the new secret works at once, the old one is refused at once; settings stay.
    patch(json!({"rate_limit_rpm": 1000})).await;
    let (s, rotated) = app
        .post(&format!("/api/virtual-keys/{id}/rotate"), &token, json!({}))
        .await;
    assert_eq!(s, 200, "{rotated}");
    let new_key = rotated["virtual_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["rate_limit_rpm"], 1000);
    assert_eq!(
        status_of(&app, &key, "qwen-turbo").await,
        401,
        "old secret refused"
    );
    assert_eq!(status_of(&app, &new_key, "qwen-turbo").await, 200);
    let (_, listed) = app
        .get(&format!("/api/users/{user}/virtual-keys"), &token)
        .await;
    assert!(
        listed["data"][0]["masked_key"]
            .as_str()
            .unwrap()
            .ends_with(&new_key[new_key.len() - 4..])
    );
    assert!(listed["data"][0]["rotated_at"].is_string());

    // The brief's configuration lookup, by id or by the key itself.
    for path in [
        format!("/api/config/virtual-keys/{id}"),
        format!("/api/config/virtual-keys/{new_key}"),
    ] {
        let (s, cfg) = app.get(&path, &token).await;
        assert_eq!(s, 200, "{cfg}");
        assert_eq!(cfg["key"]["id"], id.as_str());
        let models: Vec<&str> = cfg["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model"].as_str().unwrap())
            .collect();
        assert_eq!(models, vec!["qwen-plus", "qwen-turbo"]);
        assert_eq!(
            cfg["models"][1]["plan"]["targets"][0]["provider"],
            "dashscope"
        );
        assert!(!cfg.to_string().contains(&new_key) && !cfg.to_string().contains(PLATFORM_KEY));
    }
    let (s, _) = app
        .get(&format!("/api/config/virtual-keys/{key}"), &token)
        .await;
    assert_eq!(s, 404, "the old secret finds nothing");
    let (s, _) = app
        .get(&format!("/api/virtual-keys/{}", Uuid::new_v4()), &token)
        .await;
    assert_eq!(s, 404);
    let (s, _) = app.get("/api/virtual-keys/not-a-uuid", &token).await;
    assert_eq!(s, 400);
    app.stop().await;
}

/// Every per-user, per-key and per-tenant endpoint, called by someone who may not see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_tenants_are_isolated() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let ta = app.create_tenant("tenant-a", "10", "0").await;
    let tb = app.create_tenant("tenant-b", "10", "0").await;
    let (_, ta_admin) = app
        .tenant_user(&admin, ta, "admin@a.example", "tenant_admin")
        .await;
    let (_, tb_admin) = app
        .tenant_user(&admin, tb, "admin@b.example", "tenant_admin")
        .await;
    let (a1, a1_token) = app
        .tenant_user(&ta_admin, ta, "one@a.example", "user")
        .await;
    let (a2, a2_token) = app
        .tenant_user(&ta_admin, ta, "two@a.example", "user")
        .await;
    let (b1, b1_token) = app
        .tenant_user(&tb_admin, tb, "one@b.example", "user")
        .await;
    let key_id = {
        let (s, k) = app
            .post(
                &format!("/api/users/{a1}/virtual-keys"),
                &a1_token,
                json!({"name": "a1"}),
            )
            .await;
        assert_eq!(s, 201);
        k["id"].as_str().unwrap().to_owned()
    };
    app.top_up(a1, "5").await;
    let code = app
        .post(
            "/api/admin/redemption-codes",
            &admin,
            json!({"amount": "1", "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await
        .1["data"][0]["code"]
        .as_str()
        .unwrap()
        .to_owned();

    let get = Method::GET;
    let post = Method::POST;
    let user_paths: Vec<(Method, String, Option<Value>)> = vec![
        (get.clone(), format!("/api/users/{a1}"), None),
        (get.clone(), format!("/api/users/{a1}/balance"), None),
        (get.clone(), format!("/api/users/{a1}/ledger"), None),
        (get.clone(), format!("/api/users/{a1}/prices"), None),
        (get.clone(), format!("/api/users/{a1}/usage"), None),
        (get.clone(), format!("/api/users/{a1}/virtual-keys"), None),
        (
            post.clone(),
            format!("/api/users/{a1}/virtual-keys"),
            Some(json!({"name": "x"})),
        ),
        (
            post.clone(),
            format!("/api/users/{a1}/redemptions"),
            Some(json!({"code": code})),
        ),
        (get.clone(), format!("/api/virtual-keys/{key_id}"), None),
        (
            Method::PATCH,
            format!("/api/virtual-keys/{key_id}"),
            Some(json!({"name": "stolen"})),
        ),
        (
            post.clone(),
            format!("/api/virtual-keys/{key_id}/deactivate"),
            None,
        ),
        (
            post.clone(),
            format!("/api/virtual-keys/{key_id}/activate"),
            None,
        ),
        (
            post.clone(),
            format!("/api/virtual-keys/{key_id}/rotate"),
            None,
        ),
        (
            get.clone(),
            format!("/api/config/virtual-keys/{key_id}"),
            None,
        ),
    ];
    // Another user of the same tenant, a user of another tenant, another tenant's admin.
    for (who, token) in [
        ("a2", &a2_token),
        ("b1", &b1_token),
        ("tb admin", &tb_admin),
    ] {
        for (method, path, body) in &user_paths {
            let (s, body_out) = app.send(method.clone(), path, token, body.clone()).await;
            assert_eq!(s, 404, "{who} {method} {path}: {body_out}");
            let text = body_out.to_string();
            assert!(
                !text.contains("one@a.example") && !text.contains(&a1.to_string()),
                "{who} leak: {text}"
            );
        }
    }
    // Nothing changed: the key still has its name and works for its owner's admin.
    for (method, path, _) in user_paths.iter().filter(|(m, _, _)| *m == Method::GET) {
        let (s, body) = app.send(method.clone(), path, &ta_admin, None).await;
        assert_eq!(s, 200, "tenant admin {path}: {body}");
    }
    let (_, k) = app
        .get(&format!("/api/virtual-keys/{key_id}"), &a1_token)
        .await;
    assert_eq!(
        (k["name"].as_str(), k["is_active"].as_bool()),
        (Some("a1"), Some(true))
    );
    let (s, _) = app.get(&format!("/api/users/{b1}"), &ta_admin).await;
    assert_eq!(s, 404, "tenant admin of A on a user of B");
    let (s, _) = app.get(&format!("/api/users/{a2}"), &a1_token).await;
    assert_eq!(s, 404);

    // Tenants.
    let tenant_paths = [
        format!("/api/tenants/{ta}"),
        format!("/api/tenants/{ta}/users"),
        format!("/api/tenants/{ta}/usage"),
    ];
    for token in [&tb_admin, &a1_token, &b1_token] {
        for path in &tenant_paths {
            let (s, body) = app.get(path, token).await;
            assert_eq!(s, 404, "{path}: {body}");
        }
        let (s, _) = app
            .post(
                &format!("/api/tenants/{ta}/users"),
                token,
                json!({"email": "intruder@x.example", "password": USER_PASSWORD, "username": "i"}),
            )
            .await;
        assert_eq!(s, 404);
    }
    for path in &tenant_paths {
        let (s, body) = app.get(path, &ta_admin).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    let (_, users) = app
        .get(&format!("/api/tenants/{ta}/users"), &ta_admin)
        .await;
    let emails: Vec<&str> = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        vec!["admin@a.example", "one@a.example", "two@a.example"]
    );
    let (s, _) = app
        .post(&format!("/api/tenants/{ta}/users"), &ta_admin,
            json!({"email": "boss@a.example", "password": USER_PASSWORD, "username": "b", "role": "tenant_admin"}))
        .await;
    assert_eq!(s, 403, "only platform admins make tenant admins");

    // Platform-admin endpoints refuse tenant admins and users with 403.
    let admin_only: Vec<(Method, String, Value)> = vec![
        (
            post.clone(),
            format!("/api/users/{a1}/topups"),
            json!({"amount": "1"}),
        ),
        (
            post.clone(),
            "/api/admin/redemption-codes".into(),
            json!({"amount": "1", "expires_at": "2099-01-01T00:00:00Z"}),
        ),
        (
            get.clone(),
            "/api/admin/redemption-codes".into(),
            Value::Null,
        ),
        (
            post.clone(),
            "/api/admin/tenants".into(),
            json!({"name": "evil"}),
        ),
        (get.clone(), "/api/admin/tenants".into(), Value::Null),
        (
            Method::PATCH,
            format!("/api/admin/tenants/{ta}"),
            json!({"markup_percent": "0"}),
        ),
        (
            Method::PUT,
            "/api/admin/provider-rates".into(),
            json!({"provider": "p", "model": "m", "input_rate": 0, "output_rate": 0}),
        ),
        (get.clone(), "/api/admin/provider-rates".into(), Value::Null),
        (
            Method::PUT,
            "/api/admin/model-configs".into(),
            json!({"model": "m", "provider": "mock"}),
        ),
        (get.clone(), "/api/admin/model-configs".into(), Value::Null),
        (
            Method::PATCH,
            format!("/api/admin/users/{a1}"),
            json!({"role": "tenant_admin"}),
        ),
    ];
    for token in [&ta_admin, &a1_token] {
        for (method, path, body) in &admin_only {
            let body = (!body.is_null()).then(|| body.clone());
            let (s, out) = app.send(method.clone(), path, token, body).await;
            assert_eq!(s, 403, "{method} {path}: {out}");
        }
    }
    // And without a token, 401.
    let anonymous = admin_only
        .iter()
        .map(|(m, p, b)| (m.clone(), p.clone(), (!b.is_null()).then(|| b.clone())))
        .chain(user_paths.iter().cloned());
    for (method, path, body) in anonymous {
        let (s, _) = app.send(method.clone(), &path, "", body).await;
        assert_eq!(s, 401, "{method} {path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redemption_codes_credit_exactly_once_and_thresholds_hold() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let tenant = app.create_tenant("thresholds", "25", "5").await;
    let (u1, t1) = app
        .tenant_user(&app.admin_token, tenant, "u1@t.example", "user")
        .await;
    let (u2, t2) = app
        .tenant_user(&app.admin_token, tenant, "u2@t.example", "user")
        .await;

    let (s, minted) = app
        .post("/api/admin/redemption-codes", &app.admin_token,
            json!({"amount": "7.5", "expires_at": "2099-01-01T00:00:00Z", "count": 2, "note": "promo"}))
        .await;
    assert_eq!(s, 201, "{minted}");
    let codes: Vec<String> = minted["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 2);
    let (_, listed) = app
        .get("/api/admin/redemption-codes", &app.admin_token)
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&codes[0]),
        "codes are listed masked"
    );

    // The same code redeemed 10 times at once by two users: exactly one credit.
    let attempts = (0..10).map(|i| {
        let (user, token) = if i % 2 == 0 { (u1, &t1) } else { (u2, &t2) };
        let code = codes[0].to_lowercase();
        let app = &app;
        async move {
            app.post(
                &format!("/api/users/{user}/redemptions"),
                token,
                json!({"code": code}),
            )
            .await
        }
    });
    let results = join_all(attempts).await;
    let ok: Vec<&(reqwest::StatusCode, Value)> =
        results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(s, _)| *s == 200 || *s == 409),
        "{results:?}"
    );
    let winner = Uuid::parse_str(ok[0].1["user_id"].as_str().unwrap()).unwrap();
    app.settle_journal().await;
    let credits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM data.balance_ledger WHERE kind = 'redemption'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(credits, 1);
    let redeemed_by: Option<Uuid> = sqlx::query_scalar(
        "SELECT redeemed_by FROM data.redemption_code WHERE redeemed_at IS NOT NULL",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(redeemed_by, Some(winner));
    let loser = if winner == u1 { u2 } else { u1 };
    assert_eq!(app.db_balance(winner).await, (d("7.5"), "active".into()));
    assert_eq!(app.db_balance(loser).await, (d("0"), "pending".into()));
    assert_eq!(
        app.api_balance(loser).await.0,
        d("0"),
        "the loser's actor re-synchronised"
    );
    let (s, _) = app
        .post(
            &format!("/api/users/{loser}/redemptions"),
            if loser == u1 { &t1 } else { &t2 },
            json!({"code": codes[0]}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = app
        .post(
            &format!("/api/users/{u1}/redemptions"),
            &t1,
            json!({"code": "NEU-NOPE-NOPE-NOPE-NOPE"}),
        )
        .await;
    assert_eq!(s, 404);
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (status, short) = app
        .post(
            "/api/admin/redemption-codes",
            &app.admin_token,
            json!({"amount": "1", "expires_at": soon.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    // Past its expiry (however long the minting took).
    let left = (soon - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;
    let (s, _) = app
        .post(
            &format!("/api/users/{u1}/redemptions"),
            &t1,
            json!({"code": short["data"][0]["code"]}),
        )
        .await;
    assert_eq!(s, 410);
    let (s, _) = app
        .post(
            "/api/admin/redemption-codes",
            &app.admin_token,
            json!({"amount": "1", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 400);

    // Threshold 5: an overdue account comes back only when a top-up brings it to 5. An
    // overdraft allowance of 0.1 lets calls take the balance below zero (to overdue).
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/admin/tenants/{tenant}"),
            &app.admin_token,
            Some(json!({"overdraft_limit": "0.1"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (u3, t3) = app
        .tenant_user(&app.admin_token, tenant, "u3@t.example", "user")
        .await;
    let key = app.create_key(&t3, u3, json!({"name": "k"})).await;
    app.top_up(u3, "0.05").await;
    let mut served = 0;
    while status_of(&app, &key, "qwen-turbo").await == 200 {
        served += 1;
        assert!(served < 10);
    }
    let (_, status) = app.api_balance(u3).await;
    assert_eq!(status, "overdue");
    let t = app.top_up(u3, "1").await;
    assert_eq!(t["status"], "overdue", "below the threshold of 5: {t}");
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 402);
    let t = app.top_up(u3, "10").await;
    assert_eq!(t["status"], "active", "{t}");
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 200);

    // The ledger pages newest first and adds up to the balance.
    app.settle_journal().await;
    let mut before: Option<i64> = None;
    let mut entries: Vec<Value> = vec![];
    loop {
        let path = match before {
            Some(b) => format!("/api/users/{u3}/ledger?limit=2&before={b}"),
            None => format!("/api/users/{u3}/ledger?limit=2"),
        };
        let (s, page) = app.get(&path, &t3).await;
        assert_eq!(s, 200, "{page}");
        entries.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let sum: Decimal = entries
        .iter()
        .map(|e| d(e["amount"].as_str().unwrap()))
        .sum();
    assert_eq!(sum, app.db_balance(u3).await.0);
    // Three top-ups, and charge rows summing the calls (a row per ledger flush).
    let credits = entries.iter().filter(|e| e["kind"] != "charge").count();
    let calls: i64 = entries
        .iter()
        .filter(|e| e["kind"] == "charge")
        .map(|e| e["calls"].as_i64().unwrap())
        .sum();
    assert_eq!(
        (credits, calls),
        (3, served as i64 + 1),
        "three top-ups and the charges"
    );
    let (s, _) = app
        .get(&format!("/api/users/{u3}/ledger?limit=0"), &t3)
        .await;
    assert_eq!(s, 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_follow_rates_and_markups_and_usage_equals_the_ledger() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let tenant = app.create_tenant("pricing", "20", "0").await;
    let (user, token) = app
        .tenant_user(&app.admin_token, tenant, "p@t.example", "user")
        .await;
    let (other, other_token) = app
        .tenant_user(&app.admin_token, tenant, "q@t.example", "user")
        .await;
    app.top_up(user, "100").await;
    app.top_up(other, "100").await;
    let key = app.create_key(&token, user, json!({"name": "k1"})).await;
    let key2 = app.create_key(&token, user, json!({"name": "k2"})).await;
    let other_key = app
        .create_key(&other_token, other, json!({"name": "k3"}))
        .await;

    let (_, prices) = app.get(&format!("/api/users/{user}/prices"), &token).await;
    assert_eq!(
        (
            prices["markup_percent"].as_str(),
            prices["markup_source"].as_str()
        ),
        (Some("20"), Some("tenant"))
    );
    let target = &prices["models"][0]["targets"][0];
    assert_eq!(
        (
            target["input_price"].as_str(),
            target["output_price_per_million"].as_str()
        ),
        (Some("0.0012"), Some("2400"))
    );

    // (12 * 0.001 + 8 * 0.002) * 1.2 = 0.0336
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 200);
    let (s, u) = app
        .send(
            Method::PATCH,
            &format!("/api/admin/users/{user}"),
            &app.admin_token,
            Some(json!({"markup_percent": "5"})),
        )
        .await;
    assert_eq!((s.as_u16(), u["markup_percent"].as_str()), (200, Some("5")));
    let (_, prices) = app.get(&format!("/api/users/{user}/prices"), &token).await;
    assert_eq!(
        (
            prices["markup_percent"].as_str(),
            prices["markup_source"].as_str()
        ),
        (Some("5"), Some("user"))
    );
    // 0.028 * 1.05 = 0.0294, on the next call.
    assert_eq!(status_of(&app, &key2, "qwen-turbo").await, 200);
    app.set_rate("dashscope", "qwen-turbo", "0.002", "0.002")
        .await;
    // (12 * 0.002 + 8 * 0.002) * 1.05 = 0.042
    assert_eq!(status_of(&app, &key2, "qwen-turbo").await, 200);
    let (s, _) = app
        .send(
            Method::PATCH,
            &format!("/api/admin/users/{user}"),
            &app.admin_token,
            Some(json!({"markup_percent": null})),
        )
        .await;
    assert_eq!(s, 200);
    // 0.04 * 1.2 = 0.048
    assert_eq!(status_of(&app, &key, "qwen-turbo").await, 200);
    assert_eq!(status_of(&app, &other_key, "qwen-turbo").await, 200);
    app.settle_journal().await;
    let costs: Vec<Decimal> =
        sqlx::query_scalar("SELECT cost FROM data.usage_log WHERE user_id = $1 ORDER BY id")
            .bind(user)
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(
        costs,
        vec![d("0.0336"), d("0.0294"), d("0.042"), d("0.048")]
    );

    let total = d("0.0336") + d("0.0294") + d("0.042") + d("0.048");
    let (s, usage) = app.get(&format!("/api/users/{user}/usage"), &token).await;
    assert_eq!(s, 200, "{usage}");
    assert_eq!(usage["data"].as_array().unwrap().len(), 4);
    assert_eq!(d(usage["totals"]["cost"].as_str().unwrap()), total);
    assert_eq!(
        usage["totals"]["cost"], usage["ledger_charges"],
        "usage totals equal the ledger"
    );
    for by in ["day", "model", "key"] {
        let (s, g) = app
            .get(&format!("/api/users/{user}/usage?group_by={by}"), &token)
            .await;
        assert_eq!(s, 200, "{g}");
        let groups = g["groups"].as_array().unwrap();
        let sum: Decimal = groups.iter().map(|x| d(x["cost"].as_str().unwrap())).sum();
        assert_eq!(sum, total, "{by}");
        let requests: i64 = groups.iter().map(|x| x["requests"].as_i64().unwrap()).sum();
        assert_eq!(requests, 4);
        assert_eq!(groups.len(), if by == "key" { 2 } else { 1 }, "{by}: {g}");
    }
    let (_, t) = app
        .get(
            &format!("/api/tenants/{tenant}/usage?group_by=user"),
            &app.admin_token,
        )
        .await;
    assert_eq!(t["groups"].as_array().unwrap().len(), 2);
    assert_eq!(t["totals"]["requests"], 5);
    assert_eq!(t["totals"]["cost"], t["ledger_charges"]);
    let future = "2099-01-01T00:00:00Z";
    let (_, empty) = app
        .get(&format!("/api/users/{user}/usage?from={future}"), &token)
        .await;
    assert_eq!(
        (
            empty["totals"]["requests"].as_i64(),
            empty["totals"]["cost"].as_str()
        ),
        (Some(0), Some("0"))
    );
    for bad in [
        "group_by=week",
        "group_by=user",
        "from=yesterday",
        "limit=0",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "surprise=1",
    ] {
        let (s, body) = app
            .get(&format!("/api/users/{user}/usage?{bad}"), &token)
            .await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (s, _) = app
        .send(
            Method::PATCH,
            &format!("/api/admin/users/{user}"),
            &app.admin_token,
            Some(json!({"markup_percent": "-1"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .send(
            Method::PATCH,
            &format!("/api/admin/users/{}", Uuid::new_v4()),
            &app.admin_token,
            Some(json!({"markup_percent": "1"})),
        )
        .await;
    assert_eq!(s, 404);
    let _ = DEFAULT_TENANT;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/chat/completions", "post"),
        ("/api/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/api/auth/register", "post"),
        ("/api/auth/login", "post"),
        ("/api/auth/refresh", "post"),
        ("/api/users/{user_id}/topups", "post"),
        ("/api/users/{user_id}/virtual-keys", "post"),
        ("/api/users/{user_id}/virtual-keys", "get"),
        ("/api/virtual-keys/{id}", "patch"),
        ("/api/virtual-keys/{id}/rotate", "post"),
        ("/api/config/virtual-keys/{key}", "get"),
        ("/api/users/{user_id}/usage", "get"),
        ("/api/tenants/{tenant_id}/usage", "get"),
        ("/api/admin/redemption-codes", "post"),
        ("/api/users/{user_id}/redemptions", "post"),
        ("/api/admin/provider-rates", "put"),
        ("/api/admin/model-configs", "put"),
        ("/api/admin/tenants/{tenant_id}", "patch"),
        ("/api/admin/faults", "post"),
        ("/health", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert!(schemes.contains_key("jwt") && schemes.contains_key("virtual_key"));
    // Every documented operation exists: none answers the router's own 404 or 405.
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{user_id}", &Uuid::new_v4().to_string())
                .replace("{tenant_id}", &Uuid::new_v4().to_string())
                .replace("{id}", &Uuid::new_v4().to_string())
                .replace("{key}", &Uuid::new_v4().to_string());
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .client
                .request(m, app.url(&concrete))
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(
                body["error"]["message"], "no such endpoint",
                "{method} {path}"
            );
            assert_ne!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}"
            );
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_user_and_code_inputs_are_validated() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    for bad in [
        json!({"name": ""}),
        json!({"name": "t", "markup_percent": "-5"}),
        json!({"name": "t", "markup_percent": "abc"}),
        json!({"name": "t", "overdue_threshold": "0.000000001"}),
        json!({"name": "t", "colour": "red"}),
    ] {
        let (s, body) = app.post("/api/admin/tenants", &admin, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let tenant = app.create_tenant("valid", "12.5", "1").await;
    let (s, _) = app
        .post("/api/admin/tenants", &admin, json!({"name": "valid"}))
        .await;
    assert_eq!(s, 409, "tenant names are unique");
    let (s, t) = app.get(&format!("/api/tenants/{tenant}"), &admin).await;
    assert_eq!(
        (s.as_u16(), t["markup_percent"].as_str()),
        (200, Some("12.5"))
    );
    let (s, _) = app
        .get(&format!("/api/tenants/{}", Uuid::new_v4()), &admin)
        .await;
    assert_eq!(s, 404);
    let users = format!("/api/tenants/{tenant}/users");
    for bad in [
        json!({"email": "x@t.example", "password": USER_PASSWORD, "username": "x", "role": "platform_admin"}),
        json!({"email": "x@t.example", "password": USER_PASSWORD, "username": "x", "role": "emperor"}),
        json!({"email": "not-an-email", "password": USER_PASSWORD, "username": "x"}),
        json!({"email": "x@t.example", "password": "weak", "username": "x"}),
        json!({"email": "x@t.example", "password": USER_PASSWORD, "username": ""}),
    ] {
        let (s, body) = app.post(&users, &admin, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (s, _) = app.get(&format!("{users}?limit=501"), &admin).await;
    assert_eq!(s, 400);
    let (s, _) = app.get(&format!("{users}?offset=-1"), &admin).await;
    assert_eq!(s, 400);
    let (s, _) = app
        .post(
            &format!("/api/tenants/{}/users", Uuid::new_v4()),
            &admin,
            json!({"email": "x@t.example", "password": USER_PASSWORD, "username": "x"}),
        )
        .await;
    assert_eq!(s, 404);
    for bad in [
        json!({"amount": "0", "expires_at": "2099-01-01T00:00:00Z"}),
        json!({"amount": "1", "expires_at": "2099-01-01T00:00:00Z", "count": 0}),
        json!({"amount": "1", "expires_at": "2099-01-01T00:00:00Z", "count": 101}),
        json!({"amount": "1", "expires_at": "soon"}),
        json!({"amount": "1"}),
    ] {
        let (s, body) = app
            .post("/api/admin/redemption-codes", &admin, bad.clone())
            .await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (user, token) = app.register("codes@example.com").await;
    for bad in [
        json!({"code": ""}),
        json!({"code": "x".repeat(100)}),
        json!({}),
    ] {
        let (s, body) = app
            .post(
                &format!("/api/users/{user}/redemptions"),
                &token,
                bad.clone(),
            )
            .await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_suspends_and_prices_its_users_within_bounds() {
    let app = TestApp::spawn().await;
    app.set_model("m", json!({"targets": [{"provider": "mock"}]}))
        .await;
    app.set_rate("mock", "m", "0.001", "0.002").await;
    let tenant = app.create_tenant("suspenders", "10", "0").await;
    let other = app.create_tenant("elsewhere", "10", "0").await;
    let (_, ta) = app
        .tenant_user(&app.admin_token, tenant, "ta@susp.example", "tenant_admin")
        .await;
    let (user, user_token) = app
        .tenant_user(&ta, tenant, "member@susp.example", "user")
        .await;
    let (stranger, _) = app
        .tenant_user(&app.admin_token, other, "far@susp.example", "user")
        .await;
    app.top_up(user, "10").await;
    let key = app
        .create_key(&user_token, user, json!({"name": "k"}))
        .await;
    assert_eq!(status_of(&app, &key, "m").await, 200);
    let patch = |token: &str, who: Uuid, body: Value| {
        let token = token.to_owned();
        let app = &app;
        async move {
            app.send(
                Method::PATCH,
                &format!("/api/admin/users/{who}"),
                &token,
                Some(body),
            )
            .await
        }
    };

    // The tenant admin: a markup at or above the tenant's, no role, not elsewhere, not itself.
    let (s, body) = patch(&ta, user, json!({"markup_percent": "9.99"})).await;
    assert_eq!(s, 400, "below the tenant's 10 %: {body}");
    let (s, body) = patch(&ta, user, json!({"markup_percent": "25"})).await;
    assert_eq!(
        (s.as_u16(), body["markup_percent"].as_str()),
        (200, Some("25"))
    );
    let (s, _) = patch(&ta, user, json!({"role": "tenant_admin"})).await;
    assert_eq!(s, 403);
    let (s, _) = patch(&ta, stranger, json!({"suspended": true})).await;
    assert_eq!(s, 404, "another tenant's user is not found");
    let (s, _) = patch(&user_token, user, json!({"suspended": false})).await;
    assert_eq!(s, 403, "a user changes nobody");
    // The tenant's overdue threshold is the tenant admin's; its markup is not.
    let tenant_path = format!("/api/admin/tenants/{tenant}");
    let (s, body) = app
        .send(
            Method::PATCH,
            &tenant_path,
            &ta,
            Some(json!({"overdue_threshold": "2"})),
        )
        .await;
    assert_eq!(
        (s.as_u16(), body["overdue_threshold"].as_str()),
        (200, Some("2"))
    );
    let (s, _) = app
        .send(
            Method::PATCH,
            &tenant_path,
            &ta,
            Some(json!({"markup_percent": "0"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .send(
            Method::PATCH,
            &format!("/api/admin/tenants/{other}"),
            &ta,
            Some(json!({"overdue_threshold": "0"})),
        )
        .await;
    assert_eq!(s, 404);

    // Suspended: every call with its keys refused, unbilled; its token and sign-in refused.
    let (s, body) = patch(&ta, user, json!({"suspended": true})).await;
    assert_eq!((s.as_u16(), body["suspended"].as_bool()), (200, Some(true)));
    let before = app.api_balance(user).await;
    let r = app.chat(&key, &chat_body("m")).await;
    assert_eq!(r.status(), 403);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{err}"
    );
    let models = app
        .client
        .get(app.url("/v1/models"))
        .header("x-virtual-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 403);
    assert_eq!(app.api_balance(user).await, before, "nothing charged");
    let (s, _) = app.get(&format!("/api/users/{user}"), &user_token).await;
    assert_eq!(s, 401, "the token ended");
    let (s, body) = app
        .post(
            "/api/auth/login",
            "",
            json!({"email": "member@susp.example", "password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = app
        .post(
            "/api/auth/login",
            "",
            json!({"email": "member@susp.example", "password": "wrong-password-1"}),
        )
        .await;
    assert_eq!(s, 401, "the wrong password learns nothing: {body}");
    let (_, list) = app.get(&format!("/api/tenants/{tenant}/users"), &ta).await;
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == json!(user))
        .unwrap();
    assert_eq!(listed["suspended"], true);

    // Reinstated: the same key is served again at the user's markup; the old token stays dead.
    let (s, body) = patch(&ta, user, json!({"suspended": false})).await;
    assert_eq!(
        (s.as_u16(), body["suspended"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(status_of(&app, &key, "m").await, 200);
    let (s, _) = app.get(&format!("/api/users/{user}"), &user_token).await;
    assert_eq!(s, 401);
    app.login("member@susp.example", USER_PASSWORD).await;
    app.settle_journal().await;
    let rows: Vec<(i32, i32, Decimal)> = sqlx::query_as(
        "SELECT input_tokens, output_tokens, cost FROM data.usage_log WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.pool())
    .await
    .unwrap();
    let cost = |(i, o, _): &(i32, i32, Decimal), markup: &str| {
        (Decimal::from(*i) * d("0.001") + Decimal::from(*o) * d("0.002")) * d(markup)
    };
    assert_eq!(rows.len(), 2, "the refused call left no row: {rows:?}");
    assert_eq!(rows[0].2, cost(&rows[0], "1.10"), "the tenant's 10 %");
    assert_eq!(rows[1].2, cost(&rows[1], "1.25"), "the user's 25 %");
    app.stop().await;
}
