//! One error type for every handler, shaped like OpenAI's:
//! `{"error": {"message": ..., "type": ..., "code": ...}}`.
//!
//! Each variant's status is decided in one match. Internal details are logged with the
//! request id and never returned.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;

/// Every error: `{"error": {"message", "type", "code"}}`, as OpenAI shapes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `insufficient_quota`,
    /// `permission_error`, `not_found_error`, `rate_limit_error` or `api_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String, code: &'static str },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{message}")]
    PaymentRequired { message: String, code: &'static str },
    #[error("{0}")]
    Forbidden(String),
    /// A virtual key refused for a reason with its own code (401 `key_expired`, 403
    /// `ip_not_allowed`).
    #[error("{message}")]
    KeyRefused {
        status: StatusCode,
        message: String,
        code: &'static str,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body did not arrive in time; the connection is closed.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        code: &'static str,
        retry_after: Duration,
    },
    /// The upstream refused the request as the client's mistake; its status is kept.
    #[error("{message}")]
    UpstreamClient { status: StatusCode, message: String },
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Something the request needs is failing (an actor, the database, Redis): 503 with a
    /// fixed message; `detail` is logged with the request id, never returned.
    #[error("{message}")]
    Degraded {
        message: &'static str,
        detail: String,
    },
    /// A fault of ours. The detail is logged; the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The detail of a failure, left on its response for the request's log line
/// ([`crate::http::observe`]), which carries the request id.
#[derive(Debug, Clone)]
pub struct LoggedDetail(pub String);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            code: "invalid_request",
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// A 503 saying `message`; `detail` goes to the log only.
    pub fn degraded(message: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Degraded {
            message,
            detail: detail.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::KeyRefused { status, .. } => *status,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamClient { status, .. } => *status,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) | Self::Degraded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error's code as clients see it (else its type).
    pub fn code(&self) -> &'static str {
        let (kind, code) = self.kind_and_code();
        code.unwrap_or(kind)
    }

    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::BadRequest { code, .. } => ("invalid_request_error", Some(code)),
            Self::Unauthorized(_) => ("authentication_error", Some("invalid_api_key")),
            Self::PaymentRequired { code, .. } => ("insufficient_quota", Some(code)),
            Self::Forbidden(_) => ("permission_error", Some("permission_denied")),
            Self::KeyRefused { status, code, .. } if *status == StatusCode::UNAUTHORIZED => {
                ("authentication_error", Some(code))
            }
            Self::KeyRefused { code, .. } => ("permission_error", Some(code)),
            Self::NotFound(_) => ("not_found_error", Some("not_found")),
            Self::MethodNotAllowed(_) => ("invalid_request_error", Some("method_not_allowed")),
            Self::Conflict(_) => ("invalid_request_error", Some("conflict")),
            Self::Gone(_) => ("invalid_request_error", Some("expired")),
            Self::PayloadTooLarge => ("invalid_request_error", Some("request_too_large")),
            Self::RequestTimeout => ("invalid_request_error", Some("request_timeout")),
            Self::UnsupportedMediaType(_) => {
                ("invalid_request_error", Some("unsupported_media_type"))
            }
            Self::RateLimited { code, .. } => ("rate_limit_error", Some(code)),
            Self::UpstreamClient { .. } => ("invalid_request_error", Some("upstream_rejected")),
            Self::BadGateway(_) => ("api_error", Some("upstream_error")),
            Self::GatewayTimeout(_) => ("api_error", Some("upstream_timeout")),
            Self::Unavailable(_) | Self::Degraded { .. } => {
                ("api_error", Some("service_unavailable"))
            }
            Self::Internal(_) => ("api_error", Some("internal_error")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (kind, code) = self.kind_and_code();
        let (message, detail) = match &self {
            Self::Internal(detail) => ("internal error".to_string(), detail.clone()),
            Self::Degraded { message, detail } => ((*message).to_owned(), detail.clone()),
            other => (other.to_string(), other.to_string()),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message,
                kind: kind.to_owned(),
                code: code.map(str::to_owned),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status.is_server_error() {
            response.extensions_mut().insert(LoggedDetail(detail));
        }
        if let Self::RequestTimeout = &self {
            // The rest of the body may still come: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Self::RateLimited { retry_after, .. } = &self {
            // Whole seconds, rounded up, at least one.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy => Self::Unavailable("database busy, retry".into()),
            DbError::Unavailable(e) => {
                Self::degraded("the database is unavailable; retry shortly", e)
            }
            // Where a handler expects neither, a missing row or a refused argument is a
            // broken invariant: logged, never described to the client.
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_carry_retry_after_in_whole_seconds() {
        let r = ApiError::RateLimited {
            message: "slow down".into(),
            code: "rate_limit_exceeded",
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
    }

    #[tokio::test]
    async fn internal_details_are_not_returned() {
        for e in [
            ApiError::Internal("password=hunter2 at db".into()),
            ApiError::degraded("busy", "password=hunter2 at db"),
            ApiError::from(sqlx::Error::Protocol("password=hunter2 at db".into())),
            ApiError::from(sqlx::Error::Io(std::io::Error::other("password=hunter2"))),
        ] {
            let r = e.into_response();
            assert!(r.status().is_server_error());
            let logged = r.extensions().get::<LoggedDetail>().cloned();
            assert!(
                logged.is_some_and(|d| d.0.contains("hunter2")),
                "kept for the log"
            );
            let body = axum::body::to_bytes(r.into_body(), 1 << 16)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("\"type\":\"api_error\""), "{text}");
        }
    }
}
