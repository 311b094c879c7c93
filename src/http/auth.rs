//! `POST /api/auth/register` and `POST /api/auth/login`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::JsonBody;
use crate::app::AppState;
use crate::auth::{self, Role};
use crate::db;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    email: String,
    password: String,
    username: String,
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

pub fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < 8 {
        return Err(ApiError::bad_request(
            "password must be at least 8 characters",
        ));
    }
    if password.len() > 256 {
        return Err(ApiError::bad_request("password must be at most 256 bytes"));
    }
    Ok(())
}

pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

pub async fn register(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<Register>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let email = body.email.trim().to_owned();
    check_email(&email)?;
    check_password(&body.password)?;
    let username = body.username.trim();
    if username.is_empty() || username.chars().count() > 64 {
        return Err(ApiError::bad_request("username must be 1 to 64 characters"));
    }
    let hashed = hash(body.password).await?;
    let created = db::users::create_user(
        &app.pool,
        db::users::NewUser {
            email: &email,
            hashed_password: &hashed,
            username,
            tenant_id: db::users::DEFAULT_TENANT,
            role: Role::User,
        },
    )
    .await;
    match created {
        Ok(user_id) => Ok((
            StatusCode::CREATED,
            axum::Json(json!({"user_id": user_id, "status": "pending"})),
        )),
        Err(db::users::CreateUserError::EmailTaken) => Err(ApiError::Conflict(
            "this email is already registered".into(),
        )),
        Err(db::users::CreateUserError::Db(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    email: String,
    password: String,
}

/// An argon2id hash of nothing anyone knows: verifying against it costs what a real
/// verification costs, so a missing account is not told apart by timing.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let secret = auth::random_hex32().unwrap_or_default();
        auth::hash_password(&secret).unwrap_or_default()
    })
}

pub async fn login(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<Login>,
) -> Result<axum::Json<Value>, ApiError> {
    if body.password.len() > 256 || body.email.len() > 254 {
        return Err(ApiError::Unauthorized("invalid email or password".into()));
    }
    let login = db::users::find_login(&app.pool, body.email.trim()).await?;
    let phc = login.as_ref().map(|l| l.hashed_password.clone());
    let password = body.password;
    let valid = tokio::task::spawn_blocking(move || {
        let phc = phc.as_deref().unwrap_or_else(|| dummy_hash());
        auth::verify_password(&password, phc)
    })
    .await
    .map_err(ApiError::internal)?;
    let Some(login) = login.filter(|_| valid) else {
        return Err(ApiError::Unauthorized("invalid email or password".into()));
    };
    let (token, exp) = app
        .jwt
        .issue(login.id, login.role, login.tenant_id)
        .map_err(ApiError::internal)?;
    Ok(axum::Json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_at": exp,
        "user_id": login.id,
        "role": login.role,
        "tenant_id": login.tenant_id,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_passwords_are_checked() {
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
        assert!(check_password("12345678").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(300)).is_err());
    }
}
