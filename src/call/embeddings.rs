//! Embeddings (OpenAI's format): the [`Operation`] behind `POST /v1/embeddings`. Billed on
//! the input's tokens at the model's input rate; nothing is produced, so the worst case is
//! the input alone.

use serde_json::{Map, Value};

use super::{CallError, Operation, OutputLimits};
use crate::tokens;
use crate::upstream::Endpoint;

/// The most inputs one call may embed (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

/// A parsed embeddings request.
pub struct Embeddings {
    body: Map<String, Value>,
    model: String,
    input_bytes: usize,
}

impl Embeddings {
    /// Checks what the gateway needs (`model`, `input`, and that `encoding_format` and
    /// `dimensions` are what providers accept); the rest goes upstream as sent.
    pub fn parse(body: Map<String, Value>) -> Result<Self, CallError> {
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m.clone(),
            Some(_) => return Err(bad("model must be a non-empty string")),
            None => return Err(bad("missing required field: model")),
        };
        let input = body
            .get("input")
            .ok_or_else(|| bad("missing required field: input"))?;
        check_input(input)?;
        match body.get("encoding_format") {
            None | Some(Value::Null) => {}
            Some(Value::String(f)) if f == "float" || f == "base64" => {}
            Some(_) => return Err(bad("encoding_format must be \"float\" or \"base64\"")),
        }
        match body.get("dimensions") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some_and(|d| (1..=65_536).contains(&d)) => {}
            Some(_) => return Err(bad("dimensions must be a positive integer")),
        }
        if body
            .get("stream")
            .is_some_and(|s| s != &Value::Bool(false) && !s.is_null())
        {
            return Err(bad("embeddings cannot be streamed"));
        }
        let input_bytes = tokens::embedding_bytes(input);
        Ok(Self {
            body,
            model,
            input_bytes,
        })
    }

    fn input(&self) -> &Value {
        self.body.get("input").unwrap_or(&Value::Null)
    }
}

/// A string, a non-empty array of strings, or token ids (integers, or arrays of them).
fn check_input(input: &Value) -> Result<(), CallError> {
    let token_ids = |v: &Value| match v {
        Value::Array(ids) => !ids.is_empty() && ids.iter().all(|i| i.as_u64().is_some()),
        _ => false,
    };
    let ok = match input {
        Value::String(s) => !s.is_empty(),
        Value::Array(items) if items.is_empty() || items.len() > MAX_INPUTS => false,
        Value::Array(items) => {
            items
                .iter()
                .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
                || token_ids(input)
                || items.iter().all(token_ids)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(&format!(
            "input must be a non-empty string, an array of 1 to {MAX_INPUTS} non-empty strings, \
             or token ids"
        )))
    }
}

fn bad(message: &str) -> CallError {
    CallError::BadRequest(message.to_owned())
}

impl Operation for Embeddings {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Embeddings
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn stream(&self) -> bool {
        false
    }

    fn prompt_bytes(&self) -> usize {
        self.input_bytes
    }

    async fn prompt_tokens(&self, _image_tokens: u32) -> u32 {
        tokens::embedding_input_async(self.input()).await
    }

    fn max_output(&mut self, _limits: OutputLimits) -> Result<u32, CallError> {
        Ok(0)
    }

    fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    fn answer_text(&self, _answer: &[u8]) -> String {
        String::new()
    }

    fn wants_stream_usage(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Embeddings, CallError> {
        Embeddings::parse(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn accepts_what_openai_accepts_and_nothing_else() {
        for ok in [
            json!({"model": "e", "input": "hello"}),
            json!({"model": "e", "input": ["a", "b"], "encoding_format": "base64"}),
            json!({"model": "e", "input": [1, 2, 3], "dimensions": 256}),
            json!({"model": "e", "input": [[1, 2], [3]]}),
        ] {
            assert!(parse(ok.clone()).is_ok(), "{ok}");
        }
        for bad in [
            json!({"input": "x"}),
            json!({"model": "e"}),
            json!({"model": "e", "input": ""}),
            json!({"model": "e", "input": []}),
            json!({"model": "e", "input": ["a", ""]}),
            json!({"model": "e", "input": ["a", 1]}),
            json!({"model": "e", "input": [[]]}),
            json!({"model": "e", "input": {"text": "x"}}),
            json!({"model": "e", "input": "x", "encoding_format": "int8"}),
            json!({"model": "e", "input": "x", "dimensions": 0}),
            json!({"model": "e", "input": "x", "stream": true}),
            json!({"model": "e", "input": vec!["x"; MAX_INPUTS + 1]}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_text_and_token_ids() {
        assert_eq!(tokens::embedding_input(&json!([5, 6, 7])), 3);
        assert_eq!(tokens::embedding_input(&json!([[5, 6], [7]])), 3);
        let one = tokens::count("hello world");
        assert_eq!(
            tokens::embedding_input(&json!(["hello world", "hello world"])),
            2 * one
        );
    }
}
