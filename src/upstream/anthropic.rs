//! Anthropic Messages <-> OpenAI chat completions, both ways, streaming included.
//!
//! Requests: system messages become `system`, `stop` becomes `stop_sequences`,
//! `max_tokens` (required by Anthropic) defaults to the gateway's default, temperature is
//! clamped to Anthropic's 0..1. Text content only: tool calls and images are refused with
//! a 400 rather than silently dropped. Answers and stream events come back as OpenAI
//! `chat.completion` / `chat.completion.chunk` objects with OpenAI usage.

use serde_json::{Map, Value, json};

use crate::billing::Usage;

pub const VERSION: &str = "2023-06-01";

fn text_of(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    other => {
                        return Err(format!(
                            "content parts of type {:?} are not supported on Anthropic targets",
                            other.unwrap_or("unknown")
                        ));
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err("message content must be a string or text parts".into()),
    }
}

/// The Messages request for an OpenAI chat request (already carrying the target's model
/// and override_params).
pub fn request(
    body: &Map<String, Value>,
    default_max_tokens: u32,
    stream: bool,
) -> Result<Value, String> {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let text = text_of(m.get("content").unwrap_or(&Value::Null))?;
        match role {
            "system" | "developer" => system.push(text),
            "user" | "assistant" => messages.push(json!({"role": role, "content": text})),
            other => {
                return Err(format!(
                    "messages with role {other:?} are not supported on Anthropic targets"
                ));
            }
        }
    }
    if body.get("tools").is_some() || body.get("functions").is_some() {
        return Err("tools are not supported on Anthropic targets".into());
    }
    let max_tokens = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(default_max_tokens));
    let mut out = json!({
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "messages": messages,
        "max_tokens": max_tokens,
    });
    if !system.is_empty() {
        out["system"] = Value::String(system.join("\n\n"));
    }
    if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
        out["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if let Some(p) = body.get("top_p") {
        out["top_p"] = p.clone();
    }
    match body.get("stop") {
        Some(Value::String(s)) => out["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => out["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out["metadata"] = json!({"user_id": user});
    }
    if stream {
        out["stream"] = Value::Bool(true);
    }
    Ok(out)
}

fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        Some("end_turn") | Some("stop_sequence") => json!("stop"),
        Some("max_tokens") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some(_) => json!("stop"),
        None => Value::Null,
    }
}

fn usage_of(u: &Value) -> Option<Usage> {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let input = u.get("input_tokens").and_then(Value::as_u64)?
        + n("cache_creation_input_tokens")
        + n("cache_read_input_tokens");
    Some(Usage {
        input_tokens: u32::try_from(input).unwrap_or(u32::MAX),
        output_tokens: u32::try_from(n("output_tokens")).unwrap_or(u32::MAX),
    })
}

fn openai_usage(u: Usage) -> Value {
    json!({"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
        "total_tokens": u.total()})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The OpenAI answer for a Messages response, and its usage.
pub fn response(v: &Value) -> (Value, Option<Usage>) {
    let text: String = v
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let usage = v.get("usage").and_then(usage_of);
    let mut out = json!({
        "id": format!("chatcmpl-{}", v.get("id").and_then(Value::as_str).unwrap_or("anthropic")),
        "object": "chat.completion",
        "created": now(),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason(v.get("stop_reason").and_then(Value::as_str)),
        }],
    });
    if let Some(u) = usage {
        out["usage"] = openai_usage(u);
    }
    (out, usage)
}

/// Turns Anthropic stream events into OpenAI chunks.
pub struct StreamTranslator {
    id: String,
    model: Value,
    created: i64,
    input: Option<u64>,
    output: u64,
    pub done: bool,
}

/// What one Anthropic event means for the client.
pub enum Translated {
    /// OpenAI chunks (JSON) to send.
    Chunks(Vec<String>),
    /// The upstream reported an error mid-stream.
    Error(String),
}

impl Default for StreamTranslator {
    fn default() -> Self {
        Self {
            id: "chatcmpl-anthropic".into(),
            model: Value::Null,
            created: now(),
            input: None,
            output: 0,
            done: false,
        }
    }
}

impl StreamTranslator {
    fn chunk(&self, delta: Value, finish: Value) -> String {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    }

    /// Usage so far (complete once `message_delta` arrived).
    pub fn usage(&self) -> Option<Usage> {
        self.input.map(|i| Usage {
            input_tokens: u32::try_from(i).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(self.output).unwrap_or(u32::MAX),
        })
    }

    /// The final usage-only chunk, for clients that asked for `include_usage`.
    pub fn usage_chunk(&self) -> Option<String> {
        let u = self.usage()?;
        Some(
            json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": openai_usage(u)})
            .to_string(),
        )
    }

    pub fn event(&mut self, data: &str) -> Translated {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return Translated::Chunks(vec![]);
        };
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &v["message"];
                if let Some(id) = m.get("id").and_then(Value::as_str) {
                    self.id = format!("chatcmpl-{id}");
                }
                self.model = m.get("model").cloned().unwrap_or(Value::Null);
                if let Some(u) = m.get("usage") {
                    self.input = usage_of(u).map(|u| u64::from(u.input_tokens));
                    self.output = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
                }
                Translated::Chunks(vec![
                    self.chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                ])
            }
            Some("content_block_delta") => match v["delta"].get("text").and_then(Value::as_str) {
                Some(text) => {
                    Translated::Chunks(vec![self.chunk(json!({"content": text}), Value::Null)])
                }
                None => Translated::Chunks(vec![]),
            },
            Some("message_delta") => {
                if let Some(out) = v["usage"].get("output_tokens").and_then(Value::as_u64) {
                    self.output = out;
                }
                let stop = v["delta"].get("stop_reason").and_then(Value::as_str);
                Translated::Chunks(vec![self.chunk(json!({}), finish_reason(stop))])
            }
            Some("message_stop") => {
                self.done = true;
                Translated::Chunks(vec![])
            }
            Some("error") => Translated::Error(
                v["error"]
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the upstream reported an error")
                    .to_owned(),
            ),
            _ => Translated::Chunks(vec![]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn requests_are_translated() {
        let body = obj(
            json!({"model": "claude-x", "temperature": 1.7, "stop": "END", "user": "u1",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                         {"role": "assistant", "content": "hello"}]}),
        );
        let r = request(&body, 512, true).expect("translated");
        assert_eq!(r["system"], "be brief");
        assert_eq!(r["max_tokens"], 512);
        assert_eq!(r["temperature"], 1.0);
        assert_eq!(r["stop_sequences"], json!(["END"]));
        assert_eq!(
            r["messages"],
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        );
        assert_eq!(
            (r["stream"].as_bool(), r["metadata"]["user_id"].as_str()),
            (Some(true), Some("u1"))
        );
        let tools = obj(json!({"model": "m", "messages": [], "tools": []}));
        assert!(request(&tools, 1, false).is_err());
        let image = obj(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        );
        assert!(request(&image, 1, false).is_err());
    }

    #[test]
    fn responses_and_usage_come_back_openai_shaped() {
        let (o, u) = response(
            &json!({"id": "msg_1", "type": "message", "model": "claude-x",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 2}}),
        );
        assert_eq!(o["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(o["choices"][0]["finish_reason"], "length");
        assert_eq!(
            u,
            Some(Usage {
                input_tokens: 12,
                output_tokens: 4
            })
        );
        assert_eq!(o["usage"]["total_tokens"], 16);
    }

    #[test]
    fn stream_events_become_chunks() {
        let mut t = StreamTranslator::default();
        let mut texts = vec![];
        for e in [
            json!({"type": "message_start", "message": {"id": "m1", "model": "claude-x", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
            json!({"type": "message_stop"}),
        ] {
            if let Translated::Chunks(c) = t.event(&e.to_string()) {
                texts.extend(c);
            }
        }
        assert!(t.done);
        assert_eq!(
            t.usage(),
            Some(Usage {
                input_tokens: 9,
                output_tokens: 5
            })
        );
        let joined: String = texts
            .iter()
            .filter_map(|c| serde_json::from_str::<Value>(c).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(joined, "Hello");
        assert!(
            texts
                .last()
                .is_some_and(|c| c.contains("\"finish_reason\":\"stop\""))
        );
        assert!(
            matches!(t.event(r#"{"type": "error", "error": {"message": "overloaded"}}"#), Translated::Error(m) if m == "overloaded")
        );
    }
}
