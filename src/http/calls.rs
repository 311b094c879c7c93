//! Calls as HTTP: a [`CallError`] as the client sees it (status, OpenAI-shaped error, no
//! internal text), a [`Reply`] as a response, the request's context as the call's observer.
//! Shared by every endpoint that sells a call.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{body_bytes, discard_body, parse_json};
use super::observe::RequestCtx;
use crate::actors::balances::{BalanceError, Refusal};
use crate::actors::keys::{AdmitError, Denied};
use crate::auth::KeyHash;
use crate::billing::AccountStatus;
use crate::call::{self, CallError, Observe, Operation, Reply};
use crate::db::failures::Failure;
use crate::db::key_controls::OverBudget;
use crate::state::AppState;
use crate::upstream::UpstreamError;

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::BadRequest(message) => ApiError::bad_request(message),
            CallError::UnknownModel(model) => {
                ApiError::NotFound(format!("model {model:?} does not exist"))
            }
            CallError::NotPriced(model) => {
                ApiError::Unavailable(format!("model {model:?} is not priced yet"))
            }
            CallError::Key(e) => admit_error(e),
            CallError::OverBudget(which) => {
                crate::metrics::refusal("key_budget");
                ApiError::PaymentRequired {
                    message: match which {
                        OverBudget::Total => {
                            "this call does not fit what is left of the key's budget"
                        }
                        OverBudget::Monthly => {
                            "this call does not fit what is left of the key's budget this month"
                        }
                    }
                    .into(),
                    code: "key_budget_exceeded",
                }
            }
            CallError::Budget(e) => ApiError::degraded("the key's budget could not be checked", e),
            CallError::Suspended => {
                crate::metrics::refusal("suspended");
                ApiError::Forbidden("the account of this virtual key is suspended".into())
            }
            CallError::Balance(e) => balance_error(e),
            CallError::Upstream(e) => upstream_error(e),
            CallError::NotConfirmed(message) => ApiError::Unavailable(message),
        }
    }
}

/// Sells one call of an operation: the key must exist before the body is read (an unknown
/// key is refused without reading, parsing or counting anything), the body parses into the
/// operation with `parse`, and the call is admitted, run and settled.
pub async fn sell<O: Operation>(
    app: &AppState,
    hash: KeyHash,
    req: Request,
    parse: impl FnOnce(Map<String, Value>) -> Result<O, CallError>,
) -> Result<Reply, ApiError> {
    let ctx = super::observe::ctx(&req);
    let client = super::extract::client_addr(app, req.extensions(), req.headers());
    if let Err(e) = app.keys.known(hash).await {
        discard_body(req.into_body(), app);
        return Err(admit_error(e));
    }
    let bytes = body_bytes(req, app).await?;
    let body = parse_json::<Map<String, Value>>(&bytes)?;
    drop(bytes);
    let op = parse(body)?;
    let model = op.model().to_owned();
    let id = ctx.id;
    match call::call(app, hash, op, client, id, ctx).await {
        Ok(reply) => Ok(reply),
        Err(e) => {
            let e = ApiError::from(e);
            record_failure(app, hash, id, model, &e).await;
            Err(e)
        }
    }
}

/// Keeps a call that failed after its key was known, for its owner to see (never charged).
async fn record_failure(
    app: &AppState,
    hash: KeyHash,
    request_id: Uuid,
    model: String,
    e: &ApiError,
) {
    let Ok(view) = app.keys.describe(hash).await else {
        return;
    };
    app.failures.record(Failure {
        request_id,
        user_id: view.user_id,
        tenant_id: view.tenant_id,
        key_id: view.key_id,
        model,
        status: e.status().as_u16(),
        error_code: e.code().to_owned(),
        at: chrono::Utc::now(),
    });
}

/// The answer, whole (JSON) or streamed (server-sent events).
pub fn response(reply: Reply) -> Response {
    match reply {
        Reply::Whole(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Reply::Stream(events) => (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(events),
        )
            .into_response(),
    }
}

impl Observe for RequestCtx {
    fn model(&self, model: &str) {
        self.set_model(model);
    }

    fn upstream(&self, spent: Duration) {
        self.add_upstream(spent);
    }

    fn key(&self, key_id: Uuid) {
        self.set_key(key_id);
    }

    fn trace(&self) -> Option<crate::trace::SpanContext> {
        self.trace
    }
}

pub(crate) fn admit_error(e: AdmitError) -> ApiError {
    let reason = match &e {
        AdmitError::UnknownKey => "invalid_key",
        AdmitError::Denied(Denied::Inactive) => "key_inactive",
        AdmitError::Denied(Denied::ModelNotAllowed) => "model_not_allowed",
        AdmitError::Denied(Denied::Rpm { .. }) => "rpm",
        AdmitError::Denied(Denied::Tpm { .. }) => "tpm",
        AdmitError::Denied(Denied::Expired) => "key_expired",
        AdmitError::Denied(Denied::IpNotAllowed) => "ip_not_allowed",
        AdmitError::Unavailable(_) => "key_unavailable",
    };
    crate::metrics::refusal(reason);
    match e {
        AdmitError::UnknownKey => ApiError::Unauthorized("invalid virtual key".into()),
        AdmitError::Denied(Denied::Inactive) => {
            ApiError::Unauthorized("this virtual key is deactivated".into())
        }
        AdmitError::Denied(Denied::ModelNotAllowed) => {
            ApiError::Forbidden("this virtual key may not use this model".into())
        }
        AdmitError::Denied(Denied::Rpm { retry_after }) => ApiError::RateLimited {
            message: "requests per minute limit reached for this key".into(),
            code: "rate_limit_exceeded",
            retry_after,
        },
        AdmitError::Denied(Denied::Tpm { retry_after }) => ApiError::RateLimited {
            message: match retry_after {
                Some(_) => "tokens per minute limit reached for this key".into(),
                None => "this request alone exceeds the key's tokens per minute limit".into(),
            },
            code: "tokens_rate_limit_exceeded",
            retry_after: retry_after.unwrap_or(std::time::Duration::from_secs(60)),
        },
        AdmitError::Denied(Denied::Expired) => ApiError::KeyRefused {
            status: StatusCode::UNAUTHORIZED,
            message: "this virtual key has expired".into(),
            code: "key_expired",
        },
        AdmitError::Denied(Denied::IpNotAllowed) => ApiError::KeyRefused {
            status: StatusCode::FORBIDDEN,
            message: "this virtual key may not be used from this address".into(),
            code: "ip_not_allowed",
        },
        AdmitError::Unavailable(e) => {
            ApiError::degraded("the key check is unavailable; retry shortly", e)
        }
    }
}

pub(crate) fn balance_error(e: BalanceError) -> ApiError {
    let reason = match &e {
        BalanceError::Refused(Refusal::NotActive(AccountStatus::Pending)) => "account_pending",
        BalanceError::Refused(Refusal::NotActive(_)) => "account_overdue",
        BalanceError::Refused(Refusal::InsufficientFunds) => "insufficient_balance",
        BalanceError::Refused(Refusal::JournalFull) => "journal_full",
        BalanceError::UnknownUser | BalanceError::Unavailable(_) => "balance_unavailable",
    };
    crate::metrics::refusal(reason);
    match e {
        BalanceError::Refused(Refusal::NotActive(AccountStatus::Pending)) => {
            ApiError::PaymentRequired {
                message: "account is pending: top up to activate it".into(),
                code: "account_pending",
            }
        }
        BalanceError::Refused(Refusal::NotActive(_)) => ApiError::PaymentRequired {
            message: "account is overdue: top up to continue".into(),
            code: "account_overdue",
        },
        BalanceError::Refused(Refusal::InsufficientFunds) => ApiError::PaymentRequired {
            message: "insufficient balance".into(),
            code: "insufficient_balance",
        },
        BalanceError::Refused(Refusal::JournalFull) => {
            ApiError::Unavailable("billing is backed up; retry shortly".into())
        }
        BalanceError::UnknownUser => ApiError::internal("key owner has no profile"),
        BalanceError::Unavailable(e) => {
            ApiError::degraded("the balance check is unavailable; retry shortly", e)
        }
    }
}

pub(crate) fn upstream_error(e: UpstreamError) -> ApiError {
    match e {
        UpstreamError::Client { status, message } => ApiError::UpstreamClient { status, message },
        UpstreamError::Failed { status, message } => {
            // The provider's own words stay in the log (with the request id).
            tracing::warn!(?status, %message, "upstream failed");
            ApiError::BadGateway(match status {
                Some(s) => format!("the upstream failed (status {s})"),
                None => "the upstream could not be reached".into(),
            })
        }
        UpstreamError::CircuitOpen(target) => ApiError::degraded(
            "the upstream is failing; retry shortly",
            format!("circuit open for {target}"),
        ),
        UpstreamError::Timeout => {
            ApiError::GatewayTimeout("the upstream did not answer in time".into())
        }
    }
}
