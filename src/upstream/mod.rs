//! Upstreams: the built-in router that executes a Portkey-format [`Plan`]
//! (`UPSTREAM_MODE=direct`), or a hand-off to a Portkey gateway (`UPSTREAM_MODE=portkey`).
//!
//! - Providers: OpenAI-compatible (OpenAI, DashScope compatible mode, any base URL) and
//!   Anthropic Messages (translated both ways), plus the in-process `mock`.
//! - Strategies: `single`; `fallback` moves to the next target when one fails for a reason
//!   that is not the client's (5xx, 429, timeout, connection, open circuit); `loadbalance`
//!   picks by weight among targets whose circuit is not open.
//! - Per target: `retry {attempts, on_status_codes}` with exponential backoff and jitter,
//!   `request_timeout`, `override_params`, `custom_host`, and a circuit breaker actor.
//! - A 4xx the client caused goes back to the client and nothing is billed.
//! - Streams: fallback and retries happen only before the first byte reaches the client.

pub mod address;
pub mod anthropic;
pub mod breaker;
pub mod mock;
pub mod plan;
pub mod portkey;
pub mod sse;
pub mod stream;

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, Value};

use crate::actors::root::Live;
use crate::billing::Usage;
use crate::config::{Config, Secret};
use crate::tokens;
use breaker::{Breaker, BreakerDirectory, Permit, UpstreamsMsg};
use plan::{Mode, Plan, Target};

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

    fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            status: None,
            message: message.into(),
        }
    }

    /// Counts against the target's circuit: it did not work, and not for the client.
    fn is_outage(&self) -> bool {
        match self {
            Self::Failed { status, .. } => status.is_none_or(|s| s >= 500),
            Self::Timeout => true,
            Self::Client { .. } | Self::CircuitOpen(_) => false,
        }
    }
}

/// `UPSTREAM_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamMode {
    /// The built-in router executes the plan.
    Direct,
    /// A Portkey gateway executes the plan (sent in `x-portkey-config`).
    Portkey,
}

pub const OPENAI_BASE: &str = "https://api.openai.com/v1";
pub const DASHSCOPE_BASE: &str = "https://dashscope.aliyuncs.com/compatible-mode/v1";
pub const ANTHROPIC_BASE: &str = "https://api.anthropic.com/v1";

/// A target made concrete: where to send what.
struct Resolved {
    provider: String,
    wire: Wire,
    key: Option<Secret>,
    model: String,
    /// Where chat calls go (`/chat/completions` or Anthropic's `/messages`).
    url: String,
    /// The target's circuit breaker: `provider@base`.
    breaker: String,
}

impl Resolved {
    fn breaker_id(&self) -> &str {
        &self.breaker
    }
}

/// Everything needed to call upstreams: one pooled HTTP client, the platform keys, the
/// circuit breakers.
pub struct Upstreams {
    /// For providers: with [`address::PublicOnly`] unless private upstreams are allowed.
    client: reqwest::Client,
    /// For the operator's own Portkey gateway (`PORTKEY_GATEWAY_URL`), often on a private
    /// network.
    portkey_client: reqwest::Client,
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
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(90))
                // A redirect could lead a call (and its key) anywhere.
                .redirect(reqwest::redirect::Policy::none())
        };
        let mut providers = builder();
        if !config.allow_private_upstreams {
            providers = providers.dns_resolver(std::sync::Arc::new(address::PublicOnly));
        }
        let built = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| format!("building the HTTP client: {e}"))
        };
        let key = |k: &Option<Secret>| k.clone().filter(|k| !k.is_empty());
        Ok(Self {
            client: built(providers)?,
            portkey_client: built(builder())?,
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
    fn platform_key(&self, target: &Target) -> Option<&Secret> {
        (target.custom_host.is_none() || target.use_platform_key)
            .then(|| self.env_key(&target.provider))
            .flatten()
    }

    fn resolve(&self, target: &Target, requested: &str) -> Result<Resolved, UpstreamError> {
        let base = match (&target.custom_host, target.provider.as_str()) {
            (Some(host), _) => {
                if !self.allow_private
                    && let Some(why) = address::refusal(host)
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
            url: match wire {
                Wire::OpenAi => format!("{base}/chat/completions"),
                Wire::Anthropic => format!("{base}/messages"),
            },
            breaker: format!("{}@{base}", target.provider),
            provider: target.provider.clone(),
            wire,
            key,
            model: target.model(requested).to_owned(),
        })
    }

    async fn breaker(&self, id: &str) -> Option<Breaker> {
        if let Some(b) = self.breakers.get(id) {
            return Some(b.clone());
        }
        let id = id.to_owned();
        let supervisor = self.supervisor.get();
        ractor::call_t!(
            supervisor,
            |reply| UpstreamsMsg::Get { target: id, reply },
            2_000
        )
        .ok()
        .flatten()
    }

    /// Executes `plan` for a parsed chat request whose public model is `requested`.
    pub async fn execute(
        &self,
        plan: &Plan,
        body: &Map<String, Value>,
        requested: &str,
        request_id: &str,
        stream: bool,
    ) -> Result<Answer, UpstreamError> {
        if self.mode == UpstreamMode::Portkey {
            let started = std::time::Instant::now();
            let result = portkey::execute(self, plan, body, requested, request_id, stream).await;
            let outcome = result.as_ref().err().map_or("ok", UpstreamError::kind);
            crate::metrics::upstream("portkey", started.elapsed(), outcome);
            return result;
        }
        match plan.strategy.mode {
            Mode::Single => {
                self.target(plan, &plan.targets[0], body, requested, request_id, stream)
                    .await
            }
            Mode::Loadbalance => {
                let open: Vec<bool> = plan
                    .targets
                    .iter()
                    .map(|t| {
                        self.resolve(t, requested).is_ok_and(|r| {
                            self.breakers
                                .get(r.breaker_id())
                                .is_some_and(|b| b.is_open())
                        })
                    })
                    .collect();
                let target = pick(plan, |i, _| !open[i]);
                self.target(plan, target, body, requested, request_id, stream)
                    .await
            }
            Mode::Fallback => {
                let mut last = UpstreamError::failed("no target");
                for target in &plan.targets {
                    match self
                        .target(plan, target, body, requested, request_id, stream)
                        .await
                    {
                        Ok(answer) => return Ok(answer),
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

    /// One target: breaker, attempts and retries.
    async fn target(
        &self,
        plan: &Plan,
        target: &Target,
        body: &Map<String, Value>,
        requested: &str,
        request_id: &str,
        stream: bool,
    ) -> Result<Answer, UpstreamError> {
        let mut req = body.clone();
        for (k, v) in &target.override_params {
            req.insert(k.clone(), v.clone());
        }
        let model = target.model(requested).to_owned();
        req.insert("model".into(), Value::String(model.clone()));

        if target.provider == "mock" && target.custom_host.is_none() {
            return self.mock(&req, model, stream).await;
        }
        let resolved = self.resolve(target, requested)?;
        let timeout = target
            .timeout_ms(plan)
            .map(Duration::from_millis)
            .unwrap_or(self.default_timeout);
        let retry = target.retry(plan);
        let attempts = 1 + retry.map_or(0, |r| r.attempts);
        let breaker = self.breaker(resolved.breaker_id()).await;
        let mut attempt = 0;
        loop {
            let permit = match &breaker {
                Some(b) => b.permit().await,
                None => Permit::Allow,
            };
            if let Permit::Reject(wait) = permit {
                crate::metrics::upstream_rejected(resolved.breaker_id());
                return Err(UpstreamError::CircuitOpen(format!(
                    "{} (retry in {} ms)",
                    resolved.breaker_id(),
                    wait.as_millis()
                )));
            }
            let started = std::time::Instant::now();
            let result = self
                .attempt(&resolved, &req, request_id, stream, timeout)
                .await;
            crate::metrics::upstream(
                resolved.breaker_id(),
                started.elapsed(),
                result.as_ref().err().map_or("ok", UpstreamError::kind),
            );
            if let Some(b) = &breaker {
                b.report(
                    !result.as_ref().err().is_some_and(UpstreamError::is_outage),
                    permit,
                );
            }
            attempt += 1;
            match result {
                Err(e) if attempt < attempts && retryable(&e, retry) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn mock(
        &self,
        req: &Map<String, Value>,
        model: String,
        stream: bool,
    ) -> Result<Answer, UpstreamError> {
        let (answer, usage) = if tokens::chat_prompt_bytes(req) > tokens::INLINE_BYTES {
            // A large prompt is counted off the async workers.
            let owned = req.clone();
            tokens::off_thread(move || mock::complete(&owned))
                .await
                .ok_or_else(|| UpstreamError::failed("the mock provider failed"))?
        } else {
            mock::complete(req)
        };
        if stream {
            return Ok(Answer::Stream(StreamReply {
                provider: "mock".into(),
                model,
                wire: Wire::OpenAi,
                body: stream::mock_chunks(&answer, usage, self.mock_pace),
                idle_timeout: self.default_timeout,
            }));
        }
        Ok(Answer::Whole(UpstreamReply {
            provider: "mock".into(),
            model,
            body: serde_json::to_vec(&answer).unwrap_or_default().into(),
            usage: Some(usage),
        }))
    }

    /// One HTTP call to one target.
    async fn attempt(
        &self,
        r: &Resolved,
        req: &Map<String, Value>,
        request_id: &str,
        stream: bool,
        timeout: Duration,
    ) -> Result<Answer, UpstreamError> {
        let payload = match r.wire {
            Wire::OpenAi if stream => {
                let mut req = req.clone();
                streaming_with_usage(&mut req);
                encode(&req)?
            }
            // The request as built for this target, serialised without another copy.
            Wire::OpenAi => encode(req)?,
            Wire::Anthropic => {
                let payload = anthropic::request(req, self.default_max_tokens, stream).map_err(
                    |message| UpstreamError::Client {
                        status: StatusCode::BAD_REQUEST,
                        message,
                    },
                )?;
                encode(&payload)?
            }
        };
        let mut call = self
            .client
            .post(r.url.as_str())
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .body(payload);
        if let Some(key) = &r.key {
            call = match r.wire {
                Wire::OpenAi => call.bearer_auth(key.expose()),
                Wire::Anthropic => call
                    .header("x-api-key", key.expose())
                    .header("anthropic-version", anthropic::VERSION),
            };
        }
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
        if stream {
            return Ok(Answer::Stream(StreamReply {
                provider: r.provider.clone(),
                model: r.model.clone(),
                wire: r.wire,
                body: response
                    .bytes_stream()
                    .map(|c| c.map_err(|e| e.to_string()))
                    .boxed(),
                idle_timeout: timeout,
            }));
        }
        let bytes = response.bytes().await.map_err(transport_error)?;
        let invalid = |_| UpstreamError::failed("upstream answered with invalid JSON");
        let (body, usage) = match r.wire {
            // Only the usage is read; the rest is checked to be JSON and passed on as is.
            Wire::OpenAi => {
                let usage = reported_usage(&bytes).map_err(invalid)?;
                (bytes, usage)
            }
            Wire::Anthropic => {
                let parsed: Value = serde_json::from_slice(&bytes).map_err(invalid)?;
                let (openai, usage) = anthropic::response(&parsed);
                (
                    serde_json::to_vec(&openai).unwrap_or_default().into(),
                    usage,
                )
            }
        };
        Ok(Answer::Whole(whole(r, body, usage)))
    }
}

/// A whole answer, with the usage its upstream reported, if any.
fn whole(r: &Resolved, body: Bytes, usage: Option<Usage>) -> UpstreamReply {
    UpstreamReply {
        provider: r.provider.clone(),
        model: r.model.clone(),
        body,
        usage,
    }
}

fn retryable(e: &UpstreamError, retry: Option<&plan::Retry>) -> bool {
    let Some(retry) = retry else {
        return false;
    };
    match e {
        UpstreamError::Failed { status: None, .. } | UpstreamError::Timeout => true,
        UpstreamError::Failed {
            status: Some(s), ..
        } => retry.on_status_codes.contains(s),
        UpstreamError::Client { status, .. } => retry.on_status_codes.contains(&status.as_u16()),
        UpstreamError::CircuitOpen(_) => false,
    }
}

/// 100 ms, 200 ms, 400 ms ... (at most 2 s), each +/- 50 % at random.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(2_000);
    let jitter = 0.5 + fastrand::f64();
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// A target by weight among the allowed ones (all of them if none is allowed).
fn pick(plan: &Plan, allowed: impl Fn(usize, &Target) -> bool) -> &Target {
    let targets: Vec<&Target> = plan
        .targets
        .iter()
        .enumerate()
        .filter(|(i, t)| allowed(*i, t))
        .map(|(_, t)| t)
        .collect();
    let pool = if targets.iter().any(|t| t.weight > 0.0) {
        targets
    } else {
        plan.targets.iter().collect()
    };
    let total: f64 = pool.iter().map(|t| t.weight).sum();
    let mut x = fastrand::f64() * total;
    for t in &pool {
        if x < t.weight {
            return t;
        }
        x -= t.weight;
    }
    pool.last().copied().unwrap_or(&plan.targets[0])
}

fn transport_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::failed("could not connect to the upstream")
    } else {
        UpstreamError::failed("the upstream connection failed")
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

/// The part of an OpenAI-shaped answer the gateway reads.
#[derive(serde::Deserialize)]
struct Reported {
    #[serde(default)]
    usage: Option<ReportedUsage>,
}

#[derive(serde::Deserialize)]
struct ReportedUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl Reported {
    fn usage(&self) -> Option<Usage> {
        let u = self.usage.as_ref()?;
        Some(Usage {
            input_tokens: u32::try_from(u.prompt_tokens?).ok()?,
            output_tokens: u32::try_from(u.completion_tokens?).ok()?,
        })
    }
}

/// Asks an OpenAI-shaped upstream to stream, with a final usage chunk.
fn streaming_with_usage(req: &mut Map<String, Value>) {
    req.insert("stream".into(), Value::Bool(true));
    let mut options = req
        .get("stream_options")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    options.insert("include_usage".into(), Value::Bool(true));
    req.insert("stream_options".into(), Value::Object(options));
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, UpstreamError> {
    serde_json::to_vec(v).map_err(|e| UpstreamError::failed(e.to_string()))
}

/// The usage an OpenAI-shaped answer reports, if whole; `Err` if it is not JSON.
fn reported_usage(bytes: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    serde_json::from_slice::<Reported>(bytes).map(|r| r.usage())
}

/// The text of every choice of a whole OpenAI-shaped answer (for estimating its tokens
/// when the upstream reported no usage).
pub fn answer_text(body: &[u8]) -> String {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    answer
        .get("choices")
        .and_then(Value::as_array)
        .map(|choices| {
            choices
                .iter()
                .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
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
        for (status, outage) in [(401, false), (429, false), (502, true), (529, true)] {
            let e = status_error(StatusCode::from_u16(status).expect("status"), b"<html>");
            assert!(matches!(e, UpstreamError::Failed { .. }), "{status}");
            assert_eq!(e.is_outage(), outage, "{status}");
        }
    }

    #[test]
    fn retries_follow_the_status_codes() {
        let retry = plan::Retry {
            attempts: 2,
            on_status_codes: vec![503],
        };
        let failed = |s| UpstreamError::Failed {
            status: Some(s),
            message: String::new(),
        };
        assert!(retryable(&failed(503), Some(&retry)));
        assert!(!retryable(&failed(500), Some(&retry)));
        assert!(retryable(&UpstreamError::Timeout, Some(&retry)));
        assert!(!retryable(&failed(503), None));
        for attempt in 1..8 {
            assert!(backoff(attempt) <= Duration::from_secs(3));
        }
    }

    #[test]
    fn usage_is_read_when_reported() {
        let v = json!({"id": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        assert_eq!(
            reported_usage(v.to_string().as_bytes()).ok().flatten(),
            Some(Usage {
                input_tokens: 7,
                output_tokens: 3
            })
        );
        assert_eq!(reported_usage(b"{}").ok().flatten(), None);
        assert_eq!(
            reported_usage(br#"{"usage": {"prompt_tokens": 7}}"#)
                .ok()
                .flatten(),
            None
        );
        assert!(reported_usage(b"{\"usage\": ").is_err(), "not JSON");
        let answer = json!({"choices": [{"message": {"content": "one two"}},
            {"message": {"content": "three"}}]});
        assert_eq!(answer_text(answer.to_string().as_bytes()), "one two\nthree");
    }

    #[test]
    fn loadbalance_respects_zero_weights_and_open_circuits() {
        let plan = Plan::from_json(&json!({"strategy": {"mode": "loadbalance"}, "targets": [
            {"provider": "mock", "weight": 0}, {"provider": "openai", "weight": 2},
            {"provider": "dashscope", "weight": 1}]}))
        .expect("plan");
        for _ in 0..50 {
            assert_ne!(pick(&plan, |_, _| true).provider, "mock");
            assert_eq!(pick(&plan, |i, _| i != 1).provider, "dashscope");
        }
    }
}
