//! The console in a real browser (Debian's Chromium, driven by playwright-core): a customer
//! signs in, makes a key, calls with it and sees usage and balance move; a customer opening
//! an admin page gets the forbidden view; the platform admin changes a rate; an operator
//! panics a key actor and sees its restart count rise. Also the console's own headers.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_its_files_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/lib.js", "text/javascript"),
        ("/console/account.js", "text/javascript"),
        ("/console/admin.js", "text/javascript"),
        ("/console/plans.js", "text/javascript"),
        ("/console/ops.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    for missing in [
        "/console/nope.js",
        "/console/..%2Fapp.js",
        "/console/app.js/x",
    ] {
        let r = app.client.get(app.url(missing)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }
    let page = app
        .client
        .get(app.url("/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline script or style"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_admins_and_operators_use_the_console_in_a_browser() {
    let playwright = std::env::var("NEUROPIA_TEST_PLAYWRIGHT")
        .expect("NEUROPIA_TEST_PLAYWRIGHT: run scripts/test, which installs playwright-core");
    let chromium =
        std::env::var("NEUROPIA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    // Another customer's call: a second key actor, for the tree's paging.
    let other = app
        .customer("second@console.example", "5", json!({"name": "second"}))
        .await;
    assert_eq!(
        app.chat(&other.key, &chat_body("qwen-turbo"))
            .await
            .status(),
        200
    );
    let (user, _) = app.register("console@example.com").await;
    app.top_up(user, "10").await;
    let tenant = app.create_tenant("console-tenant", "10", "0").await;
    let (status, body) = app
        .post(
            &format!("/api/tenants/{tenant}/users"),
            &app.admin_token,
            json!({"email": "tadmin@console.example", "password": USER_PASSWORD,
                "username": "tadmin", "role": "tenant_admin"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/flow.cjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(script)
        .env("PLAYWRIGHT", &playwright)
        .env("CHROMIUM", &chromium)
        .env("GW", &app.base)
        .env("MODEL", "qwen-turbo")
        .env("CUSTOMER", "console@example.com")
        .env("CUSTOMER_PASSWORD", USER_PASSWORD)
        .env("ADMIN", ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("TENANT_ADMIN", "tadmin@console.example")
        .env("TENANT_ID", tenant.to_string());
    if let Ok(dir) = std::env::var("NEUROPIA_CONSOLE_SHOTS") {
        cmd.env("SHOTS", dir);
    }
    let out = cmd.output().await.expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser script failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
    assert_eq!(seen["balance_before"], "10", "{seen}");
    assert_eq!(seen["key_shown"], true);
    assert_eq!(seen["keys_listed"], 1);
    assert_eq!(
        (&seen["rotated"], &seen["old_key_status"]),
        (&json!(true), &json!(401))
    );
    assert_eq!(seen["renamed"], "renamed in the console");
    assert_eq!(seen["key_spend"], "0 / 50", "{seen}");
    assert_eq!(seen["chat_status"], 200);
    assert_eq!(
        (&seen["calls"], &seen["usage_rows"]),
        (&json!("1"), &json!(1))
    );
    assert!(
        seen["by_model"].as_str().unwrap().contains("qwen-turbo"),
        "{seen}"
    );
    // The top-up and the charge.
    assert_eq!(seen["ledger_rows"], 2);
    assert!(
        seen["prices"].as_str().unwrap().contains("qwen-turbo"),
        "{seen}"
    );
    // 12 input and 8 output tokens at 0.001 / 0.002.
    assert_eq!(seen["balance_after"], "9.972", "{seen}");
    assert_eq!(
        (&seen["admin_link"], &seen["forbidden"]),
        (&json!(0), &json!(true))
    );
    assert_eq!(seen["rate_shown"], true);
    assert_eq!(seen["fault_form"], 1, "faults are on in the tests");
    assert_eq!(seen["live_figures"], 6, "{seen}");
    assert_eq!(
        (&seen["tenant_created"], &seen["codes_minted"]),
        (&json!(true), &json!(2))
    );
    assert!(
        seen["plan_refused"].as_str().is_some_and(|e| !e.is_empty()),
        "{seen}"
    );
    assert_eq!(
        seen["plan_json"],
        json!({"strategy": {"mode": "fallback"}, "targets": [{"provider": "mock"},
            {"provider": "mock", "override_params": {"model": "mock-large"}}]})
    );
    assert_eq!(seen["model_saved"], true);
    assert_eq!(seen["portkey_created"], true);
    // neuropia > keys > key:<id>.
    assert_eq!(seen["visible_after_search"], 3, "{seen}");
    assert_eq!(
        (&seen["pager"], &seen["pager_next"]),
        (
            &json!("1–1 of 2 Previous Next"),
            &json!("2–2 of 2 Previous Next")
        ),
        "{seen}"
    );
    let paged = seen["paged"].as_array().unwrap();
    assert_ne!(paged[0], paged[1], "{seen}");
    assert_eq!(
        (&seen["admin_tenant_markup"], &seen["role_choices"]),
        (&json!("11"), &json!(2)),
        "{seen}"
    );
    assert_eq!(seen["user_page_balance"], "3", "{seen}");
    assert!(
        seen["raw_model"].as_str().unwrap().contains("loadbalance"),
        "{seen}"
    );
    assert!(
        seen["low_markup"]
            .as_str()
            .unwrap()
            .contains("below the tenant"),
        "{seen}"
    );
    assert!(
        seen["suspended_row"].as_str().unwrap().contains("yes"),
        "{seen}"
    );
    assert_eq!(
        (&seen["markup_locked"], &seen["threshold"]),
        (&json!(true), &json!("1")),
        "{seen}"
    );
    assert_eq!(seen["tenant_users"], json!([1, 2]), "{seen}");
    let (before, after) = (
        seen["restarts_before"].as_u64(),
        seen["restarts_after"].as_u64(),
    );
    assert!(after > before, "the restart shows in the tree: {seen}");
    assert_eq!(
        seen["problems"],
        json!([]),
        "no script errors, no CSP violations"
    );
    assert_eq!(
        seen["unlabelled"],
        json!([]),
        "every form control of every page has a label"
    );
    // The API refuses the customer too, whatever the page shows.
    let token = app.login("console@example.com", USER_PASSWORD).await;
    let (status, _) = app.get("/api/admin/provider-rates", &token).await;
    assert_eq!(status, 403);
    // What the pages did is what the API holds.
    let (_, t) = app
        .get(&format!("/api/tenants/{tenant}"), &app.admin_token)
        .await;
    assert_eq!(
        (
            t["markup_percent"].as_str(),
            t["overdue_threshold"].as_str()
        ),
        (Some("11"), Some("1"))
    );
    let (_, users) = app
        .get(&format!("/api/tenants/{tenant}/users"), &app.admin_token)
        .await;
    let added = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "added@console.example")
        .unwrap();
    assert_eq!(
        (&added["suspended"], &added["markup_percent"]),
        (&json!(true), &json!("15"))
    );
    let (status, _) = app
        .post(
            "/api/auth/login",
            "",
            json!({"email": "added@console.example", "password": "a-long-password-9"}),
        )
        .await;
    assert_eq!(status, 403, "suspended");
    app.stop().await;
}
