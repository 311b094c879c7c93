//! The built-in `mock` provider: deterministic OpenAI-shaped completions with real token
//! counts, for the offline demo, tests and load. The same logic backs
//! `neuropia mock-upstream`, an OpenAI-compatible HTTP server on loopback.

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::billing::Usage;
use crate::tokens;

/// Answers a chat request: echoes the last user message (up to `max_tokens` tokens).
pub fn complete(body: &Map<String, Value>) -> (Value, Usage) {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("mock");
    let messages = body.get("messages").cloned().unwrap_or(Value::Null);
    let last_user = messages
        .as_array()
        .and_then(|list| {
            list.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let max_tokens = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(256);
    let mut text = String::from("Mock answer:");
    let mut used = u64::from(tokens::count(&text));
    for word in last_user.split_whitespace() {
        // Each word counted on its own (with its leading space): linear in the answer.
        let more = u64::from(tokens::count(&format!(" {word}")));
        if used + more > max_tokens {
            break;
        }
        used += more;
        text.push(' ');
        text.push_str(word);
    }
    let usage = Usage::new(tokens::prompt(&messages, 0), tokens::count(&text));
    let response = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total()
        }
    });
    (response, usage)
}

/// Answers a Messages request (as chat, translated both ways).
pub fn message(body: &Map<String, Value>) -> Result<(Value, Usage), String> {
    let chat = super::messages::to_chat(body)?;
    let (answer, _) = complete(&chat);
    let model = body.get("model").and_then(Value::as_str).unwrap_or("mock");
    let (message, usage) = super::messages::from_chat(&answer, model);
    Ok((message, usage.unwrap_or_default()))
}

/// Answers a Responses request (as chat: `instructions` as the system message, `input` a
/// string or messages).
pub fn respond(body: &Map<String, Value>) -> Result<(Value, Usage), String> {
    let mut messages = Vec::new();
    if let Some(i) = body.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": i}));
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for item in items {
                let text = match item.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect(),
                    _ => continue,
                };
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                messages.push(json!({"role": role, "content": text}));
            }
        }
        _ => return Err("input must be a string or an array of messages".into()),
    }
    let mut chat = body.clone();
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(max) = body.get("max_output_tokens") {
        chat.insert("max_tokens".into(), max.clone());
    }
    let (answer, usage) = complete(&chat);
    let text = answer
        .pointer("/choices/0/message/content")
        .cloned()
        .unwrap_or(Value::Null);
    let response = json!({
        "id": "resp_mock", "object": "response", "created_at": 0, "status": "completed",
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "output": [{"type": "message", "id": "msg_mock", "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total()},
    });
    Ok((response, usage))
}

/// The text the mock reads from a request (chat messages or embeddings input), in bytes.
pub fn prompt_bytes(body: &Map<String, Value>) -> usize {
    tokens::chat_prompt_bytes(body) + body.get("input").map_or(0, tokens::embedding_bytes)
}

/// Answers an embeddings request: one deterministic vector per input (`dimensions` long,
/// 8 by default), as floats or, with `encoding_format: base64`, as little-endian f32 bytes.
pub fn embed(body: &Map<String, Value>) -> (Value, Usage) {
    use base64::Engine;
    let model = body.get("model").and_then(Value::as_str).unwrap_or("mock");
    let input = body.get("input").cloned().unwrap_or(Value::Null);
    let items: Vec<Value> = match &input {
        Value::Array(list) if !list.iter().all(Value::is_number) => list.clone(),
        other => vec![other.clone()],
    };
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(8, |d| d.clamp(1, 4096)) as usize;
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            // A vector that depends on the text only, so the same input embeds the same.
            let seed = item
                .to_string()
                .bytes()
                .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            let vector: Vec<f32> = (0..dims)
                .map(|i| ((seed.wrapping_add(i as u32 * 7919) % 2000) as f32 - 1000.0) / 1000.0)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let usage = Usage::new(tokens::embedding_input(&input), 0);
    let response = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens}
    });
    (response, usage)
}

async fn embeddings(body: Bytes) -> Response {
    match serde_json::from_slice::<Map<String, Value>>(&body) {
        Ok(req) if req.get("input").is_some() => {
            let (v, _) = embed(&req);
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        _ => invalid(),
    }
}

fn invalid() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": "invalid request body",
            "type": "invalid_request_error", "code": null}})),
    )
        .into_response()
}

async fn chat(body: Bytes) -> Response {
    match serde_json::from_slice::<Map<String, Value>>(&body) {
        Ok(req) if req.get("messages").is_some_and(Value::is_array) => {
            let (v, _) = complete(&req);
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        _ => invalid(),
    }
}

async fn models() -> axum::Json<Value> {
    axum::Json(
        json!({"object": "list", "data": [{"id": "mock", "object": "model",
        "owned_by": "neuropia"}]}),
    )
}

/// The mock upstream's routes: `/v1/chat/completions` and `/v1/embeddings` (also under
/// `/compatible-mode/v1`, DashScope's path) and `/v1/models`.
pub fn router() -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/compatible-mode/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/compatible-mode/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
}

/// Serves the mock upstream on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "mock upstream listening");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_deterministically_within_max_tokens() {
        let req = json!({"model": "m", "max_tokens": 5,
            "messages": [{"role": "user", "content": "one two three four five six"}]});
        let req = req.as_object().cloned().unwrap_or_default();
        let (a, ua) = complete(&req);
        let (b, ub) = complete(&req);
        assert_eq!(a, b);
        assert_eq!(ua, ub);
        assert!(ua.output_tokens <= 5, "{ua:?}");
        assert_eq!(ua.input_tokens, tokens::prompt(&req["messages"], 0));
        assert_eq!(a["usage"]["completion_tokens"], json!(ua.output_tokens));
    }

    #[test]
    fn embeds_each_input_deterministically_as_floats_or_base64() {
        use base64::Engine;
        let req = |v: Value| v.as_object().cloned().unwrap_or_default();
        let (a, usage) = embed(&req(
            json!({"model": "e", "input": ["one", "two"], "dimensions": 4}),
        ));
        assert_eq!(a["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(a["data"][1]["embedding"].as_array().map(Vec::len), Some(4));
        assert_eq!(
            usage.input_tokens,
            tokens::count("one") + tokens::count("two")
        );
        assert_eq!(a["usage"]["total_tokens"], json!(usage.input_tokens));
        let (b, _) = embed(&req(
            json!({"model": "e", "input": ["one", "two"], "dimensions": 4}),
        ));
        assert_eq!(a, b, "the same input embeds the same");
        let (c, _) = embed(&req(
            json!({"model": "e", "input": "one", "encoding_format": "base64"}),
        ));
        let packed = c["data"][0]["embedding"].as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(packed)
            .unwrap_or_default();
        assert_eq!(bytes.len(), 8 * 4, "eight little-endian f32");
    }
}
