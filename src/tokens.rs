//! Token counting with OpenAI's `o200k_base` BPE (tiktoken-rs, tables embedded: works
//! offline). Used for reservations (the prompt estimate made before the call), for answers
//! whose upstream reported no usage, and by the mock provider. For non-OpenAI models it is
//! an estimate, which is what a reservation needs.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Loads the tokenizer's tables (a few hundred milliseconds) so the first request does not.
pub fn warm_up() {
    let _ = count("warm up");
}

/// Tokens in a piece of text.
pub fn count(text: &str) -> u32 {
    if text.is_empty() {
        return 0;
    }
    u32::try_from(bpe().encode_ordinary(text).len()).unwrap_or(u32::MAX)
}

/// Prompt tokens of a chat request's `messages`, as OpenAI counts them: the text of every
/// message (string contents and text parts) plus 3 per message and 3 for the reply.
pub fn prompt(messages: &Value) -> u32 {
    let Some(list) = messages.as_array() else {
        return 0;
    };
    let mut total: u32 = 3;
    for m in list {
        total = total.saturating_add(3);
        match m.get("content") {
            Some(Value::String(s)) => total = total.saturating_add(count(s)),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        total = total.saturating_add(count(t));
                    }
                }
            }
            _ => {}
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            total = total.saturating_add(1 + count(name));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_with_the_o200k_tokenizer() {
        assert_eq!(count(""), 0);
        // "Hello" "," " world" "!"
        assert_eq!(count("Hello, world!"), 4);
        assert!(count("internationalization") <= 3);
    }

    #[test]
    fn prompt_adds_message_overhead() {
        let m = json!([{"role": "user", "content": "Hello, world!"}]);
        assert_eq!(prompt(&m), 3 + 3 + 4);
        let parts =
            json!([{"role": "user", "content": [{"type": "text", "text": "Hello, world!"}]}]);
        assert_eq!(prompt(&parts), 3 + 3 + 4);
        assert_eq!(prompt(&json!("nope")), 0);
    }
}
