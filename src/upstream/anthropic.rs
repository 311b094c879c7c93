//! Anthropic Messages <-> OpenAI chat completions, both ways, streaming included.
//!
//! Requests: system messages become `system`, `stop` becomes `stop_sequences`,
//! `max_tokens` (required by Anthropic) defaults to the gateway's default, temperature is
//! clamped to Anthropic's 0..1. Image parts become image blocks (data URLs as base64, other
//! URLs as url sources); tool definitions, `tool_choice`, an assistant's `tool_calls` and
//! `tool` messages become tools, `tool_use` and `tool_result` blocks (adjacent turns of one
//! role merged, as Anthropic requires them to alternate). Answers and stream events come
//! back as OpenAI `chat.completion` / `chat.completion.chunk` objects (tool calls
//! included) with OpenAI usage.

use serde_json::{Map, Value, json};

use crate::billing::Usage;

pub const VERSION: &str = "2023-06-01";

fn text_of(content: &Value) -> Result<String, String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect()),
        Value::Null => Ok(String::new()),
        _ => Err("message content must be a string or content parts".into()),
    }
}

/// A user's OpenAI content as Anthropic blocks (text and images).
fn blocks_of(content: &Value) -> Result<Value, String> {
    let Value::Array(parts) = content else {
        return text_of(content).map(Value::String);
    };
    let mut blocks = Vec::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => blocks.push(json!({"type": "text", "text": p.get("text")})),
            Some("image_url") => {
                let url = p
                    .pointer("/image_url/url")
                    .or_else(|| p.get("image_url"))
                    .and_then(Value::as_str)
                    .ok_or("an image_url part needs a url")?;
                blocks.push(image_block(url)?);
            }
            other => {
                return Err(format!(
                    "content parts of type {:?} are not supported on Anthropic targets",
                    other.unwrap_or("unknown")
                ));
            }
        }
    }
    Ok(Value::Array(blocks))
}

fn image_block(url: &str) -> Result<Value, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(";base64,")
            .ok_or("an image data URL must be base64")?;
        return Ok(json!({"type": "image", "source": {"type": "base64",
            "media_type": media_type, "data": data}}));
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// An assistant turn: its text, then a `tool_use` block per tool call.
fn assistant_blocks(m: &Value) -> Result<Value, String> {
    let text = text_of(m.get("content").unwrap_or(&Value::Null))?;
    let Some(calls) = m.get("tool_calls").and_then(Value::as_array) else {
        return Ok(Value::String(text));
    };
    let mut blocks = Vec::new();
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for c in calls {
        let f = c.get("function").unwrap_or(&Value::Null);
        let input = f
            .get("arguments")
            .and_then(Value::as_str)
            .map_or(Ok(json!({})), serde_json::from_str::<Value>)
            .map_err(|_| "tool call arguments must be JSON".to_owned())?;
        blocks.push(
            json!({"type": "tool_use", "id": c.get("id"), "name": f.get("name"),
            "input": input}),
        );
    }
    Ok(Value::Array(blocks))
}

/// Appends a turn, merged into the previous one when it has the same role.
fn push_turn(messages: &mut Vec<Value>, role: &str, content: Value) {
    let as_blocks = |c: Value| match c {
        Value::Array(blocks) => blocks,
        Value::String(t) => vec![json!({"type": "text", "text": t})],
        other => vec![other],
    };
    if let Some(last) = messages.last_mut()
        && last["role"] == role
    {
        let mut blocks = as_blocks(last["content"].take());
        blocks.extend(as_blocks(content));
        last["content"] = Value::Array(blocks);
        return;
    }
    messages.push(json!({"role": role, "content": content}));
}

fn tools(body: &Map<String, Value>) -> Option<Value> {
    let from_tools = body.get("tools").and_then(Value::as_array).map(|list| {
        list.iter()
            .map(|t| t.get("function").cloned().unwrap_or(Value::Null))
            .collect::<Vec<_>>()
    });
    let functions =
        from_tools.or_else(|| body.get("functions").and_then(Value::as_array).cloned())?;
    Some(Value::Array(
        functions
            .iter()
            .map(|f| {
                json!({"name": f.get("name"), "description": f.get("description").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"}))})
            })
            .collect(),
    ))
}

fn tool_choice(choice: &Value) -> Result<Value, String> {
    Ok(match choice {
        Value::String(c) if c == "auto" => json!({"type": "auto"}),
        Value::String(c) if c == "required" => json!({"type": "any"}),
        Value::String(c) if c == "none" => json!({"type": "none"}),
        Value::Object(_) => json!({"type": "tool", "name": choice.pointer("/function/name")}),
        _ => return Err("tool_choice must be auto, required, none or a function".into()),
    })
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
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content)?),
            "user" => push_turn(&mut messages, "user", blocks_of(content)?),
            "assistant" => push_turn(&mut messages, "assistant", assistant_blocks(m)?),
            "tool" => {
                let result = json!({"type": "tool_result", "tool_use_id": m.get("tool_call_id"),
                    "content": text_of(content)?});
                push_turn(&mut messages, "user", json!([result]));
            }
            other => {
                return Err(format!(
                    "messages with role {other:?} are not supported on Anthropic targets"
                ));
            }
        }
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
    if let Some(tools) = tools(body) {
        out["tools"] = tools;
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        out["tool_choice"] = tool_choice(choice)?;
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

/// The usage in an Anthropic `usage` object: cache reads and writes are input too (told
/// apart, for their own rates).
pub(super) fn usage_of(u: &Value) -> Option<Usage> {
    let n = |k: &str| {
        u.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    let plain = u32::try_from(u.get("input_tokens").and_then(Value::as_u64)?).ok()?;
    let (read, written) = (
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
    );
    Some(Usage {
        cached_input_tokens: read,
        cache_write_tokens: written,
        ..Usage::new(
            plain.saturating_add(read).saturating_add(written),
            n("output_tokens"),
        )
    })
}

fn openai_usage(u: Usage) -> Value {
    let mut out = json!({"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
        "total_tokens": u.total()});
    if u.cached_input_tokens > 0 {
        out["prompt_tokens_details"] = json!({"cached_tokens": u.cached_input_tokens});
    }
    out
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
    let calls: Vec<Value> = v
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            json!({"id": b.get("id"), "type": "function", "function": {"name": b.get("name"),
                "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string)}})
        })
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
    if !calls.is_empty() {
        out["choices"][0]["message"]["tool_calls"] = Value::Array(calls);
    }
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
    /// The input as `message_start` reported it (cache reads and writes told apart).
    input: Option<Usage>,
    output: u64,
    /// Tool calls started so far (their OpenAI index), by Anthropic block index.
    tools: Vec<(u64, usize)>,
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
            tools: Vec::new(),
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
            output_tokens: u32::try_from(self.output).unwrap_or(u32::MAX),
            ..i
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
                    self.input = usage_of(u);
                    self.output = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
                }
                Translated::Chunks(vec![
                    self.chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                ])
            }
            Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
                let block = &v["content_block"];
                let index = self.tools.len();
                self.tools.push((v["index"].as_u64().unwrap_or(0), index));
                let call = json!({"index": index, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}});
                Translated::Chunks(vec![self.chunk(json!({"tool_calls": [call]}), Value::Null)])
            }
            Some("content_block_delta") => {
                let delta = &v["delta"];
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    return Translated::Chunks(vec![
                        self.chunk(json!({"content": text}), Value::Null),
                    ]);
                }
                let block = v["index"].as_u64().unwrap_or(0);
                match (
                    delta.get("partial_json").and_then(Value::as_str),
                    self.tools.iter().find(|(b, _)| *b == block),
                ) {
                    (Some(json), Some((_, index))) => {
                        let call = json!({"index": index, "function": {"arguments": json}});
                        Translated::Chunks(vec![
                            self.chunk(json!({"tool_calls": [call]}), Value::Null),
                        ])
                    }
                    _ => Translated::Chunks(vec![]),
                }
            }
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
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "hello"}])
        );
        assert_eq!(
            (r["stream"].as_bool(), r["metadata"]["user_id"].as_str()),
            (Some(true), Some("u1"))
        );
        let audio = obj(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        );
        assert!(request(&audio, 1, false).is_err());
    }

    #[test]
    fn tools_and_images_are_translated() {
        let body = obj(json!({"model": "m", "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "weather",
                "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "here"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                    {"type": "image_url", "image_url": {"url": "https://x.io/a.jpg"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                {"role": "user", "content": "and tomorrow?"}]}));
        let r = request(&body, 64, false).expect("translated");
        let m = &r["messages"];
        assert_eq!(
            m[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "QUJD"})
        );
        assert_eq!(m[0]["content"][2]["source"]["url"], "https://x.io/a.jpg");
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Oslo"}})
        );
        assert_eq!(
            m[2]["content"][0]["type"], "tool_result",
            "the result and the next user turn merge"
        );
        assert_eq!(
            m[2]["content"][1],
            json!({"type": "text", "text": "and tomorrow?"})
        );
        assert_eq!(r["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(r["tool_choice"], json!({"type": "any"}));

        let (o, _) = response(
            &json!({"content": [{"type": "tool_use", "id": "t9", "name": "weather",
            "input": {"city": "Bergen"}}], "stop_reason": "tool_use",
            "usage": {"input_tokens": 1, "output_tokens": 1}}),
        );
        let call = &o["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(
            (&call["id"], &call["function"]["arguments"]),
            (&json!("t9"), &json!("{\"city\":\"Bergen\"}"))
        );
        assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");

        let mut t = StreamTranslator::default();
        let mut chunks = vec![];
        for e in [
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "weather"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ":\"Oslo\"}"}}),
        ] {
            if let Translated::Chunks(c) = t.event(&e.to_string()) {
                chunks.extend(c);
            }
        }
        let args: String = chunks
            .iter()
            .filter_map(|c| serde_json::from_str::<Value>(c).ok())
            .filter_map(|c| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(args, "{\"city\":\"Oslo\"}");
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
                cached_input_tokens: 2,
                ..Usage::new(12, 4)
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
        assert_eq!(t.usage(), Some(Usage::new(9, 5)));
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
