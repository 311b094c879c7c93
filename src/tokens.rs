//! Token counting with OpenAI's `o200k_base` BPE (tiktoken-rs, tables embedded: works
//! offline). Used for reservations (the prompt estimate made before the call), for answers
//! whose upstream reported no usage, and by the mock provider. For non-OpenAI models it is
//! an estimate, which is what a reservation needs.
//!
//! Counting costs about a microsecond per token, so a request's text is counted where it is
//! only when it is small ([`INLINE_BYTES`]); a larger one is counted on the blocking pool, at
//! most one per core at a time ([`off_thread`]), so a few multi-megabyte prompts cannot
//! stall the async workers. The tokenizer sees text in pieces of at most [`PIECE_BYTES`]
//! (its regex backtracks: a run of a million spaces overflowed its stack), and a piece it
//! fails on counts as its length in bytes, an upper bound (every token is at least one
//! byte): a tokenizer failure is an estimate, never a panic.

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;
use tokio::sync::Semaphore;

/// Texts up to this many bytes are counted on the caller's thread.
pub const INLINE_BYTES: usize = 32 * 1024;

/// The most text the tokenizer is given at once.
const PIECE_BYTES: usize = 4 * 1024;

/// Per message, as OpenAI counts chat prompts, and once for the reply.
const PER_MESSAGE: u32 = 3;

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Loads the tokenizer's tables (a few hundred milliseconds) so the first request does not.
pub fn warm_up() {
    let _ = count("warm up");
}

/// Tokens in a piece of text.
pub fn count(text: &str) -> u32 {
    pieces(text).fold(0u32, |total, piece| {
        total.saturating_add(count_piece(piece))
    })
}

fn count_piece(piece: &str) -> u32 {
    let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bpe().encode_ordinary(piece).len()
    }));
    match counted {
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(_) => {
            tracing::warn!(
                bytes = piece.len(),
                "the tokenizer failed on a piece of text; counted as its length"
            );
            u32::try_from(piece.len()).unwrap_or(u32::MAX)
        }
    }
}

/// `text` cut into pieces of at most [`PIECE_BYTES`], each cut made before a space when
/// one is near (so words stay whole and the count stays close to the uncut one).
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= PIECE_BYTES {
            return Some(std::mem::take(&mut rest));
        }
        let mut end = PIECE_BYTES;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let mut from = end - 256;
        while !rest.is_char_boundary(from) {
            from += 1;
        }
        if let Some(space) = rest[from..end].rfind(' ') {
            end = from + space;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Prompt tokens of a chat request's `messages`, as OpenAI counts them: the text of every
/// message (string contents and text parts) plus 3 per message and 3 for the reply.
/// Images and other non-text parts count `per_part` each.
pub fn prompt(messages: &Value, per_part: u32) -> u32 {
    let Some(list) = messages.as_array() else {
        return 0;
    };
    let mut total: u32 = PER_MESSAGE;
    for m in list {
        total = total.saturating_add(PER_MESSAGE);
        match m.get("content") {
            Some(Value::String(s)) => total = total.saturating_add(count(s)),
            Some(Value::Array(parts)) => {
                for p in parts {
                    total = total.saturating_add(match p.get("text").and_then(Value::as_str) {
                        Some(t) => count(t),
                        None => per_part,
                    });
                }
            }
            _ => {}
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            total = total.saturating_add(1 + count(name));
        }
        // An assistant's earlier tool calls are part of the prompt too.
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                if let Some(f) = c.get("function") {
                    for field in ["name", "arguments"] {
                        if let Some(s) = f.get(field).and_then(Value::as_str) {
                            total = total.saturating_add(count(s));
                        }
                    }
                }
            }
        }
    }
    total
}

/// The parts of a chat request besides its messages that the model reads as prompt: tool
/// and function definitions and a response format's schema (counted as their JSON text).
const PROMPT_FIELDS: [&str; 3] = ["tools", "functions", "response_format"];

/// The worst-case prompt of a chat request: its messages (non-text parts at `per_part`
/// each) and its tool definitions and response format.
pub fn chat_prompt(body: &Map<String, Value>, per_part: u32) -> u32 {
    let mut total = prompt(body.get("messages").unwrap_or(&Value::Null), per_part);
    for field in PROMPT_FIELDS {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            total = total.saturating_add(count(&v.to_string()));
        }
    }
    total
}

/// About how many bytes of text [`chat_prompt`] would count, without counting: every
/// string and key under the fields it reads.
pub fn chat_prompt_bytes(body: &Map<String, Value>) -> usize {
    std::iter::once("messages")
        .chain(PROMPT_FIELDS)
        .filter_map(|f| body.get(f))
        .map(text_bytes)
        .sum()
}

fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(list) => list.iter().map(text_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        _ => 8,
    }
}

/// Tokens of an embeddings request's `input`: a string, an array of strings (each counted
/// alone, as the provider embeds each alone), or token ids (an array of integers, or an
/// array of such arrays), which count one each.
pub fn embedding_input(input: &Value) -> u32 {
    match input {
        Value::String(s) => count(s),
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().fold(0u32, |total, item| {
            total.saturating_add(embedding_input(item))
        }),
        _ => 0,
    }
}

/// About how many bytes of text [`embedding_input`] would count.
pub fn embedding_bytes(input: &Value) -> usize {
    text_bytes(input)
}

/// [`chat_prompt`], on the blocking pool when the request is large.
pub async fn chat_prompt_async(body: &Map<String, Value>, per_part: u32) -> u32 {
    let bytes = chat_prompt_bytes(body);
    if bytes <= INLINE_BYTES {
        return chat_prompt(body, per_part);
    }
    let owned: Map<String, Value> = std::iter::once("messages")
        .chain(PROMPT_FIELDS)
        .filter_map(|f| body.get(f).map(|v| (f.to_owned(), v.clone())))
        .collect();
    off_thread(move || chat_prompt(&owned, per_part))
        .await
        .unwrap_or_else(|| upper_bound(bytes))
}

/// [`embedding_input`], on the blocking pool when the input is large.
pub async fn embedding_input_async(input: &Value) -> u32 {
    let bytes = embedding_bytes(input);
    if bytes <= INLINE_BYTES {
        return embedding_input(input);
    }
    let owned = input.clone();
    off_thread(move || embedding_input(&owned))
        .await
        .unwrap_or_else(|| upper_bound(bytes))
}

/// [`count`], on the blocking pool when the text is large.
pub async fn count_async(text: String) -> u32 {
    if text.len() <= INLINE_BYTES {
        return count(&text);
    }
    let bytes = text.len();
    off_thread(move || count(&text))
        .await
        .unwrap_or_else(|| upper_bound(bytes))
}

/// Tokens `bytes` of text hold at most (every token is at least one byte).
fn upper_bound(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Runs tokenizing work on the blocking pool, at most one such task per core at a time
/// (the turn goes with the work: a caller that gives up does not free it early); `None` if
/// it could not run to its end.
pub async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let turn = gate().clone().acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .ok()
}

/// The turn of `owner` (an account) to have a large text counted: one at a time per owner,
/// so one account cannot hold every core's turn. Owners share 64 stripes.
pub async fn owner_turn(owner: u128) -> Option<tokio::sync::OwnedSemaphorePermit> {
    static STRIPES: OnceLock<Vec<Arc<Semaphore>>> = OnceLock::new();
    let stripes = STRIPES.get_or_init(|| (0..64).map(|_| Arc::new(Semaphore::new(1))).collect());
    let stripe = usize::try_from(owner % 64).unwrap_or(0);
    stripes[stripe].clone().acquire_owned().await.ok()
}

fn gate() -> &'static Arc<Semaphore> {
    static GATE: OnceLock<Arc<Semaphore>> = OnceLock::new();
    GATE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Arc::new(Semaphore::new(cores))
    })
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
        assert_eq!(prompt(&m, 0), 3 + 3 + 4);
        let parts =
            json!([{"role": "user", "content": [{"type": "text", "text": "Hello, world!"}]}]);
        assert_eq!(prompt(&parts, 0), 3 + 3 + 4);
        assert_eq!(prompt(&json!("nope"), 0), 0);
    }

    #[test]
    fn images_tools_and_tool_calls_count() {
        let image =
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}});
        let m = json!([{"role": "user", "content": [{"type": "text", "text": "Hello, world!"}, image, image]}]);
        assert_eq!(prompt(&m, 1000), 3 + 3 + 4 + 2000);
        let body = json!({"messages": m, "tools": [{"type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}}}]});
        let body = body.as_object().cloned().unwrap_or_default();
        assert!(chat_prompt(&body, 1000) > 3 + 3 + 4 + 2000 + 10);
        let calls = json!([{"role": "assistant", "content": null, "tool_calls": [{"id": "c1",
            "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}]);
        assert!(prompt(&calls, 0) > 3 + 3 + 5);
    }

    #[test]
    fn long_texts_count_in_pieces_close_to_whole() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(2_000);
        let whole = u32::try_from(bpe().encode_ordinary(&text).len()).unwrap_or(0);
        let cut = count(&text);
        assert!(
            cut >= whole && cut <= whole + whole / 100,
            "{cut} vs {whole}"
        );
        let joined: String = pieces(&text).collect();
        assert_eq!(joined, text);
        assert!(pieces(&text).all(|p| p.len() <= PIECE_BYTES));
        let wide = "é".repeat(10_000);
        assert_eq!(pieces(&wide).collect::<String>(), wide);
    }

    #[test]
    fn pathological_whitespace_is_counted_not_a_panic() {
        // Counted by the tokenizer (runs of spaces merge), not by the byte-length fallback.
        let spaces = " ".repeat(1_000_000);
        let n = count(&spaces);
        assert!(n > 0 && (n as usize) < spaces.len() / 4, "{n}");
        for unit in ["\n \t", "a", "1", "\n", "!", "é", "中", " a"] {
            let text = unit.repeat(1_000_000 / unit.len());
            let n = count(&text);
            assert!(n > 0 && n as usize <= text.len(), "{unit:?}: {n}");
        }
    }

    #[tokio::test]
    async fn large_texts_are_counted_off_the_async_workers() {
        let text = "word ".repeat(20_000);
        assert_eq!(count_async(text.clone()).await, count(&text));
        let body = json!({"messages": [{"role": "user", "content": text}]});
        let body = body.as_object().cloned().unwrap_or_default();
        assert!(chat_prompt_bytes(&body) > INLINE_BYTES);
        assert_eq!(chat_prompt_async(&body, 0).await, chat_prompt(&body, 0));
    }
}
