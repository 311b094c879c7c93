//! Who may act on what.
//!
//! - a `platform_admin` on every tenant and every user but other platform admins;
//! - a `tenant_admin` on its own tenant and its users (not on other tenant admins);
//! - a `user` on itself only.
//!
//! Nobody acts on a user whose role is equal to or above its own, except on itself.
//!
//! Anything else answers 404 (not 403) for users and tenants, so a caller learns nothing
//! about accounts it may not see. Endpoints that exist for one role only (platform
//! administration) answer 403.

use uuid::Uuid;

use super::error::ApiError;
use super::extract::Caller;
use crate::auth::Role;
use crate::db;
use crate::state::AppState;

pub fn user_not_found() -> ApiError {
    ApiError::NotFound("user not found".into())
}

pub fn tenant_not_found() -> ApiError {
    ApiError::NotFound("tenant not found".into())
}

impl Caller {
    pub fn id(&self) -> Uuid {
        self.0.sub
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// A platform admin, or the admin of `tenant_id`.
    pub fn manages_tenant(&self, tenant_id: Uuid) -> bool {
        match self.0.role {
            Role::PlatformAdmin => true,
            Role::TenantAdmin => self.0.tenant_id == tenant_id,
            Role::User => false,
        }
    }

    /// 404 unless the caller manages `tenant_id`.
    pub fn require_tenant(&self, tenant_id: Uuid) -> Result<(), ApiError> {
        if self.manages_tenant(tenant_id) {
            Ok(())
        } else {
            Err(tenant_not_found())
        }
    }
}

/// The tenant `tenant_id`, if `caller` manages it (404 otherwise, and when it does not
/// exist).
pub async fn tenant(
    app: &AppState,
    caller: &Caller,
    tenant_id: Uuid,
) -> Result<db::tenants::Tenant, ApiError> {
    caller.require_tenant(tenant_id)?;
    db::tenants::get(&app.pool, tenant_id)
        .await?
        .ok_or_else(tenant_not_found)
}

/// Checks that `caller` may act on `user_id` (itself, or a user of a lower role in a tenant
/// it manages) and that the user exists; returns the user's tenant.
pub async fn user(app: &AppState, caller: &Caller, user_id: Uuid) -> Result<Uuid, ApiError> {
    if caller.id() == user_id {
        return db::users::tenant_of(&app.pool, user_id)
            .await?
            .ok_or_else(user_not_found);
    }
    if caller.role() == Role::User {
        return Err(user_not_found());
    }
    let (tenant, role) = db::users::tenant_and_role(&app.pool, user_id)
        .await?
        .ok_or_else(user_not_found)?;
    if !caller.manages_tenant(tenant) || role.rank() >= caller.role().rank() {
        return Err(user_not_found());
    }
    Ok(tenant)
}

/// Checks that `caller` may act on the virtual key `key_id`; returns the key.
pub async fn key(
    app: &AppState,
    caller: &Caller,
    key_id: Uuid,
) -> Result<db::keys::KeySummary, ApiError> {
    Ok(key_in(app, caller, key_id).await?.0)
}

/// [`key`], with the tenant of the key's owner.
pub async fn key_in(
    app: &AppState,
    caller: &Caller,
    key_id: Uuid,
) -> Result<(db::keys::KeySummary, Uuid), ApiError> {
    let not_found = || ApiError::NotFound("virtual key not found".into());
    let key = db::keys::get(&app.pool, key_id)
        .await?
        .ok_or_else(not_found)?;
    let tenant = user(app, caller, key.user_id)
        .await
        .map_err(|_| not_found())?;
    Ok((key, tenant))
}
