//! Changes made straight in PostgreSQL (no HTTP) reach a running gateway through NOTIFY:
//! keys, rates, markups, models, Portkey configs; also across a killed LISTEN connection,
//! malformed payloads, and Redis going away and coming back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use neuropia::auth::KeyHash;
use neuropia::billing::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

async fn exec(app: &TestApp, sql: &'static str, key: &str) {
    sqlx::query(sql)
        .bind(key)
        .execute(app.pool())
        .await
        .expect(sql);
}

async fn chat_status(app: &TestApp, key: &str, model: &str) -> u16 {
    app.chat(key, &chat_body(model)).await.status().as_u16()
}

async fn last_usage(app: &TestApp, user: Uuid) -> (String, String, Decimal) {
    app.settle_journal().await;
    sqlx::query_as(
        "SELECT provider, model, cost FROM data.usage_log WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(user)
    .fetch_one(app.pool())
    .await
    .expect("usage row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_changes_made_in_sql_reach_a_busy_gateway() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { user, token, key } = app
        .customer("sql-keys@example.com", "1000", json!({"name": "target"}))
        .await;
    let busy = app
        .create_key(&token, user, json!({"name": "traffic"}))
        .await;
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);

    // Traffic keeps flowing on another key of the same user throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (client, url, busy, stop, served) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            busy.clone(),
            stop.clone(),
            served.clone(),
        );
        tokio::spawn(async move {
            let mut bad = vec![];
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .header("x-virtual-key", &busy)
                    .json(&chat_body("qwen-turbo"))
                    .send()
                    .await
                    .expect("chat");
                if r.status() == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.push(r.status().as_u16());
                }
            }
            bad
        })
    };

    exec(
        &app,
        "SELECT data.deactivate_virtual_key($1, 'revoked in SQL')",
        &key,
    )
    .await;
    let took = eventually(5, "deactivation", || async {
        chat_status(&app, &key, "qwen-turbo").await == 401
    })
    .await;
    eprintln!("deactivation in SQL refused after {took:?}");
    exec(&app, "SELECT data.activate_virtual_key($1, 'back')", &key).await;
    eventually(5, "activation", || async {
        chat_status(&app, &key, "qwen-turbo").await == 200
    })
    .await;
    exec(
        &app,
        "SELECT data.update_virtual_key($1, p_allowed_models => ARRAY['other-model'])",
        &key,
    )
    .await;
    eventually(5, "allow-list", || async {
        chat_status(&app, &key, "qwen-turbo").await == 403
    })
    .await;
    exec(&app, "SELECT data.update_virtual_key($1, p_allowed_models => ARRAY[]::text[], p_rate_limit_rpm => 1)", &key).await;
    eventually(5, "rpm", || async {
        chat_status(&app, &key, "qwen-turbo").await == 429
    })
    .await;
    let rotated: String =
        sqlx::query_scalar("SELECT data.rotate_virtual_key($1, 'rotated in SQL')")
            .bind(&key)
            .fetch_one(app.pool())
            .await
            .expect("rotate");
    eventually(5, "rotation", || async {
        chat_status(&app, &key, "qwen-turbo").await == 401
    })
    .await;
    // The rotated key keeps its limits: rpm 1 already used within this minute.
    assert_eq!(chat_status(&app, &rotated, "qwen-turbo").await, 429);
    // The other key kept being served throughout (and still is).
    eventually(5, "traffic on the other key", || async {
        served.load(Ordering::Relaxed) > 10
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let bad = traffic.await.expect("traffic");
    assert!(
        bad.is_empty(),
        "traffic on the other key was disturbed: {bad:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_markups_and_models_changed_in_sql_apply_to_the_next_call() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let tenant = app.create_tenant("sql-pricing", "0", "0").await;
    let (user, token) = app
        .tenant_user(&app.admin_token, tenant, "rates@t.example", "user")
        .await;
    app.top_up(user, "100").await;
    let key = app.create_key(&token, user, json!({"name": "k"})).await;

    sqlx::query("UPDATE data.provider_rate SET input_rate = 0.01 WHERE provider = 'dashscope'")
        .execute(app.pool())
        .await
        .expect("rate");
    eventually(5, "rate", || async {
        app.state
            .snapshot
            .load()
            .rate("dashscope", "qwen-turbo")
            .map(|r| r.input_rate)
            == Some(d("0.01"))
    })
    .await;
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    // 12 * 0.01 + 8 * 0.002 = 0.136
    assert_eq!(last_usage(&app, user).await.2, d("0.136"));

    sqlx::query("UPDATE data.tenant SET markup_percent = 50 WHERE tenant_id = $1")
        .bind(tenant)
        .execute(app.pool())
        .await
        .expect("markup");
    eventually(5, "tenant markup", || async {
        app.state.snapshot.load().markup(tenant, user) == d("50")
    })
    .await;
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    assert_eq!(last_usage(&app, user).await.2, d("0.204"));

    sqlx::query("UPDATE data.user_profile SET markup_percent = 10 WHERE user_id = $1")
        .bind(user)
        .execute(app.pool())
        .await
        .expect("user markup");
    eventually(5, "user markup", || async {
        app.state.snapshot.load().markup(tenant, user) == d("10")
    })
    .await;
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    assert_eq!(last_usage(&app, user).await.2, d("0.1496"));

    sqlx::query("INSERT INTO data.model_configs (model, provider, config) VALUES ('sql-model', 'mock', '{\"targets\": [{\"provider\": \"mock\"}]}')")
        .execute(app.pool()).await.expect("model");
    sqlx::query("INSERT INTO data.provider_rate (provider, model, input_rate, output_rate) VALUES ('mock', 'sql-model', 0, 0)")
        .execute(app.pool()).await.expect("model rate");
    eventually(5, "new model", || async {
        chat_status(&app, &key, "sql-model").await == 200
    })
    .await;
    let _ = token;
    app.stop().await;
}

async fn create_config(
    app: &TestApp,
    tenant: Option<Uuid>,
    user: Option<Uuid>,
    plan: Value,
) -> Uuid {
    sqlx::query_scalar(
        "SELECT data.create_portkey_config($1, $2, 'cfg', $3, NULL, 'from SQL', NULL)",
    )
    .bind(tenant)
    .bind(user)
    .bind(plan)
    .fetch_one(app.pool())
    .await
    .expect("create_portkey_config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portkey_configs_route_a_tenant_and_its_users() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    app.set_rate("openai", "gpt-4o-mini", "0.0001", "0.0001")
        .await;
    app.set_rate("dashscope", "qwen-max", "0.01", "0.01").await;
    let tenant = app.create_tenant("routed", "0", "0").await;
    let (u1, t1) = app
        .tenant_user(&app.admin_token, tenant, "r1@t.example", "user")
        .await;
    let (u2, t2) = app
        .tenant_user(&app.admin_token, tenant, "r2@t.example", "user")
        .await;
    for u in [u1, u2] {
        app.top_up(u, "100").await;
    }
    let k1 = app.create_key(&t1, u1, json!({"name": "k1"})).await;
    let k2 = app.create_key(&t2, u2, json!({"name": "k2"})).await;
    assert_eq!(chat_status(&app, &k1, "qwen-turbo").await, 200);
    assert_eq!(last_usage(&app, u1).await.1, "qwen-turbo");

    let openai = json!({"strategy": {"mode": "single"}, "targets": [{"provider": "openai",
        "custom_host": format!("http://{}/v1", mock.addr), "api_key": "sk-tenant-secret",
        "override_params": {"model": "gpt-4o-mini"}}]});
    let tenant_cfg = create_config(&app, Some(tenant), None, openai).await;
    eventually(5, "tenant config", || async {
        app.state
            .snapshot
            .load()
            .tenant_configs
            .contains_key(&tenant)
    })
    .await;
    assert_eq!(chat_status(&app, &k1, "qwen-turbo").await, 200);
    assert_eq!(
        last_usage(&app, u1).await,
        ("openai".into(), "gpt-4o-mini".into(), d("0.002"))
    );
    assert_eq!(
        mock.state
            .bodies
            .lock()
            .expect("bodies")
            .last()
            .expect("body")["model"],
        "gpt-4o-mini"
    );

    // A user's own config, through the admin API, beats the tenant's.
    let max = json!({"targets": [{"provider": "dashscope", "custom_host": mock.dashscope_host(),
        "override_params": {"model": "qwen-max"}}]});
    let (s, created) = app
        .post(
            "/api/admin/portkey-configs",
            &app.admin_token,
            json!({"user_id": u2, "config_name": "u2 max", "config": max}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(
        created["tenant_id"],
        tenant.to_string(),
        "the user's tenant is filled in"
    );
    assert_eq!(chat_status(&app, &k2, "qwen-turbo").await, 200);
    assert_eq!(last_usage(&app, u2).await.1, "qwen-max");
    assert_eq!(chat_status(&app, &k1, "qwen-turbo").await, 200);
    assert_eq!(last_usage(&app, u1).await.1, "gpt-4o-mini");

    let active = |t: Uuid, u: Uuid| {
        let pool = app.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<Value>>("SELECT data.get_active_portkey_config($1, $2)")
                .bind(t)
                .bind(u)
                .fetch_one(&pool)
                .await
                .expect("active")
        }
    };
    assert_eq!(active(tenant, u2).await.expect("config")["scope"], "user");
    assert_eq!(
        active(tenant, u1).await.expect("config")["config_id"],
        tenant_cfg.to_string()
    );
    let (_, via_api) = app
        .get(
            &format!("/api/admin/portkey-configs/active?tenant_id={tenant}&user_id={u1}"),
            &app.admin_token,
        )
        .await;
    assert_eq!(via_api["config"]["scope"], "tenant");
    assert!(
        !via_api.to_string().contains("sk-tenant-secret"),
        "platform keys are redacted"
    );
    let (_, eff) = app
        .get(&format!("/api/config/virtual-keys/{k2}"), &t2)
        .await;
    assert_eq!(eff["models"][0]["plan_source"]["source"], "user_config");
    let (_, eff) = app
        .get(&format!("/api/config/virtual-keys/{k1}"), &t1)
        .await;
    assert_eq!(eff["models"][0]["plan_source"]["source"], "tenant_config");
    assert_eq!(eff["models"][0]["plan"]["targets"][0]["api_key"], "***");

    // Deactivated through the API: back to the model's plan.
    let (s, _) = app
        .post(
            &format!("/api/admin/portkey-configs/{tenant_cfg}/deactivate"),
            &app.admin_token,
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(chat_status(&app, &k1, "qwen-turbo").await, 200);
    assert_eq!(last_usage(&app, u1).await.1, "qwen-turbo");

    // A config too large for a NOTIFY payload still propagates (by a reload).
    let mut big = json!({"targets": [{"provider": "openai", "custom_host": format!("http://{}/v1", mock.addr),
        "override_params": {"model": "gpt-4o-mini"}}]});
    big["metadata"] = json!({"padding": "x".repeat(10_000)});
    create_config(&app, Some(tenant), None, big).await;
    eventually(5, "large config", || async {
        chat_status(&app, &k1, "qwen-turbo").await == 200
            && last_usage(&app, u1).await.1 == "gpt-4o-mini"
    })
    .await;

    // A config that takes effect later becomes active by itself.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let later = json!({"targets": [{"provider": "dashscope", "custom_host": mock.dashscope_host(),
        "override_params": {"model": "qwen-max"}}]});
    sqlx::query("SELECT data.create_portkey_config($1, NULL, 'later', $2, $3, NULL, NULL)")
        .bind(tenant)
        .bind(later)
        .bind(soon)
        .execute(app.pool())
        .await
        .expect("later");
    assert_eq!(chat_status(&app, &k1, "qwen-turbo").await, 200);
    assert_eq!(
        last_usage(&app, u1).await.1,
        "gpt-4o-mini",
        "not yet effective"
    );
    eventually(5, "scheduled config", || async {
        chat_status(&app, &k1, "qwen-turbo").await == 200
            && last_usage(&app, u1).await.1 == "qwen-max"
    })
    .await;

    // Validation and authorization.
    let admin = app.admin_token.clone();
    for (body, status) in [
        (
            json!({"tenant_id": tenant, "config_name": "x", "config": {"targets": []}}),
            400,
        ),
        (
            json!({"config_name": "x", "config": {"targets": [{"provider": "mock"}]}}),
            400,
        ),
        (
            json!({"user_id": Uuid::new_v4(), "config_name": "x", "config": {"targets": [{"provider": "mock"}]}}),
            404,
        ),
        (
            json!({"tenant_id": neuropia::db::users::DEFAULT_TENANT, "user_id": u1, "config_name": "x",
            "config": {"targets": [{"provider": "mock"}]}}),
            400,
        ),
        (
            json!({"tenant_id": tenant, "config_name": "", "config": {"targets": [{"provider": "mock"}]}}),
            400,
        ),
    ] {
        let (s, out) = app
            .post("/api/admin/portkey-configs", &admin, body.clone())
            .await;
        assert_eq!(s.as_u16(), status, "{body}: {out}");
    }
    let (s, _) = app.post("/api/admin/portkey-configs", &t1,
        json!({"tenant_id": tenant, "config_name": "x", "config": {"targets": [{"provider": "mock"}]}})).await;
    assert_eq!(s, 403);
    let (s, _) = app
        .get(
            &format!("/api/admin/portkey-configs/{}", Uuid::new_v4()),
            &admin,
        )
        .await;
    assert_eq!(s, 404);
    let (s, list) = app
        .get(
            &format!("/api/admin/portkey-configs?tenant_id={tenant}"),
            &admin,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().expect("list").len(), 4);
    app.stop().await;
}

async fn health(app: &TestApp) -> Value {
    app.get("/health", &app.admin_token).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_recovers_from_a_terminated_connection() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { key, .. } = app
        .customer("listener@example.com", "100", json!({"name": "k"}))
        .await;
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    eventually(5, "listener up", || async {
        health(&app).await["config"]["listener_connected"] == true
    })
    .await;
    let connects = health(&app).await["config"]["listener_connects"]
        .as_u64()
        .expect("connects");

    // Kill the LISTEN connection and, in the same statement, revoke the key and change a
    // rate: their notifications go nowhere, so only the resync on reconnect can apply them.
    let killed: bool = sqlx::query_scalar(
        "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'neuropia-listener' AND datname = current_database()",
    )
    .fetch_one(app.pool())
    .await
    .expect("terminate");
    assert!(killed, "the listener's backend was found");
    exec(
        &app,
        "SELECT data.deactivate_virtual_key($1, 'during the gap')",
        &key,
    )
    .await;
    sqlx::query("UPDATE data.provider_rate SET output_rate = 0.5")
        .execute(app.pool())
        .await
        .expect("rate");

    eventually(10, "reconnect", || async {
        let h = health(&app).await;
        h["config"]["listener_connects"].as_u64() > Some(connects)
            && h["config"]["listener_connected"] == true
    })
    .await;
    eventually(10, "revocation after the gap", || async {
        chat_status(&app, &key, "qwen-turbo").await == 401
    })
    .await;
    eventually(10, "rate after the gap", || async {
        app.state
            .snapshot
            .load()
            .rate("dashscope", "qwen-turbo")
            .map(|r| r.output_rate)
            == Some(d("0.5"))
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_notifications_reload_instead_of_crashing() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { key, .. } = app
        .customer("noise@example.com", "100", json!({"name": "k"}))
        .await;
    eventually(5, "listener up", || async {
        health(&app).await["config"]["listener_connected"] == true
    })
    .await;
    let before = health(&app).await["config"]["resyncs"]
        .as_u64()
        .expect("resyncs");
    for payload in ["{oops", "", "[1,2,3]", &"x".repeat(7990)] {
        sqlx::query("SELECT pg_notify('virtual_key_update', $1)")
            .bind(payload)
            .execute(app.pool())
            .await
            .expect("notify");
    }
    sqlx::query("SELECT pg_notify('config_update', '{\"nothing\": true}')")
        .execute(app.pool())
        .await
        .expect("notify");
    eventually(5, "malformed counted", || async {
        health(&app).await["config"]["malformed_notifications"].as_u64() == Some(5)
    })
    .await;
    let h = health(&app).await;
    assert!(
        h["config"]["resyncs"].as_u64().expect("resyncs") >= before + 5,
        "{h}"
    );
    assert_eq!(h["actors"]["config"], "running");
    assert_eq!(h["actors"]["restarts"]["config"], 0);
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    app.stop().await;
}

async fn cached(port: u16, hash: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET")
        .arg(format!("virtual_key:{hash}"))
        .query_async(&mut conn)
        .await
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_cache_serves_cold_keys_and_survives_redis_going_away() {
    let port = free_port();
    let mut redis = start_redis(port).await;
    let mock = mock_upstream().await;
    let db = format!("neuropia_test_{}", Uuid::new_v4().simple());
    let with_redis = |c: &mut neuropia::config::Config| {
        c.redis_url = neuropia::config::Secret::new(format!("redis://127.0.0.1:{port}"));
    };
    let app = TestApp::spawn_on(&db, with_redis).await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { user, token, key } = app
        .customer("cache@example.com", "100", json!({"name": "cached"}))
        .await;
    let hash = KeyHash::of(&key).to_hex();
    eventually(5, "cache up", || async {
        health(&app).await["cache"]["up"] == true
    })
    .await;
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    eventually(5, "key cached", || async {
        cached(port, &hash).await.is_some()
    })
    .await;
    let entry: Value =
        serde_json::from_str(&cached(port, &hash).await.expect("entry")).expect("json");
    assert_eq!(entry["is_active"], true);
    assert!(!entry.to_string().contains(&key));

    // A second gateway on the same database and Redis: its cold key actor reads Redis.
    let mut second = TestApp::spawn_on(&db, with_redis).await;
    eventually(5, "second cache up", || async {
        health(&second).await["cache"]["up"] == true
    })
    .await;
    assert_eq!(chat_status(&second, &key, "qwen-turbo").await, 200);
    assert_eq!(health(&second).await["cache"]["hits"], 1);

    // Revoked through the first gateway: the entry goes, and the second refuses too.
    let key_id: Uuid =
        sqlx::query_scalar("SELECT id FROM data.virtual_key WHERE virtual_key_hash = $1")
            .bind(&hash)
            .fetch_one(app.pool())
            .await
            .expect("id");
    let (s, _) = app
        .post(
            &format!("/api/virtual-keys/{key_id}/deactivate"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    eventually(5, "entry removed", || async {
        cached(port, &hash).await.is_none()
    })
    .await;
    eventually(5, "second refuses", || async {
        chat_status(&second, &key, "qwen-turbo").await == 401
    })
    .await;
    second.stop_keep_db().await;
    let (s, _) = app
        .post(
            &format!("/api/virtual-keys/{key_id}/activate"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);

    // Redis goes away: keys still work, cold ones from PostgreSQL.
    redis.kill().await.expect("kill redis");
    let fresh = app
        .create_key(&token, user, json!({"name": "while redis is down"}))
        .await;
    assert_eq!(chat_status(&app, &fresh, "qwen-turbo").await, 200);
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    eventually(5, "cache marked down", || async {
        health(&app).await["cache"]["up"] == false
    })
    .await;
    assert_eq!(health(&app).await["status"], "degraded");

    // Redis returns: the cache is purged and filled again with the live keys.
    let _redis = start_redis(port).await;
    eventually(10, "cache back", || async {
        health(&app).await["cache"]["up"] == true
    })
    .await;
    let fresh_hash = KeyHash::of(&fresh).to_hex();
    eventually(10, "repopulated", || async {
        cached(port, &hash).await.is_some() && cached(port, &fresh_hash).await.is_some()
    })
    .await;
    assert_eq!(chat_status(&app, &fresh, "qwen-turbo").await, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_redis_is_down_gets_its_cache_when_redis_answers() {
    let port = free_port();
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| {
        c.redis_url = neuropia::config::Secret::new(format!("redis://127.0.0.1:{port}"));
    })
    .await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { key, .. } = app
        .customer("late-redis@example.com", "10", json!({"name": "k"}))
        .await;
    // Served from PostgreSQL meanwhile; the cache is configured but not up.
    assert_eq!(chat_status(&app, &key, "qwen-turbo").await, 200);
    let h = health(&app).await;
    assert_eq!(
        (h["redis"].as_str(), h["status"].as_str()),
        (Some("unreachable"), Some("degraded")),
        "{h}"
    );
    assert_eq!(h["cache"]["enabled"], true);
    assert_eq!(h["cache"]["up"], false);

    let _redis = start_redis(port).await;
    eventually(10, "cache up once Redis answers", || async {
        health(&app).await["cache"]["up"] == true
    })
    .await;
    let h = health(&app).await;
    assert_eq!(h["redis"], "ok", "{h}");
    // The live key is written again once the cache is up.
    let hash = KeyHash::of(&key).to_hex();
    eventually(5, "key cached", || async {
        cached(port, &hash).await.is_some()
    })
    .await;
    app.stop().await;
}
