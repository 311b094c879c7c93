//! Admission: everything a call must pass before anything goes upstream, cheapest first,
//! and the worst case it may cost reserved on the owner's balance.

use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

use super::hold::Hold;
use super::{CallError, Observe, Operation, OutputLimits};
use crate::actors::balances::{BalanceError, Refusal};
use crate::actors::keys::AdmitError;
use crate::auth::KeyHash;
use crate::billing::{AccountStatus, Decimal, Usage};
use crate::db;
use crate::plan::Plan;
use crate::snapshot::Snapshot;
use crate::state::AppState;
use crate::tokens;
use crate::trace::{Kind, Span};

/// A call admitted and reserved, ready to run.
pub struct Admitted<O> {
    pub(super) app: AppState,
    pub(super) op: O,
    pub(super) hold: Hold,
    pub(super) user_id: Uuid,
    pub(super) tenant_id: Uuid,
    pub(super) key_id: Uuid,
    pub(super) request_id: Uuid,
    /// What was reserved: charged whole if the rate vanished by the end of the call.
    pub(super) reserve: Decimal,
    /// The snapshot the call was admitted with (rates if they vanish meanwhile).
    pub(super) snap: Arc<Snapshot>,
    pub(super) plan: Arc<Plan>,
    /// The prompt's estimate: its usage when the upstream reports none.
    pub(super) prompt_tokens: u32,
    pub(super) seen: Arc<dyn Observe>,
}

pub(super) async fn admit<O: Operation>(
    app: &AppState,
    (key, client): (KeyHash, Option<IpAddr>),
    mut op: O,
    request_id: Uuid,
    seen: Arc<dyn Observe>,
) -> Result<Admitted<O>, CallError> {
    let model = op.model().to_owned();
    let mut span = Span::child(seen.trace(), "admission", Kind::Internal);
    span.display("neuropia.request_id", request_id);
    span.str("gen_ai.request.model", &model);
    let snap = app.snapshot.load_full();
    let Some(route) = snap.model(&model) else {
        return Err(CallError::UnknownModel(model));
    };
    seen.model(&model);
    let image_tokens = route.image_tokens.unwrap_or(app.config.image_tokens);
    let cap = route
        .max_output_tokens
        .unwrap_or(app.config.max_output_tokens);
    let limits = OutputLimits {
        cap,
        default: route
            .default_max_tokens
            .unwrap_or(app.config.default_max_tokens)
            .min(cap),
    };
    let prompt_tokens = if op.prompt_bytes() > tokens::INLINE_BYTES {
        // A large prompt is counted (off the async workers) only for a key that may call
        // this model, of an account that may spend, one count per account at a time.
        let view = app.keys.describe(key).await.map_err(CallError::Key)?;
        view.permits(&model, client)
            .map_err(|d| CallError::Key(AdmitError::Denied(d)))?;
        if snap.suspended.contains(&view.user_id) {
            return Err(CallError::Suspended);
        }
        let account = app
            .balances
            .get(view.user_id)
            .await
            .map_err(CallError::Balance)?;
        if account.status != AccountStatus::Active {
            let refused = Refusal::NotActive(account.status);
            return Err(CallError::Balance(BalanceError::Refused(refused)));
        }
        let _turn = tokens::owner_turn(view.user_id.as_u128()).await;
        op.prompt_tokens(image_tokens).await
    } else {
        op.prompt_tokens(image_tokens).await
    };
    let worst = Usage::new(prompt_tokens, op.max_output(limits)?);

    let checked = app
        .keys
        .check(key, &model, worst.total(), client)
        .await
        .map_err(|e| {
            span.error("refused");
            CallError::Key(e)
        })?;
    let a = &checked.admission;
    let (user_id, tenant_id, key_id) = (a.user_id, a.tenant_id, a.key_id);
    seen.key(key_id);
    span.display("neuropia.key_id", key_id);
    span.int("gen_ai.usage.input_tokens", i64::from(prompt_tokens));
    // From here on, whatever the call holds is given back however it ends.
    let budgeted = checked.admission.budgeted;
    let mut hold = Hold::new(&app.balances, user_id, request_id, checked);
    if snap.suspended.contains(&user_id) {
        return Err(CallError::Suspended);
    }
    // The user's or tenant's Portkey config when there is one, else the model's plan.
    let Some((plan, _)) = snap.plan_for(tenant_id, user_id, &model) else {
        return Err(CallError::UnknownModel(model));
    };
    let Some(reserve) = reservation(&snap, &plan, &model, tenant_id, user_id, worst) else {
        return Err(CallError::NotPriced(model));
    };
    let overdraft = snap.overdraft(tenant_id);
    drop(span);
    let mut span = Span::child(seen.trace(), "reservation", Kind::Internal);
    span.display("neuropia.request_id", request_id);
    span.display("neuropia.key_id", key_id);
    span.str("gen_ai.request.model", &model);
    span.display("neuropia.reserved", reserve);

    // The key's global limits (Redis, with several instances) and the balance are checked
    // side by side; whichever refuses, the hold undoes the other.
    // A budgeted key's budget is held alongside, in PostgreSQL (the key row's lock orders
    // every instance's holds).
    hold.reserving(budgeted.then(|| app.pool.clone()));
    let budget = async {
        if !budgeted {
            return Ok(());
        }
        match db::key_controls::hold(&app.pool, key_id, request_id, reserve).await {
            Ok(held) => held.map_err(CallError::OverBudget),
            Err(e) => Err(CallError::Budget(e.to_string())),
        }
    };
    let (confirmed, reserved, budget) = tokio::join!(
        hold.confirm(&app.keys, &model),
        app.balances
            .reserve(user_id, request_id, reserve, overdraft),
        budget
    );
    if confirmed.is_err() || budget.is_err() || reserved.is_err() {
        span.error("refused");
    }
    drop(span);
    confirmed.map_err(CallError::Key)?;
    budget?;
    reserved.map_err(CallError::Balance)?;
    Ok(Admitted {
        app: app.clone(),
        op,
        hold,
        user_id,
        tenant_id,
        key_id,
        request_id,
        reserve,
        snap,
        plan,
        prompt_tokens,
        seen,
    })
}

/// The most a call can cost: prompt estimate plus the output ceiling, on the dearest
/// target of the plan. `None` when a target has no rate.
fn reservation(
    snap: &Snapshot,
    plan: &Plan,
    requested: &str,
    tenant_id: Uuid,
    user_id: Uuid,
    usage: Usage,
) -> Option<Decimal> {
    let mut max = Decimal::ZERO;
    for t in &plan.targets {
        let price = snap.price(
            (tenant_id, user_id),
            requested,
            &t.provider,
            t.model(requested),
        )?;
        max = max.max(price.charge(usage).amount);
    }
    Some(max)
}
