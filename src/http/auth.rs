//! Accounts: register, log in (throttled), refresh a token.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Caller, ClientAddr, JsonBody};
use super::types::ErrorBody;
use crate::auth::{self, Role};
use crate::billing::AccountStatus;
use crate::db;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// At least 10 characters of at least two kinds; not a common password.
    #[schema(example = "a-long-password-1")]
    pub password: String,
    #[schema(example = "alice")]
    pub username: String,
}

#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub user_id: Uuid,
    #[schema(value_type = String, example = "pending")]
    pub status: AccountStatus,
}

pub fn check_email(email: &str) -> Result<(), ApiError> {
    let ok = (3..=254).contains(&email.len())
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request("email is not a valid address"))
    }
}

pub fn check_username(username: &str) -> Result<(), ApiError> {
    if username.is_empty() || username.chars().count() > 64 {
        return Err(ApiError::bad_request("username must be 1 to 64 characters"));
    }
    Ok(())
}

/// Checks a new login's email, username and password (cheap: before any hashing).
pub fn check_new_user(email: &str, password: &str, username: &str) -> Result<(), ApiError> {
    check_email(email)?;
    check_username(username)?;
    auth::check_password_strength(password, email, username).map_err(ApiError::bad_request)
}

fn hash_error(e: auth::HashError) -> ApiError {
    match e {
        auth::HashError::Busy => ApiError::Unavailable(
            "too many sign-ins and registrations at once; retry shortly".into(),
        ),
        auth::HashError::Failed(e) => ApiError::internal(e),
    }
}

/// Stores a new login with its profile (checked by [`check_new_user`]).
pub async fn create_user(
    app: &AppState,
    email: &str,
    password: String,
    username: &str,
    tenant_id: Uuid,
    role: Role,
) -> Result<Uuid, ApiError> {
    check_new_user(email, &password, username)?;
    let hashed = auth::hash_password_bounded(password)
        .await
        .map_err(hash_error)?;
    let created = db::users::create_user(
        &app.pool,
        db::users::NewUser {
            email,
            hashed_password: &hashed,
            username,
            tenant_id,
            role,
        },
    )
    .await;
    match created {
        Ok(id) => Ok(id),
        Err(db::users::CreateUserError::EmailTaken) => Err(ApiError::Conflict(
            "this email is already registered".into(),
        )),
        Err(db::users::CreateUserError::Db(e)) => Err(e.into()),
    }
}

/// Registers a user in the default tenant, `pending` until its first top-up. Throttled
/// per client address (`NEUROPIA_REGISTER_MAX_PER_ADDR` per `NEUROPIA_REGISTER_WINDOW_SECS`).
#[utoipa::path(post, path = "/api/auth/register", tag = "accounts",
    request_body = Register,
    responses(
        (status = 201, body = Registered),
        (status = 400, description = "invalid email, weak password, bad JSON", body = ErrorBody),
        (status = 409, description = "email already registered", body = ErrorBody),
        (status = 429, description = "too many registrations from this address; see Retry-After", body = ErrorBody)))]
pub async fn register(
    State(app): State<AppState>,
    ClientAddr(addr): ClientAddr,
    JsonBody(body): JsonBody<Register>,
) -> Result<(StatusCode, axum::Json<Registered>), ApiError> {
    check_new_user(body.email.trim(), &body.password, body.username.trim())?;
    if let Err(retry_after) = app.registrations.begin(addr) {
        return Err(ApiError::RateLimited {
            message: "too many registrations from this address; try again later".into(),
            code: "registration_throttled",
            retry_after,
        });
    }
    let user_id = create_user(
        &app,
        body.email.trim(),
        body.password,
        body.username.trim(),
        db::users::DEFAULT_TENANT,
        Role::User,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Registered {
            user_id,
            status: AccountStatus::Pending,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(example = "alice@example.com")]
    pub email: String,
    #[schema(example = "a-long-password-1")]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct Token {
    /// HS256 JWT with `sub`, `role`, `tenant_id`, `exp`; send as `Authorization: Bearer`.
    pub token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
    pub user_id: Uuid,
    pub role: Role,
    pub tenant_id: Uuid,
}

fn token(app: &AppState, user_id: Uuid, state: db::users::TokenState) -> Result<Token, ApiError> {
    let db::users::TokenState {
        role,
        tenant_id,
        token_version,
    } = state;
    let (token, expires_at) = app
        .jwt
        .issue(user_id, role, tenant_id, token_version)
        .map_err(ApiError::internal)?;
    Ok(Token {
        token,
        token_type: "Bearer",
        expires_at,
        user_id,
        role,
        tenant_id,
    })
}

/// Logs in. Attempts are counted before the password is checked, per (email, client
/// address) and per client address; past either limit they are refused unevaluated.
#[utoipa::path(post, path = "/api/auth/login", tag = "accounts",
    request_body = Login,
    responses(
        (status = 200, body = Token),
        (status = 401, description = "wrong email or password", body = ErrorBody),
        (status = 403, description = "the account is suspended", body = ErrorBody),
        (status = 429, description = "too many attempts; see Retry-After", body = ErrorBody)))]
pub async fn login(
    State(app): State<AppState>,
    ClientAddr(addr): ClientAddr,
    JsonBody(body): JsonBody<Login>,
) -> Result<axum::Json<Token>, ApiError> {
    let email = auth::normalise_email(&body.email);
    let invalid = || ApiError::Unauthorized("invalid email or password".into());
    if body.password.len() > 256 || email.len() > 254 {
        // No account has such an email or password: nothing to count or check.
        return Err(invalid());
    }
    let attempt =
        app.throttle
            .begin(&email, addr)
            .map_err(|retry_after| ApiError::RateLimited {
                message: "too many sign-in attempts; try again later".into(),
                code: "login_throttled",
                retry_after,
            })?;
    let login = db::users::find_login(&app.pool, &email).await?;
    let phc = login.as_ref().map(|l| l.hashed_password.clone());
    let valid = match auth::verify_password_bounded(body.password, phc).await {
        Ok(valid) => valid,
        Err(e) => {
            attempt.not_evaluated();
            return Err(hash_error(e));
        }
    };
    let Some(login) = login.filter(|_| valid) else {
        return Err(invalid());
    };
    attempt.succeeded();
    if login.suspended {
        // Told only to whoever knows the password.
        return Err(ApiError::Forbidden("this account is suspended".into()));
    }
    let state = db::users::TokenState {
        role: login.role,
        tenant_id: login.tenant_id,
        token_version: login.token_version,
    };
    Ok(axum::Json(token(&app, login.id, state)?))
}

/// Exchanges a valid token for a fresh one (the role and tenant as they are now).
#[utoipa::path(post, path = "/api/auth/refresh", tag = "accounts",
    security(("jwt" = [])),
    responses(
        (status = 200, body = Token),
        (status = 401, description = "missing, invalid or expired token", body = ErrorBody)))]
pub async fn refresh(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Token>, ApiError> {
    let state = db::users::token_state(&app.pool, caller.id())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("this account no longer exists".into()))?;
    Ok(axum::Json(token(&app, caller.id(), state)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        assert!(check_email("a@b.co").is_ok());
        for bad in [
            "",
            "ab",
            "no-at.example",
            "a@b",
            "a b@c.d",
            "@b.c",
            "a@b@c.d",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
