//! The one send path, shared by the direct router and the Portkey hand-off: a JSON POST
//! sent within a timeout (a stream's headers within it, its body then paced by the idle
//! timeout), a failed status mapped to its [`UpstreamError`], and the answer read whole
//! (with the usage it reports) or handed on as a stream.

use std::time::Duration;

use axum::body::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value};

use super::providers::Resolved;
use super::reply::{openai_usage, status_error, transport_error};
use super::{
    Answer, Endpoint, Outbound, StreamReply, UpstreamError, UpstreamReply, Upstreams, Wire,
    anthropic, messages,
};
use crate::billing::Usage;

/// A JSON POST to an upstream, with the call's request id.
pub(super) fn post(
    client: &reqwest::Client,
    url: &str,
    request_id: &str,
    payload: Vec<u8>,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(payload)
}

/// Sends `call`; a successful response's body is still to be read. A whole answer must
/// arrive within `timeout`; a stream's headers must.
pub(super) async fn send(
    mut call: reqwest::RequestBuilder,
    stream: bool,
    timeout: Duration,
) -> Result<reqwest::Response, UpstreamError> {
    if !stream {
        call = call.timeout(timeout);
    }
    let response = tokio::time::timeout(timeout, call.send())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(transport_error)?;
    let status = response.status();
    if !status.is_success() {
        let body = tokio::time::timeout(timeout, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(status_error(status, &body));
    }
    Ok(response)
}

/// Reads a successful response: the stream to pump, or the whole answer (OpenAI-shaped,
/// translated from Anthropic's format if need be) with the usage it reports.
pub(super) async fn answer(
    response: reqwest::Response,
    to: &Resolved,
    out: &Outbound<'_>,
    timeout: Duration,
) -> Result<Answer, UpstreamError> {
    if out.stream {
        return Ok(Answer::Stream(StreamReply {
            provider: to.provider.clone(),
            model: to.model.clone(),
            wire: to.wire,
            endpoint: out.endpoint,
            body: response
                .bytes_stream()
                .map(|c| c.map_err(|e| e.to_string()))
                .boxed(),
            idle_timeout: timeout,
        }));
    }
    let bytes = response.bytes().await.map_err(transport_error)?;
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
        let mut call = post(&self.client, &to.url, out.request_id, payload);
        if let Some(key) = &to.key {
            call = match to.wire {
                Wire::OpenAi => call.bearer_auth(key.expose()),
                Wire::Anthropic => {
                    let asked = out.anthropic;
                    let version = asked.version.as_deref().unwrap_or(anthropic::VERSION);
                    let call = call
                        .header("x-api-key", key.expose())
                        .header("anthropic-version", version);
                    match &asked.beta {
                        Some(beta) => call.header("anthropic-beta", beta),
                        None => call,
                    }
                }
            };
        }
        let response = send(call, stream, timeout).await?;
        answer(response, to, out, timeout).await
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
