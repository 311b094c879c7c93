//! OpenAI's Responses API: the [`Operation`] behind `POST /v1/responses`, to OpenAI-format
//! targets, whole or streamed (the stream's events pass through by name; the final
//! `response.completed` carries the usage billed).

use serde_json::{Map, Value};

use super::{CallError, Operation, OutputLimits};
use crate::tokens;
use crate::upstream::Endpoint;

/// A parsed Responses request.
pub struct Responses {
    body: Map<String, Value>,
    model: String,
    max_output: Option<u32>,
    stream: bool,
    /// The request as chat messages (instructions, input): what its prompt is counted on.
    as_chat: Map<String, Value>,
    prompt_bytes: usize,
}

impl Responses {
    /// Checks what the gateway needs: `model`, `input` (a string or a non-empty array of
    /// items), `max_output_tokens`, `stream`; the rest goes upstream as sent.
    pub fn parse(body: Map<String, Value>) -> Result<Self, CallError> {
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m.clone(),
            Some(_) => return Err(bad("model must be a non-empty string")),
            None => return Err(bad("missing required field: model")),
        };
        let input = match body.get("input") {
            Some(Value::String(s)) if !s.is_empty() => {
                vec![serde_json::json!({"role": "user", "content": s})]
            }
            Some(Value::Array(items)) if !items.is_empty() => items.clone(),
            Some(_) => return Err(bad("input must be a non-empty string or array")),
            None => return Err(bad("missing required field: input")),
        };
        let max_output = match body.get("max_output_tokens") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| *n >= 1)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad("max_output_tokens must be a positive integer"))?,
            ),
        };
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("stream must be a boolean")),
        };
        let mut messages = Vec::new();
        if let Some(i) = body.get("instructions").filter(|i| !i.is_null()) {
            messages.push(serde_json::json!({"role": "system", "content": i}));
        }
        messages.extend(input);
        let mut as_chat = Map::new();
        as_chat.insert("messages".into(), Value::Array(messages));
        if let Some(tools) = body.get("tools") {
            as_chat.insert("tools".into(), tools.clone());
        }
        let prompt_bytes = tokens::chat_prompt_bytes(&as_chat);
        Ok(Self {
            body,
            model,
            max_output,
            stream,
            as_chat,
            prompt_bytes,
        })
    }
}

fn bad(message: &str) -> CallError {
    CallError::BadRequest(message.to_owned())
}

impl Operation for Responses {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Responses
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self) -> bool {
        self.stream
    }

    fn prompt_bytes(&self) -> usize {
        self.prompt_bytes
    }

    async fn prompt_tokens(&self, image_tokens: u32) -> u32 {
        if self.prompt_bytes <= tokens::INLINE_BYTES {
            return tokens::chat_prompt(&self.as_chat, image_tokens);
        }
        tokens::chat_prompt_async(&self.as_chat, image_tokens).await
    }

    /// One answer of at most `max_output_tokens`; set to the model's default when open.
    fn max_output(&mut self, limits: OutputLimits) -> Result<u32, CallError> {
        match self.max_output {
            Some(asked) if asked > limits.cap => Err(CallError::BadRequest(format!(
                "max_output_tokens must be at most {} for model {:?}",
                limits.cap, self.model
            ))),
            Some(asked) => Ok(asked),
            None => {
                self.body
                    .insert("max_output_tokens".into(), Value::from(limits.default));
                Ok(limits.default)
            }
        }
    }

    fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    fn answer_text(&self, answer: &[u8]) -> String {
        let response: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
        response
            .get("output")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|item| {
                item.get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn wants_stream_usage(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Responses, CallError> {
        Responses::parse(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn checks_the_fields_the_gateway_needs() {
        let mut ok =
            parse(json!({"model": "m", "input": "hi", "instructions": "brief"})).expect("valid");
        let limits = OutputLimits {
            cap: 100,
            default: 40,
        };
        assert_eq!(ok.max_output(limits).ok(), Some(40));
        assert_eq!(
            ok.body()["max_output_tokens"],
            40,
            "the ceiling goes upstream"
        );
        assert!(
            parse(
                json!({"model": "m", "input": [{"role": "user", "content": "x"}],
            "max_output_tokens": 500})
            )
            .is_ok_and(|mut r| r.max_output(limits).is_err())
        );
        for bad in [
            json!({"input": "x"}),
            json!({"model": "m"}),
            json!({"model": "m", "input": ""}),
            json!({"model": "m", "input": []}),
            json!({"model": "m", "input": "x", "max_output_tokens": 0}),
            json!({"model": "m", "input": "x", "stream": 1}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
