//! OpenAI's API: `POST /v1/chat/completions` (alias `/api/chat/completions`),
//! `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/{model}`. A paid call is sold
//! by [`sell`]: the key is known before the body is read, the body parses into its operation
//! ([`Chat`], [`Embeddings`]), and the call pipeline admits, runs and settles it.

use std::net::IpAddr;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::calls::{admit_error, response, sell};
use super::error::ApiError;
use super::extract::{ClientAddr, VirtualKey};
use super::types::ErrorBody;
use crate::actors::keys::{AdmitError, KeyView};
use crate::auth::KeyHash;
use crate::call::{Chat, Embeddings, Responses};
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
    Ok(response(sell(&app, hash, req, Chat::parse).await?))
}

/// OpenAI-compatible embeddings, billed on the input's tokens at the model's input rate.
#[utoipa::path(post, path = "/v1/embeddings", tag = "chat",
    request_body(content = Object, description = "an OpenAI embeddings request: model, input \
        (a string, strings, or token ids), encoding_format, dimensions"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses(
        (status = 200, description = "the upstream's OpenAI-shaped answer; header x-request-id"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "rpm or tpm; see Retry-After", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn embeddings(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    Ok(response(sell(&app, hash, req, Embeddings::parse).await?))
}

/// OpenAI's Responses API, to OpenAI-format targets, whole or streamed.
#[utoipa::path(post, path = "/v1/responses", tag = "chat",
    request_body(content = Object, description = "an OpenAI Responses request: model, input, \
        instructions, max_output_tokens, stream, tools ..."),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses(
        (status = 200, description = "the upstream's response object, or its event stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "rpm or tpm; see Retry-After", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn responses(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    Ok(response(sell(&app, hash, req, Responses::parse).await?))
}

/// The models this key may call, OpenAI-shaped.
#[utoipa::path(get, path = "/v1/models", tag = "chat",
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [...]}`"),
        (status = 401, body = ErrorBody)))]
pub async fn models(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    ClientAddr(client): ClientAddr,
) -> Result<axum::Json<Value>, ApiError> {
    let view = active_view(&app, hash, client).await?;
    let snap = app.snapshot.load();
    let mut names: Vec<(&String, &str)> = snap
        .models
        .iter()
        .filter(|(name, _)| view.permits(name, Some(client)).is_ok())
        .map(|(name, route)| (name, route.provider.as_str()))
        .collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|(id, owner)| model_object(id, owner))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

/// One model this key may call, OpenAI-shaped; 404 for any other (a model the key may not
/// use is not told apart from one that does not exist).
#[utoipa::path(get, path = "/v1/models/{model}", tag = "chat",
    params(("model" = String, Path, description = "a model name, as in /v1/models")),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"id\", \"object\": \"model\", ...}`"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn model(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    ClientAddr(client): ClientAddr,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let view = active_view(&app, hash, client).await?;
    let snap = app.snapshot.load();
    match snap.models.get(&model) {
        Some(route) if view.permits(&model, Some(client)).is_ok() => {
            Ok(axum::Json(model_object(&model, &route.provider)))
        }
        _ => Err(ApiError::NotFound(format!(
            "model {model:?} does not exist"
        ))),
    }
}

/// The key's view, if it may be used from `client` (active, unexpired, allowed address).
async fn active_view(app: &AppState, hash: KeyHash, client: IpAddr) -> Result<KeyView, ApiError> {
    let view = app.keys.describe(hash).await.map_err(admit_error)?;
    view.gate
        .admits(Some(client))
        .map_err(|d| admit_error(AdmitError::Denied(d)))?;
    if app.snapshot.load().suspended.contains(&view.user_id) {
        return Err(crate::call::CallError::Suspended.into());
    }
    Ok(view)
}

fn model_object(id: &str, owner: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
}
