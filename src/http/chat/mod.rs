//! `POST /v1/chat/completions` (alias `/api/chat/completions`) and `GET /v1/models`.
//!
//! The paid path: key actor admits -> balance actor reserves -> the plan runs upstream ->
//! balance actor settles the exact charge into the journal -> the answer goes back, whole
//! or as a stream. From the reservation on the work runs in a task of its own ([`call`]).

mod call;

use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{VirtualKey, body_bytes, discard_body, parse_json};
use super::types::ErrorBody;
use crate::actors::balances::{BalanceError, Refusal};
use crate::actors::keys::{AdmitError, Denied};
use crate::billing::{AccountStatus, Decimal, Usage};
use crate::snapshot::{ModelRoute, Snapshot};
use crate::state::AppState;
use crate::tokens;
use crate::upstream::UpstreamError;

/// The parts of a chat request the gateway itself needs.
struct ChatRequest {
    model: String,
    max_tokens: Option<u32>,
    /// Choices asked for (`n`): each may be `max_tokens` long.
    n: u32,
    stream: bool,
}

/// The most choices one call may ask for (OpenAI's own limit).
const MAX_CHOICES: u64 = 128;

fn check(body: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= 128 => m.as_str(),
        Some(_) => return Err(ApiError::bad_request("model must be a non-empty string")),
        None => return Err(ApiError::bad_request("missing required field: model")),
    };
    let messages = match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(ApiError::bad_request("messages must not be empty")),
        Some(_) => return Err(ApiError::bad_request("messages must be an array")),
        None => return Err(ApiError::bad_request("missing required field: messages")),
    };
    for m in messages {
        let ok = m.get("role").is_some_and(Value::is_string);
        if !ok {
            return Err(ApiError::bad_request("every message needs a string role"));
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("stream must be a boolean")),
    };
    let ceiling = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a positive integer"))),
    };
    // Both names mean the same ceiling; both are forwarded, so both are bounded.
    let max_tokens = match (ceiling("max_tokens")?, ceiling("max_completion_tokens")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "max_tokens and max_completion_tokens differ: give one",
            ));
        }
        (a, b) => a.or(b),
    };
    let n = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_CHOICES).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("n must be an integer from 1 to {MAX_CHOICES}"))
            })?,
    };
    Ok(ChatRequest {
        model: model.to_owned(),
        max_tokens,
        n,
        stream,
    })
}

/// What a chat call may cost at most, in tokens: its prompt (messages, tools, images) and
/// `n` answers of at most `max_out` tokens each. Sets the output ceiling on the request
/// when the client left it open, so the upstream cannot exceed what was reserved.
fn worst_case(
    app: &AppState,
    route: &ModelRoute,
    req: &ChatRequest,
    body: &mut Map<String, Value>,
    prompt_tokens: u32,
) -> Result<Usage, ApiError> {
    let cap = route
        .max_output_tokens
        .unwrap_or(app.config.max_output_tokens);
    let max_out = match req.max_tokens {
        Some(asked) if asked > cap => {
            return Err(ApiError::bad_request(format!(
                "max_tokens must be at most {cap} for model {:?}",
                req.model
            )));
        }
        Some(asked) => asked,
        None => {
            let ceiling = route
                .default_max_tokens
                .unwrap_or(app.config.default_max_tokens)
                .min(cap);
            body.insert("max_tokens".into(), Value::from(ceiling));
            ceiling
        }
    };
    Ok(Usage {
        input_tokens: prompt_tokens,
        output_tokens: max_out.saturating_mul(req.n),
    })
}

fn admit_error(e: AdmitError) -> ApiError {
    let reason = match &e {
        AdmitError::UnknownKey => "invalid_key",
        AdmitError::Denied(Denied::Inactive) => "key_inactive",
        AdmitError::Denied(Denied::ModelNotAllowed) => "model_not_allowed",
        AdmitError::Denied(Denied::Rpm { .. }) => "rpm",
        AdmitError::Denied(Denied::Tpm { .. }) => "tpm",
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
        AdmitError::Unavailable(e) => {
            ApiError::degraded("the key check is unavailable; retry shortly", e)
        }
    }
}

fn balance_error(e: BalanceError) -> ApiError {
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

/// The most a call can cost: prompt estimate plus the output ceiling, on the dearest
/// target of the plan. `None` when a target has no rate.
fn reservation(
    snap: &Snapshot,
    plan: &crate::plan::Plan,
    requested: &str,
    tenant_id: Uuid,
    user_id: Uuid,
    usage: Usage,
) -> Option<Decimal> {
    let mut max = Decimal::ZERO;
    for t in &plan.targets {
        let price = snap.price(tenant_id, user_id, &t.provider, t.model(requested))?;
        max = max.max(price.charge(usage).amount);
    }
    Some(max)
}

/// OpenAI-compatible chat completion, billed to the key's owner.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat",
    request_body(content = Object, description = "an OpenAI chat completion request"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses(
        (status = 200, description = "the upstream's OpenAI-shaped answer; header x-request-id"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "rpm or tpm; see Retry-After", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
pub async fn completions(
    state: State<AppState>,
    key: VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    chat(state, key, req).await
}

/// The brief's alias of `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/api/chat/completions", tag = "chat",
    request_body(content = Object, description = "an OpenAI chat completion request"),
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "as /v1/chat/completions")))]
pub async fn completions_alias(
    state: State<AppState>,
    key: VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    chat(state, key, req).await
}

async fn chat(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
    req: Request,
) -> Result<Response, ApiError> {
    let ctx = super::observe::ctx(&req);
    // Authentication comes first: an unknown key is refused before its body is read.
    if let Err(e) = app.keys.known(hash).await {
        discard_body(req.into_body(), &app);
        return Err(admit_error(e));
    }
    let bytes = body_bytes(req, &app).await?;
    let mut body = parse_json::<Map<String, Value>>(&bytes)?;
    drop(bytes);
    let request = check(&body)?;
    let model = request.model.clone();
    let snap = app.snapshot.load_full();
    let Some(route) = snap.model(&model).cloned() else {
        return Err(ApiError::NotFound(format!(
            "model {model:?} does not exist"
        )));
    };
    ctx.set_model(&model);
    let per_part = route.image_tokens.unwrap_or(app.config.image_tokens);
    let prompt_tokens = if tokens::chat_prompt_bytes(&body) > tokens::INLINE_BYTES {
        // A large prompt is counted (off the async workers) only for a key that may call
        // this model, of an account that may spend, one count per account at a time.
        let view = app.keys.describe(hash).await.map_err(admit_error)?;
        view.permits(&model)
            .map_err(|d| admit_error(AdmitError::Denied(d)))?;
        let account = app
            .balances
            .get(view.user_id)
            .await
            .map_err(balance_error)?;
        if account.status != AccountStatus::Active {
            let refused = Refusal::NotActive(account.status);
            return Err(balance_error(BalanceError::Refused(refused)));
        }
        let _turn = tokens::owner_turn(view.user_id.as_u128()).await;
        tokens::chat_prompt_async(&body, per_part).await
    } else {
        tokens::chat_prompt(&body, per_part)
    };
    let worst = worst_case(&app, &route, &request, &mut body, prompt_tokens)?;
    let checked = app
        .keys
        .check(hash, &model, worst.total())
        .await
        .map_err(admit_error)?;
    let (user_id, tenant_id) = (checked.admission.user_id, checked.admission.tenant_id);
    // The user's or tenant's Portkey config when there is one, else the model's plan.
    let Some((plan, _)) = snap.plan_for(tenant_id, user_id, &model) else {
        checked.forget();
        return Err(ApiError::NotFound(format!(
            "model {model:?} does not exist"
        )));
    };
    let Some(reserve) = reservation(&snap, &plan, &model, tenant_id, user_id, worst) else {
        checked.forget();
        return Err(ApiError::Unavailable(format!(
            "model {model:?} is not priced yet"
        )));
    };
    let overdraft = snap.overdraft(tenant_id);

    // The key's global limits (Redis, with several instances) and the balance are checked
    // side by side; whichever refuses undoes the other. Until the call takes it over, the
    // reservation is released by `held` however the handler ends, a hung-up client included.
    let request_id = ctx.id;
    let held = HeldReservation {
        app: &app,
        user_id,
        request_id,
        armed: true,
    };
    let (confirmed, reserved) = tokio::join!(
        app.keys.confirm(checked, &model),
        app.balances
            .reserve(user_id, request_id, reserve, overdraft)
    );
    let admitted = confirmed.map_err(admit_error)?;
    if let Err(e) = reserved {
        admitted.record(0);
        return Err(balance_error(e));
    }
    held.hand_over();
    let call = call::Call {
        app: app.clone(),
        admitted,
        user_id,
        tenant_id,
        request_id,
        reserve,
        snap,
        plan,
        model,
        prompt_tokens: worst.input_tokens,
        ctx,
    };
    // The call runs to its end (and is billed) even if the client goes away: polled here
    // while the client waits (no task hop), moved to a task of its own if it hangs up.
    Detached(Some(Box::pin(call.run(body, request.stream)))).await
}

/// A reservation made for a call not yet running: released when dropped, unless handed
/// over to the call (which then settles or releases it).
struct HeldReservation<'a> {
    app: &'a AppState,
    user_id: Uuid,
    request_id: Uuid,
    armed: bool,
}

impl HeldReservation<'_> {
    fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for HeldReservation<'_> {
    fn drop(&mut self) {
        // Releasing a reservation that was refused or never made changes nothing.
        if self.armed {
            self.app.balances.release(self.user_id, self.request_id);
        }
    }
}

type CallFuture = std::pin::Pin<Box<dyn Future<Output = Result<Response, ApiError>> + Send>>;

/// A future that finishes on its own task if it is dropped before it is done.
struct Detached(Option<CallFuture>);

impl Future for Detached {
    type Output = Result<Response, ApiError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(call) = self.0.as_mut() else {
            return std::task::Poll::Ready(Err(ApiError::internal("chat call polled again")));
        };
        let done = call.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            // The client left mid-call: finish (and bill) it without anyone waiting.
            tokio::spawn(async move {
                let _ = call.await;
            });
        }
    }
}

/// The models this key may call, OpenAI-shaped.
#[utoipa::path(get, path = "/v1/models", tag = "chat",
    security(("virtual_key" = []), ("virtual_key_bearer" = [])),
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [...]}`"),
        (status = 401, body = ErrorBody)))]
pub async fn models(
    State(app): State<AppState>,
    VirtualKey(hash): VirtualKey,
) -> Result<axum::Json<Value>, ApiError> {
    let view = app.keys.describe(hash).await.map_err(admit_error)?;
    if !view.is_active {
        return Err(ApiError::Unauthorized(
            "this virtual key is deactivated".into(),
        ));
    }
    let snap = app.snapshot.load();
    let mut names: Vec<(&String, &str)> = snap
        .models
        .iter()
        .filter(|(name, _)| view.allowed_models.is_empty() || view.allowed_models.contains(name))
        .map(|(name, route)| (name, route.provider.as_str()))
        .collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn checks_the_fields_the_gateway_needs() {
        let ok = obj(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10}),
        );
        let c = check(&ok).expect("valid");
        assert_eq!((c.model.as_str(), c.max_tokens, c.n), ("m", Some(10), 1));
        let newer = obj(json!({"model": "m", "messages": [{"role": "user"}],
            "max_tokens": null, "max_completion_tokens": 77}));
        assert_eq!(check(&newer).expect("valid").max_tokens, Some(77));
        for bad in [
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": 5, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": "hi"}),
            json!({"model": "m", "messages": [{"content": "hi"}]}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": -3}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": "9"}),
            json!({"model": "m", "messages": [{"role": "user"}], "n": 0}),
            json!({"model": "m", "messages": [{"role": "user"}], "n": 129}),
            json!({"model": "m", "messages": [{"role": "user"}], "n": 1.5}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": null,
                "max_completion_tokens": 0}),
            json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 1,
                "max_completion_tokens": 100000}),
        ] {
            let b = obj(bad.clone());
            assert!(check(&b).is_err(), "{bad}");
        }
    }
}
