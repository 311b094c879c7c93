//! The built-in router (`UPSTREAM_MODE=direct`): a plan's strategy over its targets, each
//! behind its circuit breaker, with retries and backoff.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{
    Answer, Endpoint, Outbound, StreamReply, UpstreamError, UpstreamReply, Upstreams, Wire, mock,
    stream,
};
use crate::actors::breaker::{Breaker, Permit, UpstreamsMsg};
use crate::billing::Usage;
use crate::plan::{self, Mode, Plan, Target};
use crate::tokens;
use crate::trace::{Kind, Span};

/// How the built-in mock answers one endpoint.
type MockAnswer = fn(&Map<String, Value>) -> Result<(Value, Usage), String>;

impl Upstreams {
    /// Runs `plan` with the built-in router.
    pub(super) async fn direct(
        &self,
        plan: &Plan,
        out: &Outbound<'_>,
    ) -> Result<Answer, UpstreamError> {
        match plan.strategy.mode {
            Mode::Single => self.target(plan, &plan.targets[0], out).await,
            Mode::Loadbalance => {
                let open: Vec<bool> = plan
                    .targets
                    .iter()
                    .map(|t| {
                        self.resolve(t, out).is_ok_and(|r| {
                            self.breakers
                                .get(r.breaker_id())
                                .is_some_and(|b| b.is_open())
                        })
                    })
                    .collect();
                let target = pick(plan, |i, _| !open[i]);
                self.target(plan, target, out).await
            }
            Mode::Fallback => {
                let mut last = UpstreamError::failed("no target");
                for target in &plan.targets {
                    match self.target(plan, target, out).await {
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

    /// One target: breaker, attempts and retries.
    async fn target(
        &self,
        plan: &Plan,
        target: &Target,
        out: &Outbound<'_>,
    ) -> Result<Answer, UpstreamError> {
        let mut req = out.body.clone();
        for (k, v) in &target.override_params {
            req.insert(k.clone(), v.clone());
        }
        let model = target.model(out.model).to_owned();
        req.insert("model".into(), Value::String(model.clone()));

        if target.provider == "mock" && target.custom_host.is_none() {
            let mut span = attempt_span(out, &target.provider, &model, 1);
            let answer = self.mock(&req, model, out).await;
            if let Err(e) = &answer {
                span.error(e.kind());
            }
            return answer;
        }
        let resolved = self.resolve(target, out)?;
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
            let mut span = attempt_span(out, &target.provider, &model, attempt + 1);
            let started = std::time::Instant::now();
            let result = self
                .attempt(&resolved, &req, out, timeout, span.context())
                .await;
            if let Err(e) = &result {
                span.error(e.kind());
            }
            drop(span);
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
        out: &Outbound<'_>,
    ) -> Result<Answer, UpstreamError> {
        let answer: MockAnswer = match (out.endpoint, out.stream) {
            (Endpoint::Chat, _) => |r| Ok(mock::complete(r)),
            (Endpoint::Embeddings, _) => |r| Ok(mock::embed(r)),
            // A streamed Messages answer is made as chat chunks, which the pump translates.
            (Endpoint::Messages, true) => |r| Ok(mock::complete(&super::messages::to_chat(r)?)),
            (Endpoint::Messages, false) => mock::message,
            (Endpoint::Responses, _) => mock::respond,
        };
        let answered = if mock::prompt_bytes(req) > tokens::INLINE_BYTES {
            // A large prompt is counted off the async workers.
            let owned = req.clone();
            tokens::off_thread(move || answer(&owned))
                .await
                .ok_or_else(|| UpstreamError::failed("the mock provider failed"))?
        } else {
            answer(req)
        };
        let (answer, usage) = answered.map_err(|message| UpstreamError::Client {
            status: axum::http::StatusCode::BAD_REQUEST,
            message,
        })?;
        if out.stream {
            return Ok(Answer::Stream(StreamReply {
                provider: "mock".into(),
                model,
                wire: Wire::OpenAi,
                endpoint: out.endpoint,
                body: match out.endpoint {
                    Endpoint::Responses => stream::mock_events(&answer, self.mock_pace),
                    _ => stream::mock_chunks(&answer, usage, self.mock_pace),
                },
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
}

/// An attempt's span: which target, which try.
fn attempt_span(out: &Outbound<'_>, provider: &str, model: &str, attempt: u32) -> Span {
    let mut span = Span::child(out.trace, "upstream.attempt", Kind::Client);
    span.str("neuropia.request_id", out.request_id);
    span.str("gen_ai.system", provider);
    span.str("gen_ai.request.model", model);
    span.int("neuropia.attempt", i64::from(attempt));
    span
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
