//! Running an admitted call: its plan over the upstreams, then its charge, for a whole
//! answer at once, for a stream once the upstream has finished (the client may have left).

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::admit::Admitted;
use super::streamed::Streamed;
use super::{CallError, Operation, Reply};
use crate::tokens;
use crate::upstream::sse;
use crate::upstream::stream::pump;
use crate::upstream::{Answer, Outbound, StreamReply};

/// How many chunks a stream may hold for a slow client before the pump waits.
const STREAM_BUFFER: usize = 64;

impl<O: Operation> Admitted<O> {
    /// Runs the call; returns what to send (a stream's billing still runs after).
    pub(super) async fn run(self) -> Result<Reply, CallError> {
        let rid = self.request_id.to_string();
        let started = Instant::now();
        let out = Outbound {
            endpoint: self.op.endpoint(),
            body: self.op.body(),
            model: self.op.model(),
            request_id: &rid,
            stream: self.op.stream(),
            anthropic: self.op.anthropic_headers(),
            trace: self.seen.trace(),
        };
        let answer = self.app.upstreams.execute(&self.plan, &out).await;
        self.seen.upstream(started.elapsed());
        // On an error, dropping the call gives back its reservation and estimate.
        match answer.map_err(CallError::Upstream)? {
            Answer::Whole(reply) => {
                let (usage, source) = match reply.usage {
                    Some(u) => (u, "upstream"),
                    None => {
                        let text = self.op.answer_text(&reply.body);
                        (self.estimated(tokens::count_async(text).await), "estimated")
                    }
                };
                let mut call = self;
                call.settle(reply.provider, reply.model, usage, source)
                    .await?;
                Ok(Reply::Whole(reply.body))
            }
            Answer::Stream(reply) => {
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                Ok(Reply::Stream(Streamed::new(self.stream(reply, tx), rx)))
            }
        }
    }

    /// Pumps a stream to the client, then bills what the upstream produced: its reported
    /// usage, or the tokens counted in what it delivered.
    async fn stream(mut self, reply: StreamReply, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) {
        let (provider, model) = (reply.provider.clone(), reply.model.clone());
        let strict = self.strict();
        let out = pump(reply, self.op.wants_stream_usage(), strict, tx.clone()).await;
        if out.client_gone {
            tracing::info!(request_id = %self.request_id, "client left mid-stream; billed in full");
        }
        let (usage, source) = match out.usage {
            Some(u) => (u, "upstream"),
            None => (
                self.estimated(tokens::count_async(out.text).await),
                "estimated",
            ),
        };
        let billed = self.settle(provider, model, usage, source).await;
        if let Some(held) = out.held.filter(|_| !out.client_gone) {
            // Strict: the last event (`[DONE]`, or a Responses stream's `response.completed`)
            // only once the charge is durable.
            let last = match billed {
                Ok(()) => held,
                Err(e) => {
                    let message = match e {
                        CallError::NotConfirmed(m) => m,
                        _ => "the call is not confirmed".into(),
                    };
                    sse::data(
                        &serde_json::json!({"error": {"message": message,
                            "type": "api_error", "code": "service_unavailable"}})
                        .to_string(),
                    )
                }
            };
            let _ = tx.send(Ok(last)).await;
        }
    }
}
