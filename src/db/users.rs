//! Logins, profiles and balances as stored.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::auth::Role;
use crate::billing::{AccountStatus, Decimal};

/// The tenant every self-registered user joins.
pub const DEFAULT_TENANT: Uuid = Uuid::from_u128(1);

/// The platform's own tenant: platform admins, and nobody else.
pub const PLATFORM_TENANT: Uuid = Uuid::from_u128(2);

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("email already registered")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub hashed_password: &'a str,
    pub username: &'a str,
    pub tenant_id: Uuid,
    pub role: Role,
}

/// Inserts a login and its profile (status `pending`, balance 0) in one transaction.
pub async fn create_user(pool: &PgPool, user: NewUser<'_>) -> Result<Uuid, CreateUserError> {
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO auth.login (email, hashed_password, role, tenant_id)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(user.email)
    .bind(user.hashed_password)
    .bind(user.role.as_str())
    .bind(user.tenant_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if super::is_unique_violation(&e) {
            CreateUserError::EmailTaken
        } else {
            CreateUserError::Db(e)
        }
    })?;
    sqlx::query("INSERT INTO data.user_profile (user_id, username, tenant_id) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(user.username)
        .bind(user.tenant_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

pub struct Login {
    pub id: Uuid,
    pub hashed_password: String,
    pub role: Role,
    pub tenant_id: Uuid,
    pub token_version: i32,
    pub suspended: bool,
}

/// The login whose email normalises as `email` does ([`crate::auth::normalise_email`]).
pub async fn find_login(pool: &PgPool, email: &str) -> Result<Option<Login>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, hashed_password, role, tenant_id, token_version,
                suspended_at IS NOT NULL AS suspended
         FROM auth.login WHERE email_norm = $1",
    )
    .bind(crate::auth::normalise_email(email))
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let role: String = r.try_get("role")?;
        Ok(Login {
            id: r.try_get("id")?,
            hashed_password: r.try_get("hashed_password")?,
            role: role
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            tenant_id: r.try_get("tenant_id")?,
            token_version: r.try_get("token_version")?,
            suspended: r.try_get("suspended")?,
        })
    })
    .transpose()
}

/// The tenant of a user, or `None` when the user does not exist.
pub async fn tenant_of(pool: &PgPool, user_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT tenant_id FROM data.user_profile WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

/// The tenant and role of a user, or `None` when the user does not exist.
pub async fn tenant_and_role(
    pool: &PgPool,
    user_id: Uuid,
) -> Result<Option<(Uuid, Role)>, sqlx::Error> {
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT p.tenant_id, l.role FROM data.user_profile p JOIN auth.login l ON l.id = p.user_id
         WHERE p.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    row.map(|(tenant, role)| {
        role.parse()
            .map(|r| (tenant, r))
            .map_err(|e: String| sqlx::Error::Decode(e.into()))
    })
    .transpose()
}

/// A balance as committed in PostgreSQL.
#[derive(Debug, Clone)]
pub struct StoredBalance {
    pub tenant_id: Uuid,
    pub balance: Decimal,
    pub status: AccountStatus,
    pub version: i64,
}

pub async fn stored_balance(
    pool: &PgPool,
    user_id: Uuid,
) -> Result<Option<StoredBalance>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tenant_id, balance, status, balance_version FROM data.user_profile
         WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let status: String = r.try_get("status")?;
        Ok(StoredBalance {
            tenant_id: r.try_get("tenant_id")?,
            balance: r.try_get("balance")?,
            status: status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
            version: r.try_get("balance_version")?,
        })
    })
    .transpose()
}

/// The committed balances of `users` (for live balance actors to re-anchor on).
pub async fn committed_balances(
    pool: &PgPool,
    users: &[Uuid],
) -> Result<Vec<crate::db::ledger::BalanceAfter>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT user_id, balance, status, balance_version FROM data.user_profile
         WHERE user_id = ANY($1)",
    )
    .bind(users)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let status: String = r.try_get("status")?;
            Ok(crate::db::ledger::BalanceAfter {
                user_id: r.try_get("user_id")?,
                balance: r.try_get("balance")?,
                status: status
                    .parse()
                    .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                version: r.try_get("balance_version")?,
                up_to_seq: 0,
            })
        })
        .collect()
}

/// True when a login with this email exists.
pub async fn email_exists(pool: &PgPool, email: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM auth.login WHERE email_norm = $1)")
        .bind(crate::auth::normalise_email(email))
        .fetch_one(pool)
        .await
}

/// A user as shown to itself and its admins.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Profile {
    pub user_id: Uuid,
    pub email: String,
    pub username: String,
    pub tenant_id: Uuid,
    #[schema(value_type = String, example = "user")]
    pub role: Role,
    #[schema(value_type = String, example = "active")]
    pub status: AccountStatus,
    /// The committed balance (charges of the last few milliseconds may not be in yet; the
    /// balance endpoint gives the live figure).
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "9.5")]
    pub balance: Decimal,
    /// The user's own markup, overriding the tenant's; `null` when none.
    #[serde(serialize_with = "crate::billing::ser_opt_money")]
    #[schema(value_type = Option<String>, example = "5")]
    pub markup_percent: Option<Decimal>,
    /// Suspended: it cannot sign in and calls with its keys are refused.
    pub suspended: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

fn profile(r: &sqlx::postgres::PgRow) -> Result<Profile, sqlx::Error> {
    let role: String = r.try_get("role")?;
    let status: String = r.try_get("status")?;
    let decode = |e: String| sqlx::Error::Decode(e.into());
    Ok(Profile {
        user_id: r.try_get("user_id")?,
        email: r.try_get("email")?,
        username: r.try_get("username")?,
        tenant_id: r.try_get("tenant_id")?,
        role: role.parse().map_err(decode)?,
        status: status.parse().map_err(decode)?,
        balance: r.try_get("balance")?,
        markup_percent: r.try_get("markup_percent")?,
        suspended: r.try_get("suspended")?,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn get_profile(pool: &PgPool, user_id: Uuid) -> Result<Option<Profile>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT p.user_id, l.email, p.username, p.tenant_id, l.role, p.status, p.balance,
                p.markup_percent, p.created_at, l.suspended_at IS NOT NULL AS suspended
         FROM data.user_profile p JOIN auth.login l ON l.id = p.user_id
         WHERE p.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(profile).transpose()
}

/// A page of a tenant's users as `viewer` (of role `viewer_role`) may see them: those of a
/// lower role, and itself. Oldest first.
pub async fn list_tenant_users(
    pool: &PgPool,
    tenant_id: Uuid,
    (viewer, viewer_role): (Uuid, Role),
    limit: i64,
    offset: i64,
) -> Result<Vec<Profile>, sqlx::Error> {
    let below: Vec<&str> = [Role::User, Role::TenantAdmin, Role::PlatformAdmin]
        .into_iter()
        .filter(|r| r.rank() < viewer_role.rank())
        .map(Role::as_str)
        .collect();
    let rows = sqlx::query(
        "SELECT p.user_id, l.email, p.username, p.tenant_id, l.role, p.status, p.balance,
                p.markup_percent, p.created_at, l.suspended_at IS NOT NULL AS suspended
         FROM data.user_profile p JOIN auth.login l ON l.id = p.user_id
         WHERE p.tenant_id = $1 AND (l.role = ANY($4) OR p.user_id = $5)
         ORDER BY p.created_at, p.user_id LIMIT $2 OFFSET $3",
    )
    .bind(tenant_id)
    .bind(limit)
    .bind(offset)
    .bind(below)
    .bind(viewer)
    .fetch_all(pool)
    .await?;
    rows.iter().map(profile).collect()
}

/// What [`update_user`] changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    /// `Some(None)` clears the override.
    pub markup: Option<Option<Decimal>>,
    pub suspended: Option<bool>,
}

/// Changes a user's role, markup override or suspension. A new role or a suspension ends
/// the login's tokens. Returns false when the user does not exist.
pub async fn update_user(
    pool: &PgPool,
    user_id: Uuid,
    change: UserChange,
) -> Result<bool, sqlx::Error> {
    let UserChange {
        role,
        markup,
        suspended,
    } = change;
    let mut tx = pool.begin().await?;
    let exists: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM data.user_profile WHERE user_id = $1 FOR NO KEY UPDATE",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if exists.is_none() {
        return Ok(false);
    }
    if let Some(role) = role {
        // A new role ends the login's tokens: they carry the old one.
        sqlx::query(
            "UPDATE auth.login SET role = $2, token_version = token_version + 1
             WHERE id = $1 AND role <> $2",
        )
        .bind(user_id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    }
    if let Some(markup) = markup {
        sqlx::query(
            "UPDATE data.user_profile SET markup_percent = $2, updated_at = now() WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(markup)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(suspended) = suspended {
        // Suspending ends the tokens; a reinstated user signs in again.
        sqlx::query(
            "UPDATE auth.login SET
                 token_version = token_version + CASE WHEN $2 THEN 1 ELSE 0 END,
                 suspended_at = CASE WHEN $2 THEN now() END
             WHERE id = $1 AND (suspended_at IS NOT NULL) <> $2",
        )
        .bind(user_id)
        .bind(suspended)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A login as its tokens must match it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    pub role: Role,
    pub tenant_id: Uuid,
    pub token_version: i32,
}

/// The role, tenant and token version a login has now (`None`: no such login, or it is
/// suspended). Tokens
/// are checked against it on every request and refreshed from it.
pub async fn token_state(pool: &PgPool, user_id: Uuid) -> Result<Option<TokenState>, sqlx::Error> {
    let row: Option<(String, Uuid, i32)> = sqlx::query_as(
        "SELECT role, tenant_id, token_version FROM auth.login
             WHERE id = $1 AND suspended_at IS NULL",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    row.map(|(role, tenant_id, token_version)| {
        role.parse()
            .map(|role| TokenState {
                role,
                tenant_id,
                token_version,
            })
            .map_err(|e: String| sqlx::Error::Decode(e.into()))
    })
    .transpose()
}

/// Sets a login's password; its tokens end (their version is passed).
pub async fn set_password(pool: &PgPool, user_id: Uuid, hashed: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE auth.login SET hashed_password = $2, token_version = token_version + 1
         WHERE id = $1",
    )
    .bind(user_id)
    .bind(hashed)
    .execute(pool)
    .await?;
    Ok(())
}

/// The JWT secret generated and kept by an earlier start, or a new one kept now.
pub async fn persisted_jwt_secret(pool: &PgPool, fresh: &str) -> Result<String, sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth.platform_secret (name, value) VALUES ('jwt', $1) ON CONFLICT DO NOTHING",
    )
    .bind(fresh)
    .execute(pool)
    .await?;
    sqlx::query_scalar("SELECT value FROM auth.platform_secret WHERE name = 'jwt'")
        .fetch_one(pool)
        .await
}
