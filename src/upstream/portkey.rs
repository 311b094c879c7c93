//! `UPSTREAM_MODE=portkey`: the plan goes to a Portkey gateway in `x-portkey-config`, with
//! the platform keys filled in, and Portkey calls the providers. Which target answered
//! comes back in `x-portkey-last-used-option-index` (`config.targets[1]`); the call is billed
//! at that target's rates. Portkey speaks OpenAI's format for every provider, streams too.

use std::time::Duration;

use serde_json::Value;

use super::providers::Resolved;
use super::send::{self, encode, streaming_with_usage};
use super::{Answer, DASHSCOPE_BASE, Endpoint, Outbound, UpstreamError, Upstreams, Wire};
use crate::plan::Plan;
use crate::trace::SpanContext;

/// The target index named by `x-portkey-last-used-option-index` (`config` alone: 0).
pub fn target_index(header: Option<&str>) -> usize {
    header
        .and_then(|h| h.split("targets[").nth(1))
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The config Portkey executes: the plan, with platform keys injected. DashScope goes as
/// an OpenAI-compatible host (its compatible mode).
fn config(up: &Upstreams, plan: &Plan) -> Result<Value, UpstreamError> {
    let mut config =
        serde_json::to_value(plan).map_err(|e| UpstreamError::failed(e.to_string()))?;
    let targets = config
        .get_mut("targets")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| UpstreamError::failed("plan without targets"))?;
    for (t, out) in plan.targets.iter().zip(targets.iter_mut()) {
        if t.provider == "mock" && t.custom_host.is_none() {
            return Err(UpstreamError::failed(
                "the built-in mock provider cannot be reached through Portkey",
            ));
        }
        if t.api_key.is_none() {
            // Portkey requires a key on every target; a keyless custom host gets a dummy.
            let key = up.platform_key(t).map(|k| k.expose()).unwrap_or("unused");
            out["api_key"] = Value::String(key.to_owned());
        }
        if let Some(fields) = out.as_object_mut() {
            fields.remove("use_platform_key");
        }
        if t.provider == "dashscope" {
            out["provider"] = Value::String("openai".into());
            if t.custom_host.is_none() {
                out["custom_host"] = Value::String(DASHSCOPE_BASE.into());
            }
        }
    }
    Ok(config)
}

pub async fn execute(
    up: &Upstreams,
    plan: &Plan,
    out: &Outbound<'_>,
    trace: Option<SpanContext>,
) -> Result<Answer, UpstreamError> {
    let config = config(up, plan)?;
    // Portkey speaks OpenAI's format for every provider: Messages go as chat, translated.
    let mut req = match out.endpoint {
        Endpoint::Messages => {
            super::messages::to_chat(out.body).map_err(|message| UpstreamError::Client {
                status: axum::http::StatusCode::BAD_REQUEST,
                message,
            })?
        }
        _ => out.body.clone(),
    };
    req.insert("model".into(), Value::String(out.model.to_owned()));
    if out.stream {
        streaming_with_usage(&mut req);
    }
    let timeout = plan
        .request_timeout
        .map(Duration::from_millis)
        .unwrap_or(up.default_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let config = config.to_string();
    let traceparent = trace.map(|t| t.traceparent());
    let mut headers = vec![("x-portkey-config", config.as_str())];
    if let Some(t) = &traceparent {
        headers.push(("traceparent", t));
    }
    let response = up
        .portkey
        .post(
            &format!("{}/v1/{}", up.portkey_url, out.endpoint.openai_path()),
            out.request_id,
            &headers,
            encode(&req)?,
            deadline,
        )
        .await?;
    let index = target_index(response.header("x-portkey-last-used-option-index"));
    let target = plan.targets.get(index).unwrap_or(&plan.targets[0]);
    let answered = Resolved {
        provider: target.provider.clone(),
        wire: Wire::OpenAi,
        url: up.portkey_url.clone(),
        breaker: String::new(),
        key: None,
        model: target.model(out.model).to_owned(),
    };
    send::answer(response, &answered, out, (timeout, deadline)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answering_target_is_read_from_portkeys_header() {
        assert_eq!(target_index(Some("config.targets[2]")), 2);
        assert_eq!(target_index(Some("config.targets[1].targets[0]")), 1);
        assert_eq!(target_index(Some("config")), 0);
        assert_eq!(target_index(None), 0);
    }
}
