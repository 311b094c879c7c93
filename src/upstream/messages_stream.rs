//! Streamed Anthropic Messages for the client: an Anthropic target's events pass through by
//! name (their usage noted); an OpenAI-format target's chunks become Anthropic's event
//! sequence as they arrive (`message_start`, a `content_block_*` run per text or tool call,
//! `message_delta` with the stop reason and usage, `message_stop`).

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Value, json};

use super::Wire;
use super::anthropic::{StreamTranslator, Translated};
use super::sse::Event;
use crate::billing::Usage;

/// What one upstream event means for the client.
pub enum Step {
    /// Events to send now.
    Send(Vec<Bytes>),
    /// Events to send now, then the final `message_stop` (held under strict durability).
    Last(Vec<Bytes>, Bytes),
    /// The upstream reported an error.
    Error(String),
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Anthropic's error event.
pub fn error_event(message: &str) -> Bytes {
    event(
        "error",
        &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
    )
}

/// The block being written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Tool,
}

#[derive(Default)]
pub struct MessagesStream {
    /// Anthropic targets: the usage and end of their own events.
    anthropic: StreamTranslator,
    started: bool,
    model: String,
    open: Option<Block>,
    next_index: usize,
    /// OpenAI tool-call index -> its block's index.
    tools: HashMap<u64, usize>,
    stop: Option<&'static str>,
    /// OpenAI targets: the usage of the final chunk.
    pub usage: Option<Usage>,
    /// The answer's text, for counting when no usage came.
    pub text: String,
}

impl MessagesStream {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            ..Self::default()
        }
    }

    /// The usage to bill: an Anthropic stream's only once it ended.
    pub fn final_usage(&self, wire: Wire) -> Option<Usage> {
        match wire {
            Wire::Anthropic => self.anthropic.usage().filter(|_| self.anthropic.done),
            Wire::OpenAi => self.usage,
        }
    }

    pub fn event(&mut self, wire: Wire, e: &Event) -> Step {
        match wire {
            Wire::Anthropic => self.native(e),
            Wire::OpenAi => self.translate(e),
        }
    }

    fn native(&mut self, e: &Event) -> Step {
        let bytes = Bytes::from(match &e.event {
            Some(name) => format!("event: {name}\ndata: {}\n\n", e.data),
            None => format!("data: {}\n\n", e.data),
        });
        match self.anthropic.event(&e.data) {
            Translated::Error(m) => Step::Error(m),
            Translated::Chunks(chunks) => {
                for c in chunks {
                    if let Ok(v) = serde_json::from_str::<Value>(&c)
                        && let Some(t) = v
                            .pointer("/choices/0/delta/content")
                            .and_then(Value::as_str)
                    {
                        self.text.push_str(t);
                    }
                }
                if self.anthropic.done {
                    Step::Last(vec![], bytes)
                } else {
                    Step::Send(vec![bytes])
                }
            }
        }
    }

    fn translate(&mut self, e: &Event) -> Step {
        if e.data.trim() == "[DONE]" {
            let (rest, last) = self.finish();
            return Step::Last(rest, last);
        }
        let v: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let m = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            return Step::Error(m.to_owned());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = super::reply::openai_usage(u, super::Endpoint::Chat);
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(event(
                "message_start",
                &json!({"type": "message_start", "message": {"id": "msg_gateway",
                    "type": "message", "role": "assistant", "model": self.model, "content": [],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ));
        }
        let choice = v.pointer("/choices/0").unwrap_or(&Value::Null);
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text.push_str(text);
            self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            out.push(self.delta(json!({"type": "text_delta", "text": text})));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if !self.tools.contains_key(&i) {
                let block = json!({"type": "tool_use", "id": call.get("id"),
                    "name": call.pointer("/function/name"), "input": {}});
                self.close(&mut out);
                self.open_block(Block::Tool, block, &mut out);
                self.tools.insert(i, self.next_index - 1);
            }
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                self.text.push_str(args);
                out.push(self.delta(json!({"type": "input_json_delta", "partial_json": args})));
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(match reason {
                "length" => "max_tokens",
                "tool_calls" | "function_call" => "tool_use",
                _ => "end_turn",
            });
        }
        Step::Send(out)
    }

    fn delta(&self, delta: Value) -> Bytes {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}),
        )
    }

    /// Opens a block of `kind` unless one is open already (a text block goes on).
    fn open_block(&mut self, kind: Block, start: Value, out: &mut Vec<Bytes>) {
        if self.open == Some(kind) && kind == Block::Text {
            return;
        }
        self.close(out);
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_index, "content_block": start}),
        ));
        self.open = Some(kind);
        self.next_index += 1;
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if self.open.take().is_some() {
            out.push(event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next_index - 1}),
            ));
        }
    }

    /// The open block's end and `message_delta`; then `message_stop`.
    fn finish(&mut self) -> (Vec<Bytes>, Bytes) {
        let mut out = Vec::new();
        self.close(&mut out);
        let u = self.usage.unwrap_or_default();
        out.push(event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}}),
        ));
        (out, event("message_stop", &json!({"type": "message_stop"})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> Event {
        Event {
            event: None,
            data: v.to_string(),
        }
    }

    fn names(list: &[Bytes]) -> Vec<String> {
        list.iter()
            .filter_map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("event: "))
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn openai_chunks_become_anthropic_events() {
        let mut s = MessagesStream::new("claude-x");
        let mut sent = Vec::new();
        for chunk in [
            json!({"choices": [{"delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"choices": [{"delta": {"content": "lo"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1",
                "function": {"name": "weather", "arguments": "{\"ci"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": "ty\":\"Oslo\"}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
        ] {
            match s.event(Wire::OpenAi, &data(chunk)) {
                Step::Send(list) => sent.extend(list),
                _ => panic!("no end yet"),
            }
        }
        let Step::Last(rest, last) = s.event(
            Wire::OpenAi,
            &Event {
                event: None,
                data: "[DONE]".into(),
            },
        ) else {
            panic!("the end");
        };
        sent.extend(rest);
        assert_eq!(
            names(&sent),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta"
            ]
        );
        let delta = String::from_utf8_lossy(&sent[9]).to_string();
        assert!(
            delta.contains("\"stop_reason\":\"tool_use\"") && delta.contains("\"output_tokens\":4"),
            "{delta}"
        );
        assert!(String::from_utf8_lossy(&last).starts_with("event: message_stop"));
        assert_eq!(s.final_usage(Wire::OpenAi), Some(Usage::new(9, 4)));
    }
}
