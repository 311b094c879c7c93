//! Usage exports: CSV and JSON past 1,000 rows with a cursor, totals grouped by any
//! combination of day, model, key and user, and failed calls with their status and code.

mod common;

use std::collections::HashSet;

use common::*;
use neuropia::billing::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

/// 2,500 charged calls over three days and two models, written as the ledger would.
async fn history(app: &TestApp, user: Uuid, tenant: Uuid, key: Uuid) {
    sqlx::query(
        "INSERT INTO data.usage_log (request_id, user_id, tenant_id, virtual_key_id, provider,
             model, input_tokens, output_tokens, tokens, input_rate, output_rate, markup_percent,
             platform_cost, cost, created_at)
         SELECT 'hist-' || i, $1, $2, $3, 'mock', CASE WHEN i % 2 = 0 THEN 'm' ELSE 'n' END,
                10, 5, 15, 0.001, 0.002, 0, 0.02, 0.02,
                timestamptz '2026-11-01 00:00:00+00' + (i % 3) * interval '1 day' + i * interval '1 second'
         FROM generate_series(1, 2500) AS i",
    )
    .bind(user)
    .bind(tenant)
    .bind(key)
    .execute(app.pool())
    .await
    .expect("history");
}

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_page_past_a_thousand_rows_group_freely_and_show_failed_calls() {
    let app = TestApp::spawn().await;
    for model in ["m", "n"] {
        app.set_model(model, json!({"targets": [{"provider": "mock"}]}))
            .await;
        app.set_rate("mock", model, "0.001", "0.002").await;
    }
    let tenant = app.create_tenant("exporters", "0", "0").await;
    let (user, token) = app
        .tenant_user(&app.admin_token, tenant, "exp@example.com", "user")
        .await;
    app.top_up(user, "0.001").await;
    let (s, k) = app
        .post(
            &format!("/api/users/{user}/virtual-keys"),
            &token,
            json!({"name": "k", "allowed_models": ["m"]}),
        )
        .await;
    assert_eq!(s, 201);
    let key = k["virtual_key"].as_str().unwrap().to_owned();
    let key_id = Uuid::parse_str(k["id"].as_str().unwrap()).unwrap();
    history(&app, user, tenant, key_id).await;

    // Two failed calls: a model the key may not use (403), a balance too small (402).
    assert_eq!(app.chat(&key, &chat_body("n")).await.status(), 403);
    assert_eq!(app.chat(&key, &chat_body("m")).await.status(), 402);
    let base = format!("/api/users/{user}/usage/export");
    eventually(5, "the failed calls recorded", || async {
        let r: Value = get(&app, &token, &format!("{base}?from=2026-12-01T00:00:00Z"))
            .await
            .json()
            .await
            .unwrap();
        r["data"].as_array().unwrap().len() == 2
    })
    .await;
    let recent: Value = get(&app, &token, &format!("{base}?from=2026-12-01T00:00:00Z"))
        .await
        .json()
        .await
        .unwrap();
    let failed: Vec<(i64, &str, &str)> = recent["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"].as_i64().unwrap(),
                r["error_code"].as_str().unwrap(),
                r["cost"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        [
            (403, "permission_denied", "0"),
            (402, "insufficient_balance", "0")
        ]
    );
    let (_, charged) = app
        .get(
            &format!("{base}?from=2026-12-01T00:00:00Z&include_failed=false"),
            &token,
        )
        .await;
    assert_eq!(charged["data"], json!([]));

    // JSON, 1,000 at a time: every row once, oldest first.
    let mut seen = HashSet::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    let mut last = String::new();
    loop {
        let mut path = format!("{base}?limit=1000&to=2026-12-01T00:00:00Z");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", urlencode(a)));
        }
        let page: Value = get(&app, &token, &path).await.json().await.unwrap();
        pages += 1;
        for r in page["data"].as_array().unwrap() {
            let at = r["created_at"].as_str().unwrap().to_owned();
            assert!(at >= last, "oldest first");
            last = at;
            assert!(
                seen.insert(r["request_id"].as_str().unwrap().to_owned()),
                "a row twice"
            );
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (2500, 3));

    // CSV, 700 at a time, following x-next-after.
    let mut lines = 0;
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("{base}?format=csv&limit=700&to=2026-12-01T00:00:00Z");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", urlencode(a)));
        }
        let r = get(&app, &token, &path).await;
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let next = r
            .headers()
            .get("x-next-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        let mut it = body.lines();
        assert!(
            it.next()
                .unwrap()
                .starts_with("created_at,request_id,user_id")
        );
        lines += it.count();
        match next {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(lines, 2500);

    // Totals by day and model: 3 x 2 groups adding up to the whole.
    let (_, g) = app
        .get(
            &format!("{base}?group_by=day,model&include_failed=false"),
            &token,
        )
        .await;
    assert_eq!(g["group_by"], json!(["day", "model"]));
    let groups = g["data"].as_array().unwrap();
    assert_eq!(groups.len(), 6, "{g}");
    let total: Decimal = groups.iter().map(|x| d(x["cost"].as_str().unwrap())).sum();
    let calls: i64 = groups.iter().map(|x| x["requests"].as_i64().unwrap()).sum();
    assert_eq!((total, calls), (d("50"), 2500));
    assert_eq!(groups[0]["group"], json!(["2026-11-01", "m"]));
    // By model and key as CSV, failures counted in their own column.
    let csv = get(
        &app,
        &token,
        &format!("{base}?group_by=model,key&format=csv"),
    )
    .await
    .text()
    .await
    .unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "model,key,requests,failures,input_tokens,output_tokens,cost"
    );
    assert_eq!(rows[1], format!("m,{key_id},1250,1,12500,6250,25"));
    assert_eq!(rows[2], format!("n,{key_id},1250,1,12500,6250,25"));
    // A tenant's export may also group by user.
    let (s, t) = app
        .get(
            &format!("/api/tenants/{tenant}/usage/export?group_by=user,model"),
            &app.admin_token,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["data"].as_array().unwrap().len(), 2);

    for bad in [
        "format=xml",
        "group_by=week",
        "group_by=user",
        "group_by=day,day",
        "after=nonsense",
        "limit=0",
        "limit=10001",
        "group_by=day&after=x",
    ] {
        let r = get(&app, &token, &format!("{base}?{bad}")).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let (_, other) = app.register("nosy@example.com").await;
    assert_eq!(get(&app, &other, &base).await.status(), 404);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B")
        .replace(':', "%3A")
        .replace('|', "%7C")
}
