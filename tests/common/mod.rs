//! Test harness: a real gateway on port 0 over its own fresh PostgreSQL database, the
//! shared Redis, and a loopback mock upstream in the DashScope compatible-mode shape.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use neuropia::app;
use neuropia::billing::Decimal;
use neuropia::config::{Config, Secret};
use neuropia::state::AppState;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const ADMIN_EMAIL: &str = "admin@neuropia.test";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const PLATFORM_KEY: &str = "sk-platform-secret-123";
pub const USER_PASSWORD: &str = "user-password-1";

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub fn server_url() -> String {
    std::env::var("NEUROPIA_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Polls `check` every 5 ms until it holds; returns how long that took. Panics after
/// `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: not within {secs} s");
}

/// Clients calling in a loop ([`call_until_stopped`]): how many calls they were served,
/// and the flag that stops them.
#[derive(Default)]
pub struct Load {
    pub stop: AtomicBool,
    pub served: std::sync::atomic::AtomicUsize,
}

impl Load {
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Waits until `more` calls were served after this one (the load is really running).
    pub async fn serves(&self, more: usize, what: &str) {
        let target = self.served() + more;
        eventually(30, what, || async move { self.served() >= target }).await;
    }
}

/// The request ids of `user`'s usage rows: the calls billed.
pub async fn billed_request_ids(
    conn: &mut PgConnection,
    user: Uuid,
) -> std::collections::HashSet<String> {
    sqlx::query_scalar::<_, String>("SELECT request_id FROM data.usage_log WHERE user_id = $1")
        .bind(user)
        .fetch_all(conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// A client that calls chat with `key` at `url` back to back until `stop` (or until the
/// gateway is gone); returns the `x-request-id`s of the calls whose whole answer arrived.
pub fn call_until_stopped(
    client: reqwest::Client,
    url: String,
    key: String,
    load: Arc<Load>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut answered = Vec::new();
        while !load.stop.load(Ordering::SeqCst) {
            let sent = client
                .post(&url)
                .header("x-virtual-key", &key)
                .json(&chat_body("qwen-turbo"))
                .send()
                .await;
            let Ok(r) = sent else { break };
            let id = r.headers().get("x-request-id").cloned();
            // The response reached the client only once its body did.
            if r.status() == 200 && r.bytes().await.is_ok() {
                answered.push(id.unwrap().to_str().unwrap().to_owned());
                load.served.fetch_add(1, Ordering::SeqCst);
            }
        }
        answered
    })
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `neuropia serve` as a child process on `port` over database `db`, signed-in admin and
/// platform key as in [`TestApp`]; the caller adds its own settings and spawns it with
/// [`spawn_gateway`].
pub fn gateway_command(db: &str, port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_neuropia"));
    c.arg("serve")
        .env("DATABASE_URL", format!("{}/{db}", server_url()))
        .env("NEUROPIA_BIND", format!("127.0.0.1:{port}"))
        .env("NEUROPIA_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("NEUROPIA_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("DASHSCOPE_API_KEY", PLATFORM_KEY)
        .env("NEUROPIA_ALLOW_PRIVATE_UPSTREAMS", "1")
        // Every test client registers from loopback.
        .env("NEUROPIA_REGISTER_MAX_PER_ADDR", "1000000")
        .env("RUST_LOG", "warn")
        .env_remove("NEUROPIA_DEMO")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    c
}

/// Spawns `command` (a [`gateway_command`] on `port`) and waits until it answers
/// `/health`.
pub async fn spawn_gateway(
    mut command: tokio::process::Command,
    port: u16,
) -> tokio::process::Child {
    let child = command.spawn().expect("the gateway binary starts");
    let client = reqwest::Client::new();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < until {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            && r.status() == 200
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not come up on port {port}");
}

/// A `redis-server` of the test's own on `port` (so the test can stop it), once it answers.
pub async fn start_redis(port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server");
    wait_for_redis(port).await;
    child
}

/// Waits until a Redis on `port` takes connections.
pub async fn wait_for_redis(port: u16) {
    let url = format!("redis://127.0.0.1:{port}");
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        if let Ok(c) = redis::Client::open(url.as_str())
            && c.get_multiplexed_async_connection().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not start on {port}");
}

/// What the mock upstream does and has seen.
#[derive(Default)]
pub struct MockState {
    pub calls: AtomicUsize,
    /// 0: answer normally; otherwise answer with this status and an OpenAI error body.
    pub fail_status: AtomicU16,
    pub delay_ms: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub authorizations: Mutex<Vec<String>>,
    pub bodies: Mutex<Vec<Value>>,
    /// The `x-request-id` of each chat call received.
    pub request_ids: Mutex<Vec<String>>,
    /// The `traceparent` of each chat call received that had one.
    pub traceparents: Mutex<Vec<String>>,
    /// Headers of Anthropic calls: (x-api-key, anthropic-version).
    pub anthropic_headers: Mutex<Vec<(String, String)>>,
    /// `anthropic-beta` of Anthropic calls ("" when absent).
    pub anthropic_beta: Mutex<Vec<String>>,
    /// Fail this many calls (with `fail_status`, default 503) before answering normally.
    pub fail_next: AtomicUsize,
    /// Streams: leave the usage out even when asked for it.
    pub stream_without_usage: AtomicBool,
    /// Streams: break the connection after this many chunks (0: never).
    pub break_after: AtomicUsize,
    /// Streams: pause between chunks.
    pub chunk_delay_ms: AtomicU64,
    /// Streams: chunks fully sent (counted as they leave).
    pub chunks_sent: AtomicUsize,
    /// Chat answers call the tool `weather` (with `{"city": "Oslo"}`) instead of answering.
    pub tool_call: AtomicBool,
    /// Of the prompt tokens, reported as read from the prompt cache (0: no details).
    pub cached_tokens: AtomicU64,
    /// Anthropic only: input tokens reported as written to the prompt cache.
    pub cache_write_tokens: AtomicU64,
    /// Of the completion tokens, reported as reasoning (0: no details).
    pub reasoning_tokens: AtomicU64,
}

/// The usage an OpenAI-format mock answer reports, details included when set.
fn openai_usage(s: &MockState) -> Value {
    let (p, c) = (
        s.prompt_tokens.load(Ordering::SeqCst),
        s.completion_tokens.load(Ordering::SeqCst),
    );
    let mut u = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    let cached = s.cached_tokens.load(Ordering::SeqCst);
    if cached > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    let reasoning = s.reasoning_tokens.load(Ordering::SeqCst);
    if reasoning > 0 {
        u["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    u
}

/// The usage an Anthropic mock answer reports: `input_tokens` without the cache reads and
/// writes, which come apart.
fn anthropic_usage(s: &MockState, output: u64) -> Value {
    let mut u =
        json!({"input_tokens": s.prompt_tokens.load(Ordering::SeqCst), "output_tokens": output});
    let (read, written) = (
        s.cached_tokens.load(Ordering::SeqCst),
        s.cache_write_tokens.load(Ordering::SeqCst),
    );
    if read + written > 0 {
        u["cache_read_input_tokens"] = json!(read);
        u["cache_creation_input_tokens"] = json!(written);
    }
    u
}

/// The answer's words, one stream chunk each.
pub const ANSWER: &str = "Hello from the mock.";

fn status_now(s: &MockState) -> Option<u16> {
    let fail = s.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return Some(fail);
    }
    let left = s.fail_next.load(Ordering::SeqCst);
    if left > 0 {
        s.fail_next.fetch_sub(1, Ordering::SeqCst);
        return Some(503);
    }
    None
}

/// An SSE body from `events`, paced and possibly broken per the mock's settings.
fn sse_body(s: Arc<MockState>, events: Vec<String>) -> Response {
    let stream = futures::stream::unfold(
        (s, events.into_iter(), 0usize),
        |(s, mut it, n)| async move {
            let delay = s
                .delay_ms
                .load(Ordering::SeqCst)
                .max(s.chunk_delay_ms.load(Ordering::SeqCst));
            let brk = s.break_after.load(Ordering::SeqCst);
            if delay > 0 && n > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if brk > 0 && n == brk {
                return Some((
                    Err(std::io::Error::other("mock breaks the stream")),
                    (s, it, n + 1),
                ));
            }
            let event = it.next()?;
            s.chunks_sent.fetch_add(1, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(Bytes::from(event)), (s, it, n + 1)))
        },
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

fn openai_stream(s: Arc<MockState>, req: &Value) -> Response {
    let model = req.get("model").cloned().unwrap_or(Value::Null);
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
            "created": 1, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for w in ANSWER.split_inclusive(' ') {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let wants = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if wants && !s.stream_without_usage.load(Ordering::SeqCst) {
        events.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
            "created": 1, "model": model, "choices": [],
            "usage": openai_usage(&s)})
        ));
    }
    events.push("data: [DONE]\n\n".into());
    sse_body(s, events)
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
}

impl MockUpstream {
    /// `custom_host` for DashScope's compatible mode on this mock.
    pub fn dashscope_host(&self) -> String {
        format!("http://{}/compatible-mode/v1", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

async fn mock_chat(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        s.authorizations.lock().unwrap().push(a.to_owned());
    }
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        s.request_ids.lock().unwrap().push(id.to_owned());
    }
    if let Some(t) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        s.traceparents.lock().unwrap().push(t.to_owned());
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.bodies.lock().unwrap().push(req.clone());
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 && !stream {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(fail) = status_now(&s) {
        let status = StatusCode::from_u16(fail).unwrap();
        // DashScope compatible mode's error shape.
        let body = json!({"error": {"message": format!("mock failure {fail}"),
            "type": "invalid_request_error", "code": "mock_error"},
            "request_id": "mock"});
        return (status, axum::Json(body)).into_response();
    }
    if stream {
        return openai_stream(s.clone(), &req);
    }
    if s.tool_call.load(Ordering::SeqCst) {
        return axum::Json(json!({
            "id": "chatcmpl-tool", "object": "chat.completion", "created": 1,
            "model": req.get("model").cloned().unwrap_or(Value::Null),
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "weather",
                    "arguments": "{\"city\":\"Oslo\"}"}}]}}],
            "usage": openai_usage(&s)
        }))
        .into_response();
    }
    axum::Json(json!({
        "id": format!("chatcmpl-{}", Uuid::new_v4()),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": req.get("model").cloned().unwrap_or(Value::Null),
        "system_fingerprint": null,
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hello from the mock."}}],
        "usage": openai_usage(&s)
    }))
    .into_response()
}

/// Notes a call to an OpenAI-format endpoint (its key and body) and answers the failure
/// the mock is set to give, if any (OpenAI's error shape).
fn received(s: &MockState, headers: &HeaderMap, body: &[u8]) -> Result<Value, Box<Response>> {
    s.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        s.authorizations.lock().unwrap().push(a.to_owned());
    }
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    s.bodies.lock().unwrap().push(req.clone());
    if let Some(fail) = status_now(s) {
        let body = json!({"error": {"message": format!("mock failure {fail}"),
            "type": "invalid_request_error", "code": "mock_error"}});
        let failure = (StatusCode::from_u16(fail).unwrap(), axum::Json(body)).into_response();
        return Err(Box::new(failure));
    }
    Ok(req)
}

/// OpenAI embeddings, as documented: one vector per input (8 floats; as little-endian f32
/// bytes in base64 when `encoding_format` says so, as the official SDKs ask by default),
/// usage with prompt and total tokens only.
async fn mock_embeddings(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use base64::Engine;
    let req = match received(&s, &headers, &body) {
        Ok(req) => req,
        Err(failure) => return *failure,
    };
    let inputs = match req.get("input") {
        Some(Value::Array(list)) if !list.iter().all(Value::is_number) => list.len(),
        _ => 1,
    };
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let vector: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
    let embedding = if base64 {
        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(vector)
    };
    let data: Vec<Value> = (0..inputs)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": embedding}))
        .collect();
    let p = s.prompt_tokens.load(Ordering::SeqCst);
    axum::Json(json!({"object": "list", "data": data,
        "model": req.get("model").cloned().unwrap_or(Value::Null),
        "usage": {"prompt_tokens": p, "total_tokens": p}}))
    .into_response()
}

/// OpenAI's Responses API, as documented: a response object with `output` items and usage
/// in input/output tokens (with details); streamed as named events ending with
/// `response.completed`, which carries the usage.
async fn mock_responses(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match received(&s, &headers, &body) {
        Ok(req) => req,
        Err(failure) => return *failure,
    };
    let (p, c) = (
        s.prompt_tokens.load(Ordering::SeqCst),
        s.completion_tokens.load(Ordering::SeqCst),
    );
    let usage = json!({"input_tokens": p,
        "input_tokens_details": {"cached_tokens": s.cached_tokens.load(Ordering::SeqCst)},
        "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": s.reasoning_tokens.load(Ordering::SeqCst)},
        "total_tokens": p + c});
    let response = json!({"id": "resp_1", "object": "response", "created_at": 1,
        "status": "completed", "model": req.get("model").cloned().unwrap_or(Value::Null),
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}],
        "usage": usage});
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut created = response.clone();
        created["status"] = json!("in_progress");
        created["output"] = json!([]);
        let mut events = vec![ev(
            "response.created",
            json!({"type": "response.created", "sequence_number": 0, "response": created}),
        )];
        for (i, w) in ANSWER.split_inclusive(' ').enumerate() {
            events.push(ev(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta",
                "sequence_number": i + 1, "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "delta": w}),
            ));
        }
        events.push(ev(
            "response.completed",
            json!({"type": "response.completed", "sequence_number": 99, "response": response}),
        ));
        return sse_body(s.clone(), events);
    }
    axum::Json(response).into_response()
}

/// Anthropic Messages, as documented: `x-api-key`, `anthropic-version`, usage in
/// `input_tokens`/`output_tokens`, errors as `{"type": "error", "error": {...}}`, and the
/// `message_start` ... `message_stop` stream.
async fn mock_messages(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    s.anthropic_headers
        .lock()
        .unwrap()
        .push((h("x-api-key"), h("anthropic-version")));
    s.anthropic_beta.lock().unwrap().push(h("anthropic-beta"));
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.bodies.lock().unwrap().push(req.clone());
    if let Some(fail) = status_now(&s) {
        let kind = if fail == 529 {
            "overloaded_error"
        } else {
            "invalid_request_error"
        };
        let body = json!({"type": "error", "error": {"type": kind, "message": format!("mock failure {fail}")}});
        return (StatusCode::from_u16(fail).unwrap(), axum::Json(body)).into_response();
    }
    let c = s.completion_tokens.load(Ordering::SeqCst);
    let model = req.get("model").cloned().unwrap_or(Value::Null);
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut events = vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
                "role": "assistant", "model": model, "content": [], "usage": anthropic_usage(&s, 1)}}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ev("ping", json!({"type": "ping"})),
        ];
        for w in ANSWER.split_inclusive(' ') {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": w}}),
            ));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(ev("message_delta", json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": c}})));
        events.push(ev("message_stop", json!({"type": "message_stop"})));
        return sse_body(s.clone(), events);
    }
    if s.tool_call.load(Ordering::SeqCst) {
        return axum::Json(
            json!({"id": "msg_tool", "type": "message", "role": "assistant",
            "model": model, "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather",
                "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": anthropic_usage(&s, c)}),
        )
        .into_response();
    }
    axum::Json(json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": anthropic_usage(&s, c)}))
    .into_response()
}

/// Starts a mock upstream answering 12 prompt and 8 completion tokens.
pub async fn mock_upstream() -> MockUpstream {
    let state = Arc::new(MockState::default());
    state.prompt_tokens.store(12, Ordering::SeqCst);
    state.completion_tokens.store(8, Ordering::SeqCst);
    let app = Router::new()
        .route("/compatible-mode/v1/chat/completions", post(mock_chat))
        .route("/v1/chat/completions", post(mock_chat))
        .route("/compatible-mode/v1/embeddings", post(mock_embeddings))
        .route("/v1/embeddings", post(mock_embeddings))
        .route("/v1/responses", post(mock_responses))
        .route("/compatible-mode/v1/responses", post(mock_responses))
        .route("/v1/messages", post(mock_messages))
        // As large as any body the gateway forwards.
        .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    MockUpstream { addr, state }
}

/// A gateway reached over HTTP, signed in as the platform admin: the one in this process
/// ([`TestApp`] derefs to it) or one in a child process.
/// A customer ready to call: registered, funded, with one key.
pub struct Customer {
    pub user: Uuid,
    pub token: String,
    pub key: String,
}

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub admin_token: String,
}

pub struct TestApp {
    pub api: Api,
    pub state: AppState,
    pub db_name: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A gateway on its own new database; `tweak` adjusts the configuration first.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(&format!("neuropia_test_{}", Uuid::new_v4().simple()), tweak).await
    }

    /// A gateway on the database `db_name` (created if missing).
    pub async fn spawn_on(db_name: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        neuropia::actors::quiet_injected_panics();
        let db_name = db_name.to_owned();
        let mut config = Config::defaults();
        config.database_url = Secret::new(format!("{}/{db_name}", server_url()));
        config.db_pool = 8;
        config.jwt_secret = Some(Secret::new("test-secret-0123456789"));
        config.admin_email = Some(ADMIN_EMAIL.into());
        config.admin_password = Some(Secret::new(ADMIN_PASSWORD));
        config.openai_api_key = None;
        config.dashscope_api_key = Some(Secret::new(PLATFORM_KEY));
        config.faults = true;
        // Every upstream of the tests is a mock on loopback.
        config.allow_private_upstreams = true;
        // Every test client registers from loopback.
        config.register_max_per_addr = 1_000_000;
        config.ledger_flush_ms = 2;
        config.demo = false;
        tweak(&mut config);
        let state = app::build(config).await.expect("gateway builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestApp {
            api: Api::connect(base).await,
            state,
            db_name,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Waits until every journaled charge is committed.
    pub async fn settle_journal(&self) {
        for _ in 0..2000 {
            if self.state.journal.depth() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "journal did not drain: depth {}",
            self.state.journal.depth()
        );
    }

    pub async fn db_balance(&self, user_id: Uuid) -> (Decimal, String) {
        sqlx::query_as("SELECT balance, status FROM data.user_profile WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    /// Stops the server (draining the journal), keeping the database.
    pub async fn stop_keep_db(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
        self.state.pool.close().await;
    }

    /// Stops the server (draining the journal) and drops the test database.
    pub async fn stop(mut self) {
        self.stop_keep_db().await;
        if let Ok(mut conn) = PgConnection::connect(&format!("{}/postgres", server_url())).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
        }
    }
}

impl Api {
    /// Signs in as the platform admin of the gateway at `base`.
    pub async fn connect(base: String) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            // Below the gateway's idle keep-alive timeout (10 s): never reuse a connection
            // the gateway is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut api = Api {
            base,
            client,
            admin_token: String::new(),
        };
        api.admin_token = api.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        api
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    /// Waits until the user's balance actor on this gateway holds no open reservation.
    pub async fn no_reservation_left(&self, user: Uuid) {
        eventually(5, "no reservation left open", || async {
            let (_, b) = self
                .get(&format!("/api/users/{user}/balance"), &self.admin_token)
                .await;
            b["reserved"] == "0"
        })
        .await;
    }

    /// `GET /health`'s body as a platform admin sees it (whatever its status).
    pub async fn health(&self) -> Value {
        let r = self
            .client
            .get(self.url("/health"))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/api/auth/login",
                "",
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Registers a user and returns (user id, its token).
    pub async fn register(&self, email: &str) -> (Uuid, String) {
        let (status, body) = self
            .post(
                "/api/auth/register",
                "",
                json!({"email": email, "password": USER_PASSWORD, "username": "tester"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register: {body}");
        assert_eq!(body["status"], "pending");
        let id = Uuid::parse_str(body["user_id"].as_str().unwrap()).unwrap();
        (id, self.login(email, USER_PASSWORD).await)
    }

    pub async fn top_up(&self, user_id: Uuid, amount: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/users/{user_id}/topups"),
                &self.admin_token,
                json!({"amount": amount}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "top-up: {body}");
        body
    }

    /// Creates a tenant; returns its id.
    pub async fn create_tenant(&self, name: &str, markup: &str, threshold: &str) -> Uuid {
        let (status, body) = self
            .post(
                "/api/admin/tenants",
                &self.admin_token,
                json!({"name": name, "markup_percent": markup, "overdue_threshold": threshold}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "tenant: {body}");
        Uuid::parse_str(body["tenant_id"].as_str().unwrap()).unwrap()
    }

    /// Creates a user in a tenant as `token`; returns (id, its token).
    pub async fn tenant_user(
        &self,
        token: &str,
        tenant: Uuid,
        email: &str,
        role: &str,
    ) -> (Uuid, String) {
        let (status, body) = self
            .post(
                &format!("/api/tenants/{tenant}/users"),
                token,
                json!({"email": email, "password": USER_PASSWORD, "username": "member", "role": role}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "tenant user: {body}");
        let id = Uuid::parse_str(body["user_id"].as_str().unwrap()).unwrap();
        (id, self.login(email, USER_PASSWORD).await)
    }

    /// Registers `email`, tops it up with `funds` and gives it a key made of `key`.
    pub async fn customer(&self, email: &str, funds: &str, key: Value) -> Customer {
        let (user, token) = self.register(email).await;
        self.top_up(user, funds).await;
        let key = self.create_key(&token, user, key).await;
        Customer { user, token, key }
    }

    pub async fn create_key(&self, token: &str, user_id: Uuid, body: Value) -> String {
        let (status, body) = self
            .post(&format!("/api/users/{user_id}/virtual-keys"), token, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "create key: {body}");
        body["virtual_key"].as_str().unwrap().to_owned()
    }

    pub async fn set_rate(&self, provider: &str, model: &str, input: &str, output: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::PUT,
                "/api/admin/provider-rates",
                &self.admin_token,
                Some(
                    json!({"provider": provider, "model": model, "input_rate": input,
                    "output_rate": output, "currency": "USD"}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "rate: {body}");
    }

    pub async fn set_model(&self, model: &str, config: Value) {
        let (status, body) = self
            .send(
                reqwest::Method::PUT,
                "/api/admin/model-configs",
                &self.admin_token,
                Some(json!({"model": model, "config": config})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "model config: {body}");
    }

    pub async fn set_markup(&self, tenant_id: Uuid, percent: &str) {
        let (status, body) = self
            .send(
                reqwest::Method::PATCH,
                &format!("/api/admin/tenants/{tenant_id}"),
                &self.admin_token,
                Some(json!({"markup_percent": percent})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "tenant: {body}");
    }

    /// Points `model` at the mock upstream as DashScope (`qwen-turbo`, with the platform's
    /// DashScope key) and prices it.
    pub async fn route_to_mock(&self, model: &str, mock: &MockUpstream, input: &str, output: &str) {
        self.set_model(
            model,
            json!({"strategy": {"mode": "single"}, "targets": [{"provider": "dashscope",
                "custom_host": mock.dashscope_host(), "use_platform_key": true,
                "override_params": {"model": "qwen-turbo"}}]}),
        )
        .await;
        self.set_rate("dashscope", "qwen-turbo", input, output)
            .await;
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .header("x-virtual-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn api_balance(&self, user_id: Uuid) -> (Decimal, String) {
        let (status, body) = self
            .get(&format!("/api/users/{user_id}/balance"), &self.admin_token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            d(body["balance"].as_str().unwrap()),
            body["status"].as_str().unwrap().to_owned(),
        )
    }
}

/// A chat body whose prompt estimate (16 tokens) covers the mock's 12 prompt tokens,
/// with `max_tokens` equal to the mock's 8 completion tokens: reservations then cover the
/// actual charge.
pub fn chat_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 8, "messages": [
        {"role": "user", "content": "one two three four five six seven eight nine ten"}]})
}
