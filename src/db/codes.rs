//! Redemption codes. Only the SHA-256 of a code is stored; the plaintext is returned once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::auth::KeyHash;
use crate::billing::Decimal;

/// A code as listed to admins: masked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CodeSummary {
    pub id: Uuid,
    /// `NEU-...-ABCD`: the last four characters only.
    pub masked_code: String,
    #[serde(serialize_with = "crate::billing::ser_money")]
    #[schema(value_type = String, example = "25")]
    pub amount: Decimal,
    pub expires_at: DateTime<Utc>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
    pub redeemed_by: Option<Uuid>,
    pub redeemed_at: Option<DateTime<Utc>>,
}

/// Codes look like `NEU-7KQ2-M9XH-4TPA-C3WD`: 16 characters from an alphabet without
/// look-alikes (80 random bits).
pub fn new_code() -> Result<String, String> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    let groups: Vec<String> = chars.chunks(4).map(|c| c.iter().collect()).collect();
    Ok(format!("NEU-{}", groups.join("-")))
}

/// Normalises what a user typed: upper case, no spaces.
pub fn normalise(code: &str) -> String {
    code.trim()
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

pub struct NewCodes<'a> {
    pub amount: Decimal,
    pub expires_at: DateTime<Utc>,
    pub note: Option<&'a str>,
    pub created_by: Uuid,
    pub count: usize,
}

/// Mints codes; returns each code's summary with its plaintext.
pub async fn create(
    pool: &PgPool,
    n: NewCodes<'_>,
) -> Result<Vec<(CodeSummary, String)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(n.count);
    for _ in 0..n.count {
        let code = new_code().map_err(sqlx::Error::Protocol)?;
        let row = sqlx::query(
            "INSERT INTO data.redemption_code (code_hash, code_last4, amount, expires_at, note, created_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, code_last4, amount, expires_at, note, created_at, redeemed_by, redeemed_at",
        )
        .bind(KeyHash::of(&code).to_hex())
        .bind(&code[code.len() - 4..])
        .bind(n.amount)
        .bind(n.expires_at)
        .bind(n.note)
        .bind(n.created_by)
        .fetch_one(&mut *tx)
        .await?;
        out.push((summary(&row)?, code));
    }
    tx.commit().await?;
    Ok(out)
}

fn summary(r: &sqlx::postgres::PgRow) -> Result<CodeSummary, sqlx::Error> {
    let last4: String = r.try_get("code_last4")?;
    Ok(CodeSummary {
        id: r.try_get("id")?,
        masked_code: format!("NEU-...-{last4}"),
        amount: r.try_get("amount")?,
        expires_at: r.try_get("expires_at")?,
        note: r.try_get("note")?,
        created_at: r.try_get("created_at")?,
        redeemed_by: r.try_get("redeemed_by")?,
        redeemed_at: r.try_get("redeemed_at")?,
    })
}

pub async fn list(pool: &PgPool, limit: i64, offset: i64) -> Result<Vec<CodeSummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, code_last4, amount, expires_at, note, created_at, redeemed_by, redeemed_at
         FROM data.redemption_code ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    rows.iter().map(summary).collect()
}

/// The code with this plaintext, if any.
pub async fn find(pool: &PgPool, code: &str) -> Result<Option<CodeSummary>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, code_last4, amount, expires_at, note, created_at, redeemed_by, redeemed_at
         FROM data.redemption_code WHERE code_hash = $1",
    )
    .bind(KeyHash::of(code).to_hex())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(summary).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_and_normalised() {
        let c = new_code().expect("code");
        assert_eq!(c.len(), "NEU-".len() + 16 + 3, "{c}");
        assert!(c.starts_with("NEU-"));
        assert_ne!(new_code().expect("code"), c);
        assert_eq!(normalise(" neu-abcd-efgh \n"), "NEU-ABCD-EFGH");
    }
}
