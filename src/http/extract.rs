//! Extractors that turn every malformed input into the right [`ApiError`]: bodies (400,
//! 413), platform tokens (401), virtual keys (401) and path ids (400).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::auth::{Claims, KeyHash, Role};
use crate::db;
use crate::state::AppState;

/// Reads the body whole, mapping an oversized body to 413 and one that does not arrive
/// within `NEUROPIA_BODY_TIMEOUT_MS` to 408 (and the connection is closed).
pub async fn body_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let within = std::time::Duration::from_millis(state.config.body_timeout_ms);
    let read = tokio::time::timeout(within, Bytes::from_request(req, state))
        .await
        .map_err(|_| ApiError::RequestTimeout)?;
    read.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("could not read the request body")
        }
    })
}

/// Reads and discards what is left of a request body in the background (at most
/// `NEUROPIA_MAX_BODY_BYTES`, for at most `NEUROPIA_BODY_TIMEOUT_MS`), so that a client
/// refused before its body was read receives the answer instead of a connection reset
/// halfway through its upload. Nothing is parsed or kept.
pub fn discard_body(body: axum::body::Body, state: &AppState) {
    use futures::StreamExt;
    let max = state.config.max_body_bytes;
    let within = std::time::Duration::from_millis(state.config.body_timeout_ms);
    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        let _ = tokio::time::timeout(within, async {
            let mut seen = 0usize;
            while let Some(Ok(chunk)) = chunks.next().await {
                seen += chunk.len();
                if seen > max {
                    break;
                }
            }
        })
        .await;
    });
}

/// A JSON body. Any content type is accepted (curl's default form type included); the
/// body must parse as JSON of the expected shape, or the client gets a 400 saying why.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// An optional JSON body: empty means `None`.
pub struct MaybeJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for MaybeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(MaybeJson(None));
        }
        parse_json(&bytes).map(|v| MaybeJson(Some(v)))
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// The bearer token of `headers`, if any.
fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The claims of a platform token that is valid now: signed, unexpired, and issued for the
/// login's current role, tenant and token version (a demoted user's older tokens are
/// refused at once). `Err` only when the database cannot tell.
pub async fn authenticate(app: &AppState, token: &str) -> Result<Option<Claims>, ApiError> {
    let Some(claims) = app.jwt.verify(token) else {
        return Ok(None);
    };
    let now = db::users::token_state(&app.pool, claims.sub).await?;
    Ok(now
        .filter(|s| {
            s.token_version == claims.ver
                && s.role == claims.role
                && s.tenant_id == claims.tenant_id
        })
        .map(|_| claims))
}

/// True when `headers` carry a valid platform admin's token (for endpoints that show
/// more to operators, such as `/health`).
pub async fn is_platform_admin(app: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let Some(token) = bearer_of(headers) else {
        return false;
    };
    matches!(authenticate(app, token).await, Ok(Some(c)) if c.role == Role::PlatformAdmin)
}

/// A caller authenticated with a platform JWT.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl Caller {
    pub fn is_platform_admin(&self) -> bool {
        self.0.role == Role::PlatformAdmin
    }

    pub fn require_platform_admin(&self) -> Result<(), ApiError> {
        if self.is_platform_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("platform admin only".into()))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        authenticate(state, token)
            .await?
            .map(Caller)
            .ok_or_else(|| ApiError::Unauthorized("invalid or expired token".into()))
    }
}

/// The virtual key of a chat call, from `x-virtual-key` or `Authorization: Bearer`,
/// reduced at once to its hash: the plaintext goes no further.
#[derive(Debug, Clone, Copy)]
pub struct VirtualKey(pub KeyHash);

impl FromRequestParts<AppState> for VirtualKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        // `x-api-key` is where Anthropic's SDKs put it.
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let key = header("x-virtual-key")
            .or_else(|| bearer(parts))
            .or_else(|| header("x-api-key"))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing virtual key: send x-virtual-key, Authorization: Bearer or x-api-key"
                        .into(),
                )
            })?;
        if key.len() > 256 {
            return Err(ApiError::Unauthorized("invalid virtual key".into()));
        }
        Ok(VirtualKey(KeyHash::of(key)))
    }
}

/// The client's address: the TCP peer, or behind trusted proxies the address they report
/// ([`crate::clientip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        client_addr(state, &parts.extensions, &parts.headers)
            .map(ClientAddr)
            .ok_or_else(|| ApiError::internal("no peer address on the request"))
    }
}

/// The client's address: the peer's, or what trusted proxies report for it.
pub fn client_addr(
    app: &AppState,
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
) -> Option<std::net::IpAddr> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    Some(app.trusted_proxies.client(peer, forwarded))
}

/// A UUID path segment (`/api/users/{id}/...`): 400 when it is not a UUID.
pub struct IdPath(pub Uuid);

impl FromRequestParts<AppState> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid path"))?;
        Uuid::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::bad_request(format!("{raw:?} is not a valid id")))
    }
}
