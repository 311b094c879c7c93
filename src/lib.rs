//! Neuropia: an actor-based AI gateway for an AI-services wholesaler.
//!
//! Customers call with virtual keys; every chat call is checked (key, model allow-list,
//! rpm/tpm, prepaid balance), routed to a provider by a Portkey-format plan, metered, and
//! charged to the customer's balance in real time, exactly, with a markup.
//!
//! # Layout
//!
//! - [`config`]: the typed command line / environment ([`config::Config`]).
//! - [`app`]: assembles the gateway ([`app::build`]) and serves it ([`app::serve`]).
//! - [`actors`]: the supervision tree: root, `config`, `keys`/`key:<id>`,
//!   `balances`/`balance:<user_id>`, `ledger`.
//! - [`journal`]: the charge journal, which outlives any single actor's crash.
//! - [`cache`]: the Redis cache (`virtual_key:{hash}`, `portkey_config:{id}`); never the
//!   only copy of anything.
//! - [`http`]: routes, extractors, the one error type, and the handlers.
//! - [`db`]: PostgreSQL access, one file per aggregate; migrations live in `migrations/`.
//! - [`upstream`]: routing plans (Portkey format) and the direct router; the `mock`
//!   provider.
//! - [`snapshot`]: the routing snapshot read lock-free on the hot path.
//! - [`billing`]: money, prices, charges, the account status machine.
//! - [`auth`]: passwords, JWTs, virtual-key hashes.
//! - [`metrics`]: Prometheus metrics.
//! - [`throttle`]: sign-in and registration throttles per email and client address.
//! - [`clientip`]: the client's address, behind trusted proxies too.
//! - [`tokens`]: token counts and estimates (bounded, off the async workers when large).
//! - [`ratelimit`]: global rpm/tpm in Redis for several instances (atomic script, fallback).
//! - [`redis_conn`]: one Redis connection, single server or cluster.
//! - [`reservations`]: reservations shared by several instances (Redis).
//! - [`cli`]: commands that talk to a running gateway (`neuropia actors`).
//! - [`demo`]: the demo tenant, user and key of `neuropia serve --demo`.

pub mod actors;
pub mod address;
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
pub mod upstream;
