//! The direct router: executes a Portkey-format [`Plan`] against OpenAI-compatible
//! providers (OpenAI, DashScope compatible mode, any base URL) and the built-in `mock`.
//!
//! `single` calls its target; `fallback` tries targets in order and moves on when one
//! fails for a reason that is not the client's (5xx, 429, timeout, connection, missing
//! platform key); `loadbalance` picks one target by weight. A 4xx that the client caused
//! goes back to the client and nothing is billed.

pub mod mock;
pub mod plan;

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::billing::Usage;
use crate::config::{Config, Secret};
use crate::tokens;
use plan::{Mode, Plan, Target};

/// A successful upstream answer, with what to bill it on.
#[derive(Debug)]
pub struct UpstreamReply {
    pub provider: String,
    pub model: String,
    pub body: Bytes,
    pub usage: Usage,
    pub usage_source: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream refused the request as the client's mistake (4xx other than 401, 403,
    /// 408, 429). Passed back; not billed.
    #[error("upstream refused the request ({status}): {message}")]
    Client { status: StatusCode, message: String },
    /// The upstream failed or could not be reached.
    #[error("upstream failed: {0}")]
    Failed(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
}

/// Everything needed to call upstreams: one pooled HTTP client and the platform keys.
pub struct Upstreams {
    client: reqwest::Client,
    openai_key: Option<Secret>,
    dashscope_key: Option<Secret>,
    default_timeout: Duration,
}

pub const OPENAI_BASE: &str = "https://api.openai.com/v1";
pub const DASHSCOPE_BASE: &str = "https://dashscope.aliyuncs.com/compatible-mode/v1";

impl Upstreams {
    pub fn new(config: &Config) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self {
            client,
            openai_key: config.openai_api_key.clone().filter(|k| !k.is_empty()),
            dashscope_key: config.dashscope_api_key.clone().filter(|k| !k.is_empty()),
            default_timeout: Duration::from_millis(config.upstream_timeout_ms),
        })
    }

    /// Executes `plan` for a parsed chat request whose public model is `requested`.
    pub async fn execute(
        &self,
        plan: &Plan,
        body: &Map<String, Value>,
        requested: &str,
        request_id: &str,
    ) -> Result<UpstreamReply, UpstreamError> {
        match plan.strategy.mode {
            Mode::Single | Mode::Loadbalance => {
                let target = pick(plan);
                self.call(target, body, requested, request_id).await
            }
            Mode::Fallback => {
                let mut last = UpstreamError::Failed("no target".into());
                for target in &plan.targets {
                    match self.call(target, body, requested, request_id).await {
                        Ok(reply) => return Ok(reply),
                        Err(e @ UpstreamError::Client { .. }) => return Err(e),
                        Err(e) => {
                            tracing::warn!(provider = %target.provider, error = %e,
                                "target failed; falling back");
                            last = e;
                        }
                    }
                }
                Err(last)
            }
        }
    }

    async fn call(
        &self,
        target: &Target,
        body: &Map<String, Value>,
        requested: &str,
        request_id: &str,
    ) -> Result<UpstreamReply, UpstreamError> {
        let mut req = body.clone();
        for (k, v) in &target.override_params {
            req.insert(k.clone(), v.clone());
        }
        let model = target.model(requested).to_owned();
        req.insert("model".into(), Value::String(model.clone()));

        if target.provider == "mock" && target.custom_host.is_none() {
            let (answer, usage) = mock::complete(&req);
            let body =
                serde_json::to_vec(&answer).map_err(|e| UpstreamError::Failed(e.to_string()))?;
            return Ok(UpstreamReply {
                provider: target.provider.clone(),
                model,
                body: body.into(),
                usage,
                usage_source: "upstream",
            });
        }

        let base = match (&target.custom_host, target.provider.as_str()) {
            (Some(host), _) => host.as_str(),
            (None, "openai") => OPENAI_BASE,
            (None, "dashscope") => DASHSCOPE_BASE,
            (None, other) => {
                return Err(UpstreamError::Failed(format!(
                    "provider {other:?} has no base URL"
                )));
            }
        };
        let key = target.api_key.as_ref().or(match target.provider.as_str() {
            "openai" => self.openai_key.as_ref(),
            "dashscope" => self.dashscope_key.as_ref(),
            _ => None,
        });
        if key.is_none() && target.custom_host.is_none() {
            return Err(UpstreamError::Failed(format!(
                "no platform key configured for provider {:?}",
                target.provider
            )));
        }
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        let payload = serde_json::to_vec(&req).map_err(|e| UpstreamError::Failed(e.to_string()))?;
        let timeout = target
            .request_timeout
            .map(Duration::from_millis)
            .unwrap_or(self.default_timeout);
        let mut call = self
            .client
            .post(&url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .body(payload);
        if let Some(key) = key {
            call = call.bearer_auth(key.expose());
        }
        let response = call.send().await.map_err(transport_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        let parsed: Value = serde_json::from_slice(&bytes)
            .map_err(|_| UpstreamError::Failed("upstream answered with invalid JSON".into()))?;
        let (usage, usage_source) = match reported_usage(&parsed) {
            Some(u) => (u, "upstream"),
            None => (
                Usage {
                    input_tokens: tokens::prompt(req.get("messages").unwrap_or(&Value::Null)),
                    output_tokens: answer_tokens(&parsed),
                },
                "estimated",
            ),
        };
        Ok(UpstreamReply {
            provider: target.provider.clone(),
            model,
            body: bytes,
            usage,
            usage_source,
        })
    }
}

fn pick(plan: &Plan) -> &Target {
    let targets = &plan.targets;
    if targets.len() == 1 {
        return &targets[0];
    }
    let total: f64 = targets.iter().map(|t| t.weight).sum();
    let mut x = fastrand::f64() * total;
    for t in targets {
        if x < t.weight {
            return t;
        }
        x -= t.weight;
    }
    &targets[targets.len() - 1]
}

fn transport_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Failed("could not connect to the upstream".into())
    } else {
        UpstreamError::Failed("the upstream connection failed".into())
    }
}

fn status_error(status: StatusCode, body: &[u8]) -> UpstreamError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(|s| s.chars().take(500).collect::<String>())
        })
        .unwrap_or_else(|| format!("upstream answered {status}"));
    match status.as_u16() {
        401 | 403 => UpstreamError::Failed(format!("upstream refused the platform key ({status})")),
        408 | 429 => UpstreamError::Failed(format!("upstream busy ({status}): {message}")),
        400..=499 => UpstreamError::Client { status, message },
        _ => UpstreamError::Failed(format!("upstream error ({status}): {message}")),
    }
}

fn reported_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    let get = |k: &str| {
        u.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Some(Usage {
        input_tokens: get("prompt_tokens")?,
        output_tokens: get("completion_tokens")?,
    })
}

fn answer_tokens(v: &Value) -> u32 {
    v.get("choices")
        .and_then(Value::as_array)
        .map(|choices| {
            choices
                .iter()
                .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
                .map(tokens::count)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_errors_separate_client_mistakes_from_upstream_trouble() {
        let body = br#"{"error":{"message":"bad temperature"}}"#;
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST, body),
            UpstreamError::Client { message, .. } if message == "bad temperature"
        ));
        assert!(matches!(
            status_error(StatusCode::UNAUTHORIZED, body),
            UpstreamError::Failed(_)
        ));
        assert!(matches!(
            status_error(StatusCode::TOO_MANY_REQUESTS, b""),
            UpstreamError::Failed(_)
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_GATEWAY, b"<html>"),
            UpstreamError::Failed(_)
        ));
    }

    #[test]
    fn usage_is_read_when_reported() {
        let v = json!({"usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        assert_eq!(
            reported_usage(&v),
            Some(Usage {
                input_tokens: 7,
                output_tokens: 3
            })
        );
        assert_eq!(reported_usage(&json!({})), None);
        let answer = json!({"choices": [{"message": {"content": "one two"}}]});
        assert_eq!(answer_tokens(&answer), 2);
    }

    #[test]
    fn loadbalance_respects_zero_weights() {
        let plan = Plan::from_json(&json!({"strategy": {"mode": "loadbalance"}, "targets": [
            {"provider": "mock", "weight": 0}, {"provider": "openai", "weight": 2}]}))
        .expect("plan");
        for _ in 0..50 {
            assert_eq!(pick(&plan).provider, "openai");
        }
    }
}
