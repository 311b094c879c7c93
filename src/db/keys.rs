//! Virtual keys, through the brief's SQL functions. Only hashes are ever read back.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::auth::KeyHash;

/// A key as the key actor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub hash: KeyHash,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub allowed_models: Vec<String>,
    pub is_active: bool,
}

fn limit<T: TryFrom<i64>>(limits: &serde_json::Value, name: &str) -> Option<T> {
    limits
        .get(name)
        .and_then(serde_json::Value::as_i64)
        .and_then(|v| T::try_from(v).ok())
}

fn key_record(r: &PgRow) -> Result<KeyRecord, sqlx::Error> {
    let hash_hex: String = r.try_get("virtual_key_hash")?;
    let limits: serde_json::Value = r.try_get("rate_limits")?;
    Ok(KeyRecord {
        id: r.try_get("id")?,
        hash: KeyHash::from_hex(&hash_hex)
            .ok_or_else(|| sqlx::Error::Decode("malformed key hash".into()))?,
        user_id: r.try_get("user_id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        rpm: limit(&limits, "rpm"),
        tpm: limit(&limits, "tpm"),
        allowed_models: r.try_get("allowed_models")?,
        is_active: r.try_get("is_active")?,
    })
}

pub async fn find_by_hash(pool: &PgPool, hash: &KeyHash) -> Result<Option<KeyRecord>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT k.id, k.virtual_key_hash, k.user_id, p.tenant_id, k.name, k.rate_limits,
                k.allowed_models, k.is_active
         FROM data.virtual_key k JOIN data.user_profile p USING (user_id)
         WHERE k.virtual_key_hash = $1",
    )
    .bind(hash.to_hex())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(key_record).transpose()
}

pub struct NewKey<'a> {
    pub user_id: Uuid,
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub rpm: Option<i32>,
    pub tpm: Option<i32>,
    pub allowed_models: &'a [String],
}

/// Creates a key with `data.create_virtual_key`; returns its id and the plaintext, which
/// the caller shows once and forgets.
pub async fn create(pool: &PgPool, key: NewKey<'_>) -> Result<(Uuid, String), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let plaintext: String =
        sqlx::query_scalar("SELECT data.create_virtual_key($1, $2, $3, $4, $5, $6, NULL, 'vk')")
            .bind(key.user_id)
            .bind(key.name)
            .bind(key.description)
            .bind(key.rpm)
            .bind(key.tpm)
            .bind(key.allowed_models)
            .fetch_one(&mut *tx)
            .await?;
    let id: Uuid =
        sqlx::query_scalar("SELECT id FROM data.virtual_key WHERE virtual_key_hash = $1")
            .bind(KeyHash::of(&plaintext).to_hex())
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok((id, plaintext))
}

/// A key as listed to its owner: masked, never the plaintext or the hash.
#[derive(Debug, Clone, Serialize)]
pub struct KeySummary {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// `vk_...abcd`: the prefix and the last four characters.
    pub masked_key: String,
    pub rate_limit_rpm: Option<u32>,
    pub rate_limit_tpm: Option<u64>,
    pub allowed_models: Vec<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
}

pub async fn list_for_user(pool: &PgPool, user_id: Uuid) -> Result<Vec<KeySummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, name, description, key_prefix, key_last4, rate_limits, allowed_models,
                is_active, created_at
         FROM data.virtual_key WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let prefix: String = r.try_get("key_prefix")?;
            let last4: String = r.try_get("key_last4")?;
            let limits: serde_json::Value = r.try_get("rate_limits")?;
            Ok(KeySummary {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                masked_key: format!("{prefix}_...{last4}"),
                rate_limit_rpm: limit(&limits, "rpm"),
                rate_limit_tpm: limit(&limits, "tpm"),
                allowed_models: r.try_get("allowed_models")?,
                is_active: r.try_get("is_active")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}
