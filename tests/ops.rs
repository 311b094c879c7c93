//! Operations: the live supervision tree (JSON, HTML, `neuropia actors`), each fault kind,
//! metrics, `x-request-id` and `server-timing`.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

async fn tree(app: &TestApp, query: &str) -> Value {
    let (status, body) = app
        .get(&format!("/api/admin/actors{query}"), &app.admin_token)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn child<'a>(node: &'a Value, name: &str) -> &'a Value {
    node["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no child {name} in {node}"))
}

async fn fault(app: &TestApp, body: Value) {
    let (status, reply) = app
        .post("/api/admin/faults", &app.admin_token, body.clone())
        .await;
    assert_eq!(status, 200, "{body}: {reply}");
    assert_eq!(reply["injected"], true);
}

async fn key_id(app: &TestApp, user: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT id FROM data.virtual_key WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_shows_every_actor_with_its_state_and_pages_large_supervisors() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let mut users = Vec::new();
    for i in 0..3 {
        let Customer { user, token, key } = app
            .customer(
                &format!("tree{i}@example.com"),
                "10",
                json!({"name": "t", "rate_limit_rpm": 100}),
            )
            .await;
        assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
        users.push((user, token, key));
    }
    app.settle_journal().await;

    let root = tree(&app, "").await;
    assert_eq!(root["name"], "neuropia");
    assert_eq!(root["status"], "running");
    let names: Vec<&str> = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config", "keys", "balances", "ledger", "upstreams"]);
    for node in root["children"].as_array().unwrap() {
        assert_eq!(node["status"], "running", "{node}");
        assert_eq!(node["restarts"], 0, "{node}");
        assert!(node["uptime_secs"].as_f64().is_some(), "{node}");
        assert!(node["messages_handled"].as_u64().is_some(), "{node}");
        assert!(node["backlog"].as_u64().is_some(), "{node}");
    }
    assert_eq!(child(&root, "config")["state"]["listener_connected"], true);
    let ledger = child(&root, "ledger");
    assert_eq!(ledger["state"]["journal_depth"], 0);
    assert!(ledger["state"]["last_flush_at"].is_string(), "{ledger}");

    let keys = child(&root, "keys");
    assert_eq!(keys["children_total"], 3);
    let (user0, _, _) = &users[0];
    let kid = key_id(&app, *user0).await;
    let key_node = child(keys, &format!("key:{kid}"));
    assert_eq!(key_node["status"], "running");
    assert_eq!(key_node["state"]["rpm_limit"], 100);
    assert_eq!(key_node["state"]["rpm_headroom"], 99, "one call made");
    assert!(key_node["messages_handled"].as_u64().unwrap() >= 1);

    let balances = child(&root, "balances");
    assert_eq!(balances["children_total"], 3);
    let b = child(balances, &format!("balance:{user0}"));
    assert_eq!(b["state"]["open_reservations"], 0);
    assert_eq!(b["state"]["not_durable"], 0);
    assert_eq!(
        b["state"]["balance"], "9.972",
        "10 - (12 * 0.001 + 8 * 0.002)"
    );
    assert_eq!(child(&root, "upstreams")["children_total"], 1);

    // Paging: 100k key actors must not come back in one answer.
    let page = tree(&app, "?limit=2").await;
    let keys = child(&page, "keys");
    assert_eq!(keys["children"].as_array().unwrap().len(), 2);
    assert_eq!(keys["children_total"], 3);
    let rest = tree(&app, "?limit=2&offset=2").await;
    assert_eq!(
        child(&rest, "keys")["children"].as_array().unwrap().len(),
        1
    );
    // A search pages over the matches only: one key actor, one balance actor.
    let found = tree(&app, &format!("?limit=1&find={kid}")).await;
    let keys = child(&found, "keys");
    assert_eq!(keys["children_total"], 1, "{keys}");
    assert_eq!(keys["children"][0]["name"], format!("key:{kid}"));
    assert_eq!(child(&found, "balances")["children_total"], 0);
    let found = tree(&app, &format!("?find=balance:{user0}")).await;
    assert_eq!(child(&found, "keys")["children_total"], 0);
    assert_eq!(
        child(&found, "balances")["children"][0]["name"],
        format!("balance:{user0}")
    );
    let (status, _) = app.get("/api/admin/actors?limit=0", &app.admin_token).await;
    assert_eq!(status, 400);
    let (status, _) = app.get("/api/admin/actors?limit=x", &app.admin_token).await;
    assert_eq!(status, 400);

    // Platform admins only.
    let (status, body) = app.get("/api/admin/actors", &users[0].1).await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.to_string().contains("balance:"), "{body}");
    let (status, _) = app.get("/api/admin/actors", "").await;
    assert_eq!(status, 401);

    // A panicking key actor: restarted, counted, with its failure.
    fault(
        &app,
        json!({"actor": format!("key:{kid}"), "fault": "panic"}),
    )
    .await;
    let name = format!("key:{kid}");
    eventually(10, "the key actor's restart shows", || async {
        let t = tree(&app, "").await;
        let k = child(child(&t, "keys"), &name);
        k["restarts"] == 1
            && k["status"] == "running"
            && k["last_failure"]
                .as_str()
                .is_some_and(|f| f.contains("injected fault"))
            && k["faults_injected"] == 1
    })
    .await;

    // The HTML view.
    let r = app
        .client
        .get(app.url("/api/admin/actors/view"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("/api/admin/actors"));

    // `neuropia actors`, as an operator runs it.
    let actors = |args: Vec<String>| {
        let (base, token) = (app.base.clone(), app.admin_token.clone());
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_neuropia"))
                .args(["actors", "--url", &base])
                .args(args)
                .env("NEUROPIA_TOKEN", token)
                .env_remove("NEUROPIA_ADMIN_EMAIL")
                .output()
                .await
                .unwrap()
        }
    };
    let out = actors(vec!["--limit".into(), "2".into()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("neuropia [running"), "{text}");
    assert!(text.contains("├─ keys [running"), "{text}");
    assert!(text.contains("│  ├─ key:"), "{text}");
    assert!(text.contains("… 1 more"), "{text}");
    assert!(text.contains("└─ upstreams [running"), "{text}");
    // --find keeps the actors whose name matches (here one key's, in a URL-safe way).
    let out = actors(vec!["--find".into(), format!("key:{kid}")]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("─ key:").count(), 1, "{text}");
    assert!(!text.contains("balance:"), "{text}");
    // Signing in with the admin's credentials works too; a wrong token is refused.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_neuropia"))
        .args(["actors", "--url", &app.base])
        .env_remove("NEUROPIA_TOKEN")
        .env("NEUROPIA_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("NEUROPIA_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("├─ balances"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_neuropia"))
        .args(["actors", "--url", &app.base, "--token", "nope"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_kind_does_what_it_says() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| c.actor_timeout_ms = 400).await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { user, key, .. } = app
        .customer("faults@example.com", "10", json!({"name": "f"}))
        .await;
    let body = chat_body("qwen-turbo");
    assert_eq!(app.chat(&key, &body).await.status(), 200);
    let kid = key_id(&app, user).await;
    let key_name = format!("key:{kid}");
    let served = std::cell::Cell::new(1i64);

    // panic_next 2: the key actor panics on its next two messages; the call that meets
    // them is retried on fresh incarnations. It is served, unless the two restarts (each a
    // reload from PostgreSQL) outlast this test's 400 ms actor timeout on a busy machine:
    // then it is refused with 503 and not billed, and the next call is served.
    fault(
        &app,
        json!({"actor": key_name, "fault": "panic_next", "count": 2}),
    )
    .await;
    match app.chat(&key, &body).await.status().as_u16() {
        200 => served.set(served.get() + 1),
        503 => {
            eventually(10, "served after the restarts", || async {
                let ok = app.chat(&key, &body).await.status() == 200;
                served.set(served.get() + i64::from(ok));
                ok
            })
            .await;
        }
        other => panic!("status {other}"),
    }
    eventually(10, "two restarts in the tree", || async {
        let t = tree(&app, "").await;
        child(child(&t, "keys"), &key_name)["restarts"] == 2
    })
    .await;

    // drop: the balance actor swallows the next message; the caller times out -> 503.
    // First let the ledger's durable notice for the calls so far reach the actor, so the
    // swallowed message is the next call's reservation.
    app.settle_journal().await;
    let balance_name = format!("balance:{user}");
    eventually(5, "charges confirmed durable", || async {
        let t = tree(&app, "").await;
        child(child(&t, "balances"), &balance_name)["state"]["not_durable"] == 0
    })
    .await;
    fault(
        &app,
        json!({"actor": format!("balance:{user}"), "fault": "drop"}),
    )
    .await;
    let started = Instant::now();
    let r = app.chat(&key, &body).await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout applies"
    );
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "service_unavailable");
    assert_eq!(app.chat(&key, &body).await.status(), 200);
    served.set(served.get() + 1);

    // delay: every message to the key actor waits 150 ms, for a second.
    fault(
        &app,
        json!({"actor": key_name, "fault": "delay", "ms": 150, "seconds": 1}),
    )
    .await;
    let started = Instant::now();
    assert_eq!(app.chat(&key, &body).await.status(), 200);
    served.set(served.get() + 1);
    assert!(started.elapsed() >= Duration::from_millis(150));
    // After its second, calls are fast again.
    eventually(10, "the delay ended", || async {
        let started = Instant::now();
        assert_eq!(app.chat(&key, &body).await.status(), 200);
        served.set(served.get() + 1);
        started.elapsed() < Duration::from_millis(150)
    })
    .await;

    // db_fail: ledger writes fail for a second and are retried; nothing is lost.
    fault(
        &app,
        json!({"actor": "ledger", "fault": "db_fail", "seconds": 1}),
    )
    .await;
    assert_eq!(app.chat(&key, &body).await.status(), 200);
    served.set(served.get() + 1);
    // The write of its charge fails (and is retried) while the fault lasts.
    eventually(10, "a failed ledger write", || async {
        let t = tree(&app, "").await;
        child(&t, "ledger")["state"]["failures"].as_u64() >= Some(1)
    })
    .await;
    app.settle_journal().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(rows, served.get());
    let (balance, _) = app.db_balance(user).await;
    assert_eq!(
        balance,
        d("10") - d("0.028") * neuropia::billing::Decimal::from(served.get())
    );

    // listener_disconnect: the config actor reconnects, reloads, and revocation still
    // reaches the key at once.
    let connects = child(&tree(&app, "").await, "config")["state"]["listener_connects"]
        .as_u64()
        .unwrap();
    fault(
        &app,
        json!({"actor": "config", "fault": "listener_disconnect"}),
    )
    .await;
    eventually(10, "the listener reconnects", || async {
        let t = tree(&app, "").await;
        let s = &child(&t, "config")["state"];
        s["listener_connects"].as_u64() > Some(connects) && s["listener_connected"] == true
    })
    .await;
    sqlx::query("SELECT data.deactivate_virtual_key($1, 'after the fault')")
        .bind(&key)
        .execute(app.pool())
        .await
        .unwrap();
    eventually(5, "revocation after a listener fault", || async {
        app.chat(&key, &body).await.status() == 401
    })
    .await;

    // Bad injections.
    for (bad, status) in [
        (
            json!({"actor": "ledger", "fault": "listener_disconnect"}),
            400,
        ),
        (json!({"actor": "config", "fault": "db_fail"}), 400),
        (json!({"actor": "ledger", "fault": "delay"}), 400),
        (json!({"actor": "ledger", "fault": "drop", "count": 0}), 400),
        (
            json!({"actor": "ledger", "fault": "db_fail", "seconds": -1}),
            400,
        ),
        (json!({"actor": "key:not-a-uuid", "fault": "panic"}), 404),
        (
            json!({"actor": format!("key:{}", Uuid::new_v4()), "fault": "panic"}),
            404,
        ),
        (json!({"actor": "upstream:nowhere", "fault": "panic"}), 404),
        (
            json!({"actor": "ledger", "fault": "panic", "extra": 1}),
            400,
        ),
    ] {
        let (s, reply) = app
            .post("/api/admin/faults", &app.admin_token, bad.clone())
            .await;
        assert_eq!(s, status, "{bad}: {reply}");
    }

    // Every injection was counted.
    let metrics = app.metrics().await;
    for kind in [
        "panic_next",
        "drop",
        "delay",
        "db_fail",
        "listener_disconnect",
    ] {
        assert!(
            metrics.contains(&format!(
                "neuropia_faults_injected_total{{kind=\"{kind}\"}}"
            )),
            "{kind} counted"
        );
    }
    assert!(metrics.contains("neuropia_ledger_flush_failures_total"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_request_ids_and_server_timing() {
    let mock = mock_upstream().await;
    mock.state.delay_ms.store(30, Ordering::SeqCst);
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { user, token, key } = app
        .customer(
            "metrics@example.com",
            "10",
            json!({"name": "m", "rate_limit_rpm": 2}),
        )
        .await;

    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let timing = r.headers()["server-timing"].to_str().unwrap().to_owned();
    // The same id went upstream and is the usage row's.
    assert_eq!(mock.state.request_ids.lock().unwrap().last(), Some(&id));
    app.settle_journal().await;
    let logged: String =
        sqlx::query_scalar("SELECT request_id FROM data.usage_log WHERE user_id = $1")
            .bind(user)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(logged, id);
    // gateway;dur=G;desc="gateway overhead", upstream;dur=U, total;dur=T
    let dur = |name: &str| -> f64 {
        timing
            .split(", ")
            .find(|p| p.starts_with(&format!("{name};")))
            .and_then(|p| p.split("dur=").nth(1))
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {timing}"))
    };
    assert!(dur("upstream") >= 30.0, "{timing}");
    assert!(
        (dur("gateway") + dur("upstream") - dur("total")).abs() < 0.01,
        "{timing}"
    );
    assert!(dur("gateway") < dur("total"), "{timing}");

    // Errors carry the headers too; refusals are counted by reason.
    assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.headers().contains_key("server-timing"));
    let r = app.chat("vk_nope", &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 401);

    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let target = format!("dashscope@{}", mock.dashscope_host());
    // The public scrape names a target by provider and a hash, not by its address.
    let label = neuropia::metrics::target_label(&target);
    assert!(!text.contains(&mock.addr.to_string()), "{text}");
    for needle in [
        "neuropia_http_requests_total{route=\"/v1/chat/completions\",status=\"200\",model=\"qwen-turbo\"}"
            .to_owned(),
        "neuropia_http_requests_total{route=\"/v1/chat/completions\",status=\"429\",model=\"qwen-turbo\"}"
            .to_owned(),
        "neuropia_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\"".to_owned(),
        "neuropia_gateway_overhead_seconds_bucket{route=\"/v1/chat/completions\"".to_owned(),
        "neuropia_refusals_total{reason=\"rpm\"}".to_owned(),
        "neuropia_refusals_total{reason=\"invalid_key\"}".to_owned(),
        format!("neuropia_upstream_duration_seconds_count{{target=\"{label}\"}}"),
        format!("neuropia_breaker_state{{target=\"{label}\"}} 0"),
        "neuropia_ledger_flush_seconds_count".to_owned(),
        "neuropia_journal_depth".to_owned(),
        "neuropia_actor_restarts{actor=\"ledger\"}".to_owned(),
        "neuropia_actor_backlog{actor=\"keys\"}".to_owned(),
        "neuropia_actors_live{kind=\"key\"}".to_owned(),
        "neuropia_actors_live{kind=\"balance\"}".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle} missing from:\n{text}");
    }

    // Upstream errors per target.
    mock.state.fail_status.store(500, Ordering::SeqCst);
    let r = app
        .chat(
            &app.create_key(&token, user, json!({"name": "m2"})).await,
            &chat_body("qwen-turbo"),
        )
        .await;
    assert_eq!(r.status(), 502);
    let text = app.metrics().await;
    assert!(
        text.contains(&format!(
            "neuropia_upstream_errors_total{{target=\"{label}\",kind=\"server_error\"}}"
        )),
        "{text}"
    );

    // A breaker that panics is restarted under its name, and the tree counts it.
    let name = format!("upstream:{target}");
    fault(&app, json!({"actor": name, "fault": "panic"})).await;
    eventually(5, "the breaker restarted", || async {
        let t = tree(&app, "").await;
        child(&t, "upstreams")["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name && c["restarts"] == 1 && c["status"] == "running")
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_actors_passivate_and_come_back_with_their_state() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| c.passivate_secs = 1).await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, token) = app.register("passive@example.com").await;
    app.top_up(user, "10").await;
    // A busy key (rpm 2, used up) and a key that was only looked at.
    let busy = app
        .create_key(&token, user, json!({"name": "busy", "rate_limit_rpm": 2}))
        .await;
    let idle = app
        .create_key(&token, user, json!({"name": "idle", "rate_limit_rpm": 5}))
        .await;
    for _ in 0..2 {
        assert_eq!(
            app.chat(&busy, &chat_body("qwen-turbo")).await.status(),
            200
        );
    }
    assert_eq!(
        app.chat(&busy, &chat_body("qwen-turbo")).await.status(),
        429
    );
    let models = app
        .client
        .get(app.url("/v1/models"))
        .header("x-virtual-key", &idle)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    app.settle_journal().await;
    let (after_two, _) = app.db_balance(user).await;
    let cost = (d("10") - after_two) / d("2");
    assert!(cost > d("0"), "two calls were charged");

    // The balance actor (no open reservation) and the idle key passivate; the busy key
    // keeps its actor while its rpm window holds calls.
    let keys_state = |root: &Value| child(root, "keys")["state"].clone();
    eventually(10, "the idle actors passivate", || async {
        let root = tree(&app, "").await;
        let balances = child(&root, "balances");
        keys_state(&root)["passivated"] == 1
            && balances["state"]["passivated"] == 1
            && balances["children_total"] == 0
    })
    .await;
    let root = tree(&app, "").await;
    let keys = child(&root, "keys");
    assert_eq!(
        keys["children_total"], 1,
        "only the busy key is live: {keys}"
    );
    let busy_id: Uuid = sqlx::query_scalar("SELECT id FROM data.virtual_key WHERE name = 'busy'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    child(keys, &format!("key:{busy_id}"));

    // They come back on the next use with the right state: the busy key still refuses
    // (its window was kept), the idle key serves, and the balance is exact.
    assert_eq!(
        app.chat(&busy, &chat_body("qwen-turbo")).await.status(),
        429
    );
    assert_eq!(
        app.chat(&idle, &chat_body("qwen-turbo")).await.status(),
        200
    );
    app.settle_journal().await;
    let (balance, status) = app.api_balance(user).await;
    assert_eq!(balance, d("10") - cost * d("3"));
    assert_eq!(status, "active");
    assert_eq!(app.db_balance(user).await.0, balance);

    // Passivated again, then credited through a fresh actor: nothing lost on the way.
    eventually(10, "the balance actor passivates again", || async {
        let root = tree(&app, "").await;
        child(&root, "balances")["state"]["passivated"] == 2
    })
    .await;
    app.top_up(user, "1").await;
    assert_eq!(app.api_balance(user).await.0, d("11") - cost * d("3"));

    let metrics = app.metrics().await;
    let passivated = metrics
        .lines()
        .find(|l| l.starts_with("neuropia_actors_passivated{kind=\"balance\"}"))
        .unwrap_or_else(|| panic!("no passivation gauge in {metrics}"));
    assert!(passivated.ends_with(" 2"), "{passivated}");
    app.stop().await;
}
