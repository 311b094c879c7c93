//! Chat completions (OpenAI's format): the [`Operation`] behind `POST /v1/chat/completions`.

use serde_json::{Map, Value};

use super::{CallError, Operation, OutputLimits};
use crate::tokens;
use crate::upstream::Endpoint;

/// A parsed chat completion request.
pub struct Chat {
    body: Map<String, Value>,
    request: ChatRequest,
    /// The prompt's text size, measured once.
    prompt_bytes: usize,
}

impl Chat {
    /// Checks the fields the gateway itself needs; the rest goes upstream as sent.
    pub fn parse(body: Map<String, Value>) -> Result<Self, CallError> {
        let request = check(&body)?;
        let prompt_bytes = tokens::chat_prompt_bytes(&body);
        Ok(Self {
            body,
            request,
            prompt_bytes,
        })
    }
}

impl Operation for Chat {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Chat
    }

    fn model(&self) -> &str {
        &self.request.model
    }

    fn stream(&self) -> bool {
        self.request.stream
    }

    fn prompt_bytes(&self) -> usize {
        self.prompt_bytes
    }

    async fn prompt_tokens(&self, image_tokens: u32) -> u32 {
        if self.prompt_bytes <= tokens::INLINE_BYTES {
            return tokens::chat_prompt(&self.body, image_tokens);
        }
        tokens::chat_prompt_async(&self.body, image_tokens).await
    }

    /// `n` answers of at most `max_tokens` (or `max_completion_tokens`) each.
    fn max_output(&mut self, limits: OutputLimits) -> Result<u32, CallError> {
        let per_answer = match self.request.max_tokens {
            Some(asked) if asked > limits.cap => {
                return Err(CallError::BadRequest(format!(
                    "max_tokens must be at most {} for model {:?}",
                    limits.cap, self.request.model
                )));
            }
            Some(asked) => asked,
            None => {
                self.body
                    .insert("max_tokens".into(), Value::from(limits.default));
                limits.default
            }
        };
        Ok(per_answer.saturating_mul(self.request.n))
    }

    fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    fn answer_text(&self, answer: &[u8]) -> String {
        answer_text(answer)
    }

    fn wants_stream_usage(&self) -> bool {
        self.body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

fn bad(message: &str) -> CallError {
    CallError::BadRequest(message.to_owned())
}

/// The parts of a chat request the gateway itself needs.
struct ChatRequest {
    model: String,
    max_tokens: Option<u32>,
    /// Choices asked for (`n`): each may be `max_tokens` long.
    n: u32,
    stream: bool,
}

/// The most choices one call may ask for (OpenAI's own limit).
const MAX_CHOICES: u64 = 128;

fn check(body: &Map<String, Value>) -> Result<ChatRequest, CallError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m.as_str(),
        Some(_) => return Err(bad("model must be a non-empty string")),
        None => return Err(bad("missing required field: model")),
    };
    let messages = match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(bad("messages must not be empty")),
        Some(_) => return Err(bad("messages must be an array")),
        None => return Err(bad("missing required field: messages")),
    };
    for m in messages {
        let ok = m.get("role").is_some_and(Value::is_string);
        if !ok {
            return Err(bad("every message needs a string role"));
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream must be a boolean")),
    };
    let ceiling = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| CallError::BadRequest(format!("{name} must be a positive integer"))),
    };
    // Both names mean the same ceiling; both are forwarded, so both are bounded.
    let max_tokens = match (ceiling("max_tokens")?, ceiling("max_completion_tokens")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad("max_tokens and max_completion_tokens differ: give one"));
        }
        (a, b) => a.or(b),
    };
    let n = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_CHOICES).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                CallError::BadRequest(format!("n must be an integer from 1 to {MAX_CHOICES}"))
            })?,
    };
    Ok(ChatRequest {
        model: model.to_owned(),
        max_tokens,
        n,
        stream,
    })
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
    fn the_answer_text_is_every_choice() {
        let answer = json!({"choices": [{"message": {"content": "one two"}},
            {"message": {"content": "three"}}]});
        assert_eq!(answer_text(answer.to_string().as_bytes()), "one two\nthree");
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn checks_the_fields_the_gateway_needs() {
        let ok = obj(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10}),
        );
        let c = check(&ok).expect("valid");
        assert_eq!((c.model.as_str(), c.max_tokens, c.n), ("m", Some(10), 1));
        let newer = obj(json!({"model": "m", "messages": [{"role": "user"}],
            "max_tokens": null, "max_completion_tokens": 77}));
        assert_eq!(check(&newer).expect("valid").max_tokens, Some(77));
        for bad in [
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": 5, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": "hi"}),
            json!({"model": "m", "messages": [{"content": "hi"}]}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": -3}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": "9"}),
            json!({"model": "m", "messages": [{"role": "user"}], "n": 0}),
            json!({"model": "m", "messages": [{"role": "user"}], "n": 129}),
            json!({"model": "m", "messages": [{"role": "user"}], "n": 1.5}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": null,
                "max_completion_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 1,
                "max_completion_tokens": 100000}),
        ] {
            let b = obj(bad.clone());
            assert!(check(&b).is_err(), "{bad}");
        }
    }
}
