//! Inbound Anthropic Messages on OpenAI-format targets: a Messages request as an OpenAI
//! chat request, and the chat answer as a Messages response. System prompt, text, images,
//! tool definitions and choice, `tool_use` / `tool_result` blocks, stop reasons and usage
//! are carried both ways. (Anthropic targets get Messages as sent.)

use serde_json::{Map, Value, json};

use crate::billing::Usage;

/// The OpenAI chat request for a Messages request (already carrying the target's model).
pub fn to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            messages.push(json!({"role": "system", "content": text.join("\n\n")}));
        }
        Some(_) => return Err("system must be a string or text blocks".into()),
    }
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(format!("messages with role {role:?} are not supported"));
        }
        message(
            role,
            m.get("content").unwrap_or(&Value::Null),
            &mut messages,
        )?;
    }
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(user.to_owned()));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                }})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = body.get("tool_choice") {
        let openai = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice.get("name")}}),
            _ => return Err("tool_choice must be auto, any, none or tool".into()),
        };
        out.insert("tool_choice".into(), openai);
    }
    Ok(out)
}

/// One Messages turn as OpenAI messages: a user's `tool_result` blocks become `tool`
/// messages, an assistant's `tool_use` blocks its `tool_calls`.
fn message(role: &str, content: &Value, out: &mut Vec<Value>) -> Result<(), String> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err("message content must be a string or content blocks".into()),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text", "text": b.get("text")})),
            Some("image") => parts.push(image(b)?),
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": b.get("id"),
                "type": "function",
                "function": {
                    "name": b.get("name"),
                    "arguments": b.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            Some("tool_result") if role == "user" => {
                let text = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => inner
                        .iter()
                        .filter_map(|i| i.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => String::new(),
                };
                out.push(json!({"role": "tool", "tool_call_id": b.get("tool_use_id"),
                    "content": text}));
            }
            other => {
                return Err(format!(
                    "content blocks of type {:?} are not supported in {role} messages",
                    other.unwrap_or("unknown")
                ));
            }
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let mut m = json!({"role": "assistant", "content": text.join("")});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        out.push(m);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn image(block: &Value) -> Result<Value, String> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            source.get("data").and_then(Value::as_str).unwrap_or("")
        ),
        Some("url") => source
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        _ => return Err("an image needs a base64 or url source".into()),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        Some("length") => json!("max_tokens"),
        Some("tool_calls" | "function_call") => json!("tool_use"),
        Some(_) => json!("end_turn"),
        None => Value::Null,
    }
}

/// The Messages response for an OpenAI chat answer, and the usage it reports.
pub fn from_chat(answer: &Value, model: &str) -> (Value, Option<Usage>) {
    let choice = answer.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        let input = f
            .get("arguments")
            .and_then(Value::as_str)
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .unwrap_or_else(|| json!({}));
        content.push(
            json!({"type": "tool_use", "id": call.get("id"), "name": f.get("name"),
            "input": input}),
        );
    }
    let usage = answer
        .get("usage")
        .and_then(|u| super::reply::openai_usage(u, super::Endpoint::Chat));
    let id = answer
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("gateway");
    let out = json!({
        "id": format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": anthropic_usage(usage.unwrap_or_default()),
    });
    (out, usage)
}

/// A usage as Anthropic reports it: `input_tokens` without the cache reads (and writes).
fn anthropic_usage(u: Usage) -> Value {
    let mut out = json!({
        "input_tokens": u.input_tokens - u.cached_input_tokens.min(u.input_tokens),
        "output_tokens": u.output_tokens,
    });
    if u.cached_input_tokens > 0 {
        out["cache_read_input_tokens"] = json!(u.cached_input_tokens);
    }
    out
}

/// The usage a Messages response reports: cache reads and writes count as input.
pub fn usage(message: &Value) -> Option<Usage> {
    super::anthropic::usage_of(message.get("usage")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_tool_round_trip_is_translated_to_chat() {
        let body = obj(
            json!({"model": "m", "max_tokens": 100, "system": "be brief",
            "stop_sequences": ["END"], "tool_choice": {"type": "any"},
            "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}]}]}),
        );
        let chat = to_chat(&body).expect("translated");
        let m = &chat["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            m[1]["content"][1]["image_url"]["url"],
            "data:image/jpeg;base64,AAA"
        );
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "rain"})
        );
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(
            (&chat["tool_choice"], &chat["stop"]),
            (&json!("required"), &json!(["END"]))
        );
        assert!(
            to_chat(&obj(
                json!({"messages": [{"role": "system", "content": "x"}]})
            ))
            .is_err()
        );
    }

    #[test]
    fn a_chat_answer_comes_back_as_a_message() {
        let answer = json!({"id": "chatcmpl-9", "choices": [{"finish_reason": "tool_calls",
            "message": {"content": "", "tool_calls": [{"id": "t2", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 7}});
        let (m, usage) = from_chat(&answer, "claude-x");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["content"][0]["input"], json!({"city": "Oslo"}));
        assert_eq!(
            (
                m["usage"]["input_tokens"].clone(),
                usage.map(|u| u.output_tokens)
            ),
            (json!(30), Some(7))
        );
    }
}
