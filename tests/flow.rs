//! The brief's main flow, end to end, on real PostgreSQL and Redis:
//! register -> 402 while pending -> admin top-up -> active -> key -> chat through a
//! DashScope-shaped upstream -> usage row -> balance reduced by exactly the formula.

mod common;

use common::*;
use neuropia::db::users::DEFAULT_TENANT;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_flow_end_to_end() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.0000008", "0.000002")
        .await;
    app.set_markup(DEFAULT_TENANT, "15").await;

    let (user, token) = app.register("alice@example.com").await;
    let key = app
        .create_key(
            &token,
            user,
            json!({"name": "alice key", "allowed_models": ["qwen-turbo"]}),
        )
        .await;
    assert!(key.starts_with("vk_") && key.len() > 60, "{key}");

    // Pending accounts are refused before anything reaches the upstream.
    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 402);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "account_pending");
    assert_eq!(mock.calls(), 0);

    let t = app.top_up(user, "10.00").await;
    assert_eq!(t["status"], "active");
    assert_eq!(t["balance"], "10");

    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(r.status(), 200);
    let request_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    let text = r.text().await.unwrap();
    assert!(text.contains("Hello from the mock."), "{text}");
    assert!(!text.contains(PLATFORM_KEY));

    // The upstream saw the platform key and the plan's model.
    assert_eq!(
        mock.state.authorizations.lock().unwrap().last().cloned(),
        Some(format!("Bearer {PLATFORM_KEY}"))
    );
    assert_eq!(mock.state.bodies.lock().unwrap()[0]["model"], "qwen-turbo");

    // (12 * 0.0000008 + 8 * 0.000002) * (1 + 15/100) = 0.0000256 * 1.15 = 0.00002944
    let charge = d("0.00002944");
    app.settle_journal().await;
    let (balance, status) = app.db_balance(user).await;
    assert_eq!(balance, d("10") - charge);
    assert_eq!(status, "active");
    assert_eq!(
        app.api_balance(user).await,
        (d("10") - charge, "active".into())
    );

    let row: (
        String,
        String,
        String,
        i32,
        i32,
        neuropia::billing::Decimal,
        neuropia::billing::Decimal,
    ) = sqlx::query_as(
        "SELECT request_id, provider, model, input_tokens, output_tokens, platform_cost, cost
             FROM data.usage_log WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            request_id,
            "dashscope".into(),
            "qwen-turbo".into(),
            12,
            8,
            d("0.0000256"),
            charge
        )
    );
    let ledger: Vec<(String, neuropia::billing::Decimal)> = sqlx::query_as(
        "SELECT kind, amount FROM data.balance_ledger WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(
        ledger,
        vec![("topup".into(), d("10")), ("charge".into(), -charge)]
    );

    // The brief's alias, with the key as a bearer token.
    let r = app
        .client
        .post(app.url("/api/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("qwen-turbo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let models: serde_json::Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "qwen-turbo");

    app.settle_journal().await;
    let (status, usage) = app.get(&format!("/api/users/{user}/usage"), &token).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["totals"]["requests"], 2);
    assert_eq!(
        usage["totals"]["cost"],
        (charge + charge).normalize().to_string()
    );

    // The plaintext key is stored nowhere: only its hash.
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM data.virtual_key k WHERE k::text LIKE '%' || $1 || '%'",
    )
    .bind(&key)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    let listed = app
        .get(&format!("/api/users/{user}/virtual-keys"), &token)
        .await
        .1;
    assert!(!listed.to_string().contains(&key));
    assert!(
        listed["data"][0]["masked_key"]
            .as_str()
            .unwrap()
            .ends_with(&key[key.len() - 4..])
    );

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_seed_gives_a_working_key_on_the_mock_provider_and_an_operator() {
    let app = TestApp::spawn().await;
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let seeded = neuropia::demo::seed(&app.state, addr).await.unwrap();
    let r = app
        .chat(
            &seeded.virtual_key,
            &json!({"model": neuropia::demo::DEMO_MODEL,
                "messages": [{"role": "user", "content": "Hello, Neuropia!"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock answer: Hello, Neuropia!"
    );
    // The Responses API on the built-in mock, whole and streamed.
    for stream in [false, true] {
        let r = app
            .client
            .post(app.url("/v1/responses"))
            .header("x-virtual-key", &seeded.virtual_key)
            .json(
                &json!({"model": neuropia::demo::DEMO_MODEL, "input": "Hello, Neuropia!",
                "stream": stream}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("Mock answer: Hello, Neuropia!") || text.contains("Neuropia!"),
            "{text}"
        );
        if stream {
            assert!(text.contains("event: response.completed"), "{text}");
        }
    }

    // The demo's embeddings model, on the built-in mock: one vector, billed on its input.
    let r = app
        .client
        .post(app.url("/v1/embeddings"))
        .header("x-virtual-key", &seeded.virtual_key)
        .json(&json!({"model": neuropia::demo::DEMO_EMBED_MODEL, "input": "Hello, Neuropia!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["data"][0]["embedding"].as_array().map(Vec::len),
        Some(8),
        "{body}"
    );
    let input = neuropia::tokens::count("Hello, Neuropia!");
    assert_eq!(body["usage"]["prompt_tokens"], input);
    app.settle_journal().await;
    let (balance, _) = app.db_balance(seeded.user_id).await;
    assert!(balance < d("10") && balance > d("9.99"), "{balance}");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM data.usage_log WHERE user_id = $1 AND model = $2
         AND input_tokens = $3 AND output_tokens = 0",
    )
    .bind(seeded.user_id)
    .bind(neuropia::demo::DEMO_EMBED_MODEL)
    .bind(i32::try_from(input).unwrap())
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(rows, 1, "the embeddings call was billed on its input");

    // On loopback the demo prints a platform admin's sign-in that opens the operators' views.
    let password = seeded
        .operator_password
        .clone()
        .expect("an operator on loopback");
    let printed = seeded.instructions(addr);
    assert!(
        printed.contains(&password) && printed.contains(" actors"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("http://{addr}/console")) && printed.contains("demo-password"),
        "the console and the demo sign-in: {printed}"
    );
    let token = app.login(neuropia::demo::DEMO_OPERATOR, &password).await;
    let (status, tree) = app.get("/api/admin/actors", &token).await;
    assert_eq!(status, 200, "{tree}");
    // A new start gives a new password; the old one (and its tokens) stop working.
    let again = neuropia::demo::seed(&app.state, addr).await.unwrap();
    assert_ne!(again.operator_password, seeded.operator_password);
    let (status, _) = app.get("/api/admin/actors", &token).await;
    assert_eq!(status, 401);
    // Not on another address.
    let public: std::net::SocketAddr = "0.0.0.0:3001".parse().unwrap();
    let elsewhere = neuropia::demo::seed(&app.state, public).await.unwrap();
    assert!(elsewhere.operator_password.is_none());
    app.stop().await;
}
