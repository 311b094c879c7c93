//! Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`. The
//! virtual key goes in `x-api-key` (where Anthropic's SDKs put it) or as a Bearer token;
//! errors come in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::calls::{admit_error, response, sell};
use super::error::ApiError;
use super::extract::{VirtualKey, body_bytes, parse_json};
use crate::actors::keys::AdmitError;
use crate::call::{CallError, Messages, Operation};
use crate::state::AppState;
use crate::upstream::AnthropicHeaders;

/// Anthropic Messages, billed to the key's owner: to an Anthropic target as sent, to an
/// OpenAI-format target translated both ways.
#[utoipa::path(post, path = "/v1/messages", tag = "chat",
    request_body(content = Object, description = "an Anthropic Messages request"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses(
        (status = 200, description = "an Anthropic message, or its event stream with `stream: true`"),
        (status = 400, description = "`{\"type\": \"error\", \"error\": {...}}`, as every error"),
        (status = 401, description = "authentication_error"),
        (status = 402, description = "billing_error"), (status = 403, description = "permission_error"),
        (status = 404, description = "not_found_error"), (status = 413, description = "request_too_large"),
        (status = 429, description = "rate_limit_error; see Retry-After"),
        (status = 502, description = "api_error"), (status = 503, description = "overloaded_error"),
        (status = 504, description = "api_error")))]
pub async fn create(
    State(app): State<AppState>,
    key: Result<VirtualKey, ApiError>,
    req: Request,
) -> Response {
    let answered = async {
        let VirtualKey(hash) = key?;
        let headers = anthropic_headers(req.headers());
        let reply = sell(&app, hash, req, |body| {
            Messages::parse(body).map(|m| m.with_headers(headers))
        })
        .await?;
        Ok::<_, ApiError>(response(reply))
    }
    .await;
    match answered {
        Ok(r) => r,
        Err(e) => anthropic_error(e).await,
    }
}

/// The gateway's count of a Messages request's input tokens (what admission reserves
/// for the prompt). Free; the key must be active and allowed the model.
#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "chat",
    request_body(content = Object, description = "a Messages request (max_tokens optional)"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"input_tokens\": n}`"),
        (status = 400, description = "invalid_request_error"),
        (status = 401, description = "authentication_error"),
        (status = 403, description = "permission_error"),
        (status = 404, description = "not_found_error")))]
pub async fn count_tokens(
    State(app): State<AppState>,
    key: Result<VirtualKey, ApiError>,
    req: Request,
) -> Response {
    let counted = async {
        let VirtualKey(hash) = key?;
        let view = app.keys.describe(hash).await.map_err(admit_error)?;
        if app.snapshot.load().suspended.contains(&view.user_id) {
            return Err(CallError::Suspended.into());
        }
        let client = super::extract::client_addr(&app, req.extensions(), req.headers());
        view.gate
            .admits(client)
            .map_err(|d| admit_error(AdmitError::Denied(d)))?;
        let bytes = body_bytes(req, &app).await?;
        let mut body = parse_json::<Map<String, Value>>(&bytes)?;
        drop(bytes);
        body.entry("max_tokens").or_insert(json!(1));
        let m = Messages::parse(body)?;
        view.permits(m.model(), client)
            .map_err(|d| admit_error(AdmitError::Denied(d)))?;
        let image_tokens = app
            .snapshot
            .load()
            .model(m.model())
            .ok_or_else(|| ApiError::NotFound(format!("model {:?} does not exist", m.model())))?
            .image_tokens
            .unwrap_or(app.config.image_tokens);
        // A large prompt takes its account's turn, as at admission: one account cannot hold
        // every counting thread with free counts.
        let _turn = match m.prompt_bytes() > crate::tokens::INLINE_BYTES {
            true => crate::tokens::owner_turn(view.user_id.as_u128()).await,
            false => None,
        };
        let n = m.prompt_tokens(image_tokens).await;
        Ok::<_, ApiError>(axum::Json(json!({"input_tokens": n})).into_response())
    }
    .await;
    match counted {
        Ok(r) => r,
        Err(e) => anthropic_error(e).await,
    }
}

/// The client's `anthropic-version` and `anthropic-beta` (bounded), for Anthropic targets.
fn anthropic_headers(headers: &axum::http::HeaderMap) -> AnthropicHeaders {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .map(str::to_owned)
    };
    AnthropicHeaders {
        version: header("anthropic-version"),
        beta: header("anthropic-beta"),
    }
}

/// An error in Anthropic's shape, with the status, headers (`Retry-After`, `x-request-id`)
/// and logged detail the gateway gives every error.
async fn anthropic_error(e: ApiError) -> Response {
    let (mut parts, body) = e.into_response().into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let openai: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = openai
        .pointer("/error/message")
        .cloned()
        .unwrap_or_else(|| json!("error"));
    let kind = match parts.status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Response::from_parts(parts, Body::from(body.to_string()))
}
