//! Logins, profiles and balances as stored.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::auth::Role;
use crate::billing::{AccountStatus, Decimal};

/// The tenant every self-registered user joins.
pub const DEFAULT_TENANT: Uuid = Uuid::from_u128(1);

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
}

pub async fn find_login(pool: &PgPool, email: &str) -> Result<Option<Login>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, hashed_password, role, tenant_id FROM auth.login WHERE lower(email) = lower($1)",
    )
    .bind(email)
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

/// True when a login with this email exists.
pub async fn email_exists(pool: &PgPool, email: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM auth.login WHERE lower(email) = lower($1))")
        .bind(email)
        .fetch_one(pool)
        .await
}
