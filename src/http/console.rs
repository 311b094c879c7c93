//! The console at `/console`: a plain ES-module app over the HTTP API (no second backend),
//! embedded in the binary. Every file goes out with a strict Content-Security-Policy (no
//! inline script or style, nothing from elsewhere, no framing), `nosniff` and no referrer;
//! the token stays in the page's memory, so there is no cookie to forge requests with.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../console/index.html");
const APP: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");

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

/// The console's script (an ES module).
#[utoipa::path(get, path = "/console/app.js", tag = "console",
    responses((status = 200, description = "text/javascript")))]
pub async fn app() -> Response {
    file("text/javascript; charset=utf-8", APP)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console/style.css", tag = "console",
    responses((status = 200, description = "text/css")))]
pub async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
