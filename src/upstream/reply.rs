//! What an upstream call gives back: a whole answer, a stream still to be pumped, or an
//! [`UpstreamError`] (the client's mistake, an outage, a timeout, an open circuit).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::billing::Usage;

/// The API a call speaks to its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Chat completions (an Anthropic target gets Messages, translated both ways).
    Chat,
    /// Embeddings (OpenAI-format targets only).
    Embeddings,
    /// Anthropic Messages (as sent to an Anthropic target; an OpenAI-format target gets
    /// chat completions, translated both ways).
    Messages,
    /// OpenAI's Responses API (OpenAI-format targets only).
    Responses,
}

impl Endpoint {
    /// The path under an OpenAI-format base URL.
    pub fn openai_path(self) -> &'static str {
        match self {
            Self::Chat | Self::Messages => "chat/completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
            Self::Responses => "responses",
        }
    }
}

/// The usage in an OpenAI-shaped `usage` object: prompt and completion tokens, with the
/// cached prompt tokens (`prompt_tokens_details.cached_tokens`) and reasoning tokens
/// (`completion_tokens_details.reasoning_tokens`) told apart when reported. Embeddings
/// report no completion.
pub fn openai_usage(u: &Value, endpoint: Endpoint) -> Option<Usage> {
    let n = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    if endpoint == Endpoint::Responses {
        // The Responses API names them input and output tokens.
        return Some(Usage {
            cached_input_tokens: n(u.pointer("/input_tokens_details/cached_tokens")).unwrap_or(0),
            reasoning_tokens: n(u.pointer("/output_tokens_details/reasoning_tokens")).unwrap_or(0),
            ..Usage::new(n(u.get("input_tokens"))?, n(u.get("output_tokens"))?)
        });
    }
    let output = match endpoint {
        Endpoint::Embeddings => n(u.get("completion_tokens")).unwrap_or(0),
        _ => n(u.get("completion_tokens"))?,
    };
    Some(Usage {
        cached_input_tokens: n(u.pointer("/prompt_tokens_details/cached_tokens")).unwrap_or(0),
        reasoning_tokens: n(u.pointer("/completion_tokens_details/reasoning_tokens")).unwrap_or(0),
        ..Usage::new(n(u.get("prompt_tokens"))?, output)
    })
}

/// The wire protocol of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// A whole (non-streamed) answer, OpenAI-shaped, with what to bill it on.
#[derive(Debug)]
pub struct UpstreamReply {
    pub provider: String,
    pub model: String,
    pub body: Bytes,
    /// The usage the upstream reported (`None`: it reported none; the call estimates it).
    pub usage: Option<Usage>,
}

/// A streamed answer whose headers arrived: the body is still to be pumped.
pub struct StreamReply {
    pub provider: String,
    pub model: String,
    pub wire: Wire,
    pub body: BoxStream<'static, Result<Bytes, String>>,
    /// Longest silence tolerated between two chunks.
    pub idle_timeout: Duration,
    /// The API the stream speaks (chat chunks or Responses events).
    pub endpoint: Endpoint,
}

pub enum Answer {
    Whole(UpstreamReply),
    Stream(StreamReply),
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream refused the request as the client's mistake. Passed back; not billed.
    #[error("upstream refused the request ({status}): {message}")]
    Client { status: StatusCode, message: String },
    /// The upstream failed (`status` when it answered) or could not be reached.
    #[error("upstream failed: {message}")]
    Failed {
        status: Option<u16>,
        message: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The target's circuit is open.
    #[error("circuit open for {0}")]
    CircuitOpen(String),
}

impl UpstreamError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Client { .. } => "client_error",
            Self::Failed {
                status: Some(_), ..
            } => "server_error",
            Self::Failed { status: None, .. } => "unreachable",
            Self::Timeout => "timeout",
            Self::CircuitOpen(_) => "circuit_open",
        }
    }

    pub(super) fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            status: None,
            message: message.into(),
        }
    }

    /// Counts against the target's circuit: it did not work, and not for the client.
    pub(super) fn is_outage(&self) -> bool {
        match self {
            Self::Failed { status, .. } => status.is_none_or(|s| s >= 500),
            Self::Timeout => true,
            Self::Client { .. } | Self::CircuitOpen(_) => false,
        }
    }
}

pub(super) fn transport_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::failed("could not connect to the upstream")
    } else {
        UpstreamError::failed("the upstream connection failed")
    }
}

pub(super) fn status_error(status: StatusCode, body: &[u8]) -> UpstreamError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(|s| s.chars().take(500).collect::<String>())
        })
        .unwrap_or_else(|| format!("upstream answered {status}"));
    let code = status.as_u16();
    match code {
        401 | 403 => UpstreamError::Failed {
            status: Some(code),
            message: format!("upstream refused the platform key ({status})"),
        },
        408 | 429 => UpstreamError::Failed {
            status: Some(code),
            message: format!("upstream busy ({status}): {message}"),
        },
        400..=499 => UpstreamError::Client { status, message },
        _ => UpstreamError::Failed {
            status: Some(code),
            message: format!("upstream error ({status}): {message}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_separate_client_mistakes_from_upstream_trouble() {
        let body = br#"{"error":{"message":"bad temperature"}}"#;
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST, body),
            UpstreamError::Client { message, .. } if message == "bad temperature"
        ));
        for (status, outage) in [(401, false), (429, false), (502, true), (529, true)] {
            let e = status_error(StatusCode::from_u16(status).expect("status"), b"<html>");
            assert!(matches!(e, UpstreamError::Failed { .. }), "{status}");
            assert_eq!(e.is_outage(), outage, "{status}");
        }
    }
}
