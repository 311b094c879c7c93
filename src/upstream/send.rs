//! The one send path, shared by the direct router and the Portkey hand-off: a JSON POST
//! sent within a timeout (a stream's headers within it, its body then paced by the idle
//! timeout), over plain HTTP by [`h1`] (the call's own task drives the connection) or over
//! HTTPS by reqwest, a failed status mapped to its [`UpstreamError`], and the answer read
//! whole (with the usage it reports) or handed on as a stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::providers::Resolved;
use super::reply::{openai_usage, status_error, transport_error};
use super::{
    Answer, CONNECT_TIMEOUT, Endpoint, IDLE_TIMEOUT, Outbound, StreamReply, UpstreamError,
    UpstreamReply, Upstreams, Wire, anthropic, h1, messages,
};
use crate::billing::Usage;
use crate::trace::SpanContext;

/// One way to upstreams: `http://` through [`h1`] (the calling task drives the
/// connection), `https://` through reqwest; the same address rule for both.
pub(super) struct Client {
    tls: reqwest::Client,
    plain: Arc<h1::Pool>,
}

impl Client {
    /// Only public addresses unless `allow_private`. Redirects are never followed (one
    /// could lead a call, and its key, anywhere).
    pub(super) fn new(allow_private: bool) -> Result<Self, String> {
        let mut tls = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if !allow_private {
            tls = tls.dns_resolver(Arc::new(crate::address::PublicOnly));
        }
        Ok(Self {
            tls: tls
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))?,
            plain: Arc::new(h1::Pool::new(allow_private, CONNECT_TIMEOUT, IDLE_TIMEOUT)),
        })
    }

    /// POSTs a JSON `payload` with the call's request id and `headers`, within `deadline`
    /// for the answer's head. A failed status is mapped to its [`UpstreamError`]; a
    /// successful answer's body is still to be read.
    pub(super) async fn post(
        &self,
        url: &str,
        request_id: &str,
        headers: &[(&'static str, &str)],
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<Response, UpstreamError> {
        let sent = async {
            if url.starts_with("http://") {
                let mut all = Vec::with_capacity(headers.len() + 2);
                all.push(("content-type", "application/json"));
                all.push(("x-request-id", request_id));
                all.extend_from_slice(headers);
                return self
                    .plain
                    .post(url, &all, payload)
                    .await
                    .map(Response::Plain)
                    .map_err(|e| {
                        tracing::debug!(error = %e, "upstream call failed");
                        match e {
                            h1::Error::Connect(_) => {
                                UpstreamError::failed("could not connect to the upstream")
                            }
                            h1::Error::Transport(_) => {
                                UpstreamError::failed("the upstream connection failed")
                            }
                        }
                    });
            }
            let mut call = self
                .tls
                .post(url)
                .header("content-type", "application/json")
                .header("x-request-id", request_id)
                .body(payload);
            for (name, value) in headers {
                call = call.header(*name, *value);
            }
            call.send()
                .await
                .map(Response::Tls)
                .map_err(transport_error)
        };
        let response = tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        let status = response.status();
        if !status.is_success() {
            let body = tokio::time::timeout_at(deadline, response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(status_error(status, &body));
        }
        Ok(response)
    }
}

/// An upstream's answer whose head has arrived: over plain HTTP from the client the call's
/// task drives ([`h1`]), over HTTPS from reqwest.
pub(super) enum Response {
    Plain(h1::Response),
    Tls(reqwest::Response),
}

impl Response {
    fn status(&self) -> StatusCode {
        match self {
            Self::Plain(r) => r.status,
            Self::Tls(r) => r.status(),
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        let headers = match self {
            Self::Plain(r) => &r.headers,
            Self::Tls(r) => r.headers(),
        };
        headers.get(name).and_then(|v| v.to_str().ok())
    }

    async fn bytes(self) -> Result<Bytes, UpstreamError> {
        match self {
            Self::Plain(r) => r
                .body
                .bytes()
                .await
                .map_err(|_| UpstreamError::failed("the upstream connection failed")),
            Self::Tls(r) => r.bytes().await.map_err(transport_error),
        }
    }

    fn into_stream(self) -> BoxStream<'static, Result<Bytes, String>> {
        match self {
            Self::Plain(r) => r.body.boxed(),
            Self::Tls(r) => r
                .bytes_stream()
                .map(|c| c.map_err(|e| e.to_string()))
                .boxed(),
        }
    }
}

/// Reads a successful response: the stream to pump, or the whole answer (OpenAI-shaped,
/// translated from Anthropic's format if need be) with the usage it reports.
pub(super) async fn answer(
    response: Response,
    to: &Resolved,
    out: &Outbound<'_>,
    (timeout, deadline): (Duration, Instant),
) -> Result<Answer, UpstreamError> {
    if out.stream {
        return Ok(Answer::Stream(StreamReply {
            provider: to.provider.clone(),
            model: to.model.clone(),
            wire: to.wire,
            endpoint: out.endpoint,
            body: response.into_stream(),
            idle_timeout: timeout,
        }));
    }
    let bytes = tokio::time::timeout_at(deadline, response.bytes())
        .await
        .map_err(|_| UpstreamError::Timeout)??;
    let invalid = |_| UpstreamError::failed("the upstream answered with invalid JSON");
    let (body, usage) = match (to.wire, out.endpoint) {
        (Wire::OpenAi, Endpoint::Messages) => {
            let parsed: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
            let (message, usage) = messages::from_chat(&parsed, out.model);
            (
                Bytes::from(serde_json::to_vec(&message).unwrap_or_default()),
                usage,
            )
        }
        // Only the usage is read; the rest is checked to be JSON and passed on as is.
        (Wire::OpenAi, _) => {
            let usage = reported_usage(&bytes, out.endpoint).map_err(invalid)?;
            (bytes, usage)
        }
        (Wire::Anthropic, Endpoint::Messages) => {
            let parsed: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
            (bytes, messages::usage(&parsed))
        }
        (Wire::Anthropic, _) => {
            let parsed: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
            let (openai, usage) = anthropic::response(&parsed);
            (
                Bytes::from(serde_json::to_vec(&openai).unwrap_or_default()),
                usage,
            )
        }
    };
    Ok(Answer::Whole(UpstreamReply {
        provider: to.provider.clone(),
        model: to.model.clone(),
        body,
        usage,
    }))
}

impl Upstreams {
    /// One HTTP call to one provider target.
    pub(super) async fn attempt(
        &self,
        to: &Resolved,
        req: &Map<String, Value>,
        out: &Outbound<'_>,
        timeout: Duration,
        trace: Option<SpanContext>,
    ) -> Result<Answer, UpstreamError> {
        let stream = out.stream;
        let client_error = |message| UpstreamError::Client {
            status: axum::http::StatusCode::BAD_REQUEST,
            message,
        };
        let payload = match (to.wire, out.endpoint) {
            (Wire::OpenAi, Endpoint::Messages) => {
                let mut chat = messages::to_chat(req).map_err(client_error)?;
                if stream {
                    streaming_with_usage(&mut chat);
                }
                encode(&chat)?
            }
            (Wire::OpenAi, endpoint) if stream && endpoint != Endpoint::Responses => {
                let mut req = req.clone();
                streaming_with_usage(&mut req);
                encode(&req)?
            }
            // The request as built for this target, serialised without another copy.
            (Wire::OpenAi, _) => encode(req)?,
            // Messages to Anthropic: as the client sent them.
            (Wire::Anthropic, Endpoint::Messages) if stream => {
                let mut req = req.clone();
                req.insert("stream".into(), Value::Bool(true));
                encode(&req)?
            }
            (Wire::Anthropic, Endpoint::Messages) => encode(req)?,
            (Wire::Anthropic, _) => {
                let payload = anthropic::request(req, self.default_max_tokens, stream).map_err(
                    |message| UpstreamError::Client {
                        status: axum::http::StatusCode::BAD_REQUEST,
                        message,
                    },
                )?;
                encode(&payload)?
            }
        };
        let bearer;
        let mut headers: Vec<(&'static str, &str)> = Vec::with_capacity(4);
        // A traced attempt tells the upstream its span (W3C trace context).
        let traceparent = trace.map(|t| t.traceparent());
        if let Some(t) = &traceparent {
            headers.push(("traceparent", t));
        }
        if let Some(key) = &to.key {
            match to.wire {
                Wire::OpenAi => {
                    bearer = format!("Bearer {}", key.expose());
                    headers.push(("authorization", &bearer));
                }
                Wire::Anthropic => {
                    let asked = out.anthropic;
                    headers.push(("x-api-key", key.expose()));
                    headers.push((
                        "anthropic-version",
                        asked.version.as_deref().unwrap_or(anthropic::VERSION),
                    ));
                    if let Some(beta) = &asked.beta {
                        headers.push(("anthropic-beta", beta));
                    }
                }
            }
        }
        // A stream's head must arrive within the timeout; a whole answer, all of it.
        let deadline = Instant::now() + timeout;
        let response = self
            .providers
            .post(&to.url, out.request_id, &headers, payload, deadline)
            .await?;
        answer(response, to, out, (timeout, deadline)).await
    }
}

/// Asks an OpenAI-shaped upstream to stream, with a final usage chunk.
pub(super) fn streaming_with_usage(req: &mut Map<String, Value>) {
    req.insert("stream".into(), Value::Bool(true));
    let mut options = req
        .get("stream_options")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    options.insert("include_usage".into(), Value::Bool(true));
    req.insert("stream_options".into(), Value::Object(options));
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, UpstreamError> {
    serde_json::to_vec(v).map_err(|e| UpstreamError::failed(e.to_string()))
}

/// The part of an OpenAI-shaped answer the gateway reads (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
struct Reported {
    #[serde(default)]
    usage: Option<Value>,
}

/// The usage an OpenAI-shaped answer reports, if whole; `Err` if it is not JSON.
fn reported_usage(bytes: &[u8], endpoint: Endpoint) -> Result<Option<Usage>, serde_json::Error> {
    serde_json::from_slice::<Reported>(bytes)
        .map(|r| r.usage.and_then(|u| openai_usage(&u, endpoint)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_is_read_when_reported() {
        let v = json!({"id": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        assert_eq!(
            reported_usage(v.to_string().as_bytes(), Endpoint::Chat)
                .ok()
                .flatten(),
            Some(Usage::new(7, 3))
        );
        let detailed = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 80},
            "completion_tokens_details": {"reasoning_tokens": 30}}});
        assert_eq!(
            reported_usage(detailed.to_string().as_bytes(), Endpoint::Chat)
                .ok()
                .flatten(),
            Some(Usage {
                cached_input_tokens: 80,
                reasoning_tokens: 30,
                ..Usage::new(100, 50)
            })
        );
        assert_eq!(reported_usage(b"{}", Endpoint::Chat).ok().flatten(), None);
        assert_eq!(
            reported_usage(br#"{"usage": {"prompt_tokens": 7}}"#, Endpoint::Chat)
                .ok()
                .flatten(),
            None
        );
        let embedded = br#"{"usage": {"prompt_tokens": 7, "total_tokens": 7}}"#;
        assert_eq!(
            reported_usage(embedded, Endpoint::Embeddings)
                .ok()
                .flatten(),
            Some(Usage::new(7, 0))
        );
        assert!(
            reported_usage(b"{\"usage\": ", Endpoint::Chat).is_err(),
            "not JSON"
        );
    }
}
