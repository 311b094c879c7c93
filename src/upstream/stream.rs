//! Streaming: the upstream's SSE goes to the client event by event, never buffered whole.
//!
//! The pump runs inside the response body, on the connection's task, while the client is
//! there (`call::Streamed`), and on a task of its own once the client has gone. It forwards
//! the events of each upstream read as they arrive, in one message (translating Anthropic
//! events into OpenAI chunks), watches for the final usage, and keeps what was delivered so
//! an answer without usage can be counted. When the client goes away it keeps reading the
//! upstream to its end, so what the upstream produced is billed; when the upstream breaks
//! mid-stream it sends the client an SSE error event and stops. Either way it returns what
//! to bill.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use super::anthropic::{StreamTranslator, Translated};
use super::messages_stream::{MessagesStream, Step};
use super::sse::{self, Parser};
use super::{StreamReply, Wire};
use crate::billing::Usage;

/// What a finished stream used and delivered.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// Usage reported by the upstream, if it reported any.
    pub usage: Option<Usage>,
    /// The answer's text, for counting when no usage came.
    pub text: String,
    /// The upstream stream failed before its end.
    pub broke: bool,
    /// The client went away before the end.
    pub client_gone: bool,
    /// The stream's last event (`[DONE]`, a Responses stream's `response.completed`, a
    /// Messages stream's `message_stop`), held back to be sent once the charge is committed
    /// (see `pump`'s `hold_done`).
    pub held: Option<Bytes>,
}

/// A Responses API event, passed on with its name; its text and final usage are noted.
fn responses_event(event: &sse::Event, out: &mut StreamOutcome) -> Option<Bytes> {
    let bytes = match &event.event {
        Some(name) => Bytes::from(format!("event: {name}\ndata: {}\n\n", event.data)),
        None => sse::data(&event.data),
    };
    let v: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    match v.get("type").and_then(Value::as_str) {
        Some("response.output_text.delta") => {
            if let Some(d) = v.get("delta").and_then(Value::as_str) {
                out.text.push_str(d);
            }
        }
        Some("response.completed") => {
            out.usage = v
                .pointer("/response/usage")
                .and_then(|u| super::reply::openai_usage(u, super::Endpoint::Responses));
            return None;
        }
        Some("response.failed" | "response.incomplete" | "error") => out.broke = true,
        _ => {}
    }
    Some(bytes)
}

/// Sends to the client what one upstream read produced, in one message (one wake-up of the
/// connection's task, one write); after the first failure (client gone) sends nothing more.
struct Client {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    pending: BytesMut,
    gone: bool,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        if !self.gone {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// An SSE `data:` event, written straight into what goes out.
    fn data(&mut self, payload: &str) {
        if !self.gone {
            sse::put_data(&mut self.pending, payload);
        }
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = self.pending.split().freeze();
        if self.tx.send(Ok(bytes)).await.is_err() {
            self.gone = true;
        }
    }
}

/// The upstream's idle deadline at the cost of a clock read per chunk: the timer is armed
/// once and moved only when it fires before the deadline (a timer per chunk was a
/// registration and a cancellation in the runtime's timer wheel each).
struct Stall {
    sleep: std::pin::Pin<Box<Sleep>>,
    idle: Duration,
    last: Instant,
}

impl Stall {
    fn new(idle: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(idle)),
            idle,
            last: Instant::now(),
        }
    }

    /// The body's next item, or `None` when nothing came for the idle timeout.
    async fn next<S: futures::Stream + Unpin>(&mut self, body: &mut S) -> Option<Option<S::Item>> {
        loop {
            tokio::select! {
                biased;
                item = body.next() => {
                    self.last = Instant::now();
                    return Some(item);
                }
                () = &mut self.sleep => {
                    let due = self.last + self.idle;
                    if Instant::now() >= due {
                        return None;
                    }
                    self.sleep.as_mut().reset(due);
                }
            }
        }
    }
}

fn error_event(message: &str) -> Bytes {
    sse::data(
        &json!({"error": {"message": message, "type": "api_error", "code": "upstream_error"}})
            .to_string(),
    )
}

fn openai_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| !u.is_null())?;
    super::reply::openai_usage(u, super::Endpoint::Chat)
}

/// What the pump needs of one OpenAI chunk.
#[derive(Debug, Default, PartialEq)]
struct Chunk {
    error: Option<Value>,
    usage: Option<Usage>,
    text: String,
    /// `choices` is an empty array: the usage chunk.
    usage_only: bool,
}

/// The fields of a chunk the pump reads, borrowed from the event: most chunks are one
/// delta, read without building a JSON tree.
#[derive(serde::Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
}

#[derive(serde::Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

impl Chunk {
    fn read(data: &str) -> Self {
        let Ok(view) = serde_json::from_str::<ChunkView<'_>>(data) else {
            // Not the usual shape (or not JSON).
            return Self::from_tree(data);
        };
        let mut text = String::new();
        for c in view.choices.iter().flatten() {
            if let Some(t) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
                text.push_str(t);
            }
        }
        Self {
            error: view.error.filter(|e| !e.is_null()),
            usage: view
                .usage
                .filter(|u| !u.is_null())
                .and_then(|u| super::reply::openai_usage(&u, super::Endpoint::Chat)),
            text,
            usage_only: view.choices.is_some_and(|c| c.is_empty()),
        }
    }

    /// The chunk read as a JSON tree: for shapes the borrowed reading does not take.
    fn from_tree(data: &str) -> Self {
        let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        let mut text = String::new();
        delta_text(&v, &mut text);
        Self {
            error: v.get("error").filter(|e| !e.is_null()).cloned(),
            usage: openai_usage(&v),
            text,
            usage_only: v
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| c.is_empty()),
        }
    }
}

fn delta_text(v: &Value, into: &mut String) {
    for c in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
            into.push_str(t);
        }
    }
}

/// Pumps `reply` to `tx`. `client_wants_usage`: the client asked for
/// `stream_options.include_usage` (the gateway always asks the upstream for it).
/// `hold_done`: do not send `[DONE]` (strict durability sends it once the charge is
/// committed); `held` then carries the last event.
pub async fn pump(
    mut reply: StreamReply,
    client_wants_usage: bool,
    hold_done: bool,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> StreamOutcome {
    let mut out = StreamOutcome::default();
    let mut client = Client {
        tx,
        pending: BytesMut::new(),
        gone: false,
    };
    let mut stall = Stall::new(reply.idle_timeout);
    let mut parser = Parser::default();
    let mut anthropic = StreamTranslator::default();
    let mut messages = MessagesStream::new(&reply.model);
    let is_messages = reply.endpoint == super::Endpoint::Messages;
    let error_event = |m: &str| {
        if is_messages {
            super::messages_stream::error_event(m)
        } else {
            error_event(m)
        }
    };
    let mut done = false;
    loop {
        let events = match stall.next(&mut reply.body).await {
            Some(Some(Ok(bytes))) => parser.push(&bytes),
            Some(None) => {
                let rest = parser.finish().into_iter().collect::<Vec<_>>();
                if rest.is_empty() {
                    break;
                }
                done = true;
                rest
            }
            Some(Some(Err(e))) => {
                tracing::warn!(provider = %reply.provider, error = %e, "upstream stream broke");
                out.broke = true;
                client.send(&error_event("the upstream stream broke"));
                break;
            }
            None => {
                out.broke = true;
                client.send(&error_event("the upstream stream stalled"));
                break;
            }
        };
        for event in events {
            if is_messages {
                match messages.event(reply.wire, &event) {
                    Step::Send(list) => {
                        for b in list {
                            client.send(&b);
                        }
                    }
                    Step::Last(list, last) => {
                        for b in list {
                            client.send(&b);
                        }
                        if hold_done {
                            out.held = Some(last);
                        } else {
                            client.send(&last);
                        }
                    }
                    Step::Error(m) => {
                        out.broke = true;
                        client.send(&error_event(&m));
                    }
                }
                continue;
            }
            if reply.endpoint == super::Endpoint::Responses {
                // The final event carries the usage: held back under strict durability.
                match responses_event(&event, &mut out) {
                    Some(bytes) => client.send(&bytes),
                    None => {
                        let name = event.event.as_deref().unwrap_or("response.completed");
                        let last = Bytes::from(format!("event: {name}\ndata: {}\n\n", event.data));
                        if hold_done {
                            out.held = Some(last);
                        } else {
                            client.send(&last);
                        }
                    }
                }
                continue;
            }
            match reply.wire {
                Wire::OpenAi => {
                    if event.data.trim() == "[DONE]" {
                        if hold_done {
                            out.held = Some(sse::data("[DONE]"));
                        } else {
                            client.data("[DONE]");
                        }
                        continue;
                    }
                    let chunk = Chunk::read(&event.data);
                    if let Some(e) = chunk.error {
                        out.broke = true;
                        let m = e
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("upstream error");
                        client.send(&error_event(m));
                        continue;
                    }
                    if let Some(u) = chunk.usage {
                        out.usage = Some(u);
                    }
                    out.text.push_str(&chunk.text);
                    if chunk.usage_only && !client_wants_usage {
                        continue;
                    }
                    client.data(&event.data);
                }
                Wire::Anthropic => match anthropic.event(&event.data) {
                    Translated::Chunks(chunks) => {
                        for c in chunks {
                            if let Ok(v) = serde_json::from_str::<Value>(&c) {
                                delta_text(&v, &mut out.text);
                            }
                            client.data(&c);
                        }
                        out.usage = anthropic.usage();
                        if anthropic.done {
                            if client_wants_usage && let Some(c) = anthropic.usage_chunk() {
                                client.data(&c);
                            }
                            if hold_done {
                                out.held = Some(sse::data("[DONE]"));
                            } else {
                                client.data("[DONE]");
                            }
                        }
                    }
                    Translated::Error(m) => {
                        out.broke = true;
                        client.send(&error_event(&m));
                    }
                },
            }
        }
        client.flush().await;
        if done {
            break;
        }
    }
    client.flush().await;
    if is_messages {
        out.usage = messages.final_usage(reply.wire);
        out.text = std::mem::take(&mut messages.text);
    } else if reply.wire == Wire::Anthropic && !anthropic.done {
        // The usage of an unfinished Anthropic stream has no final output count.
        out.usage = None;
    }
    out.client_gone = client.gone;
    out
}

/// A Responses event stream for the in-process mock provider: `response.created`, a
/// `response.output_text.delta` per word, then `response.completed` with the whole response.
pub fn mock_events(
    response: &Value,
    pace: Duration,
) -> futures::stream::BoxStream<'static, Result<Bytes, String>> {
    let text = response
        .pointer("/output/0/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut created = response.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let mut events = vec![(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0, "response": created}),
    )];
    for (i, w) in text.split_inclusive(' ').enumerate() {
        events.push((
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": w}),
        ));
    }
    events.push((
        "response.completed",
        json!({"type": "response.completed", "sequence_number": events.len(),
            "response": response}),
    ));
    futures::stream::iter(events)
        .then(move |(name, data)| async move {
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            Ok(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
        })
        .boxed()
}

/// A stream of chunks for the in-process mock provider: one chunk per word, then the usage
/// chunk, then `[DONE]`.
pub fn mock_chunks(
    answer: &Value,
    usage: Usage,
    pace: Duration,
) -> futures::stream::BoxStream<'static, Result<Bytes, String>> {
    let model = answer["model"].clone();
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    for w in words {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    events.push(
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
            "model": answer["model"], "choices": [],
            "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                "total_tokens": usage.total()}})
        .to_string(),
    );
    events.push("[DONE]".into());
    futures::stream::iter(events)
        .then(move |e| async move {
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            Ok(sse::data(&e))
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_borrowed_as_their_tree_says() {
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"a\n\"b\u00e9"}},{"delta":{"content":"c"}}]}"#,
            r#"{"choices":[{"delta":{"role":"assistant","content":null}}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            r#"{"choices":null}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"{"error":null,"choices":[{"delta":{}}]}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"{"choices":[1]}"#,
            r#"{"choices":[{"delta":{"content":"x"}}],"choices":[]}"#,
            "not json",
            "",
        ] {
            assert_eq!(Chunk::read(data), Chunk::from_tree(data), "{data}");
        }
        assert_eq!(
            Chunk::read(r#"{"choices":[{"delta":{"content":"a\"b"}}]}"#).text,
            "a\"b"
        );
    }

    fn reply(wire: Wire, chunks: Vec<Result<&'static str, &'static str>>) -> StreamReply {
        StreamReply {
            provider: "p".into(),
            model: "m".into(),
            wire,
            endpoint: crate::upstream::Endpoint::Chat,
            body: futures::stream::iter(chunks.into_iter().map(|c| {
                c.map(|s| Bytes::from_static(s.as_bytes()))
                    .map_err(str::to_owned)
            }))
            .boxed(),
            idle_timeout: Duration::from_secs(5),
        }
    }

    async fn collect(mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> String {
        let mut s = String::new();
        while let Some(Ok(b)) = rx.recv().await {
            s.push_str(&String::from_utf8_lossy(&b));
        }
        s
    }

    const OPENAI: &[&str] = &[
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    ];

    #[tokio::test]
    async fn openai_streams_pass_through_and_hide_the_added_usage_chunk() {
        let (tx, rx) = mpsc::channel(16);
        let out = pump(
            reply(Wire::OpenAi, OPENAI.iter().map(|c| Ok(*c)).collect()),
            false,
            false,
            tx,
        )
        .await;
        assert_eq!(out.usage, Some(Usage::new(5, 2)));
        assert_eq!(out.text, "Hello");
        let sent = collect(rx).await;
        assert!(sent.contains("Hel") && sent.ends_with("data: [DONE]\n\n"));
        assert!(!sent.contains("usage"), "{sent}");
        let (tx, rx) = mpsc::channel(16);
        pump(
            reply(Wire::OpenAi, OPENAI.iter().map(|c| Ok(*c)).collect()),
            true,
            false,
            tx,
        )
        .await;
        assert!(collect(rx).await.contains("\"usage\""));
        // Strict durability holds [DONE] back for the caller to send.
        let (tx, rx) = mpsc::channel(16);
        let out = pump(
            reply(Wire::OpenAi, OPENAI.iter().map(|c| Ok(*c)).collect()),
            false,
            true,
            tx,
        )
        .await;
        assert!(out.held.is_some());
        let sent = collect(rx).await;
        assert!(sent.contains("lo") && !sent.contains("[DONE]"), "{sent}");
    }

    #[tokio::test]
    async fn a_broken_upstream_gets_an_error_event_and_a_gone_client_is_drained() {
        let (tx, rx) = mpsc::channel(16);
        let out = pump(
            reply(Wire::OpenAi, vec![Ok(OPENAI[0]), Err("reset")]),
            false,
            false,
            tx,
        )
        .await;
        assert!(out.broke && out.usage.is_none());
        assert_eq!(out.text, "Hel");
        assert!(collect(rx).await.contains("upstream_error"));

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let out = pump(
            reply(Wire::OpenAi, OPENAI.iter().map(|c| Ok(*c)).collect()),
            false,
            false,
            tx,
        )
        .await;
        assert!(out.client_gone);
        assert_eq!(out.usage, Some(Usage::new(5, 2)), "read to the end");
    }

    /// A reply whose chunks come `gap` apart, and which then goes quiet for good.
    fn paced(chunks: Vec<&'static str>, gap: Duration, idle: Duration) -> StreamReply {
        let mut r = reply(Wire::OpenAi, vec![]);
        let body = futures::stream::iter(chunks)
            .then(move |c| async move {
                tokio::time::sleep(gap).await;
                Ok::<_, String>(Bytes::from_static(c.as_bytes()))
            })
            .chain(futures::stream::pending());
        r.body = body.boxed();
        r.idle_timeout = idle;
        r
    }

    #[tokio::test]
    async fn the_idle_timeout_counts_from_the_last_chunk_not_the_first() {
        // 30 chunks 10 ms apart: 300 ms in all, more than the idle timeout, never idle.
        let words: Vec<&'static str> = (0..30)
            .map(|_| "data: {\"choices\":[{\"delta\":{\"content\":\"w\"}}]}\n\n")
            .chain(["data: [DONE]\n\n"])
            .collect();
        let (tx, rx) = mpsc::channel(64);
        let started = tokio::time::Instant::now();
        let out = pump(
            paced(words, Duration::from_millis(10), Duration::from_millis(250)),
            false,
            false,
            tx,
        )
        .await;
        let sent = collect(rx).await;
        assert_eq!(out.text, "w".repeat(30));
        assert!(out.broke, "then it went quiet");
        assert!(
            sent.contains("[DONE]") && sent.contains("stalled"),
            "{sent}"
        );
        // 31 items 10 ms apart, then 250 ms of quiet.
        assert!(
            started.elapsed() >= Duration::from_millis(560),
            "cut only when idle"
        );
    }
}
