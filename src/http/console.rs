//! The console at `/console`: a plain ES-module app over the HTTP API (no second backend),
//! embedded in the binary. Every file goes out with a strict Content-Security-Policy (no
//! inline script or style, nothing from elsewhere, no framing), `nosniff` and no referrer;
//! the token stays in the page's memory, so there is no cookie to forge requests with.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::types::ErrorBody;

const INDEX: &str = include_str!("../../console/index.html");

/// The console's files under `/console/`: name, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("../../console/app.js")),
    ("lib.js", JS, include_str!("../../console/lib.js")),
    ("account.js", JS, include_str!("../../console/account.js")),
    ("admin.js", JS, include_str!("../../console/admin.js")),
    ("plans.js", JS, include_str!("../../console/plans.js")),
    ("ops.js", JS, include_str!("../../console/ops.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../console/style.css"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

/// Allows only the console's own files and its own API.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's page (its sections are `#/...` routes inside it).
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "text/html, with a Content-Security-Policy")))]
pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// One of the console's files: its ES modules and its style sheet.
#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, example = "app.js")),
    responses((status = 200, description = "text/javascript or text/css"),
        (status = 404, body = ErrorBody)))]
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, kind, body)| file(kind, body))
        .ok_or_else(|| ApiError::NotFound("no such console file".into()))
}
