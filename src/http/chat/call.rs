//! One admitted, reserved call: running it upstream and billing it, whole or streamed.
//!
//! Everything here runs in a task of its own, detached from the client's connection: a
//! client that hangs up does not cancel a call the upstream is already answering, and the
//! call is still billed (for a stream, the upstream is read to its end first).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::upstream_error;
use crate::actors::balances::ChargeRequest;
use crate::actors::keys::Admitted;
use crate::billing::{Charge, Decimal, Price, Usage};
use crate::config::Durability;
use crate::http::error::ApiError;
use crate::http::observe::RequestCtx;
use crate::journal::UsageRecord;
use crate::plan::Plan;
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::tokens;
use crate::upstream::sse;
use crate::upstream::stream::pump;
use crate::upstream::{Answer, StreamReply};

/// The longest a strict response waits for its charge's commit.
const STRICT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Call {
    pub app: AppState,
    /// The key's admission, through which the call reports the tokens it used.
    pub admitted: Admitted,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub request_id: Uuid,
    pub reserve: Decimal,
    /// The snapshot the call was admitted with (rates if they vanish meanwhile).
    pub snap: Arc<Snapshot>,
    pub plan: Arc<Plan>,
    pub model: String,
    /// The prompt's estimate made at admission: its usage when the upstream reports none.
    pub prompt_tokens: u32,
    /// Where the time spent upstream is counted (for `server-timing` and metrics).
    pub ctx: Arc<RequestCtx>,
}

impl Call {
    /// Nothing was produced: drop the reservation and the tpm estimate.
    fn nothing(&self) {
        self.app.balances.release(self.user_id, self.request_id);
        self.admitted.record(0);
    }

    /// The usage of an answer whose upstream reported none: the prompt as estimated at
    /// admission, and the answer's counted tokens.
    fn estimated(&self, output_tokens: u32) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens,
        }
    }

    fn strict(&self) -> bool {
        self.app.config.billing_durability == Durability::Strict
    }

    /// Charges what the call used, at the rates of the target that answered. With strict
    /// durability, also waits for the charge's commit; an error then means the response
    /// must not claim success.
    async fn bill(
        &self,
        provider: String,
        model: String,
        usage: Usage,
        source: &'static str,
    ) -> Result<(), ApiError> {
        self.admitted.record(usage.total());
        // Rates current now; if they vanished mid-call, those the call was admitted with.
        let (t, u) = (self.tenant_id, self.user_id);
        let price = self
            .app
            .snapshot
            .load()
            .price(t, u, &provider, &model)
            .or_else(|| self.snap.price(t, u, &provider, &model));
        let (charge, price) = match price {
            Some(p) => (p.charge(usage), p),
            None => {
                tracing::error!(request_id = %self.request_id, %provider, %model,
                    "no rate for the target that answered; charging the reservation");
                let free = Price {
                    input_rate: Decimal::ZERO,
                    output_rate: Decimal::ZERO,
                    markup_percent: Decimal::ZERO,
                };
                let whole = Charge {
                    platform_cost: self.reserve,
                    amount: self.reserve,
                };
                (whole, free)
            }
        };
        let settled = self
            .app
            .balances
            .settle(
                self.user_id,
                ChargeRequest {
                    request_id: self.request_id,
                    amount: charge.amount,
                    usage: UsageRecord {
                        tenant_id: self.tenant_id,
                        virtual_key_id: self.admitted.admission.key_id,
                        provider,
                        model,
                        usage,
                        input_rate: price.input_rate,
                        output_rate: price.output_rate,
                        markup_percent: price.markup_percent,
                        platform_cost: charge.platform_cost,
                        usage_source: source,
                    },
                },
            )
            .await;
        match settled {
            Err(e) => {
                tracing::error!(request_id = %self.request_id, user_id = %self.user_id, error = ?e,
                    "a served call may not have been charged: its settle was never answered");
                if self.strict() {
                    return Err(ApiError::Unavailable(
                        "billing did not answer; the call is not confirmed".into(),
                    ));
                }
                Ok(())
            }
            Ok(_) if self.strict() => self.durable().await,
            Ok(_) => Ok(()),
        }
    }

    /// Waits until the charge is committed to PostgreSQL (strict durability).
    async fn durable(&self) -> Result<(), ApiError> {
        let Some(committed) = self.app.journal.committed(&self.request_id.to_string()) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        match tokio::time::timeout(STRICT_WAIT, committed).await {
            Ok(Ok(())) => {
                crate::metrics::strict_wait(started.elapsed());
                Ok(())
            }
            _ => {
                tracing::error!(request_id = %self.request_id,
                    "strict durability: the charge was not committed in time");
                Err(ApiError::Unavailable(format!(
                    "the call was served and will be billed, but its charge could not be \
                     committed within {} s (request id {})",
                    STRICT_WAIT.as_secs(),
                    self.request_id
                )))
            }
        }
    }

    /// Runs the call; returns the response to send (its billing may still be running).
    pub async fn run(self, body: Map<String, Value>, stream: bool) -> Result<Response, ApiError> {
        let rid = self.request_id.to_string();
        let started = std::time::Instant::now();
        let answer = self
            .app
            .upstreams
            .execute(&self.plan, &body, &self.model, &rid, stream)
            .await;
        self.ctx.add_upstream(started.elapsed());
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.nothing();
                return Err(upstream_error(e));
            }
        };
        let response = match answer {
            Answer::Whole(reply) => {
                let (usage, source) = match reply.usage {
                    Some(u) => (u, "upstream"),
                    None => {
                        let text = answer_text(&reply.body);
                        let output_tokens = tokens::count_async(text).await;
                        (self.estimated(output_tokens), "estimated")
                    }
                };
                self.bill(reply.provider, reply.model, usage, source)
                    .await?;
                ([(header::CONTENT_TYPE, "application/json")], reply.body).into_response()
            }
            Answer::Stream(reply) => {
                let wants_usage = body
                    .get("stream_options")
                    .and_then(|o| o.get("include_usage"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let (tx, rx) = mpsc::channel(64);
                tokio::spawn(self.stream(reply, wants_usage, tx));
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|c| (c, rx))
                });
                (
                    [
                        (header::CONTENT_TYPE, "text/event-stream"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    Body::from_stream(chunks),
                )
                    .into_response()
            }
        };
        Ok(response)
    }

    /// Pumps a stream to the client, then bills what the upstream produced: its reported
    /// usage, or the tokens counted in what it delivered.
    async fn stream(
        self,
        reply: StreamReply,
        wants_usage: bool,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        let (provider, model) = (reply.provider.clone(), reply.model.clone());
        let strict = self.strict();
        let out = pump(reply, wants_usage, strict, tx.clone()).await;
        if out.client_gone {
            tracing::info!(request_id = %self.request_id, "client left mid-stream; billed in full");
        }
        let (usage, source) = match out.usage {
            Some(u) => (u, "upstream"),
            None => {
                let output_tokens = tokens::count_async(out.text).await;
                (self.estimated(output_tokens), "estimated")
            }
        };
        let billed = self.bill(provider, model, usage, source).await;
        if out.done_held && !out.client_gone {
            // Strict: `[DONE]` only once the charge is durable.
            let last = match billed {
                Ok(()) => sse::data("[DONE]"),
                Err(e) => sse::data(
                    &serde_json::json!({"error": {"message": e.to_string(),
                        "type": "api_error", "code": "service_unavailable"}})
                    .to_string(),
                ),
            };
            let _ = tx.send(Ok(last)).await;
        }
    }
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
