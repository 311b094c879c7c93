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
    let usage = Usage {
        input_tokens: tokens::prompt(&messages, 0),
        output_tokens: tokens::count(&text),
    };
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

async fn chat(body: Bytes) -> Response {
    match serde_json::from_slice::<Map<String, Value>>(&body) {
        Ok(req) if req.get("messages").is_some_and(Value::is_array) => {
            let (v, _) = complete(&req);
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "invalid request body",
                "type": "invalid_request_error", "code": null}})),
        )
            .into_response(),
    }
}

async fn models() -> axum::Json<Value> {
    axum::Json(
        json!({"object": "list", "data": [{"id": "mock", "object": "model",
        "owned_by": "neuropia"}]}),
    )
}

/// The mock upstream's routes: `/v1/chat/completions` (also under
/// `/compatible-mode/v1`, DashScope's path) and `/v1/models`.
pub fn router() -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/compatible-mode/v1/chat/completions", post(chat))
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
}
