//! Virtual keys, through the brief's SQL functions. Only hashes are ever read back.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DbError;
use super::key_controls::{self, ControlChanges};
use crate::auth::{KeyHash, Role};
use crate::billing::Decimal;

/// A key as the key actor needs it (also the value cached in Redis, without the hash,
/// which is the cache key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub id: Uuid,
    #[serde(skip, default = "no_hash")]
    pub hash: KeyHash,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub allowed_models: Vec<String>,
    pub is_active: bool,
    /// The row's `updated_at`: a record older than the one an actor holds is ignored.
    pub updated_at: DateTime<Utc>,
    /// From then on the key is refused (401 `key_expired`).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// The key has a spend budget: its calls hold part of it ([`super::key_controls`]).
    #[serde(default)]
    pub budgeted: bool,
    /// Client address ranges (CIDR) the key may be used from; empty: anywhere.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
}

/// The columns a [`KeyRecord`] is read from, then `WHERE` and the condition given.
macro_rules! select_record {
    ($condition:literal) => {
        concat!(
            "SELECT k.id, k.virtual_key_hash, k.user_id, p.tenant_id, k.name, k.rate_limits,
                    k.allowed_models, k.is_active, k.updated_at, k.expires_at,
                    (k.budget_total IS NOT NULL OR k.budget_monthly IS NOT NULL) AS budgeted,
                    k.allowed_ips
             FROM data.virtual_key k JOIN data.user_profile p USING (user_id) WHERE ",
            $condition
        )
    };
}

/// The columns a [`KeySummary`] is read from, then `WHERE` and the condition given.
macro_rules! select_summary {
    ($condition:literal) => {
        concat!(
            "SELECT id, user_id, name, description, key_prefix, key_last4, rate_limits,
                    allowed_models, is_active, status_reason, created_at, updated_at, rotated_at,
                    expires_at, budget_total, budget_monthly, spent_total,
                    CASE WHEN spent_month_of = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                         THEN spent_month ELSE 0 END AS spent_month,
                    allowed_ips
             FROM data.virtual_key WHERE ",
            $condition
        )
    };
}

fn no_hash() -> KeyHash {
    KeyHash([0; 32])
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
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
        budgeted: r.try_get("budgeted")?,
        allowed_ips: r.try_get("allowed_ips")?,
    })
}

pub async fn find_by_hash(pool: &PgPool, hash: &KeyHash) -> Result<Option<KeyRecord>, sqlx::Error> {
    let row = sqlx::query(select_record!("k.virtual_key_hash = $1"))
        .bind(hash.to_hex())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(key_record).transpose()
}

pub struct NewKey<'a> {
    pub user_id: Uuid,
    /// The role of whoever creates it: its limits and active flag count as set by it.
    pub set_by: Role,
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub rpm: Option<i32>,
    pub tpm: Option<i32>,
    pub allowed_models: &'a [String],
    pub controls: ControlChanges,
}

/// Creates a key with `data.create_virtual_key`; returns its id and the plaintext, which
/// the caller shows once and forgets.
pub async fn create(pool: &PgPool, key: NewKey<'_>) -> Result<(Uuid, String), DbError> {
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
    let id: Uuid = sqlx::query_scalar(
        "UPDATE data.virtual_key SET limits_set_by = $2, status_set_by = $2
         WHERE virtual_key_hash = $1 RETURNING id",
    )
    .bind(KeyHash::of(&plaintext).to_hex())
    .bind(key.set_by.as_str())
    .fetch_one(&mut *tx)
    .await?;
    key_controls::apply(&mut tx, id, &key.controls, false)
        .await?
        .map_err(|why| DbError::Invalid(why.into()))?;
    tx.commit().await?;
    Ok((id, plaintext))
}

/// A key as listed to its owner: masked, never the plaintext or the hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeySummary {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// `vk_...abcd`: the prefix and the last four characters.
    pub masked_key: String,
    pub rate_limit_rpm: Option<u32>,
    pub rate_limit_tpm: Option<u64>,
    pub allowed_models: Vec<String>,
    pub is_active: bool,
    /// Why the key was last deactivated, activated or rotated.
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// From then on the key is refused (401 `key_expired`).
    pub expires_at: Option<DateTime<Utc>>,
    /// The most the key may spend in all, in the account's currency.
    #[serde(serialize_with = "crate::billing::ser_opt_money")]
    #[schema(value_type = Option<String>, example = "50")]
    pub budget_total: Option<Decimal>,
    /// The most it may spend per calendar month (UTC).
    #[serde(serialize_with = "crate::billing::ser_opt_money")]
    #[schema(value_type = Option<String>, example = "10")]
    pub budget_monthly: Option<Decimal>,
    /// What its calls were charged in all (committed charges).
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "1.25")]
    pub spent_total: Decimal,
    /// What they were charged this calendar month.
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "0.5")]
    pub spent_this_month: Decimal,
    /// Client address ranges (CIDR) it may be used from; empty: anywhere.
    pub allowed_ips: Vec<String>,
}

fn summary(r: &PgRow) -> Result<KeySummary, sqlx::Error> {
    let prefix: String = r.try_get("key_prefix")?;
    let last4: String = r.try_get("key_last4")?;
    let limits: serde_json::Value = r.try_get("rate_limits")?;
    Ok(KeySummary {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        masked_key: format!("{prefix}_...{last4}"),
        rate_limit_rpm: limit(&limits, "rpm"),
        rate_limit_tpm: limit(&limits, "tpm"),
        allowed_models: r.try_get("allowed_models")?,
        is_active: r.try_get("is_active")?,
        status_reason: r.try_get("status_reason")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        rotated_at: r.try_get("rotated_at")?,
        expires_at: r.try_get("expires_at")?,
        budget_total: r.try_get("budget_total")?,
        budget_monthly: r.try_get("budget_monthly")?,
        spent_total: r.try_get("spent_total")?,
        spent_this_month: r.try_get("spent_month")?,
        allowed_ips: r.try_get("allowed_ips")?,
    })
}

pub async fn list_for_user(pool: &PgPool, user_id: Uuid) -> Result<Vec<KeySummary>, sqlx::Error> {
    let rows = sqlx::query(select_summary!("user_id = $1 ORDER BY created_at, id"))
        .bind(user_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(summary).collect()
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<KeySummary>, sqlx::Error> {
    let row = sqlx::query(select_summary!("id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(summary).transpose()
}

pub async fn find_by_id(pool: &PgPool, id: Uuid) -> Result<Option<KeyRecord>, sqlx::Error> {
    let row = sqlx::query(select_record!("k.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(key_record).transpose()
}

/// The current records of the keys with these ids (missing ids were deleted).
pub async fn find_many_by_id(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<KeyRecord>, sqlx::Error> {
    let rows = sqlx::query(select_record!("k.id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await?;
    rows.iter().map(key_record).collect()
}

/// A key changed at or after some time.
#[derive(Debug, Clone)]
pub struct ChangedKey {
    pub hash: KeyHash,
    /// The hash before its last rotation, if any.
    pub previous: Option<KeyHash>,
    pub updated_at: DateTime<Utc>,
    pub is_active: bool,
}

/// Keys changed at or after `since`, with the database's clock now (the `since` of the
/// next call). Without `since` (the first check), only the clock.
pub async fn changed_since(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
) -> Result<(Vec<ChangedKey>, DateTime<Utc>), sqlx::Error> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let Some(since) = since else {
        return Ok((Vec::new(), now));
    };
    let rows: Vec<(String, Option<String>, DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT virtual_key_hash, previous_hash, updated_at, is_active FROM data.virtual_key
         WHERE updated_at >= $1",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let changed = rows
        .into_iter()
        .filter_map(|(h, p, updated_at, is_active)| {
            Some(ChangedKey {
                hash: KeyHash::from_hex(&h)?,
                previous: p.as_deref().and_then(KeyHash::from_hex),
                updated_at,
                is_active,
            })
        })
        .collect();
    Ok((changed, now))
}

/// What `PATCH /api/virtual-keys/{id}` may change. For limits, `Some(None)` removes the
/// limit and `None` leaves it.
#[derive(Debug, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub rpm: Option<Option<i32>>,
    pub tpm: Option<Option<i32>>,
    pub allowed_models: Option<Vec<String>>,
    /// Expiry, budgets and the address allow-list.
    pub controls: ControlChanges,
}

/// Why a key change was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyChangeError {
    /// A higher role set what the change would loosen (the reason is for the client).
    #[error("{0}")]
    Locked(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for KeyChangeError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e.into())
    }
}

/// A key's limits as stored, with the role that set them.
#[derive(sqlx::FromRow)]
struct Limits {
    rpm: Option<i32>,
    tpm: Option<i32>,
    models: Vec<String>,
    set_by: String,
}

impl KeyChanges {
    fn touches_limits(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.allowed_models.is_some()
            || !self.controls.is_empty()
    }

    /// Whether the changes only tighten `current`: no limit removed or raised, and an
    /// allow-list only narrowed (an empty list means every model).
    fn only_tightens(&self, current: &Limits) -> Result<(), &'static str> {
        let tighter = |new: Option<Option<i32>>, old: Option<i32>| match (new, old) {
            (None, _) | (Some(_), None) => true,
            (Some(None), Some(_)) => false,
            (Some(Some(n)), Some(o)) => n <= o,
        };
        if !tighter(self.rpm, current.rpm) {
            return Err("rate_limit_rpm was set by a higher role: it may only be lowered");
        }
        if !tighter(self.tpm, current.tpm) {
            return Err("rate_limit_tpm was set by a higher role: it may only be lowered");
        }
        if let Some(models) = &self.allowed_models
            && !current.models.is_empty()
            && (models.is_empty() || !models.iter().all(|m| current.models.contains(m)))
        {
            return Err("allowed_models was set by a higher role: it may only be narrowed");
        }
        Ok(())
    }
}

fn role(s: &str) -> Result<Role, sqlx::Error> {
    s.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))
}

/// Changes a key (`data.update_virtual_key_by_id`) as a caller of role `by`: limits set by
/// a higher role may only be tightened. Limits changed by an equal or higher role count as
/// set by it.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    c: &KeyChanges,
    by: Role,
) -> Result<(), KeyChangeError> {
    let mut tx = pool.begin().await?;
    let current: Option<Limits> = sqlx::query_as(
        "SELECT (rate_limits->>'rpm')::int AS rpm, (rate_limits->>'tpm')::int AS tpm,
                allowed_models AS models, limits_set_by AS set_by
         FROM data.virtual_key WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let current = current.ok_or(DbError::NotFound)?;
    let lower = by.rank() < role(&current.set_by)?.rank();
    if lower {
        c.only_tightens(&current).map_err(KeyChangeError::Locked)?;
    }
    sqlx::query(
        "SELECT data.update_virtual_key_by_id($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, $8)",
    )
    .bind(id)
    .bind(c.name.as_deref())
    .bind(c.description.as_deref())
    .bind(c.rpm.flatten())
    .bind(c.tpm.flatten())
    .bind(c.allowed_models.as_deref())
    .bind(c.rpm == Some(None))
    .bind(c.tpm == Some(None))
    .execute(&mut *tx)
    .await?;
    key_controls::apply(&mut tx, id, &c.controls, lower)
        .await?
        .map_err(KeyChangeError::Locked)?;
    if c.touches_limits() && !lower {
        sqlx::query("UPDATE data.virtual_key SET limits_set_by = $2 WHERE id = $1")
            .bind(id)
            .bind(by.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deactivates or activates a key as a caller of role `by`. A key deactivated by a higher
/// role stays deactivated for a lower one.
pub async fn set_active(
    pool: &PgPool,
    id: Uuid,
    active: bool,
    reason: Option<&str>,
    by: Role,
) -> Result<(), KeyChangeError> {
    let mut tx = pool.begin().await?;
    let row: Option<(bool, String)> = sqlx::query_as(
        "SELECT is_active, status_set_by FROM data.virtual_key WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((is_active, set_by)) = row else {
        return Err(DbError::NotFound.into());
    };
    let set_by_higher = by.rank() < role(&set_by)?.rank();
    if active && !is_active && set_by_higher {
        return Err(KeyChangeError::Locked(
            "this key was deactivated by a higher role: only that role may activate it",
        ));
    }
    if !active && !is_active && set_by_higher {
        // Already deactivated by a higher role: deactivating it again changes nothing (and
        // must not make it this caller's to reactivate).
        return Ok(());
    }
    let sql = if active {
        "SELECT data.activate_virtual_key_by_id($1, $2)"
    } else {
        "SELECT data.deactivate_virtual_key_by_id($1, $2)"
    };
    sqlx::query(sql)
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE data.virtual_key SET status_set_by = $2 WHERE id = $1")
        .bind(id)
        .bind(by.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Gives the key a new secret; returns the new plaintext, shown once.
pub async fn rotate(pool: &PgPool, id: Uuid, reason: Option<&str>) -> Result<String, DbError> {
    Ok(
        sqlx::query_scalar("SELECT data.rotate_virtual_key_by_id($1, $2)")
            .bind(id)
            .bind(reason)
            .fetch_one(pool)
            .await?,
    )
}
