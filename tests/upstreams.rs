//! Upstreams: streaming with exact billing, Anthropic both ways, retries, fallback before
//! the first byte, circuit breakers, real prompt estimates in reservations.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use neuropia::billing::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

/// The `data:` payloads of an SSE body.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

async fn usage_rows(app: &TestApp, user: Uuid) -> Vec<(String, String, i32, i32, String, Decimal)> {
    app.settle_journal().await;
    sqlx::query_as(
        "SELECT provider, model, input_tokens, output_tokens, usage_source, cost
         FROM data.usage_log WHERE user_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.pool())
    .await
    .expect("usage")
}

async fn wait_rows(
    app: &TestApp,
    user: Uuid,
    n: usize,
) -> Vec<(String, String, i32, i32, String, Decimal)> {
    for _ in 0..500 {
        let rows = usage_rows(app, user).await;
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} usage rows did not appear");
}

async fn funded(app: &TestApp, email: &str) -> (Uuid, String) {
    let Customer { user, key, .. } = app.customer(email, "100", json!({"name": "k"})).await;
    (user, key)
}

fn stream_body(model: &str, include_usage: bool) -> Value {
    let mut b = chat_body(model);
    b["stream"] = json!(true);
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_and_bill_the_final_usage() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "stream@example.com").await;

    let r = app.chat(&key, &stream_body("qwen-turbo", false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(r.headers().get("x-request-id").is_some());
    let evs = events(&r.text().await.expect("body"));
    assert_eq!(content(&evs), ANSWER);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !evs.iter().any(|e| e.contains("\"usage\"")),
        "usage was not asked for: {evs:?}"
    );
    let sent = mock
        .state
        .bodies
        .lock()
        .expect("bodies")
        .last()
        .cloned()
        .expect("body");
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asks for usage"
    );

    let r = app.chat(&key, &stream_body("qwen-turbo", true)).await;
    let evs = events(&r.text().await.expect("body"));
    let usage: Value = evs
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|v| v["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 12);

    // (12 * 0.001 + 8 * 0.002), twice, no markup.
    let rows = wait_rows(&app, user, 2).await;
    for row in &rows {
        assert_eq!(
            (row.2, row.3, row.4.as_str(), row.5),
            (12, 8, "upstream", d("0.028"))
        );
    }
    assert_eq!(app.db_balance(user).await.0, d("100") - d("0.056"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_usage_are_counted() {
    let mock = mock_upstream().await;
    mock.state
        .stream_without_usage
        .store(true, Ordering::SeqCst);
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "counted@example.com").await;
    let body = stream_body("qwen-turbo", false);
    let r = app.chat(&key, &body).await;
    assert_eq!(content(&events(&r.text().await.expect("body"))), ANSWER);
    let rows = wait_rows(&app, user, 1).await;
    let prompt = neuropia::tokens::prompt(&body["messages"], 0) as i32;
    let answer = neuropia::tokens::count(ANSWER) as i32;
    assert_eq!(
        (rows[0].2, rows[0].3, rows[0].4.as_str()),
        (prompt, answer, "estimated")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_is_billed_for_what_the_upstream_produced() {
    let mock = mock_upstream().await;
    mock.state.chunk_delay_ms.store(100, Ordering::SeqCst);
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "leaver@example.com").await;
    let r = app.chat(&key, &stream_body("qwen-turbo", false)).await;
    let mut body = r.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("assistant"));
    drop(body);
    let sent_when_left = mock.state.chunks_sent.load(Ordering::SeqCst);
    let rows = wait_rows(&app, user, 1).await;
    assert!(
        mock.state.chunks_sent.load(Ordering::SeqCst) > sent_when_left,
        "the upstream was read on"
    );
    assert_eq!(
        (rows[0].2, rows[0].3, rows[0].4.as_str()),
        (12, 8, "upstream"),
        "billed in full"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_a_whole_answer_is_still_billed() {
    let mock = mock_upstream().await;
    mock.state.delay_ms.store(1000, Ordering::SeqCst);
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "hangup@example.com").await;
    // The client hangs up once the upstream has the call (and before it answers).
    let request = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-virtual-key", &key)
        .json(&chat_body("qwen-turbo"))
        .send();
    let call = tokio::spawn(request);
    for _ in 0..500 {
        if mock.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(mock.calls(), 1, "the upstream got the call");
    call.abort();
    assert!(call.await.is_err(), "the client gave up before the answer");
    // The upstream still answers; the call is billed in full, once.
    let rows = wait_rows(&app, user, 1).await;
    assert_eq!(
        (rows[0].2, rows[0].3, rows[0].4.as_str()),
        (12, 8, "upstream")
    );
    assert_eq!(mock.calls(), 1);
    app.settle_journal().await;
    assert_eq!(app.db_balance(user).await.0, d("100") - d("0.028"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_during_admission_leaves_no_reservation() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "admission-hangup@example.com").await;
    // The balance actor is live, then slow: the reserve is answered after the client left.
    assert_eq!(app.chat(&key, &chat_body("qwen-turbo")).await.status(), 200);
    let (s, body) = app
        .post(
            "/api/admin/faults",
            &app.admin_token,
            json!({"actor": format!("balance:{user}"), "fault": "delay", "ms": 300, "seconds": 1}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let gave_up = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-virtual-key", &key)
        .timeout(Duration::from_millis(100))
        .json(&chat_body("qwen-turbo"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up during the reserve");
    // The reservation the actor made for nobody is released: the balance is all available.
    app.no_reservation_left(user).await;
    assert_eq!(
        mock.calls(),
        1,
        "the abandoned call never reached the upstream"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_breaking_mid_stream_yields_an_error_event_and_bills_what_was_delivered() {
    let mock = mock_upstream().await;
    mock.state.break_after.store(3, Ordering::SeqCst);
    // Paced, so the headers and the first chunks are out before the break.
    mock.state.chunk_delay_ms.store(20, Ordering::SeqCst);
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "broken@example.com").await;
    let body = stream_body("qwen-turbo", true);
    let r = app.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let evs = events(&r.text().await.expect("body"));
    let delivered = content(&evs);
    assert!(
        !delivered.is_empty() && ANSWER.starts_with(&delivered) && delivered != ANSWER,
        "{delivered:?}"
    );
    let last: Value = serde_json::from_str(evs.last().expect("events")).expect("json");
    assert_eq!(last["error"]["code"], "upstream_error");
    let rows = wait_rows(&app, user, 1).await;
    let prompt = neuropia::tokens::prompt(&body["messages"], 0) as i32;
    assert_eq!(
        (rows[0].2, rows[0].3, rows[0].4.as_str()),
        (
            prompt,
            neuropia::tokens::count(&delivered) as i32,
            "estimated"
        )
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_fall_back_before_the_first_byte() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    app.set_model("fb", json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "dashscope", "custom_host": "http://127.0.0.1:9/v1", "override_params": {"model": "qwen-turbo"}},
        {"provider": "openai", "custom_host": format!("http://{}/v1", mock.addr), "override_params": {"model": "gpt-4o-mini"}}]})).await;
    app.set_rate("dashscope", "qwen-turbo", "1", "1").await;
    app.set_rate("openai", "gpt-4o-mini", "0.001", "0.001")
        .await;
    let (user, key) = funded(&app, "fallback@example.com").await;
    let r = app.chat(&key, &stream_body("fb", false)).await;
    assert_eq!(content(&events(&r.text().await.expect("body"))), ANSWER);
    let rows = wait_rows(&app, user, 1).await;
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].5),
        ("openai", "gpt-4o-mini", d("0.02"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_targets_are_translated_both_ways() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| {
        c.anthropic_api_key = Some(neuropia::config::Secret::new("sk-ant-platform"));
    })
    .await;
    app.set_model("claude", json!({"targets": [{"provider": "anthropic",
        "custom_host": format!("http://{}/v1", mock.addr), "use_platform_key": true, "override_params": {"model": "claude-3-5-haiku"}}]})).await;
    app.set_rate("anthropic", "claude-3-5-haiku", "0.001", "0.005")
        .await;
    let (user, key) = funded(&app, "claude@example.com").await;
    let body = json!({"model": "claude", "max_tokens": 64, "temperature": 1.5, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let r = app.chat(&key, &body).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["total_tokens"], 20);
    let sent = mock
        .state
        .bodies
        .lock()
        .expect("bodies")
        .last()
        .cloned()
        .expect("body");
    assert_eq!(
        (
            sent["system"].as_str(),
            sent["max_tokens"].as_u64(),
            sent["temperature"].as_f64()
        ),
        (Some("Be brief."), Some(64), Some(1.0))
    );
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "Hi"}]));
    assert_eq!(
        mock.state
            .anthropic_headers
            .lock()
            .expect("h")
            .last()
            .cloned(),
        Some(("sk-ant-platform".to_owned(), "2023-06-01".to_owned()))
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = app.chat(&key, &streamed).await;
    let evs = events(&r.text().await.expect("body"));
    assert_eq!(content(&evs), ANSWER);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
    assert!(
        evs.iter().any(|e| e.contains("\"prompt_tokens\":12")),
        "{evs:?}"
    );

    // (12 * 0.001 + 8 * 0.005) = 0.052, for both calls.
    let rows = wait_rows(&app, user, 2).await;
    for row in &rows {
        assert_eq!(
            (row.0.as_str(), row.2, row.3, row.4.as_str(), row.5),
            ("anthropic", 12, 8, "upstream", d("0.052"))
        );
    }

    // Anthropic's errors: a 400 is the client's, 529 (overloaded) the upstream's.
    mock.state.fail_status.store(400, Ordering::SeqCst);
    let r = app.chat(&key, &body).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["message"], "mock failure 400");
    mock.state.fail_status.store(529, Ordering::SeqCst);
    assert_eq!(app.chat(&key, &body).await.status(), 502);
    mock.state.fail_status.store(0, Ordering::SeqCst);
    // Tools and images go as Anthropic's tools, tool_use and image blocks, and a tool call
    // comes back as OpenAI's tool_calls.
    mock.state.tool_call.store(true, Ordering::SeqCst);
    let tools = json!({"model": "claude", "tool_choice": "auto",
        "tools": [{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]}]});
    let r = app.chat(&key, &tools).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(
        (&call["function"]["name"], &call["function"]["arguments"]),
        (&json!("weather"), &json!("{\"city\":\"Oslo\"}"))
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    let sent = mock.state.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["tools"][0]["name"], "weather");
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));
    assert_eq!(sent["messages"][0]["content"][1]["source"]["data"], "QUJD");
    mock.state.tool_call.store(false, Ordering::SeqCst);
    let audio = json!({"model": "claude",
        "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
    assert_eq!(app.chat(&key, &audio).await.status(), 400);
    assert_eq!(
        usage_rows(&app, user).await.len(),
        3,
        "failed calls are not billed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_then_succeed_and_bill_once() {
    let mock = mock_upstream().await;
    let app = TestApp::spawn().await;
    let host = mock.dashscope_host();
    app.set_model("retrying", json!({"retry": {"attempts": 2, "on_status_codes": [503]},
        "targets": [{"provider": "dashscope", "custom_host": host, "override_params": {"model": "qwen-turbo"}}]})).await;
    app.set_model(
        "once",
        json!({"targets": [{"provider": "dashscope", "custom_host": host,
        "override_params": {"model": "qwen-turbo"}}]}),
    )
    .await;
    app.set_rate("dashscope", "qwen-turbo", "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "retry@example.com").await;
    mock.state.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(app.chat(&key, &chat_body("retrying")).await.status(), 200);
    assert_eq!(mock.calls(), 3, "two failures, then success");
    mock.state.fail_next.store(3, Ordering::SeqCst);
    assert_eq!(
        app.chat(&key, &chat_body("retrying")).await.status(),
        502,
        "attempts exhausted"
    );
    mock.state.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(
        app.chat(&key, &chat_body("once")).await.status(),
        502,
        "no retry configured"
    );
    assert_eq!(usage_rows(&app, user).await.len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_opens_its_circuit_and_costs_one_attempt() {
    let slow = mock_upstream().await;
    slow.state.delay_ms.store(2_000, Ordering::SeqCst);
    let good = mock_upstream().await;
    let app = TestApp::spawn_with(|c| {
        c.breaker_failures = 2;
        c.breaker_cooldown_ms = 700;
    })
    .await;
    app.set_model(
        "guarded",
        json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "dashscope", "custom_host": slow.dashscope_host(), "request_timeout": 200,
         "override_params": {"model": "qwen-turbo"}},
        {"provider": "openai", "custom_host": format!("http://{}/v1", good.addr),
         "override_params": {"model": "gpt-4o-mini"}}]}),
    )
    .await;
    app.set_rate("dashscope", "qwen-turbo", "0.001", "0.001")
        .await;
    app.set_rate("openai", "gpt-4o-mini", "0.001", "0.001")
        .await;
    let (_, key) = funded(&app, "breaker@example.com").await;
    for _ in 0..2 {
        assert_eq!(app.chat(&key, &chat_body("guarded")).await.status(), 200);
    }
    assert_eq!(slow.calls(), 2, "two timeouts open the circuit");
    for _ in 0..5 {
        assert_eq!(app.chat(&key, &chat_body("guarded")).await.status(), 200);
    }
    assert_eq!(slow.calls(), 2, "an open circuit is not called");
    assert_eq!(good.calls(), 7);
    let (_, health) = app.get("/health", &app.admin_token).await;
    let breakers = health["upstreams"].as_array().expect("breakers");
    let slow_one = breakers
        .iter()
        .find(|b| {
            b["target"]
                .as_str()
                .is_some_and(|t| t.contains(&slow.addr.to_string()))
        })
        .expect("breaker");
    assert_eq!(slow_one["state"], "open", "{health}");
    // After the cool-down one probe goes through (calls go to the second target until
    // then); it fails, so the circuit opens again.
    let probe_reaches = |calls: usize| {
        let (app, key, slow) = (&app, &key, &slow);
        async move {
            eventually(10, "a probe after the cool-down", || async move {
                assert_eq!(app.chat(key, &chat_body("guarded")).await.status(), 200);
                assert!(slow.calls() <= calls, "one probe at a time");
                slow.calls() == calls
            })
            .await;
        }
    };
    probe_reaches(3).await;
    assert_eq!(app.chat(&key, &chat_body("guarded")).await.status(), 200);
    assert_eq!(slow.calls(), 3, "open again after the failed probe");
    // Healthy again: the next probe closes it.
    slow.state.delay_ms.store(0, Ordering::SeqCst);
    probe_reaches(4).await;
    assert_eq!(app.chat(&key, &chat_body("guarded")).await.status(), 200);
    assert_eq!(slow.calls(), 5, "closed: the first target serves again");
    // A single-target plan with an open circuit answers 503 at once.
    app.set_model(
        "alone",
        json!({"targets": [{"provider": "dashscope", "custom_host": "http://127.0.0.1:9/v1",
        "override_params": {"model": "qwen-turbo"}}]}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(app.chat(&key, &chat_body("alone")).await.status(), 502);
    }
    // Failures reach the breaker as messages: wait until it has booked the second.
    let mut open = false;
    for _ in 0..100 {
        let (_, health) = app.get("/health", &app.admin_token).await;
        open = health["upstreams"].as_array().is_some_and(|list| {
            list.iter().any(|b| {
                b["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("127.0.0.1:9/"))
                    && b["state"] == "open"
            })
        });
        if open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open, "two failures open the circuit");
    assert_eq!(app.chat(&key, &chat_body("alone")).await.status(), 503);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_use_the_prompt_estimate_and_the_output_ceiling() {
    let mock = mock_upstream().await;
    mock.state.delay_ms.store(400, Ordering::SeqCst);
    let app = TestApp::spawn().await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let (user, key) = funded(&app, "reserve@example.com").await;
    let long = "word ".repeat(1000);
    let body = json!({"model": "qwen-turbo", "max_tokens": 50,
        "messages": [{"role": "user", "content": long}]});
    let call = {
        let (app, key, body) = (&app, key.clone(), body.clone());
        async move { app.chat(&key, &body).await }
    };
    // Once the upstream has the call (it answers after 400 ms), the reservation is held.
    let watch = async {
        eventually(10, "the upstream has the call", || async {
            mock.calls() >= 1
        })
        .await;
        app.get(&format!("/api/users/{user}/balance"), &app.admin_token)
            .await
            .1
    };
    let (r, balance) = tokio::join!(call, watch);
    assert_eq!(r.status(), 200);
    let prompt = Decimal::from(neuropia::tokens::prompt(&body["messages"], 0));
    let expected = prompt * d("0.001") + Decimal::from(50) * d("0.002");
    assert!(
        prompt > Decimal::from(1000),
        "a real count of a long prompt: {prompt}"
    );
    assert_eq!(d(balance["reserved"].as_str().expect("reserved")), expected);
    app.stop().await;
}
