//! HTTP: routes list paths only; handlers extract, ask an actor or the database layer, and
//! map the reply. Every error is an OpenAI-shaped [`error::ApiError`].

pub mod admin;
pub mod auth;
pub mod chat;
pub mod error;
pub mod extract;
pub mod health;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post, put};

use crate::app::AppState;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/health", get(health::health))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/api/chat/completions", post(chat::completions))
        .route("/v1/models", get(chat::models))
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/users/{user_id}/topups", post(users::top_up))
        .route(
            "/api/users/{user_id}/virtual-keys",
            post(users::create_key).get(users::list_keys),
        )
        .route("/api/users/{user_id}/balance", get(users::balance))
        .route("/api/users/{user_id}/usage", get(users::usage))
        .route("/api/admin/provider-rates", put(admin::put_rate))
        .route("/api/admin/model-configs", put(admin::put_model_config))
        .route("/api/admin/tenants/{tenant_id}", patch(admin::patch_tenant))
        .route("/api/admin/faults", post(admin::inject_fault))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
