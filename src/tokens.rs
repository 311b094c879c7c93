//! Token counting without a model tokenizer: about four characters per token, the usual
//! rule of thumb for English with GPT-style BPE. Used for reservations (an estimate made
//! before the call), for upstreams that report no usage, and by the mock provider.

use serde_json::Value;

/// Tokens in a piece of text: words of up to four characters count one, longer words one
/// per started four characters; every punctuation mark counts one.
pub fn count(text: &str) -> u32 {
    let mut tokens: u32 = 0;
    let mut word = 0u32;
    let flush = |word: &mut u32, tokens: &mut u32| {
        if *word > 0 {
            *tokens = tokens.saturating_add(word.div_ceil(4));
            *word = 0;
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word += 1;
        } else {
            flush(&mut word, &mut tokens);
            if !c.is_whitespace() {
                tokens = tokens.saturating_add(1);
            }
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

/// Prompt tokens of a chat request's `messages`: the text of every message (string
/// contents and text parts) plus a small per-message overhead, as OpenAI counts it.
pub fn prompt(messages: &Value) -> u32 {
    let Some(list) = messages.as_array() else {
        return 0;
    };
    let mut total: u32 = 3;
    for m in list {
        total = total.saturating_add(4);
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
            total = total.saturating_add(count(name));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_words_and_punctuation() {
        assert_eq!(count(""), 0);
        assert_eq!(count("Hello, world!"), 2 + 2 + 2);
        assert_eq!(count("a bb ccc dddd"), 4);
        assert_eq!(count("internationalization"), 5);
    }

    #[test]
    fn prompt_adds_message_overhead() {
        let m = json!([{"role": "user", "content": "hi there"}]);
        // "hi" is one token, "there" two (five characters).
        assert_eq!(prompt(&m), 3 + 4 + 3);
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
        assert_eq!(prompt(&parts), 3 + 4 + 1);
        assert_eq!(prompt(&json!("nope")), 0);
    }
}
