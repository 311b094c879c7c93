//! Every bad input gets the right status and an OpenAI-shaped error; a client's mistake is
//! never a 500, and nothing is billed for calls that did not succeed.
#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "expected {status} {code}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string() && body["error"]["type"].is_string());
    body
}

async fn raw_chat(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .header("x-virtual-key", key)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_errors_map_to_the_right_status_and_bill_nothing() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 4096).await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    app.set_model(
        "slow",
        json!({"targets": [{"provider": "dashscope", "custom_host": mock.dashscope_host(),
            "override_params": {"model": "qwen-turbo"}, "request_timeout": 200}]}),
    )
    .await;
    app.set_model(
        "dead",
        json!({"targets": [{"provider": "dashscope", "custom_host": "http://127.0.0.1:9/v1",
            "override_params": {"model": "qwen-turbo"}}]}),
    )
    .await;
    app.set_model(
        "with-fallback",
        json!({"strategy": {"mode": "fallback"}, "targets": [
            {"provider": "dashscope", "custom_host": "http://127.0.0.1:9/v1",
             "override_params": {"model": "qwen-turbo"}},
            {"provider": "openai", "custom_host": format!("http://{}/v1", mock.addr),
             "api_key": "sk-second", "override_params": {"model": "gpt-4o-mini"}}]}),
    )
    .await;
    app.set_rate("openai", "gpt-4o-mini", "0.01", "0.01").await;
    app.set_model(
        "unpriced",
        json!({"targets": [{"provider": "mock",
        "override_params": {"model": "no-rate"}}]}),
    )
    .await;

    let (user, token) = app.register("errors@example.com").await;
    let key = app
        .create_key(
            &token,
            user,
            json!({"name": "k", "rate_limit_tpm": 100,
                "allowed_models": ["qwen-turbo", "slow", "dead", "with-fallback", "unpriced"]}),
        )
        .await;
    app.top_up(user, "100").await;

    // Authentication first, whatever the body.
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&chat_body("qwen-turbo"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_api_key").await;
    expect_error(
        raw_chat(&app, "vk_nope", "{not json").await,
        401,
        "invalid_api_key",
    )
    .await;
    expect_error(
        app.chat("vk_nope", &chat_body("qwen-turbo")).await,
        401,
        "invalid_api_key",
    )
    .await;

    // Bad bodies.
    expect_error(
        raw_chat(&app, &key, "{not json").await,
        400,
        "invalid_request",
    )
    .await;
    expect_error(raw_chat(&app, &key, "").await, 400, "invalid_request").await;
    expect_error(raw_chat(&app, &key, "[1,2]").await, 400, "invalid_request").await;
    for bad in [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "qwen-turbo", "messages": []}),
        json!({"model": "qwen-turbo", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
    ] {
        expect_error(app.chat(&key, &bad).await, 400, "invalid_request").await;
    }
    let stream = json!({"model": "qwen-turbo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]});
    expect_error(app.chat(&key, &stream).await, 400, "invalid_request").await;
    let big = json!({"model": "qwen-turbo", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    expect_error(app.chat(&key, &big).await, 413, "request_too_large").await;

    // Models.
    expect_error(
        app.chat(&key, &chat_body("no-such-model")).await,
        404,
        "not_found",
    )
    .await;
    app.set_model("other", json!({"targets": [{"provider": "mock"}]}))
        .await;
    expect_error(
        app.chat(&key, &chat_body("other")).await,
        403,
        "permission_denied",
    )
    .await;
    expect_error(
        app.chat(&key, &chat_body("unpriced")).await,
        503,
        "service_unavailable",
    )
    .await;

    // A request that alone exceeds the key's tpm.
    let huge = json!({"model": "qwen-turbo", "max_tokens": 500,
        "messages": [{"role": "user", "content": "x"}]});
    let r = app.chat(&key, &huge).await;
    assert!(r.headers().get("retry-after").is_some());
    expect_error(r, 429, "tokens_rate_limit_exceeded").await;

    // Upstream failures: not billed.
    assert_eq!(mock.calls(), 0);
    mock.state.fail_status.store(500, Ordering::SeqCst);
    expect_error(
        app.chat(&key, &chat_body("qwen-turbo")).await,
        502,
        "upstream_error",
    )
    .await;
    mock.state.fail_status.store(401, Ordering::SeqCst);
    expect_error(
        app.chat(&key, &chat_body("qwen-turbo")).await,
        502,
        "upstream_error",
    )
    .await;
    mock.state.fail_status.store(400, Ordering::SeqCst);
    let body = expect_error(
        app.chat(&key, &chat_body("qwen-turbo")).await,
        400,
        "upstream_rejected",
    )
    .await;
    assert_eq!(body["error"]["message"], "mock failure 400");
    mock.state.fail_status.store(0, Ordering::SeqCst);
    mock.state.delay_ms.store(1000, Ordering::SeqCst);
    expect_error(
        app.chat(&key, &chat_body("slow")).await,
        504,
        "upstream_timeout",
    )
    .await;
    mock.state.delay_ms.store(0, Ordering::SeqCst);
    expect_error(
        app.chat(&key, &chat_body("dead")).await,
        502,
        "upstream_error",
    )
    .await;
    app.settle_journal().await;
    assert_eq!(
        app.db_balance(user).await.0,
        d("100"),
        "failed calls are not billed"
    );

    // Fallback past a dead target; billed on the rates of the target that answered.
    let r = app.chat(&key, &chat_body("with-fallback")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        mock.state.authorizations.lock().unwrap().last().cloned(),
        Some("Bearer sk-second".to_owned())
    );
    app.settle_journal().await;
    // (12 + 8) * 0.01, no markup on the default tenant.
    assert_eq!(app.db_balance(user).await.0, d("100") - d("0.2"));
    let (provider, model): (String, String) =
        sqlx::query_as("SELECT provider, model FROM data.usage_log WHERE user_id = $1")
            .bind(user)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(
        (provider.as_str(), model.as_str()),
        ("openai", "gpt-4o-mini")
    );

    // Routing.
    let r = app
        .client
        .get(app.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "method_not_allowed").await;
    let r = app.client.get(app.url("/v2/nothing")).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    app.stop().await;
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = app.client.request(method, app.url(path));
    if !token.is_empty() {
        r = r.bearer_auth(token);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

/// One bad request and what it must get back.
struct Case<'a> {
    what: &'a str,
    method: Method,
    path: String,
    token: &'a str,
    body: Option<Value>,
    status: u16,
    code: &'a str,
}

fn case<'a>(
    what: &'a str,
    (method, path): (Method, &str),
    token: &'a str,
    body: Option<Value>,
    (status, code): (u16, &'a str),
) -> Case<'a> {
    Case {
        what,
        method,
        path: path.to_owned(),
        token,
        body,
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_errors_map_to_the_right_status() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let (user, token) = app.register("bob@example.com").await;
    let (other, other_token) = app.register("carol@example.com").await;

    let reg = |email: &str, password: &str| {
        Some(json!({"email": email, "password": password, "username": "x"}))
    };
    let login = |email: &str, password: &str| Some(json!({"email": email, "password": password}));
    let one = || Some(json!({"amount": "1"}));
    let topup = format!("/api/users/{user}/topups");
    let elsewhere = format!("/api/users/{}/topups", Uuid::new_v4());
    let keys_of_other = format!("/api/users/{other}/virtual-keys");
    let balance_of_other = format!("/api/users/{other}/balance");
    let no_tenant = format!("/api/admin/tenants/{}", Uuid::new_v4());
    let default_tenant = format!("/api/admin/tenants/{}", neuropia::db::users::DEFAULT_TENANT);
    let rate = |input: &str| {
        Some(json!({"provider": "p", "model": "m", "input_rate": input, "output_rate": "0.1"}))
    };
    let fault = |actor: &str, fault: &str| Some(json!({"actor": actor, "fault": fault}));
    let (post, get, put, patch) = (Method::POST, Method::GET, Method::PUT, Method::PATCH);
    const BAD: (u16, &str) = (400, "invalid_request");
    const UNAUTHENTICATED: (u16, &str) = (401, "invalid_api_key");
    const FORBIDDEN: (u16, &str) = (403, "permission_denied");
    const NOT_FOUND: (u16, &str) = (404, "not_found");
    const CONFLICT: (u16, &str) = (409, "conflict");

    let mut cases = vec![
        // Registration and login.
        case(
            "email taken",
            (post.clone(), "/api/auth/register"),
            "",
            reg("bob@example.com", USER_PASSWORD),
            CONFLICT,
        ),
        case(
            "email taken, other case",
            (post.clone(), "/api/auth/register"),
            "",
            reg("BOB@example.com", USER_PASSWORD),
            CONFLICT,
        ),
        case(
            "short password",
            (post.clone(), "/api/auth/register"),
            "",
            reg("new@example.com", "short"),
            BAD,
        ),
        case(
            "not an email",
            (post.clone(), "/api/auth/register"),
            "",
            reg("not-an-email", USER_PASSWORD),
            BAD,
        ),
        case(
            "fields missing",
            (post.clone(), "/api/auth/register"),
            "",
            Some(json!({"email": "x@y.z"})),
            BAD,
        ),
        case(
            "wrong password",
            (post.clone(), "/api/auth/login"),
            "",
            login("bob@example.com", "wrong-password"),
            UNAUTHENTICATED,
        ),
        case(
            "unknown email",
            (post.clone(), "/api/auth/login"),
            "",
            login("ghost@example.com", USER_PASSWORD),
            UNAUTHENTICATED,
        ),
        // Tokens.
        case(
            "no token",
            (post.clone(), &topup),
            "",
            one(),
            UNAUTHENTICATED,
        ),
        case(
            "garbage token",
            (post.clone(), &topup),
            "garbage",
            one(),
            UNAUTHENTICATED,
        ),
        case(
            "a user tops itself up",
            (post.clone(), &topup),
            &token,
            one(),
            FORBIDDEN,
        ),
        // Amounts and ids.
        case(
            "no such user",
            (post.clone(), &elsewhere),
            &admin,
            one(),
            NOT_FOUND,
        ),
        case(
            "not a uuid",
            (post.clone(), "/api/users/not-a-uuid/topups"),
            &admin,
            one(),
            BAD,
        ),
        // Users reach only themselves.
        case(
            "another user's keys",
            (post.clone(), &keys_of_other),
            &token,
            Some(json!({"name": "x"})),
            NOT_FOUND,
        ),
        case(
            "another user's balance",
            (get.clone(), &balance_of_other),
            &token,
            None,
            NOT_FOUND,
        ),
        case(
            "rpm 0",
            (post.clone(), &keys_of_other),
            &other_token,
            Some(json!({"name": "x", "rate_limit_rpm": 0})),
            BAD,
        ),
        case(
            "empty key name",
            (post.clone(), &keys_of_other),
            &other_token,
            Some(json!({"name": ""})),
            BAD,
        ),
        // Admin endpoints.
        case(
            "rates by a user",
            (put.clone(), "/api/admin/provider-rates"),
            &token,
            rate("0.1"),
            FORBIDDEN,
        ),
        case(
            "negative rate",
            (put.clone(), "/api/admin/provider-rates"),
            &admin,
            rate("-1"),
            BAD,
        ),
        case(
            "plan without targets",
            (put.clone(), "/api/admin/model-configs"),
            &admin,
            Some(json!({"model": "m", "config": {"targets": []}})),
            BAD,
        ),
        case(
            "unknown provider",
            (put.clone(), "/api/admin/model-configs"),
            &admin,
            Some(json!({"model": "m", "provider": "nowhere"})),
            BAD,
        ),
        case(
            "no such tenant",
            (patch.clone(), &no_tenant),
            &admin,
            Some(json!({"markup_percent": "10"})),
            NOT_FOUND,
        ),
        case(
            "negative markup",
            (patch, &default_tenant),
            &admin,
            Some(json!({"markup_percent": "-10"})),
            BAD,
        ),
        // Faults.
        case(
            "no such actor",
            (post.clone(), "/api/admin/faults"),
            &admin,
            fault("nobody", "panic"),
            NOT_FOUND,
        ),
        case(
            "no such fault",
            (post.clone(), "/api/admin/faults"),
            &admin,
            fault("ledger", "explode"),
            BAD,
        ),
        case(
            "faults by a user",
            (post.clone(), "/api/admin/faults"),
            &token,
            fault("ledger", "panic"),
            FORBIDDEN,
        ),
    ];
    for bad in [
        json!("abc"),
        json!("-5"),
        json!(0),
        json!("1.123456789"),
        json!("NaN"),
        json!(true),
        json!("1e3"),
    ] {
        cases.push(case(
            "bad amount",
            (post.clone(), &topup),
            &admin,
            Some(json!({"amount": bad})),
            BAD,
        ));
    }
    for c in cases {
        let r = call(&app, c.method, &c.path, c.token, c.body.clone()).await;
        let (status, body) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (c.status, Some(c.code)),
            "{}: {} {} {:?} -> {body}",
            c.what,
            c.path,
            c.token.len(),
            c.body
        );
        assert!(body["error"]["message"].is_string() && body["error"]["type"].is_string());
    }

    // Idempotent top-ups: the same request_id credits once.
    let once = json!({"amount": 2.5, "request_id": "invoice-42"});
    let r = call(&app, Method::POST, &topup, &admin, Some(once.clone())).await;
    assert_eq!(r.status(), 200);
    let r = call(&app, Method::POST, &topup, &admin, Some(once)).await;
    expect_error(r, 409, "conflict").await;
    app.settle_journal().await;
    assert_eq!(app.db_balance(user).await, (d("2.5"), "active".to_owned()));
    assert_eq!(app.api_balance(user).await.0, d("2.5"));

    // Platform keys given in a plan are never returned.
    let r = call(
        &app,
        Method::PUT,
        "/api/admin/model-configs",
        &admin,
        Some(json!({"model": "m",
        "config": {"targets": [{"provider": "openai", "api_key": "sk-very-secret"}]}})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("sk-very-secret") && text.contains("***"),
        "{text}"
    );
    app.stop().await;

    let off = TestApp::spawn_with(|c| c.faults = false).await;
    let r = call(
        &off,
        Method::POST,
        "/api/admin/faults",
        &off.admin_token,
        Some(json!({"actor": "ledger", "fault": "panic"})),
    )
    .await;
    expect_error(r, 404, "not_found").await;
    off.stop().await;
}
