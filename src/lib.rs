//! Neuropia: an actor-based AI gateway for an AI-services wholesaler.
//!
//! Customers call with virtual keys; every chat call is checked (key, model allow-list,
//! rpm/tpm, prepaid balance), routed to a provider by a Portkey-format plan, metered, and
//! charged to the customer's balance in real time, exactly, with a markup.
//!
//! # The supervision tree ([`actors`])
//!
//! ```text
//! neuropia                 Root: owns the long-lived children, drains them on shutdown
//! ├── config               ConfigActor: the routing snapshot, hot reload (LISTEN/NOTIFY)
//! ├── keys                 KeySupervisor
//! │   └── key:<key_id>     KeyActor: active flag, allow-list, rpm, tpm window
//! ├── balances             BalanceSupervisor
//! │   └── balance:<user>   BalanceActor: balance, status machine, reservations
//! ├── ledger               LedgerWriter: drains the charge journal into PostgreSQL
//! └── upstreams            UpstreamSupervisor
//!     └── upstream:<target> BreakerActor: one circuit breaker per provider target
//! ```
//!
//! # One paid call ([`call`])
//!
//! ```text
//! http::calls     key known? (before the body is read) -> body -> an Operation
//!                 (call::Chat, Embeddings, Messages, Responses)
//! call::admit     snapshot (model, plan, price) -> prompt counted -> key actor (+ Redis)
//!                 and balance actor reserve the worst case, side by side -> Hold
//! call::run       upstream::Upstreams::execute: router (fallback, loadbalance, retries,
//!                 breakers) over providers, or a Portkey gateway; one send path
//! call::settle    exact charge -> balance actor -> journal -> ledger (PostgreSQL);
//!                 tpm corrected; strict durability waits for the commit
//! http::calls     the reply, whole or streamed; errors as OpenAI-shaped bodies
//! ```
//!
//! # Layers (checked by `scripts/check-layers`; arrows only point down)
//!
//! - [`app`] assembles the gateway ([`app::build`]) and serves it ([`app::serve`]);
//!   [`cli`] talks to a running one; [`demo`] seeds `serve --demo`.
//! - [`http`]: routes, extractors, the one error type, the handlers, the server loop.
//! - [`call`]: one paid call, admit -> run -> settle, generic over an operation (chat,
//!   embeddings, Anthropic Messages, Responses).
//! - [`state`]: [`state::AppState`], the handles every request shares.
//! - [`upstream`]: the router, providers, the send path, Portkey mode, the `mock`.
//! - [`actors`]: the supervision tree above, the child client, fault injection.
//! - [`reservations`] (shared by instances, Redis), [`cache`] (Redis, never the only
//!   copy), [`ratelimit`] (global rpm/tpm, Redis).
//! - [`db`]: PostgreSQL, one file per aggregate, [`db::DbError`]; [`redis_conn`].
//! - [`config`] (typed command line and environment), [`snapshot`] (the routing snapshot
//!   read lock-free on the hot path).
//! - [`auth`] (passwords, JWTs, key hashes), [`journal`] (the charge journal, which
//!   outlives any actor's crash), [`plan`] (Portkey-format routing plans).
//! - Leaves: [`billing`] (money, prices, the status machine), [`metrics`], [`tokens`]
//!   (bounded token counts), [`throttle`] (sign-in and registration), [`clientip`],
//!   [`address`] (private-address checks), [`secret`].

pub mod actors;
pub mod address;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod billing;
pub mod cache;
pub mod call;
pub mod cli;
pub mod clientip;
pub mod config;
pub mod db;
pub mod demo;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod plan;
pub mod ratelimit;
pub mod redis_conn;
pub mod reservations;
pub mod secret;
pub mod snapshot;
pub mod state;
pub mod throttle;
pub mod tokens;
pub mod trace;
pub mod upstream;
