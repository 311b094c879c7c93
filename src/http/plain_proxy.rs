//! `neuropia plain-proxy`: the gateway's own HTTP server and plain-HTTP upstream client with
//! nothing between them: every request's body is posted to the same path on one upstream
//! and the answer returned as it came. No key, no limits, no billing: it is the floor the
//! benchmarks compare the paid path with (what tokio, hyper, axum and the client cost on
//! their own; `scripts/bench` with `BENCH_FLOOR=1`), never something to expose.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::server::{self, Limits};
use crate::upstream::h1::Pool;
use crate::upstream::{CONNECT_TIMEOUT, IDLE_TIMEOUT};

#[derive(Clone)]
struct Upstream {
    pool: Arc<Pool>,
    /// `http://host:port`, without a trailing slash.
    base: Arc<str>,
}

/// Serves on `listener` until the process ends, forwarding to `base` (`http://host:port`).
pub async fn serve(listener: tokio::net::TcpListener, base: &str) -> std::io::Result<()> {
    let upstream = Upstream {
        pool: Arc::new(Pool::new(true, CONNECT_TIMEOUT, IDLE_TIMEOUT)),
        base: Arc::from(base.trim_end_matches('/')),
    };
    tracing::info!(addr = %listener.local_addr()?, upstream = %upstream.base, "plain proxy listening");
    let app = Router::new().fallback(forward).with_state(upstream);
    let limits = Limits {
        max_connections: 16_384,
        header_timeout: Duration::from_secs(30),
        write_stall: Duration::from_secs(30),
    };
    server::run(listener, app, limits, std::future::pending()).await
}

async fn forward(State(up): State<Upstream>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", up.base);
    let answer = match up
        .pool
        .post(&url, &[("content-type", "application/json")], body.into())
        .await
    {
        Ok(answer) => answer,
        Err(e) => return failed(&e.to_string()),
    };
    let status = answer.status;
    let kind = answer
        .headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // A stream passes through piece by piece (as the paid path pumps it); a whole answer is
    // read first (as the paid path reads it).
    let body = if kind.as_bytes().starts_with(b"text/event-stream") {
        axum::body::Body::from_stream(answer.body)
    } else {
        match answer.body.bytes().await {
            Ok(bytes) => axum::body::Body::from(bytes),
            Err(e) => return failed(&e),
        }
    };
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, kind);
    response
}

/// A 502 whose detail goes to the log only.
fn failed(detail: &str) -> Response {
    tracing::warn!(detail, "plain proxy: the upstream failed");
    (StatusCode::BAD_GATEWAY, "upstream failed").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::mock;

    async fn listening() -> tokio::net::TcpListener {
        let any = "127.0.0.1:0".parse().expect("an address");
        server::listen(any).expect("a loopback port")
    }

    #[tokio::test]
    async fn forwards_the_body_and_returns_the_answer_as_it_came() {
        let upstream = listening().await;
        let upstream_url = format!("http://{}", upstream.local_addr().expect("bound"));
        tokio::spawn(mock::serve(upstream));
        let proxy = listening().await;
        let proxy_url = format!("http://{}", proxy.local_addr().expect("bound"));
        let base = upstream_url.clone();
        tokio::spawn(async move { serve(proxy, &base).await });

        let body =
            r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"one two"}]}"#;
        let client = reqwest::Client::new();
        let call = |base: String| {
            let client = client.clone();
            async move {
                let r = client
                    .post(format!("{base}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("an answer");
                let kind = r.headers().get("content-type").cloned();
                (r.status(), kind, r.text().await.expect("a body"))
            }
        };
        let direct = call(upstream_url).await;
        let proxied = call(proxy_url.clone()).await;
        assert_eq!(direct.0, StatusCode::OK);
        assert!(direct.2.contains("Mock answer: one two"), "{}", direct.2);
        assert_eq!(proxied, direct);
        // An unknown path is the upstream's 404, passed through.
        let (status, _, _) = call(format!("{proxy_url}/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
