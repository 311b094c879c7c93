//! Upstreams: the built-in router that executes a Portkey-format [`Plan`]
//! (`UPSTREAM_MODE=direct`), or a hand-off to a Portkey gateway (`UPSTREAM_MODE=portkey`).
//!
//! - [`providers`]: OpenAI-compatible (OpenAI, DashScope compatible mode, any base URL) and
//!   Anthropic Messages (translated both ways, [`anthropic`]), plus the in-process [`mock`].
//! - [`router`]: `single`; `fallback` moves to the next target when one fails for a reason
//!   that is not the client's (5xx, 429, timeout, connection, open circuit); `loadbalance`
//!   picks by weight among targets whose circuit is not open. Per target: `retry
//!   {attempts, on_status_codes}` with exponential backoff and jitter, `request_timeout`,
//!   `override_params`, `custom_host`, and a circuit breaker actor.
//! - [`send`]: the one HTTP path, used by the router and by [`portkey`].
//! - [`reply`]: answers and errors. A 4xx the client caused goes back to the client and
//!   nothing is billed.
//! - [`stream`], [`sse`]: streams; fallback and retries happen only before the first byte
//!   reaches the client.

pub mod anthropic;
pub mod h1;
pub mod messages;
mod messages_stream;
pub mod mock;
pub mod portkey;
pub mod providers;
pub mod reply;
mod router;
mod send;
pub mod sse;
pub mod stream;

use std::time::Duration;

use serde_json::{Map, Value};

pub use providers::{ANTHROPIC_BASE, DASHSCOPE_BASE, OPENAI_BASE};
pub use reply::{Answer, Endpoint, StreamReply, UpstreamError, UpstreamReply, Wire};

use crate::actors::Live;
use crate::actors::breaker::{BreakerDirectory, UpstreamsMsg};
use crate::config::{Config, UpstreamMode};
use crate::plan::Plan;
use crate::secret::Secret;
use crate::trace::{Kind, Span, SpanContext};

/// How long connecting to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle upstream connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One call as the upstreams see it.
pub struct Outbound<'a> {
    pub endpoint: Endpoint,
    /// The request (each target sets its own `model` and `override_params`).
    pub body: &'a Map<String, Value>,
    /// The public model asked for.
    pub model: &'a str,
    /// Sent upstream as `x-request-id`.
    pub request_id: &'a str,
    pub stream: bool,
    /// The client's `anthropic-version` and `anthropic-beta`, for Anthropic targets.
    pub anthropic: &'a AnthropicHeaders,
    /// The call's trace: each attempt is a span under it.
    pub trace: Option<SpanContext>,
}

/// What an Anthropic client asked for in its headers: passed on to Anthropic targets
/// (unset: the gateway's version, no beta).
#[derive(Debug, Clone, Default)]
pub struct AnthropicHeaders {
    pub version: Option<String>,
    pub beta: Option<String>,
}

/// Everything needed to call upstreams: one pooled HTTP client, the platform keys, the
/// circuit breakers.
pub struct Upstreams {
    /// For providers: public addresses only unless private upstreams are allowed.
    providers: send::Client,
    /// For the operator's own Portkey gateway (`PORTKEY_GATEWAY_URL`), often on a private
    /// network.
    portkey: send::Client,
    allow_private: bool,
    openai_key: Option<Secret>,
    dashscope_key: Option<Secret>,
    anthropic_key: Option<Secret>,
    default_timeout: Duration,
    default_max_tokens: u32,
    pub breakers: BreakerDirectory,
    supervisor: Live<UpstreamsMsg>,
    pub mode: UpstreamMode,
    portkey_url: String,
    mock_pace: Duration,
}

impl Upstreams {
    pub fn new(
        config: &Config,
        breakers: BreakerDirectory,
        supervisor: Live<UpstreamsMsg>,
    ) -> Result<Self, String> {
        let key = |k: &Option<Secret>| k.clone().filter(|k| !k.is_empty());
        Ok(Self {
            providers: send::Client::new(config.allow_private_upstreams)?,
            portkey: send::Client::new(true)?,
            allow_private: config.allow_private_upstreams,
            openai_key: key(&config.openai_api_key),
            dashscope_key: key(&config.dashscope_api_key),
            anthropic_key: key(&config.anthropic_api_key),
            default_timeout: Duration::from_millis(config.upstream_timeout_ms),
            default_max_tokens: config.default_max_tokens,
            breakers,
            supervisor,
            mode: config.upstream_mode,
            portkey_url: config.portkey_gateway_url.trim_end_matches('/').to_owned(),
            mock_pace: Duration::from_millis(config.mock_stream_pace_ms),
        })
    }

    /// Executes `plan` for one call.
    pub async fn execute(&self, plan: &Plan, out: &Outbound<'_>) -> Result<Answer, UpstreamError> {
        if self.mode == UpstreamMode::Direct {
            return self.direct(plan, out).await;
        }
        let mut span = Span::child(out.trace, "upstream.portkey", Kind::Client);
        span.str("neuropia.request_id", out.request_id);
        span.str("gen_ai.request.model", out.model);
        let started = std::time::Instant::now();
        let result = portkey::execute(self, plan, out, span.context()).await;
        let outcome = result.as_ref().err().map_or("ok", UpstreamError::kind);
        if result.is_err() {
            span.error(outcome);
        }
        crate::metrics::upstream("portkey", started.elapsed(), outcome);
        result
    }
}
