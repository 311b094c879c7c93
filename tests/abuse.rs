//! The gateway as an attacker meets it (issue 13): one test per hardening point, each
//! against a real server on a loopback port.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use neuropia::db::users::DEFAULT_TENANT;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` (request line and headers, then the start of a body) on a new connection
/// and returns the status line of whatever answer comes back within `within`.
async fn status_line(base: &str, head: &str, within: Duration) -> Option<String> {
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(within, conn.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_owned)
}

/// Text of about `bytes` bytes of made-up words: slow to tokenize (no repeats).
fn diverse_text(bytes: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = String::with_capacity(bytes + 32);
    while out.len() < bytes {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = 2 + (x >> 60) as u32;
        for i in 0..len {
            out.push(char::from(b'a' + (x.rotate_right(i * 5) & 15) as u8));
        }
        out.push(' ');
    }
    out
}

fn chat_with(prompt: &str, extra: Value) -> Value {
    let mut body = json!({"model": "qwen-turbo",
        "messages": [{"role": "user", "content": prompt}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// A user of the default tenant with `balance` and a key, calling `qwen-turbo` on `mock`
/// at `input`/`output` per token.
async fn funded(
    app: &TestApp,
    mock: &MockUpstream,
    email: &str,
    balance: &str,
    rates: (&str, &str),
) -> (uuid::Uuid, String) {
    app.route_to_mock("qwen-turbo", mock, rates.0, rates.1)
        .await;
    let Customer { user, key, .. } = app.customer(email, balance, json!({"name": "k"})).await;
    (user, key)
}

/// 1. No work before authentication: a made-up key is refused before its body is read;
/// large prompts are counted off the async workers; a tokenizer failure is an estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_before_authentication_is_refused_and_counting_never_stalls_the_server() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    let (user, key) = funded(
        &app,
        &mock,
        "big@abuse.test",
        "1000",
        ("0.000001", "0.000002"),
    )
    .await;

    // A made-up key announcing 4 MB and sending a few bytes of it: the 401 comes back
    // without the body (nothing was read, parsed or counted).
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n\
        x-virtual-key: vk_made_up\r\nContent-Type: application/json\r\n\
        Content-Length: 4000000\r\n\r\n{\"model\": \"qwen-turbo\", \"messages\": [";
    let line = status_line(&app.base, head, Duration::from_secs(10)).await;
    assert_eq!(
        line.as_deref(),
        Some("HTTP/1.1 401 Unauthorized"),
        "refused before the body"
    );

    // Six made-up keys with whole 4 MB bodies at once: every one 401.
    let big = chat_with(&diverse_text(4_000_000), json!({"max_tokens": 8}));
    let refused = futures::future::join_all((0..6).map(|i| {
        let (app, big) = (&app, &big);
        async move { app.chat(&format!("vk_made_up_{i}"), big).await.status() }
    }))
    .await;
    assert!(refused.iter().all(|s| *s == 401), "{refused:?}");

    // Six valid calls with 4 MB prompts (each about half a second of counting, one at a
    // time for one account): `/health`, asked over and over meanwhile, stays fast. Were the
    // counting on the async workers, it would wait for a count most of the time.
    let done = std::sync::atomic::AtomicBool::new(false);
    let calls = async {
        let answers = futures::future::join_all((0..6).map(|_| {
            let (app, big, key) = (&app, &big, &key);
            async move { app.chat(key, big).await.status().as_u16() }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        answers
    };
    let probes = async {
        let mut took = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let asked = Instant::now();
            let r = app.client.get(app.url("/health")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            took.push(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took
    };
    let (answers, mut took) = tokio::join!(calls, probes);
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        took.len() >= 10 && median < Duration::from_millis(100),
        "{} probes, median {median:?}: {took:?}",
        took.len()
    );

    // An account that may not spend gets no large prompt counted: 402 at once.
    let (pending, pending_token) = app.register("pending@abuse.test").await;
    let pending_key = app
        .create_key(&pending_token, pending, json!({"name": "k"}))
        .await;
    let r = app.chat(&pending_key, &big).await;
    assert_eq!(r.status(), 402);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "account_pending");

    // A million spaces (which overflowed the tokenizer's stack) get an answer, and a bill.
    let spaces = chat_with(&" ".repeat(1_000_000), json!({"max_tokens": 8}));
    let r = app.chat(&key, &spaces).await;
    assert_eq!(r.status(), 200);
    app.settle_journal().await;
    let rows = billed_request_ids(&mut app.pool().acquire().await.unwrap(), user).await;
    assert_eq!(rows.len(), 7, "the six large calls and the spaces");
    app.stop().await;
}

/// 2. A call is admitted only if its worst case (prompt with tools and images, `n` answers
/// of `max_tokens`, capped per model) fits the balance plus the tenant's overdraft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_cannot_overdraw_a_balance() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    let (user, key) = funded(&app, &mock, "small@abuse.test", "10", ("0.001", "0.002")).await;
    let refused = |r: reqwest::Response| async move {
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        (status.as_u16(), body["error"]["code"].clone())
    };
    let payment = (402, json!("insufficient_balance"));

    // About 20,000 prompt tokens (20.00 at 0.001) with max_tokens 1: refused before the
    // upstream, the balance untouched.
    let long = "word ".repeat(20_000);
    let r = app
        .chat(&key, &chat_with(&long, json!({"max_tokens": 1})))
        .await;
    assert_eq!(refused(r).await, payment);
    // n: 8 answers of 1,000 tokens (16.00) do not fit; 4 (8.00 and the prompt) do.
    let r = app
        .chat(&key, &chat_with("hi", json!({"max_tokens": 1000, "n": 8})))
        .await;
    assert_eq!(refused(r).await, payment);
    // Three images at 5,000 tokens each (15.00).
    let (status, body) = app
        .send(
            reqwest::Method::PUT,
            "/api/admin/model-configs",
            &app.admin_token,
            Some(json!({"model": "qwen-turbo", "image_tokens": 5000, "max_output_tokens": 2000,
                "config": {"strategy": {"mode": "single"}, "targets": [{"provider": "dashscope",
                "custom_host": mock.dashscope_host(), "override_params": {"model": "qwen-turbo"}}]}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let image = json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}});
    let images = json!({"model": "qwen-turbo", "max_tokens": 1, "messages": [{"role": "user",
        "content": [{"type": "text", "text": "what is this?"}, image, image, image]}]});
    assert_eq!(refused(app.chat(&key, &images).await).await, payment);
    // Tool definitions are prompt too: well over 10,000 tokens of schema.
    let tools = json!([{"type": "function", "function": {"name": "f",
        "description": diverse_text(40_000), "parameters": {"type": "object"}}}]);
    let r = app
        .chat(
            &key,
            &chat_with("hi", json!({"max_tokens": 1, "tools": tools})),
        )
        .await;
    assert_eq!(refused(r).await, payment);
    // max_tokens above the model's cap is the client's mistake.
    let r = app
        .chat(&key, &chat_with("hi", json!({"max_tokens": 3000})))
        .await;
    assert_eq!(refused(r).await, (400, json!("invalid_request")));
    assert_eq!(mock.calls(), 0, "nothing refused reached the upstream");
    assert_eq!(app.api_balance(user).await.0, d("10"));

    // What fits is served: n = 4 reserves 8 + the prompt.
    let r = app
        .chat(&key, &chat_with("hi", json!({"max_tokens": 1000, "n": 4})))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.calls(), 1);
    // A call that sets no max_tokens goes upstream with the ceiling it was reserved for.
    let r = app.chat(&key, &chat_with("hi", json!({}))).await;
    assert_eq!(r.status(), 200);
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["max_tokens"],
        json!(2000),
        "min(4096 default, the model's cap)"
    );

    // With an overdraft allowance of 10 the three images (15.00) fit 9.944 + 10.
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/admin/tenants/{DEFAULT_TENANT}"),
            &app.admin_token,
            Some(json!({"overdraft_limit": "10"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["overdraft_limit"], "10");
    assert_eq!(app.chat(&key, &images).await.status(), 200);
    // The allowance bounds the worst case, not the balance seen: 20.00 does not fit.
    let r = app
        .chat(&key, &chat_with(&long, json!({"max_tokens": 1})))
        .await;
    assert_eq!(refused(r).await, payment);
    app.stop().await;
}

/// 8. Internal failures answer fixed messages (details only in the log, with the request
/// id); the public health check says up or degraded and no more; the public metrics do not
/// list upstream addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_details_do_not_leak() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| c.actor_timeout_ms = 300).await;
    let (_, key) = funded(&app, &mock, "leaks@abuse.test", "10", ("0.001", "0.002")).await;
    let message = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (
            status,
            body["error"]["message"].as_str().unwrap().to_owned(),
        )
    };

    // The key supervisor swallows the key's first resolution: the check times out.
    let (status, body) = app
        .post(
            "/api/admin/faults",
            &app.admin_token,
            json!({"actor": "keys", "fault": "drop", "count": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(
        message(r).await,
        (
            503,
            "the key check is unavailable; retry shortly".to_owned()
        )
    );

    // An upstream's own error text stays in the log.
    mock.state
        .fail_status
        .store(500, std::sync::atomic::Ordering::SeqCst);
    let r = app.chat(&key, &chat_body("qwen-turbo")).await;
    assert_eq!(
        message(r).await,
        (502, "the upstream failed (status 500)".to_owned())
    );
    mock.state
        .fail_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);

    // Anyone sees whether the gateway is up; a platform admin sees the rest.
    let (status, public) = app.get("/health", "").await;
    assert_eq!((status.as_u16(), public), (200, json!({"status": "ok"})));
    let (_, details) = app.get("/health", &app.admin_token).await;
    assert_eq!(details["database"], "ok");
    assert!(
        details["upstreams"]
            .to_string()
            .contains(&mock.addr.to_string())
    );
    assert!(details.get("instance").is_some());
    let metrics = app.metrics().await;
    assert!(metrics.contains("neuropia_upstream_duration_seconds"));
    assert!(!metrics.contains(&mock.addr.to_string()), "{metrics}");
    app.stop().await;
}

/// 7. Secrets: `--help` shows no secret's value; a platform key goes only to its
/// provider's own base URL (or to a target that asks for it); custom hosts on private
/// networks are refused unless the operator allows them; config notices carry no api_key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_where_they_belong() {
    let secrets = [
        ("JWT_SECRET", "jwt-secret-value-0123456789"),
        ("NEUROPIA_ADMIN_PASSWORD", "admin-secret-Value-1"),
        ("OPENAI_API_KEY", "sk-openai-secret-value"),
        ("DASHSCOPE_API_KEY", "sk-dashscope-secret-value"),
        ("ANTHROPIC_API_KEY", "sk-anthropic-secret-value"),
        ("DATABASE_URL", "postgres://u:db-secret-value@127.0.0.1/x"),
        ("REDIS_URL", "redis://:redis-secret-value@127.0.0.1:6379"),
        ("NEUROPIA_TOKEN", "token-secret-value"),
    ];
    for args in [
        &["serve", "--help"][..],
        &["--help"],
        &["migrate", "--help"],
        &["actors", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_neuropia"))
            .args(args)
            .envs(secrets)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
        for (name, value) in secrets {
            assert!(!text.contains(value), "{args:?} shows {name}");
        }
    }

    // Without NEUROPIA_ALLOW_PRIVATE_UPSTREAMS, plans may not point at private networks.
    let mock = mock_upstream().await;
    let strict = TestApp::spawn_with(|c| c.allow_private_upstreams = false).await;
    for host in [
        mock.dashscope_host(),
        "http://localhost:9/v1".to_owned(),
        "http://169.254.169.254/latest".to_owned(),
        "http://[::1]:9/v1".to_owned(),
        "http://10.0.0.1/v1".to_owned(),
    ] {
        let (status, body) = strict
            .send(
                reqwest::Method::PUT,
                "/api/admin/model-configs",
                &strict.admin_token,
                Some(json!({"model": "m", "config": {"targets": [
                    {"provider": "openai", "custom_host": host}]}})),
            )
            .await;
        assert_eq!(status, 400, "{host}: {body}");
        assert!(
            body.to_string()
                .contains("NEUROPIA_ALLOW_PRIVATE_UPSTREAMS"),
            "{body}"
        );
    }
    // A plan written straight into the database is refused when called.
    sqlx::query(
        "INSERT INTO data.model_configs (model, provider, config) VALUES ('sneaky', 'openai', $1)",
    )
    .bind(
        json!({"targets": [{"provider": "openai", "custom_host": format!("http://{}/v1", mock.addr),
        "use_platform_key": true}]}),
    )
    .execute(strict.pool())
    .await
    .unwrap();
    strict.state.reload_config().await.unwrap();
    strict.set_rate("openai", "sneaky", "0", "0").await;
    let Customer { key, .. } = strict
        .customer("sneaky@abuse.test", "10", json!({"name": "k"}))
        .await;
    let r = strict.chat(&key, &chat_body("sneaky")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(mock.calls(), 0, "nothing reached the private host");
    strict.stop().await;

    // Allowed (as in the tests and the demo): the platform key goes to a custom host only
    // when the target asks for it; a target's own key always does.
    let app = TestApp::spawn().await;
    let (_, key) = funded(&app, &mock, "keys@abuse.test", "10", ("0.001", "0.002")).await;
    let target = |extra: Value| {
        let mut t = json!({"provider": "dashscope", "custom_host": mock.dashscope_host(),
            "override_params": {"model": "qwen-turbo"}});
        if let (Some(t), Some(e)) = (t.as_object_mut(), extra.as_object()) {
            t.extend(e.clone());
        }
        json!({"targets": [t]})
    };
    let mut seen = Vec::new();
    for extra in [
        json!({}),
        json!({"use_platform_key": true}),
        json!({"api_key": "sk-plan-own"}),
    ] {
        app.set_model("qwen-turbo", target(extra)).await;
        let before = mock.state.authorizations.lock().unwrap().len();
        assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
        let auth = mock.state.authorizations.lock().unwrap();
        seen.push(auth.get(before).cloned());
    }
    assert_eq!(
        seen,
        [
            None,
            Some(format!("Bearer {PLATFORM_KEY}")),
            Some("Bearer sk-plan-own".to_owned())
        ]
    );

    // Config notices carry the plan without its keys.
    let mut listener = sqlx::postgres::PgListener::connect_with(app.pool())
        .await
        .unwrap();
    listener.listen("config_update").await.unwrap();
    let (status, body) = app
        .post(
            "/api/admin/portkey-configs",
            &app.admin_token,
            json!({"tenant_id": DEFAULT_TENANT, "config_name": "c",
                "config": {"strategy": {"mode": "fallback"}, "targets": [
                    {"provider": "openai", "api_key": "sk-in-a-notice"},
                    {"provider": "dashscope", "api_key": "sk-in-a-notice-too"}]}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.to_string().contains("sk-in-a-notice"), "{body}");
    let notice = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    let payload: Value = serde_json::from_str(notice.payload()).unwrap();
    assert_eq!(payload["config_json"]["targets"][0]["api_key"], "***");
    assert!(!notice.payload().contains("sk-in-a-notice"), "{payload}");
    drop(listener); // it holds one of the pool's connections
    app.stop().await;
}

/// Opens a connection to `base` and sends `bytes` (and nothing more).
async fn stalled(base: &str, bytes: &str) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    conn.write_all(bytes.as_bytes()).await.unwrap();
    conn
}

/// Reads until the server closes `conn`; `Err` if it has not within `within`.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> Result<String, ()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return Err(()),
        }
    }
}

/// 6. Slow clients: headers and bodies must arrive in time, idle connections are closed,
/// and open connections are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_capped() {
    let app = TestApp::spawn_with(|c| {
        c.header_timeout_ms = 300;
        c.body_timeout_ms = 300;
        c.max_connections = 40;
    })
    .await;
    // Half-sent headers: closed after the header timeout.
    let mut slow: Vec<_> = futures::future::join_all(
        (0..30).map(|_| stalled(&app.base, "POST /api/auth/login HTTP/1.1\r\nHost: x\r\n")),
    )
    .await;
    for conn in &mut slow {
        assert!(closed_within(conn, Duration::from_secs(5)).await.is_ok());
    }
    // A body announced and never sent: 408, and the connection closed.
    let mut conn = stalled(
        &app.base,
        "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\n\r\n{\"email\": ",
    )
    .await;
    let answer = closed_within(&mut conn, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // An idle kept-alive connection is closed too.
    let mut conn = stalled(&app.base, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = closed_within(&mut conn, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;

    // A client that asks for big answers and stops reading them: once a write has made
    // no progress for the write timeout, the connection is closed (not held for ever).
    let app = TestApp::spawn_with(|c| c.write_timeout_ms = 300).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket
        .connect(app.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    conn.write_all(
        "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
            .repeat(200)
            .as_bytes(),
    )
    .await
    .unwrap();
    // Never reading, the client sees the gateway close the connection when a write to it
    // fails (a server stuck writing would keep it open for ever).
    let deadline = Instant::now() + Duration::from_secs(15);
    let closed = loop {
        match conn.try_write(b"\r\n") {
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break true,
            _ => {}
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(closed, "the connection stayed open");
    app.stop().await;

    // With every connection taken, a new one waits until one ends.
    let app = TestApp::spawn_with(|c| c.max_connections = 10).await;
    // Ten held here (the harness's client may hold one more, from its sign-in).
    let mut held: Vec<_> = futures::future::join_all(
        (0..10).map(|_| stalled(&app.base, "GET /health HTTP/1.1\r\nHost: x\r\n")),
    )
    .await;
    let fresh = reqwest::Client::new();
    let waiting = fresh.get(app.url("/health")).send();
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "served past the cap"
    );
    held.truncate(8);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a connection ended")
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(held);
    app.stop().await;
}

/// A sign-in of `email` through a trusted proxy reporting client address `from`.
async fn sign_in(app: &TestApp, email: &str, password: &str, from: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// 4. Sign-ins are counted before the password is checked, per email and client address
/// (behind trusted proxies, the address they report); one spelling of an email for the
/// throttle and the lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_are_throttled_before_they_are_checked() {
    let app = TestApp::spawn_with(|c| c.trusted_proxies = "127.0.0.1".into()).await;
    app.register("owner@abuse.test").await;

    // Sixty wrong passwords at once from one address: exactly five are evaluated.
    let tries = futures::future::join_all(
        (0..60).map(|_| sign_in(&app, "owner@abuse.test", "Wrong-password-9", "203.0.113.5")),
    )
    .await;
    let wrong = tries.iter().filter(|r| r.status() == 401).count();
    let refused: Vec<_> = tries.iter().filter(|r| r.status() == 429).collect();
    assert_eq!((wrong, refused.len()), (5, 55));
    assert!(
        refused
            .iter()
            .all(|r| r.headers().contains_key("retry-after"))
    );
    // The owner, from another address, is not locked out (nor by another spelling).
    let r = sign_in(&app, " Owner@Abuse.TEST ", USER_PASSWORD, "198.51.100.7").await;
    assert_eq!(r.status(), 200);
    // The attacker's address stays refused, even with the right password.
    let r = sign_in(&app, "owner@abuse.test", USER_PASSWORD, "203.0.113.5").await;
    assert_eq!(r.status(), 429);

    // An email locked from an address cannot be tried there under another spelling that
    // PostgreSQL's lower() would match: the lookup and the throttle see the same form.
    for _ in 0..5 {
        sign_in(&app, ADMIN_EMAIL, "Wrong-password-9", "192.0.2.1").await;
    }
    let dotted = ADMIN_EMAIL.replacen('i', "\u{130}", 1);
    let r = sign_in(&app, &dotted, ADMIN_PASSWORD, "192.0.2.1").await;
    assert_ne!(r.status(), 200, "{dotted} signed in as {ADMIN_EMAIL}");
    // A forwarded address from a peer that is not a trusted proxy is ignored.
    let untrusted = TestApp::spawn().await;
    for i in 0..5 {
        sign_in(
            &untrusted,
            ADMIN_EMAIL,
            "Wrong-password-9",
            &format!("192.0.2.{i}"),
        )
        .await;
    }
    let r = sign_in(&untrusted, ADMIN_EMAIL, ADMIN_PASSWORD, "192.0.2.200").await;
    assert_eq!(r.status(), 429, "the peer is the client");
    untrusted.stop().await;
    app.stop().await;
}

/// 5. Registrations are throttled per client address, before any password is hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_throttled_per_address() {
    let app = TestApp::spawn_with(|c| {
        c.trusted_proxies = "127.0.0.1".into();
        c.register_max_per_addr = 10;
    })
    .await;
    let register = |i: usize, from: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/auth/register"))
                .header("x-forwarded-for", from)
                .json(&json!({"email": format!("r{i}@abuse.test"),
                    "password": USER_PASSWORD, "username": "r"}))
                .send()
                .await
                .unwrap()
        }
    };
    let answers = futures::future::join_all((0..30).map(|i| register(i, "203.0.113.77"))).await;
    let created = answers.iter().filter(|r| r.status() == 201).count();
    let refused: Vec<_> = answers.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(
        (created, refused.len()),
        (10, 20),
        "NEUROPIA_REGISTER_MAX_PER_ADDR is 10"
    );
    assert!(
        refused
            .iter()
            .all(|r| r.headers().contains_key("retry-after"))
    );
    assert_eq!(register(99, "198.51.100.8").await.status(), 201);
    app.stop().await;
}

/// 3. Roles: nobody acts on a user of an equal or higher role but itself; the platform
/// admin is in no customer tenant; a new role ends the user's tokens at once; a user cannot
/// loosen what a higher role set on its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_and_demotions_are_immediate() {
    let app = TestApp::spawn().await;
    let (_, admin) = app
        .post("/api/auth/refresh", &app.admin_token, json!({}))
        .await;
    let admin_id = admin["user_id"].as_str().unwrap().to_owned();
    assert_ne!(
        admin["tenant_id"],
        json!(DEFAULT_TENANT),
        "not in a customer tenant"
    );

    // Two tenant admins of the default tenant, the one self-registered users join.
    let (_, ta) = app
        .tenant_user(
            &app.admin_token,
            DEFAULT_TENANT,
            "ta@abuse.test",
            "tenant_admin",
        )
        .await;
    let (ta2, _) = app
        .tenant_user(
            &app.admin_token,
            DEFAULT_TENANT,
            "ta2@abuse.test",
            "tenant_admin",
        )
        .await;
    let (user, user_token) = app
        .tenant_user(&ta, DEFAULT_TENANT, "member@abuse.test", "user")
        .await;
    // The platform admin and the other tenant admin are out of the tenant admin's reach.
    for target in [admin_id.clone(), ta2.to_string()] {
        for path in ["", "/balance", "/virtual-keys", "/usage"] {
            let (s, body) = app.get(&format!("/api/users/{target}{path}"), &ta).await;
            assert_eq!(s, 404, "{target}{path}: {body}");
        }
        let (s, _) = app
            .post(
                &format!("/api/users/{target}/virtual-keys"),
                &ta,
                json!({"name": "mine"}),
            )
            .await;
        assert_eq!(s, 404, "a key billed to {target}");
    }
    let (_, listed) = app
        .get(&format!("/api/tenants/{DEFAULT_TENANT}/users"), &ta)
        .await;
    let roles: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["tenant_admin", "user"],
        "itself and its users: {listed}"
    );
    // Platform admins do not act on each other either (nor change their own role).
    let (s, _) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/admin/users/{admin_id}"),
            &app.admin_token,
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(s, 400);

    // The tenant admin limits the member's key; the member may tighten, never loosen.
    let (s, key) = app
        .post(
            &format!("/api/users/{user}/virtual-keys"),
            &ta,
            json!({"name": "limited", "rate_limit_rpm": 10, "rate_limit_tpm": 1000,
                "allowed_models": ["qwen-turbo"]}),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let key_path = format!("/api/virtual-keys/{}", key["id"].as_str().unwrap());
    let patch = |token: &str, body: Value| {
        let (app, path, token) = (&app, key_path.clone(), token.to_owned());
        async move {
            app.send(reqwest::Method::PATCH, &path, &token, Some(body))
                .await
                .0
                .as_u16()
        }
    };
    for loosen in [
        json!({"rate_limit_rpm": 1000}),
        json!({"rate_limit_rpm": null}),
        json!({"rate_limit_tpm": 5000}),
        json!({"allowed_models": []}),
        json!({"allowed_models": ["qwen-turbo", "gpt-4o"]}),
    ] {
        assert_eq!(patch(&user_token, loosen.clone()).await, 403, "{loosen}");
    }
    assert_eq!(
        patch(&user_token, json!({"rate_limit_rpm": 5, "name": "mine"})).await,
        200
    );
    assert_eq!(patch(&ta, json!({"rate_limit_rpm": 50})).await, 200);
    // A key the tenant admin deactivated stays so for the member.
    let (s, _) = app
        .post(&format!("{key_path}/deactivate"), &ta, json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post(&format!("{key_path}/activate"), &user_token, json!({}))
        .await;
    assert_eq!(s, 403);
    // Deactivating it again does not make it the member's to reactivate.
    let (s, _) = app
        .post(&format!("{key_path}/deactivate"), &user_token, json!({}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post(&format!("{key_path}/activate"), &user_token, json!({}))
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .post(&format!("{key_path}/activate"), &ta, json!({}))
        .await;
    assert_eq!(s, 200);

    // Demoted: the tenant admin's token stops working at once, not when it expires.
    let (s, _) = app
        .send(
            reqwest::Method::PATCH,
            &format!(
                "/api/admin/users/{}",
                listed["data"][0]["user_id"].as_str().unwrap()
            ),
            &app.admin_token,
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.get(&format!("/api/users/{user}"), &ta).await;
    assert_eq!(s, 401, "the old token is refused");
    let relogged = app.login("ta@abuse.test", USER_PASSWORD).await;
    let (s, _) = app.get(&format!("/api/users/{user}"), &relogged).await;
    assert_eq!(s, 404, "now a user, it acts on itself only");
    app.stop().await;
}
