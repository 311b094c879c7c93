//! The audit log: every change through the platform API, with its actor, target, request
//! id and before/after values, secrets redacted, append-only, filtered and paged; a tenant
//! admin sees its tenant's entries only.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Sends a change and returns its body and the request id the gateway gave it.
async fn change(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> (Value, String) {
    let r = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("a response");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("a request id")
        .to_owned();
    (r.json().await.expect("JSON"), id)
}

async fn audit(app: &TestApp, token: &str, q: &str) -> Value {
    let (s, body) = app.get(&format!("/api/admin/audit{q}"), token).await;
    assert_eq!(s, 200, "{q}: {body}");
    body
}

fn actions(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("an action").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_with_who_what_and_before_and_after() {
    let app = TestApp::spawn().await;
    let admin_id = {
        let (_, t) = app
            .post(
                "/api/auth/login",
                "",
                json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
            )
            .await;
        t["user_id"].as_str().unwrap().to_owned()
    };
    let admin = app.admin_token.clone();
    let rate = |input: &str| json!({"provider": "mock", "model": "m", "input_rate": input, "output_rate": "0.002"});
    change(
        &app,
        Method::PUT,
        "/api/admin/provider-rates",
        &admin,
        rate("0.001"),
    )
    .await;
    let (_, rate_request) = change(
        &app,
        Method::PUT,
        "/api/admin/provider-rates",
        &admin,
        rate("0.003"),
    )
    .await;
    app.set_model("m", json!({"targets": [{"provider": "mock"}]}))
        .await;
    let tenant = app.create_tenant("audited", "10", "0").await;
    let other = app.create_tenant("elsewhere", "10", "0").await;
    change(
        &app,
        Method::PATCH,
        &format!("/api/admin/tenants/{tenant}"),
        &admin,
        json!({"markup_percent": "12"}),
    )
    .await;
    let (_, ta) = app
        .tenant_user(&admin, tenant, "ta@audit.example", "tenant_admin")
        .await;
    let (user, _) = app
        .tenant_user(&ta, tenant, "u@audit.example", "user")
        .await;
    app.tenant_user(&admin, other, "x@audit.example", "user")
        .await;
    let (created, _) = change(
        &app,
        Method::POST,
        &format!("/api/users/{user}/virtual-keys"),
        &ta,
        json!({"name": "k", "budget_total": "5"}),
    )
    .await;
    let plaintext = created["virtual_key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    change(
        &app,
        Method::PATCH,
        &format!("/api/virtual-keys/{key_id}"),
        &ta,
        json!({"rate_limit_rpm": 10}),
    )
    .await;
    let (rotated, _) = change(
        &app,
        Method::POST,
        &format!("/api/virtual-keys/{key_id}/rotate"),
        &ta,
        json!({}),
    )
    .await;
    change(
        &app,
        Method::PATCH,
        &format!("/api/admin/users/{user}"),
        &ta,
        json!({"suspended": true}),
    )
    .await;
    app.top_up(user, "3").await;
    let (codes, _) = change(
        &app,
        Method::POST,
        "/api/admin/redemption-codes",
        &admin,
        json!({"amount": "1", "expires_at": "2999-01-01T00:00:00Z"}),
    )
    .await;
    let code = codes["data"][0]["code"].as_str().unwrap().to_owned();
    change(
        &app,
        Method::POST,
        "/api/admin/portkey-configs",
        &admin,
        json!({"tenant_id": tenant, "config_name": "p",
               "config": {"targets": [{"provider": "openai", "api_key": "sk-secret-audit"}]}}),
    )
    .await;
    change(
        &app,
        Method::POST,
        "/api/admin/faults",
        &admin,
        json!({"actor": "config", "fault": "delay", "ms": 1, "seconds": 0.1}),
    )
    .await;

    // The platform admin sees everything, newest first.
    let all = audit(&app, &admin, "?limit=500").await;
    let seen = actions(&all);
    for a in [
        "provider_rate.set",
        "model_config.set",
        "tenant.create",
        "tenant.update",
        "user.create",
        "virtual_key.create",
        "virtual_key.update",
        "virtual_key.rotate",
        "user.update",
        "balance.top_up",
        "redemption_code.create",
        "portkey_config.create",
        "fault.inject",
    ] {
        assert!(seen.iter().any(|s| s == a), "{a} missing from {seen:?}");
    }
    assert_eq!(seen[0], "fault.inject", "newest first: {seen:?}");
    let text = all.to_string();
    for secret in [
        plaintext.as_str(),
        rotated["virtual_key"].as_str().unwrap(),
        &code,
        "sk-secret-audit",
    ] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }

    // One change in full: who, which request, from what to what.
    let rates = audit(&app, &admin, "?target_type=provider_rate&target_id=mock/m").await;
    let last = &rates["data"][0];
    assert_eq!(rates["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            last["actor_id"].as_str(),
            last["actor_role"].as_str(),
            last["request_id"].as_str(),
            last["before"]["input_rate"].as_str(),
            last["after"]["input_rate"].as_str(),
        ),
        (
            Some(admin_id.as_str()),
            Some("platform_admin"),
            Some(rate_request.as_str()),
            Some("0.001"),
            Some("0.003"),
        ),
        "{last}"
    );
    assert!(
        rates["data"][1]["before"].is_null(),
        "the first rate had no before"
    );
    let key_log = audit(
        &app,
        &admin,
        &format!("?target_type=virtual_key&target_id={key_id}"),
    )
    .await;
    assert_eq!(
        actions(&key_log),
        [
            "virtual_key.rotate",
            "virtual_key.update",
            "virtual_key.create"
        ]
    );
    let update = &key_log["data"][1];
    assert_eq!(
        (
            &update["before"]["rate_limit_rpm"],
            &update["after"]["rate_limit_rpm"]
        ),
        (&Value::Null, &json!(10))
    );
    let suspension = audit(&app, &admin, "?action=user.update").await;
    assert_eq!(
        (
            &suspension["data"][0]["before"]["suspended"],
            &suspension["data"][0]["after"]["suspended"]
        ),
        (&json!(false), &json!(true))
    );

    // Paging: two at a time, no entry twice.
    let first = audit(&app, &admin, "?limit=2").await;
    let before = first["next_before"].as_i64().expect("a next page");
    let second = audit(&app, &admin, &format!("?limit=2&before={before}")).await;
    let ids: Vec<i64> = [&first, &second]
        .iter()
        .flat_map(|p| {
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    // The tenant admin: its tenant's entries only; nobody else's on asking.
    let mine = audit(&app, &ta, "?limit=500").await;
    let entries = mine["data"].as_array().unwrap();
    assert!(entries.len() >= 5, "{mine}");
    assert!(
        entries.iter().all(|e| e["tenant_id"] == json!(tenant)),
        "{mine}"
    );
    assert!(!actions(&mine).iter().any(|a| a == "provider_rate.set"));
    let (s, _) = app
        .get(&format!("/api/admin/audit?tenant_id={other}"), &ta)
        .await;
    assert_eq!(s, 403);
    let (_, user_token) = app.register("plain@audit.example").await;
    let (s, _) = app.get("/api/admin/audit", &user_token).await;
    assert_eq!(s, 403);
    for bad in ["?limit=0", "?before=x", "?surprise=1"] {
        let (s, _) = app.get(&format!("/api/admin/audit{bad}"), &admin).await;
        assert_eq!(s, 400, "{bad}");
    }

    // Append-only, even for the database's own user.
    for sql in [
        "UPDATE data.audit_log SET action = 'forged'",
        "DELETE FROM data.audit_log",
        "TRUNCATE data.audit_log",
    ] {
        assert!(sqlx::query(sql).execute(app.pool()).await.is_err(), "{sql}");
    }
    app.stop().await;
}
