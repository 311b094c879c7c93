//! Prices that match providers' bills: cached input, cache writes and reasoning output at
//! their own rates, exact to the last decimal, whole and streamed, OpenAI- and
//! Anthropic-format; usage rows record the split and the rates used.
#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use neuropia::billing::Decimal;
use reqwest::Method;
use serde_json::{Value, json};

type Row = (
    i32,
    i32,
    i32,
    i32,
    i32,
    Option<Decimal>,
    Option<Decimal>,
    Decimal,
);

async fn last_row(app: &TestApp, user: uuid::Uuid) -> Row {
    app.settle_journal().await;
    sqlx::query_as(
        "SELECT input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                reasoning_tokens, cached_input_rate, reasoning_output_rate, cost
         FROM data.usage_log WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(user)
    .fetch_one(app.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_and_reasoning_tokens_are_billed_at_their_own_rates() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("reasoner", &mock, "0.001", "0.002").await;
    let (status, view) = app
        .send(
            Method::PUT,
            "/api/admin/provider-rates",
            &app.admin_token,
            Some(
                json!({"provider": "dashscope", "model": "qwen-turbo", "input_rate": "0.001",
                "output_rate": "0.002", "cached_input_rate": "0.0001",
                "reasoning_output_rate": "0.004"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (
            &view["cached_input_rate"],
            &view["cache_write_rate"],
            &view["reasoning_output_rate"]
        ),
        (&json!("0.0001"), &Value::Null, &json!("0.004"))
    );
    app.set_model(
        "claude",
        json!({"targets": [{"provider": "anthropic", "custom_host": format!("http://{}/v1", mock.addr),
            "api_key": "sk-ant"}]}),
    )
    .await;
    let (status, _) = app
        .send(
            Method::PUT,
            "/api/admin/provider-rates",
            &app.admin_token,
            Some(
                json!({"provider": "anthropic", "model": "claude", "input_rate": "0.003",
                "output_rate": "0.015", "cached_input_rate": "0.0003",
                "cache_write_rate": "0.00375"}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    let Customer { user, key, .. } = app
        .customer("cache@example.com", "10", json!({"name": "c"}))
        .await;

    // 12 prompt tokens of which 8 cached, 8 completion tokens of which 5 reasoning:
    // 4 * 0.001 + 8 * 0.0001 + 3 * 0.002 + 5 * 0.004 = 0.004 + 0.0008 + 0.006 + 0.02.
    mock.state.cached_tokens.store(8, Ordering::SeqCst);
    mock.state.reasoning_tokens.store(5, Ordering::SeqCst);
    let r = app.chat(&key, &chat_body("reasoner")).await;
    assert_eq!(r.status(), 200);
    let expected = (
        12,
        8,
        8,
        0,
        5,
        Some(d("0.0001")),
        Some(d("0.004")),
        d("0.0308"),
    );
    assert_eq!(last_row(&app, user).await, expected);
    // The same, streamed: the usage chunk carries the details.
    let mut streamed = chat_body("reasoner");
    streamed["stream"] = json!(true);
    let r = app.chat(&key, &streamed).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(last_row(&app, user).await, expected);

    // Anthropic: 12 plain input tokens, 100 read from the cache, 20 written to it, 8 output:
    // 12 * 0.003 + 100 * 0.0003 + 20 * 0.00375 + 8 * 0.015 = 0.036 + 0.03 + 0.075 + 0.12.
    mock.state.cached_tokens.store(100, Ordering::SeqCst);
    mock.state.cache_write_tokens.store(20, Ordering::SeqCst);
    mock.state.reasoning_tokens.store(0, Ordering::SeqCst);
    let r = app.chat(&key, &chat_body("claude")).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["usage"]["prompt_tokens"], 132,
        "every input token is reported"
    );
    assert_eq!(
        last_row(&app, user).await,
        (132, 8, 100, 20, 0, Some(d("0.0003")), None, d("0.261"))
    );
    let (balance, _) = app.db_balance(user).await;
    assert_eq!(balance, d("10") - d("0.0308") - d("0.0308") - d("0.261"));

    // One plan, one currency: a fallback from a USD-priced target to a CNY-priced one is
    // refused (a balance is in one currency; the gateway does not convert).
    let (status, _) = app
        .send(
            Method::PUT,
            "/api/admin/provider-rates",
            &app.admin_token,
            Some(
                json!({"provider": "dashscope", "model": "qwen-cny", "input_rate": "0.01",
                "output_rate": "0.02", "currency": "CNY"}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    let mixed = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "dashscope", "custom_host": mock.dashscope_host(),
         "override_params": {"model": "qwen-turbo"}},
        {"provider": "dashscope", "custom_host": mock.dashscope_host(),
         "override_params": {"model": "qwen-cny"}}]});
    let (status, body) = app
        .send(
            Method::PUT,
            "/api/admin/model-configs",
            &app.admin_token,
            Some(json!({"model": "mixed", "config": mixed})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("CNY, USD"), "{body}");

    // A negative or over-precise split rate is refused.
    for bad in [json!("-0.1"), json!("0.0000000000001")] {
        let (status, body) = app
            .send(
                Method::PUT,
                "/api/admin/provider-rates",
                &app.admin_token,
                Some(json!({"provider": "p", "model": "m", "input_rate": "0.1",
                    "output_rate": "0.1", "cached_input_rate": bad})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_markup_for_one_model_beats_the_tenant_and_user_markups() {
    let app = TestApp::spawn().await;
    for model in ["m", "n"] {
        app.set_model(
            model,
            serde_json::json!({"targets": [{"provider": "mock"}]}),
        )
        .await;
        app.set_rate("mock", model, "0.001", "0.002").await;
    }
    let tenant = app.create_tenant("per-model", "10", "0").await;
    let other = app.create_tenant("not-mine", "10", "0").await;
    let (_, ta) = app
        .tenant_user(
            &app.admin_token,
            tenant,
            "ta@permodel.example",
            "tenant_admin",
        )
        .await;
    let (user, token) = app
        .tenant_user(&ta, tenant, "u@permodel.example", "user")
        .await;
    app.top_up(user, "10").await;
    let key = app
        .create_key(&token, user, serde_json::json!({"name": "k"}))
        .await;
    let put = |who: &str, t: uuid::Uuid, model: &str, m: &str| {
        let (app, who) = (&app, who.to_owned());
        let path = format!("/api/tenants/{t}/model-markups/{model}");
        let body = serde_json::json!({ "markup_percent": m });
        async move {
            app.send(reqwest::Method::PUT, &path, &who, Some(body))
                .await
        }
    };
    assert_eq!(
        put(&ta, tenant, "m", "5").await.0,
        400,
        "below the tenant's 10 %"
    );
    assert_eq!(put(&ta, other, "m", "30").await.0, 404, "another tenant");
    assert_eq!(put(&ta, tenant, "nope", "30").await.0, 404, "no such model");
    assert_eq!(
        put(&token, tenant, "m", "30").await.0,
        404,
        "a user manages no tenant"
    );
    let (s, list) = put(&ta, tenant, "m", "30").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["data"][0]["markup_percent"], "30");
    let (s, _) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/admin/users/{user}"),
            &ta,
            Some(serde_json::json!({"markup_percent": "20"})),
        )
        .await;
    assert_eq!(s, 200);

    let (_, prices) = app.get(&format!("/api/users/{user}/prices"), &token).await;
    let terms = |model: &str| {
        let m = prices["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["model"] == model)
            .unwrap();
        (
            m["markup_percent"].as_str().unwrap().to_owned(),
            m["markup_source"].as_str().unwrap().to_owned(),
            m["targets"][0]["input_price"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(terms("m"), ("30".into(), "model".into(), "0.0013".into()));
    assert_eq!(terms("n"), ("20".into(), "user".into(), "0.0012".into()));

    for model in ["m", "n"] {
        assert_eq!(app.chat(&key, &chat_body(model)).await.status(), 200);
    }
    let (s, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/tenants/{tenant}/model-markups/m"),
            &ta,
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.chat(&key, &chat_body("m")).await.status(), 200);
    app.settle_journal().await;
    let rows: Vec<(String, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "SELECT model, markup_percent, platform_cost, cost FROM data.usage_log
         WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.pool())
    .await
    .unwrap();
    let markups: Vec<(&str, Decimal)> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(
        markups,
        [("m", d("30")), ("n", d("20")), ("m", d("20"))],
        "the model's markup, the user's, then the user's again once removed"
    );
    for (_, m, platform, cost) in &rows {
        assert_eq!(
            *cost,
            *platform * (Decimal::ONE + *m / Decimal::ONE_HUNDRED)
        );
    }
    let (_, log) = app
        .get("/api/admin/audit?target_type=model_markup", &ta)
        .await;
    let actions: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["model_markup.delete", "model_markup.set"]);
    app.stop().await;
}
