//! `POST /v1/chat/completions` (alias `/api/chat/completions`) and `GET /v1/models`: the
//! key is known before the body is read, the body parses into a [`Chat`], and
//! [`call::call`] admits, runs and settles it.

use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::calls::{admit_error, response};
use super::error::ApiError;
use super::extract::{VirtualKey, body_bytes, discard_body, parse_json};
use super::types::ErrorBody;
use crate::call::{self, Chat};
use crate::state::AppState;

/// OpenAI-compatible chat completion, billed to the key's owner.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat",
    request_body(content = Object, description = "an OpenAI chat completion request"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses(
        (status = 200, description = "the upstream's OpenAI-shaped answer; header x-request-id"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "rpm or tpm; see Retry-After", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn completions(
    state: State<AppState>,
    key: VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    chat(state, key, req).await
}

/// The brief's alias of `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/api/chat/completions", tag = "chat",
    request_body(content = Object, description = "an OpenAI chat completion request"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "as /v1/chat/completions")))]
pub async fn completions_alias(
    state: State<AppState>,
    key: VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    chat(state, key, req).await
}

async fn chat(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    let ctx = super::observe::ctx(&req);
    // Authentication comes first: an unknown key is refused before its body is read.
    if let Err(e) = app.keys.known(hash).await {
        discard_body(req.into_body(), &app);
        return Err(admit_error(e));
    }
    let bytes = body_bytes(req, &app).await?;
    let body = parse_json::<Map<String, Value>>(&bytes)?;
    drop(bytes);
    let chat = Chat::parse(body)?;
    let reply = call::call(&app, hash, chat, ctx.id, ctx).await?;
    Ok(response(reply))
}

/// The models this key may call, OpenAI-shaped.
#[utoipa::path(get, path = "/v1/models", tag = "chat",
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [...]}`"),
        (status = 401, body = ErrorBody)))]
pub async fn models(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
) -> Result<axum::Json<Value>, ApiError> {
    let view = app.keys.describe(hash).await.map_err(admit_error)?;
    if !view.is_active {
        return Err(ApiError::Unauthorized(
            "this virtual key is deactivated".into(),
        ));
    }
    let snap = app.snapshot.load();
    let mut names: Vec<(&String, &str)> = snap
        .models
        .iter()
        .filter(|(name, _)| view.allowed_models.is_empty() || view.allowed_models.contains(name))
        .map(|(name, route)| (name, route.provider.as_str()))
        .collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}
