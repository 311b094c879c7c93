//! Writing a journal batch: usage rows, ledger rows and balance deltas in one transaction.
//!
//! Every call's `usage_log` row and every credit's `balance_ledger` row is unique by
//! `request_id`, a row already written is skipped (for usage rows, by writing the batch
//! again when its `COPY` met one), and balances move by the sum of the rows actually
//! inserted, so writing a batch twice (after a crash between commit and acknowledgement)
//! changes nothing the second time. The calls a batch charges one user are
//! summed in one `charge` ledger row (`calls` of them): the ledger explains every movement
//! of the balance, the usage log every call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::billing::{AccountStatus, Decimal};
use crate::journal::{EntryData, EntryKind, UsageRecord};

/// A user's committed balance after a batch.
#[derive(Debug, Clone)]
pub struct BalanceAfter {
    pub user_id: Uuid,
    pub balance: Decimal,
    pub status: AccountStatus,
    pub version: i64,
    /// The highest journal sequence of this user's entries in the batch.
    pub up_to_seq: u64,
}

#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Sequences of the entries whose rows were inserted (the rest were duplicates).
    pub inserted: HashSet<u64>,
    pub balances: Vec<BalanceAfter>,
    pub usage_rows: usize,
}

/// Writes `batch` inside a new transaction and returns it uncommitted: the caller commits
/// it under the journal's commit lock.
///
/// With `notify_as` (several instances), the balance update tells the other instances
/// (`balance_update`, [`super::notices::payloads`]) in the same transaction, so they learn
/// the new balances when it commits; the id marks the notices as this instance's own. (A
/// notifying transaction takes PostgreSQL's notify lock at commit, so one instance does
/// not.)
pub async fn prepare_batch(
    pool: &PgPool,
    batch: &[Arc<EntryData>],
    notify_as: Option<Uuid>,
) -> Result<(Transaction<'static, Postgres>, BatchOutcome), sqlx::Error> {
    // Usage rows are new but for a batch written again after its commit's answer was lost:
    // they go in with `COPY`, and a row already there fails the batch, which is then
    // written again skipping such rows ([`super::usage_rows`]).
    match write(pool, batch, notify_as, UsageRows::AllNew).await {
        Err(e) if super::is_unique_violation(&e) => {
            write(pool, batch, notify_as, UsageRows::SkipWritten).await
        }
        written => written,
    }
}

/// How a batch writes its usage rows.
#[derive(Clone, Copy)]
enum UsageRows {
    /// All at once (`COPY`): a row already written is a unique violation.
    AllNew,
    /// Rows already written are skipped.
    SkipWritten,
}

async fn write(
    pool: &PgPool,
    batch: &[Arc<EntryData>],
    notify_as: Option<Uuid>,
    usage: UsageRows,
) -> Result<(Transaction<'static, Postgres>, BatchOutcome), sqlx::Error> {
    // Every statement of a batch takes arrays, so a generic plan fits any batch: planned
    // once per connection instead of at every execution (with PostgreSQL's `auto`, the
    // balance update's planning took as long as its execution in small batches).
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
        .await?;
    let mut outcome = BatchOutcome::default();

    // Charges: a `usage_log` row each, whose unique `request_id` makes each happen once;
    // credits: a `balance_ledger` row each, unique the same way.
    let (charges, credits): (Vec<&Arc<EntryData>>, Vec<&Arc<EntryData>>) = batch
        .iter()
        .partition(|e| matches!(e.kind, EntryKind::Charge(_)));
    let mut inserted_ids = insert_usage(&mut tx, &charges, usage, &mut outcome).await?;
    let charged: Vec<&Arc<EntryData>> = charges
        .into_iter()
        .filter(|e| inserted_ids.contains(e.request_id.as_str()))
        .collect();
    inserted_ids.extend(insert_credits(&mut tx, &credits).await?);
    let inserted: Vec<&Arc<EntryData>> = batch
        .iter()
        .filter(|e| inserted_ids.contains(e.request_id.as_str()))
        .collect();
    outcome.inserted = inserted.iter().map(|e| e.seq).collect();
    ledger_charges(&mut tx, &charged).await?;
    claim_codes(&mut tx, &inserted).await?;

    // Per user: the sum of inserted deltas, and the status and balance the actor decided
    // and saw at the newest inserted entry. Entries arrive in journal order, so the last one
    // seen is the newest.
    let mut per_user: BTreeMap<Uuid, (Decimal, AccountStatus, Decimal)> = BTreeMap::new();
    for e in &inserted {
        let slot =
            per_user
                .entry(e.user_id)
                .or_insert((Decimal::ZERO, e.status_after, e.balance_after));
        slot.0 += e.delta;
        slot.1 = e.status_after;
        slot.2 = e.balance_after;
    }
    let mut up_to: HashMap<Uuid, u64> = HashMap::new();
    for e in batch {
        let s = up_to.entry(e.user_id).or_insert(0);
        *s = (*s).max(e.seq);
    }

    let mut u_ids = Vec::with_capacity(per_user.len());
    let mut deltas = Vec::with_capacity(per_user.len());
    let mut u_status = Vec::with_capacity(per_user.len());
    let mut seen_balance = Vec::with_capacity(per_user.len());
    for (u, (d, s, b)) in &per_user {
        u_ids.push(*u);
        deltas.push(*d);
        u_status.push(s.as_str());
        seen_balance.push(*b);
    }
    // The status is the actor's decision, made on its view of the balance. With several
    // instances that view can miss another instance's charges or credits, so the global
    // balance has the last word on crossing zero: an account left `active` at or below zero
    // is `overdue`, and one the actor made `overdue` because it saw the balance at or below
    // zero while the global balance is positive (another instance's top-up made it
    // `active`) stays `active`. With one instance the view is exact and neither applies.
    let rows = sqlx::query(
        "WITH old AS (SELECT user_id, balance, status FROM data.user_profile
                      WHERE user_id = ANY($1) ORDER BY user_id FOR NO KEY UPDATE)
         UPDATE data.user_profile p SET
             balance = p.balance + d.delta,
             status = CASE
                 WHEN d.status = 'active' AND p.balance + d.delta <= 0 THEN 'overdue'
                 WHEN d.status = 'overdue' AND d.seen <= 0 AND p.status = 'active'
                      AND p.balance + d.delta > 0 THEN 'active'
                 ELSE d.status
             END,
             balance_version = p.balance_version + 1,
             updated_at = now()
         FROM UNNEST($1::uuid[], $2::numeric[], $3::text[], $4::numeric[])
              AS d(user_id, delta, status, seen), old
         WHERE p.user_id = d.user_id AND old.user_id = d.user_id
         RETURNING p.user_id, p.balance, p.status, p.balance_version,
                   old.balance AS old_balance, old.status AS old_status",
    )
    .bind(&u_ids)
    .bind(&deltas)
    .bind(&u_status)
    .bind(&seen_balance)
    .fetch_all(&mut *tx)
    .await?;
    super::alerts::on_balances(&mut tx, &rows).await?;
    let mut seen: HashSet<Uuid> = HashSet::new();
    for r in &rows {
        let after = balance_after(r, &up_to)?;
        seen.insert(after.user_id);
        outcome.balances.push(after);
    }
    if let Some(instance) = notify_as
        && !outcome.balances.is_empty()
    {
        sqlx::query("SELECT pg_notify('balance_update', p) FROM UNNEST($1::text[]) AS p")
            .bind(super::notices::payloads(instance, &outcome.balances))
            .execute(&mut *tx)
            .await?;
    }

    // Users whose entries were all duplicates: their actors applied something the database
    // already had, so they get the committed balance to resynchronise.
    let unchanged: Vec<Uuid> = up_to
        .keys()
        .filter(|u| !seen.contains(u))
        .copied()
        .collect();
    if !unchanged.is_empty() {
        let rows = sqlx::query(
            "SELECT user_id, balance, status, balance_version FROM data.user_profile
             WHERE user_id = ANY($1)",
        )
        .bind(&unchanged)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            outcome.balances.push(balance_after(r, &up_to)?);
        }
    }
    Ok((tx, outcome))
}

fn balance_after(
    r: &sqlx::postgres::PgRow,
    up_to: &HashMap<Uuid, u64>,
) -> Result<BalanceAfter, sqlx::Error> {
    let user_id: Uuid = r.try_get("user_id")?;
    let status: String = r.try_get("status")?;
    Ok(BalanceAfter {
        user_id,
        balance: r.try_get("balance")?,
        status: status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        version: r.try_get("balance_version")?,
        up_to_seq: up_to.get(&user_id).copied().unwrap_or(0),
    })
}

/// Inserts the usage rows of `charges` (those already written are skipped); returns the
/// request ids inserted, and moves their keys' spend.
async fn insert_usage(
    tx: &mut Transaction<'static, Postgres>,
    charges: &[&Arc<EntryData>],
    usage: UsageRows,
    outcome: &mut BatchOutcome,
) -> Result<HashSet<String>, sqlx::Error> {
    let charges: Vec<(&EntryData, &UsageRecord)> = charges
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Charge(u) => Some((e.as_ref(), u.as_ref())),
            EntryKind::TopUp { .. } | EntryKind::Redemption { .. } => None,
        })
        .collect();
    if charges.is_empty() {
        return Ok(HashSet::new());
    }
    let inserted = match usage {
        UsageRows::AllNew => {
            super::usage_rows::copy(tx, &charges).await?;
            charges.iter().map(|(e, _)| e.request_id.clone()).collect()
        }
        UsageRows::SkipWritten => super::usage_rows::insert_skipping_written(tx, &charges).await?,
    };
    outcome.usage_rows = inserted.len();
    // Only what was inserted now moves the keys' spend; holds go whatever happened (a
    // duplicate's charge was committed before).
    let (mut spent_keys, mut spent) = (Vec::new(), Vec::new());
    let mut held = Vec::new();
    for (e, u) in &charges {
        if inserted.contains(e.request_id.as_str()) {
            spent_keys.push(u.virtual_key_id);
            spent.push(-e.delta);
        }
        if u.budget_held {
            held.push(e.request_id.as_str());
        }
    }
    super::key_controls::spend(tx, &spent_keys, &spent, &held).await?;
    Ok(inserted)
}

/// Inserts the ledger rows of top-ups and redemptions (those already written are skipped);
/// returns the request ids inserted.
async fn insert_credits(
    tx: &mut Transaction<'static, Postgres>,
    credits: &[&Arc<EntryData>],
) -> Result<Vec<String>, sqlx::Error> {
    if credits.is_empty() {
        return Ok(Vec::new());
    }
    let n = credits.len();
    let mut ids = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut amounts = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut notes: Vec<Option<String>> = Vec::with_capacity(n);
    let mut times: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    for e in credits {
        ids.push(e.request_id.as_str());
        users.push(e.user_id);
        kinds.push(e.kind.as_str());
        amounts.push(e.delta);
        statuses.push(e.status_after.as_str());
        notes.push(match &e.kind {
            EntryKind::TopUp { note } => note.clone(),
            EntryKind::Charge(_) | EntryKind::Redemption { .. } => None,
        });
        times.push(e.created_at);
    }
    sqlx::query_scalar(
        "INSERT INTO data.balance_ledger
             (request_id, user_id, kind, amount, status_after, note, created_at)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::numeric[], $5::text[],
                              $6::text[], $7::timestamptz[])
         ON CONFLICT (request_id) DO NOTHING
         RETURNING request_id",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&kinds)
    .bind(&amounts)
    .bind(&statuses)
    .bind(&notes)
    .bind(&times)
    .fetch_all(&mut **tx)
    .await
}

/// One `charge` ledger row per user (and UTC day, so that a day's ledger charges equal its
/// usage exactly) for the calls `charged` in this batch (newly inserted, in journal order):
/// their sum, their count, the status after the newest and its time, named after the
/// newest call.
async fn ledger_charges(
    tx: &mut Transaction<'static, Postgres>,
    charged: &[&Arc<EntryData>],
) -> Result<(), sqlx::Error> {
    if charged.is_empty() {
        return Ok(());
    }
    type Day = chrono::NaiveDate;
    let mut per_user: BTreeMap<(Uuid, Day), (Decimal, i32, &EntryData)> = BTreeMap::new();
    for e in charged {
        let day = e.created_at.date_naive();
        let slot = per_user
            .entry((e.user_id, day))
            .or_insert((Decimal::ZERO, 0, e));
        slot.0 += e.delta;
        slot.1 += 1;
        slot.2 = e;
    }
    let n = per_user.len();
    let (mut ids, mut users, mut amounts, mut calls) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut times) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((user, _), (amount, count, newest)) in &per_user {
        ids.push(format!("charges:{}", newest.request_id));
        users.push(*user);
        amounts.push(*amount);
        calls.push(*count);
        statuses.push(newest.status_after.as_str());
        times.push(newest.created_at);
    }
    sqlx::query(
        "INSERT INTO data.balance_ledger
             (request_id, user_id, kind, amount, status_after, calls, created_at)
         SELECT u.request_id, u.user_id, 'charge', u.amount, u.status_after, u.calls,
                u.created_at
         FROM UNNEST($1::text[], $2::uuid[], $3::numeric[], $4::text[], $5::int4[],
                     $6::timestamptz[]) AS u(request_id, user_id, amount, status_after,
                                             calls, created_at)",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&amounts)
    .bind(&statuses)
    .bind(&calls)
    .bind(&times)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks the codes of inserted redemption entries as redeemed by their user. The ledger's
/// unique `request_id` (`redeem:<code id>`) already made each credit happen once.
async fn claim_codes(
    tx: &mut Transaction<'static, Postgres>,
    inserted: &[&Arc<EntryData>],
) -> Result<(), sqlx::Error> {
    let (codes, users): (Vec<Uuid>, Vec<Uuid>) = inserted
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::Redemption { code_id } => Some((code_id, e.user_id)),
            _ => None,
        })
        .unzip();
    if codes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE data.redemption_code c SET redeemed_by = u.user_id, redeemed_at = now()
         FROM UNNEST($1::uuid[], $2::uuid[]) AS u(code_id, user_id)
         WHERE c.id = u.code_id AND c.redeemed_at IS NULL",
    )
    .bind(&codes)
    .bind(&users)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
