//! PostgreSQL access: small async functions, one file per aggregate. SQL is never built
//! with `format!`; SQLSTATEs are mapped to a [`DbError`] here, never above.

pub mod alerts;
pub mod audit;
pub mod codes;
pub mod config;
mod error;
pub mod export;
pub mod failures;
pub mod key_controls;
pub mod keys;
pub mod ledger;
pub mod notices;
pub mod portkey;
pub mod tenants;
pub mod usage;
mod usage_rows;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub use error::DbError;

/// Creates the database if it is missing.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    if !Postgres::database_exists(url).await? {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!("created database"),
            // Another process created it in between.
            Err(e) if is_code(&e, "42P04") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Connects a pool (creating the database if needed) and applies the migrations.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    ensure_database(url).await?;
    let options = PgConnectOptions::from_str(url)?.application_name("neuropia");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    migrate(&pool).await?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

/// True when `err` is a database error with SQLSTATE `code`.
pub fn is_code(err: &sqlx::Error, code: &str) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == code)
}

/// True when `err` is a unique violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    is_code(err, "23505")
}

#[cfg(test)]
mod tests;
