//! Anthropic Messages: the [`Operation`] behind `POST /v1/messages`. To an Anthropic target
//! the request goes as sent; to an OpenAI-format target it is translated to chat and the
//! answer back ([`crate::upstream::messages`]), streams included, event by event.

use serde_json::{Map, Value};

use super::{CallError, Operation, OutputLimits};
use crate::tokens;
use crate::upstream::{AnthropicHeaders, Endpoint, messages};

/// A parsed Messages request.
pub struct Messages {
    body: Map<String, Value>,
    model: String,
    max_tokens: u32,
    /// The client asked for a stream.
    streamed: bool,
    /// The request as chat: what its prompt is counted on.
    as_chat: Map<String, Value>,
    prompt_bytes: usize,
    /// The client's `anthropic-version` and `anthropic-beta`.
    headers: AnthropicHeaders,
}

impl Messages {
    /// Checks what the gateway needs (model, messages, `max_tokens`, which Anthropic
    /// requires) and that every block can be carried to any target.
    pub fn parse(mut body: Map<String, Value>) -> Result<Self, CallError> {
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m.clone(),
            Some(_) => return Err(bad("model must be a non-empty string")),
            None => return Err(bad("missing required field: model")),
        };
        match body.get("messages") {
            Some(Value::Array(list)) if !list.is_empty() => {}
            Some(_) => return Err(bad("messages must be a non-empty array")),
            None => return Err(bad("missing required field: messages")),
        }
        let max_tokens = match body.get("max_tokens") {
            Some(v) => v
                .as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad("max_tokens must be a positive integer"))?,
            None => return Err(bad("missing required field: max_tokens")),
        };
        let streamed = match body.remove("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(bad("stream must be a boolean")),
        };
        let as_chat = messages::to_chat(&body).map_err(CallError::BadRequest)?;
        let prompt_bytes = tokens::chat_prompt_bytes(&as_chat);
        Ok(Self {
            body,
            model,
            max_tokens,
            streamed,
            as_chat,
            prompt_bytes,
            headers: AnthropicHeaders::default(),
        })
    }

    /// Passes the client's `anthropic-version` and `anthropic-beta` on to Anthropic targets.
    pub fn with_headers(mut self, headers: AnthropicHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The prompt's tokens as the gateway estimates them (`/v1/messages/count_tokens`).
    pub fn estimate(&self, image_tokens: u32) -> u32 {
        tokens::chat_prompt(&self.as_chat, image_tokens)
    }
}

fn bad(message: &str) -> CallError {
    CallError::BadRequest(message.to_owned())
}

impl Operation for Messages {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Messages
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self) -> bool {
        self.streamed
    }

    fn prompt_bytes(&self) -> usize {
        self.prompt_bytes
    }

    async fn prompt_tokens(&self, image_tokens: u32) -> u32 {
        if self.prompt_bytes <= tokens::INLINE_BYTES {
            return self.estimate(image_tokens);
        }
        tokens::chat_prompt_async(&self.as_chat, image_tokens).await
    }

    fn max_output(&mut self, limits: OutputLimits) -> Result<u32, CallError> {
        if self.max_tokens > limits.cap {
            return Err(CallError::BadRequest(format!(
                "max_tokens must be at most {} for model {:?}",
                limits.cap, self.model
            )));
        }
        Ok(self.max_tokens)
    }

    fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    fn answer_text(&self, answer: &[u8]) -> String {
        let message: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
        message
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|b| {
                b.get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| b.get("input").map(Value::to_string))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wants_stream_usage(&self) -> bool {
        false
    }

    fn anthropic_headers(&self) -> &AnthropicHeaders {
        &self.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Messages, CallError> {
        Messages::parse(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn checks_what_anthropic_requires() {
        let ok = parse(json!({"model": "c", "max_tokens": 10, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}));
        let ok = ok.expect("valid");
        assert!(ok.stream() && !ok.body().contains_key("stream"));
        assert!(ok.estimate(0) > 0);
        for bad in [
            json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "c", "max_tokens": 5, "messages": []}),
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            json!({"model": "c", "max_tokens": 5, "stream": "yes",
                "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "c", "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "video"}]}]}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
