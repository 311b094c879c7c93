//! The wholesaler controls of a key as the API takes them: an expiry time, spend budgets
//! and a client address allow-list, checked before anything is stored.

use chrono::{DateTime, Utc};

use super::error::ApiError;
use crate::billing::{AmountRule, Decimal};
use crate::clientip::Cidr;
use crate::db::key_controls::ControlChanges;

/// Most ranges in a key's allow-list (they travel in its change notice).
const MAX_RANGES: usize = 32;

fn budget(v: Decimal, name: &'static str) -> Result<Decimal, ApiError> {
    AmountRule::BUDGET
        .named(name)
        .check(v)
        .map_err(ApiError::bad_request)
}

/// Each range parsed and written back in its canonical form.
fn ranges(ips: Vec<String>) -> Result<Vec<String>, ApiError> {
    if ips.len() > MAX_RANGES {
        return Err(ApiError::bad_request(format!(
            "allowed_ips takes at most {MAX_RANGES} ranges"
        )));
    }
    ips.iter()
        .map(|ip| {
            ip.trim()
                .parse::<Cidr>()
                .map(|c| c.to_string())
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "allowed_ips: {ip:?} is not an address or a CIDR range"
                    ))
                })
        })
        .collect()
}

/// The controls given with a new key.
pub fn new_key(
    expires_at: Option<DateTime<Utc>>,
    budget_total: Option<Decimal>,
    budget_monthly: Option<Decimal>,
    allowed_ips: Vec<String>,
) -> Result<ControlChanges, ApiError> {
    Ok(ControlChanges {
        expires_at: expires_at.map(Some),
        budget_total: budget_total
            .map(|b| budget(b, "budget_total").map(Some))
            .transpose()?,
        budget_monthly: budget_monthly
            .map(|b| budget(b, "budget_monthly").map(Some))
            .transpose()?,
        allowed_ips: Some(ranges(allowed_ips)?).filter(|r| !r.is_empty()),
    })
}

/// The controls a change gives (`Some(None)`: removed).
pub fn change(
    expires_at: Option<Option<DateTime<Utc>>>,
    budget_total: Option<Option<Decimal>>,
    budget_monthly: Option<Option<Decimal>>,
    allowed_ips: Option<Vec<String>>,
) -> Result<ControlChanges, ApiError> {
    let patch = |v: Option<Option<Decimal>>, name| {
        v.map(|b| b.map(|b| budget(b, name)).transpose())
            .transpose()
    };
    Ok(ControlChanges {
        expires_at,
        budget_total: patch(budget_total, "budget_total")?,
        budget_monthly: patch(budget_monthly, "budget_monthly")?,
        allowed_ips: allowed_ips.map(ranges).transpose()?,
    })
}
