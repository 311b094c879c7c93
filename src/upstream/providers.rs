//! Providers: where a target's calls go (its base URL or `custom_host`), in which wire
//! format, with which key, and which circuit breaker guards it.

use super::{Endpoint, Outbound, UpstreamError, Upstreams, Wire};
use crate::plan::Target;
use crate::secret::Secret;

pub const OPENAI_BASE: &str = "https://api.openai.com/v1";
pub const DASHSCOPE_BASE: &str = "https://dashscope.aliyuncs.com/compatible-mode/v1";
pub const ANTHROPIC_BASE: &str = "https://api.anthropic.com/v1";

/// A target made concrete: where to send what.
pub(super) struct Resolved {
    pub provider: String,
    pub wire: Wire,
    pub key: Option<Secret>,
    pub model: String,
    /// Where the call goes (`/chat/completions`, `/embeddings`, Anthropic's `/messages`).
    pub url: String,
    /// The target's circuit breaker: `provider@base`.
    pub breaker: String,
}

impl Resolved {
    pub fn breaker_id(&self) -> &str {
        &self.breaker
    }
}

impl Upstreams {
    fn env_key(&self, provider: &str) -> Option<&Secret> {
        match provider {
            "openai" => self.openai_key.as_ref(),
            "dashscope" => self.dashscope_key.as_ref(),
            "anthropic" => self.anthropic_key.as_ref(),
            _ => None,
        }
    }

    /// The platform key a target may be sent: the provider's own, for its own base URL, or
    /// for a `custom_host` only when the target says `use_platform_key`.
    pub(super) fn platform_key(&self, target: &Target) -> Option<&Secret> {
        (target.custom_host.is_none() || target.use_platform_key)
            .then(|| self.env_key(&target.provider))
            .flatten()
    }

    pub(super) fn resolve(
        &self,
        target: &Target,
        out: &Outbound<'_>,
    ) -> Result<Resolved, UpstreamError> {
        let base = match (&target.custom_host, target.provider.as_str()) {
            (Some(host), _) => {
                if !self.allow_private
                    && let Some(why) = crate::address::refusal(host)
                {
                    return Err(UpstreamError::failed(why));
                }
                host.trim_end_matches('/').to_owned()
            }
            (None, "openai") => OPENAI_BASE.into(),
            (None, "dashscope") => DASHSCOPE_BASE.into(),
            (None, "anthropic") => ANTHROPIC_BASE.into(),
            (None, other) => {
                return Err(UpstreamError::failed(format!(
                    "provider {other:?} has no base URL"
                )));
            }
        };
        let key = target
            .api_key
            .clone()
            .or_else(|| self.platform_key(target).cloned());
        if key.is_none() && target.custom_host.is_none() {
            return Err(UpstreamError::failed(format!(
                "no platform key configured for provider {:?}",
                target.provider
            )));
        }
        let wire = if target.provider == "anthropic" {
            Wire::Anthropic
        } else {
            Wire::OpenAi
        };
        Ok(Resolved {
            url: match (wire, out.endpoint) {
                (Wire::OpenAi, endpoint) => format!("{base}/{}", endpoint.openai_path()),
                (Wire::Anthropic, Endpoint::Chat | Endpoint::Messages) => {
                    format!("{base}/messages")
                }
                (Wire::Anthropic, other) => {
                    return Err(UpstreamError::Client {
                        status: axum::http::StatusCode::BAD_REQUEST,
                        message: format!(
                            "model {:?} is served by an Anthropic target, which has no {}",
                            out.model,
                            other.name()
                        ),
                    });
                }
            },
            breaker: format!("{}@{base}", target.provider),
            provider: target.provider.clone(),
            wire,
            key,
            model: target.model(out.model).to_owned(),
        })
    }
}
