//! Settling a served call: the exact charge at the rates of the target that answered, into
//! the journal through the owner's balance actor; the key's tpm corrected; with strict
//! durability, a wait for the charge's commit.

use std::time::{Duration, Instant};

use super::admit::Admitted;
use super::{CallError, Operation};
use crate::actors::balances::ChargeRequest;
use crate::billing::{Charge, Price, Usage};
use crate::config::Durability;
use crate::journal::UsageRecord;
use crate::trace::{Kind, Span};

/// The longest a strict response waits for its charge's commit.
const STRICT_WAIT: Duration = Duration::from_secs(30);

impl<O: Operation> Admitted<O> {
    /// The usage of an answer whose upstream reported none: the prompt as estimated at
    /// admission, and the answer's counted tokens.
    pub(super) fn estimated(&self, output_tokens: u32) -> Usage {
        Usage::new(self.prompt_tokens, output_tokens)
    }

    pub(super) fn strict(&self) -> bool {
        self.app.config.billing_durability == Durability::Strict
    }

    /// Charges what the call used, at the rates of the target that answered. With strict
    /// durability, also waits for the charge's commit; an error then means the response
    /// must not claim success.
    pub(super) async fn settle(
        &mut self,
        provider: String,
        model: String,
        usage: Usage,
        source: &'static str,
    ) -> Result<(), CallError> {
        let budget_held = self.hold.budget_held();
        self.hold.charged(usage.total());
        let (charge, price) = self.price(&provider, &model, usage);
        let trace = self.seen.trace();
        let mut span = Span::child(trace, "settle", Kind::Internal);
        span.display("neuropia.request_id", self.request_id);
        span.display("neuropia.key_id", self.key_id);
        span.str("gen_ai.request.model", self.op.model());
        span.str("gen_ai.system", &provider);
        span.str("gen_ai.response.model", &model);
        span.int("gen_ai.usage.input_tokens", i64::from(usage.input_tokens));
        span.int("gen_ai.usage.output_tokens", i64::from(usage.output_tokens));
        span.display("neuropia.charge", charge.amount);
        span.str("neuropia.usage_source", source);
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
                        virtual_key_id: self.key_id,
                        provider,
                        model,
                        usage,
                        input_rate: price.input_rate,
                        output_rate: price.output_rate,
                        markup_percent: price.markup_percent,
                        cached_input_rate: price.cached_input_rate,
                        cache_write_rate: price.cache_write_rate,
                        reasoning_output_rate: price.reasoning_output_rate,
                        platform_cost: charge.platform_cost,
                        usage_source: source,
                        budget_held,
                        trace,
                    },
                },
            )
            .await;
        match settled {
            Err(e) => {
                span.error("not settled");
                tracing::error!(request_id = %self.request_id, user_id = %self.user_id, error = ?e,
                    "a served call may not have been charged: its settle was never answered");
                if self.strict() {
                    return Err(CallError::NotConfirmed(
                        "billing did not answer; the call is not confirmed".into(),
                    ));
                }
                Ok(())
            }
            Ok(_) if self.strict() => {
                let durable = self.durable().await;
                if durable.is_err() {
                    span.error("not committed in time");
                }
                durable
            }
            Ok(_) => Ok(()),
        }
    }

    /// The charge for `usage` at the rates current now; if they vanished mid-call, those
    /// the call was admitted with; if those are gone too, the whole reservation.
    fn price(&self, provider: &str, model: &str, usage: Usage) -> (Charge, Price) {
        let who = (self.tenant_id, self.user_id);
        let requested = self.op.model();
        let price = self
            .app
            .snapshot
            .load()
            .price(who, requested, provider, model)
            .or_else(|| self.snap.price(who, requested, provider, model));
        match price {
            Some(p) => (p.charge(usage), p),
            None => {
                tracing::error!(request_id = %self.request_id, %provider, %model,
                    "no rate for the target that answered; charging the reservation");
                let free = Price::free();
                let whole = Charge {
                    platform_cost: self.reserve,
                    amount: self.reserve,
                };
                (whole, free)
            }
        }
    }

    /// Waits until the charge is committed to PostgreSQL (strict durability).
    async fn durable(&self) -> Result<(), CallError> {
        let Some(committed) = self.app.journal.committed(&self.request_id.to_string()) else {
            return Ok(());
        };
        let started = Instant::now();
        match tokio::time::timeout(STRICT_WAIT, committed).await {
            Ok(Ok(())) => {
                crate::metrics::strict_wait(started.elapsed());
                Ok(())
            }
            _ => {
                tracing::error!(request_id = %self.request_id,
                    "strict durability: the charge was not committed in time");
                Err(CallError::NotConfirmed(format!(
                    "the call was served and will be billed, but its charge could not be \
                     committed within {} s (request id {})",
                    STRICT_WAIT.as_secs(),
                    self.request_id
                )))
            }
        }
    }
}
