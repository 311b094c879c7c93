//! Accounts and tokens: password policy, login throttling, refresh, expiry, and a JWT
//! secret that survives restarts when none is configured.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_passwords_are_refused() {
    let app = TestApp::spawn().await;
    for (password, why) in [
        ("short-1", "too short"),
        ("onlylowercaseletters", "one kind of character"),
        ("Password123", "common"),
        ("weak.person", "the email's local part"),
    ] {
        let (s, body) = app
            .post(
                "/api/auth/register",
                "",
                json!({"email": "weak.person@example.com", "password": password, "username": "w"}),
            )
            .await;
        assert_eq!(s, 400, "{why}: {body}");
    }
    let (s, _) = app
        .post(
            "/api/auth/register",
            "",
            json!({"email": "weak.person@example.com", "password": "a-Decent-one", "username": "w"}),
        )
        .await;
    assert_eq!(s, 201);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_email_and_per_address() {
    let app = TestApp::spawn_with(|c| {
        c.login_max_failures = 3;
        c.login_max_failures_per_addr = 6;
    })
    .await;
    app.register("victim@example.com").await;
    app.register("other@example.com").await;
    let login = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/auth/login"))
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .expect("login")
        }
    };
    for _ in 0..3 {
        assert_eq!(
            login("victim@example.com", "wrong-password-9")
                .await
                .status(),
            401
        );
    }
    // Even the right password is refused now, with a Retry-After.
    let r = login("VICTIM@example.com", USER_PASSWORD).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!(retry > 800 && retry <= 900, "{retry}");
    // Another account from the same address still logs in ...
    assert_eq!(
        login("other@example.com", USER_PASSWORD).await.status(),
        200
    );
    // ... until the address itself has failed too often (6 failures in all).
    for _ in 0..3 {
        assert_eq!(
            login("nobody@example.com", "wrong-password-9")
                .await
                .status(),
            401
        );
    }
    assert_eq!(
        login("other@example.com", USER_PASSWORD).await.status(),
        429
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_with_the_current_role_and_expire() {
    let app = TestApp::spawn().await;
    let (user, token) = app.register("refresh@example.com").await;
    let (s, fresh) = app.post("/api/auth/refresh", &token, json!({})).await;
    assert_eq!((s.as_u16(), fresh["role"].as_str()), (200, Some("user")));
    let tenant = neuropia::db::users::DEFAULT_TENANT;
    let (s, _) = app
        .get(&format!("/api/tenants/{tenant}/users"), &token)
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .send(
            Method::PATCH,
            &format!("/api/admin/users/{user}"),
            &app.admin_token,
            Some(json!({"role": "tenant_admin"})),
        )
        .await;
    assert_eq!(s, 200);
    // A new role ends the tokens issued before it, refresh included: sign in again.
    let (s, _) = app.post("/api/auth/refresh", &token, json!({})).await;
    assert_eq!(s, 401);
    let new_token = app.login("refresh@example.com", USER_PASSWORD).await;
    let (s, promoted) = app.post("/api/auth/refresh", &new_token, json!({})).await;
    assert_eq!(
        (s.as_u16(), promoted["role"].as_str()),
        (200, Some("tenant_admin"))
    );
    let new_token = promoted["token"].as_str().expect("token");
    let (s, _) = app
        .get(&format!("/api/tenants/{tenant}/users"), new_token)
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post("/api/auth/refresh", "not-a-token", json!({}))
        .await;
    assert_eq!(s, 401);
    app.stop().await;

    let short = TestApp::spawn_with(|c| c.jwt_ttl_secs = 5).await;
    let (user, _) = short.register("expiry@example.com").await;
    let (s, signed_in) = short
        .post(
            "/api/auth/login",
            "",
            json!({"email": "expiry@example.com", "password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(s, 200);
    let token = signed_in["token"].as_str().unwrap().to_owned();
    let (s, _) = short.get(&format!("/api/users/{user}"), &token).await;
    assert_eq!(s, 200);
    // Past `exp` (whole seconds, no leeway): wait until the clock is a second beyond it.
    let expires_at = signed_in["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let until = Duration::from_secs(expires_at + 1).saturating_sub(now);
    tokio::time::sleep(until + Duration::from_millis(50)).await;
    let (s, body) = short.get(&format!("/api/users/{user}"), &token).await;
    assert_eq!(s, 401, "{body}");
    let (s, _) = short.post("/api/auth/refresh", &token, json!({})).await;
    assert_eq!(s, 401, "an expired token cannot be refreshed: log in again");
    short.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_jwt_secret_is_kept_across_restarts() {
    let db = format!("neuropia_test_{}", uuid::Uuid::new_v4().simple());
    let mut first = TestApp::spawn_on(&db, |c| c.jwt_secret = None).await;
    let token = first.admin_token.clone();
    let (s, _) = first.get("/api/admin/tenants", &token).await;
    assert_eq!(s, 200);
    first.stop_keep_db().await;

    let mut second = TestApp::spawn_on(&db, |c| c.jwt_secret = None).await;
    let (s, _) = second.get("/api/admin/tenants", &token).await;
    assert_eq!(s, 200, "a token from before the restart still works");
    second.stop_keep_db().await;

    let third = TestApp::spawn_on(&db, |c| {
        c.jwt_secret = Some(neuropia::config::Secret::new("a-configured-secret-123"))
    })
    .await;
    let (s, _) = third.get("/api/admin/tenants", &token).await;
    assert_eq!(s, 401, "JWT_SECRET, when set, is what signs tokens");
    third.stop().await;
}
