//! HTTP: routes list paths only; handlers extract, ask an actor or the database layer, and
//! map the reply. Every error is an OpenAI-shaped [`error::ApiError`].
//!
//! Routes are registered through utoipa-axum, so the OpenAPI document served at
//! `GET /openapi.json` is generated from the same handlers that serve the requests.

pub mod access;
pub mod admin;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod chat;
pub mod console;
pub mod docs;
pub mod error;
pub mod export;
pub mod extract;
pub mod health;
pub mod key_controls;
pub mod keys;
pub mod messages;
pub mod model_markups;
pub mod money;
pub mod observe;
pub mod ops;
pub mod plain_proxy;
pub mod portkey;
pub mod selfservice;
pub mod server;
pub mod tenants;
pub mod types;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(title = "Neuropia", description = "AI gateway with virtual keys and exact real-time billing. \
        Money is a decimal string; errors are `{\"error\": {\"message\", \"type\", \"code\"}}`."),
    modifiers(&Security),
    // Named by query parameters only: the router does not collect these itself.
    components(schemas(crate::db::usage::GroupBy)),
    tags(
        (name = "chat", description = "OpenAI-compatible calls, with a virtual key"),
        (name = "audit", description = "Who changed what through the platform API"),
        (name = "self-service", description = "A key's own limits, budgets, spend and balance, with only the key"),
        (name = "accounts", description = "Registration, login, tokens"),
        (name = "users", description = "A user's profile, balance, ledger, prices, usage"),
        (name = "keys", description = "Virtual keys and their lifecycle"),
        (name = "money", description = "Top-ups and redemption codes"),
        (name = "tenants", description = "Tenants, their users and usage"),
        (name = "pricing", description = "Provider rates, model plans, markups"),
        (name = "operations", description = "Health, metrics, the actor tree and fault injection"),
        (name = "console", description = "The web console (static files over this API)"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "virtual_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-virtual-key"))),
        );
        components.add_security_scheme(
            "virtual_key_bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, with the OpenAPI document they make (every response described).
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = routes();
    docs::describe_responses(&mut doc);
    (routes, doc)
}

fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(chat::completions))
        .routes(routes!(chat::completions_alias))
        .routes(routes!(chat::embeddings))
        .routes(routes!(chat::responses))
        .routes(routes!(messages::create))
        .routes(routes!(messages::count_tokens))
        .routes(routes!(chat::models))
        .routes(routes!(audit::list))
        .routes(routes!(alerts::put, alerts::list))
        .routes(routes!(alerts::delete))
        .routes(routes!(alerts::alerts))
        .routes(routes!(export::user))
        .routes(routes!(export::tenant))
        .routes(routes!(model_markups::list))
        .routes(routes!(model_markups::set, model_markups::delete))
        .routes(routes!(selfservice::info))
        .routes(routes!(selfservice::subscription))
        .routes(routes!(selfservice::usage))
        .routes(routes!(chat::model))
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(users::profile))
        .routes(routes!(users::balance))
        .routes(routes!(users::ledger))
        .routes(routes!(users::prices))
        .routes(routes!(users::usage))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::get, keys::update))
        .routes(routes!(keys::deactivate))
        .routes(routes!(keys::activate))
        .routes(routes!(keys::rotate))
        .routes(routes!(keys::effective_config))
        .routes(routes!(money::top_up))
        .routes(routes!(money::mint_codes, money::list_codes))
        .routes(routes!(money::redeem))
        .routes(routes!(tenants::create, tenants::list))
        .routes(routes!(tenants::get))
        .routes(routes!(tenants::update))
        .routes(routes!(tenants::create_user_in, tenants::users))
        .routes(routes!(tenants::usage))
        .routes(routes!(admin::put_rate, admin::list_rates))
        .routes(routes!(admin::put_model_config, admin::list_model_configs))
        .routes(routes!(admin::update_user))
        .routes(routes!(portkey::create, portkey::list))
        .routes(routes!(portkey::active))
        .routes(routes!(portkey::get, portkey::update))
        .routes(routes!(portkey::deactivate))
        .routes(routes!(portkey::activate))
        .routes(routes!(ops::inject_fault))
        .routes(routes!(ops::actors))
        .routes(routes!(ops::actors_view))
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        .routes(routes!(observe::metrics))
        .split_for_parts()
}

/// The OpenAPI document as JSON (also `neuropia openapi`).
pub fn openapi_json() -> String {
    api().1.to_pretty_json().unwrap_or_default()
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let (routes, doc) = api();
    let json = serde_json::to_value(&doc).unwrap_or_default();
    let page = axum::response::Html(docs::page(&json));
    let json = axum::Json(json);
    routes
        .route("/openapi.json", get(move || async move { json }))
        .route("/docs", get(move || async move { page }))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this endpoint".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(observe::layer))
        .with_state(state)
}

/// Rebuilds the routing snapshot after a change an API call saved, so that the next call
/// sees it; the change itself is saved even when this fails.
async fn reload(app: &AppState) -> Result<(), ApiError> {
    app.reload_config()
        .await
        .map_err(|e| ApiError::degraded("saved, but the configuration reload failed", e))
}
