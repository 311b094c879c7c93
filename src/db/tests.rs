//! The data layer against a real PostgreSQL: one fresh database per test
//! (`#[sqlx::test]`, migrations applied), no actors, no HTTP.

use std::sync::Arc;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::keys::{KeyChangeError, KeyChanges, NewKey};
use super::users::{CreateUserError, DEFAULT_TENANT, NewUser};
use super::{DbError, keys, ledger, users};
use crate::auth::{KeyHash, Role};
use crate::billing::{AccountStatus, Decimal, Usage};
use crate::journal::{EntryData, EntryKind, UsageRecord};

fn d(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn user(pool: &PgPool, email: &str) -> Uuid {
    users::create_user(
        pool,
        NewUser {
            email,
            hashed_password: "not-a-hash",
            username: email,
            tenant_id: DEFAULT_TENANT,
            role: Role::User,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("creating {email}: {e}"))
}

async fn key(pool: &PgPool, user_id: Uuid, set_by: Role) -> (Uuid, String) {
    keys::create(
        pool,
        NewKey {
            user_id,
            set_by,
            name: "k",
            description: None,
            rpm: Some(100),
            tpm: None,
            allowed_models: &[],
            controls: Default::default(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("creating a key: {e}"))
}

/// A journal entry as a balance actor makes it: `delta`, and the status and balance the
/// actor saw after it.
fn entry(seq: u64, user_id: Uuid, delta: &str, after: (&str, AccountStatus)) -> Arc<EntryData> {
    Arc::new(EntryData {
        seq,
        request_id: format!("req-{seq}-{user_id}"),
        user_id,
        delta: d(delta),
        status_after: after.1,
        balance_after: d(after.0),
        created_at: Utc::now(),
        kind: EntryKind::TopUp { note: None },
    })
}

fn charge(
    seq: u64,
    user_id: Uuid,
    key_id: Uuid,
    amount: &str,
    after: (&str, AccountStatus),
) -> Arc<EntryData> {
    let mut e = (*entry(seq, user_id, &format!("-{amount}"), after)).clone();
    e.kind = EntryKind::Charge(Box::new(UsageRecord {
        tenant_id: DEFAULT_TENANT,
        virtual_key_id: key_id,
        provider: "mock".into(),
        model: "m".into(),
        usage: Usage::new(10, 5),
        input_rate: d("0.001"),
        output_rate: d("0.002"),
        markup_percent: Decimal::ZERO,
        cached_input_rate: None,
        cache_write_rate: None,
        reasoning_output_rate: None,
        platform_cost: d(amount),
        usage_source: "upstream",
        budget_held: false,
        trace: None,
    }));
    Arc::new(e)
}

async fn write(pool: &PgPool, batch: &[Arc<EntryData>]) -> ledger::BatchOutcome {
    let (tx, outcome) = ledger::prepare_batch(pool, batch, None)
        .await
        .unwrap_or_else(|e| panic!("batch: {e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
    outcome
}

async fn stored(pool: &PgPool, user_id: Uuid) -> (Decimal, AccountStatus, i64) {
    let s = users::stored_balance(pool, user_id)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no profile for {user_id}"));
    (s.balance, s.status, s.version)
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_moves_each_users_balance_by_the_sum_of_its_entries(pool: PgPool) {
    let (a, b) = (user(&pool, "a@x.io").await, user(&pool, "b@x.io").await);
    let (key_a, _) = key(&pool, a, Role::User).await;
    let active = AccountStatus::Active;
    let out = write(
        &pool,
        &[
            entry(1, a, "10", ("10", active)),
            entry(2, b, "5", ("5", active)),
            charge(3, a, key_a, "0.25", ("9.75", active)),
            charge(4, a, key_a, "0.5", ("9.25", active)),
        ],
    )
    .await;
    assert_eq!(out.inserted.len(), 4);
    assert_eq!(out.usage_rows, 2);
    assert_eq!(
        stored(&pool, a).await,
        (d("9.25"), active, 1),
        "one update per user"
    );
    assert_eq!(stored(&pool, b).await, (d("5"), active, 1));
    let after_a = out.balances.iter().find(|x| x.user_id == a);
    assert_eq!(
        after_a.map(|x| (x.balance, x.up_to_seq)),
        Some((d("9.25"), 4))
    );
    // The two credits, and one row for a's two calls.
    let rows: Vec<(String, Decimal, Option<i32>)> = sqlx::query_as(
        "SELECT kind, amount, calls FROM data.balance_ledger WHERE user_id = $1 ORDER BY id",
    )
    .bind(a)
    .fetch_all(&pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rows,
        [
            ("topup".into(), d("10"), None),
            ("charge".into(), d("-0.75"), Some(2))
        ]
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM data.balance_ledger").await,
        3
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM data.usage_log").await, 2);
}

#[sqlx::test(migrations = "./migrations")]
async fn charges_written_twice_are_charged_once(pool: PgPool) {
    let a = user(&pool, "a@x.io").await;
    let (key_a, _) = key(&pool, a, Role::User).await;
    let active = AccountStatus::Active;
    let first = [
        entry(1, a, "10", ("10", active)),
        charge(2, a, key_a, "0.25", ("9.75", active)),
        charge(3, a, key_a, "0.5", ("9.25", active)),
    ];
    write(&pool, &first).await;
    // The batch again (its commit's answer was lost), with one more call.
    let again = write(
        &pool,
        &[
            first[1].clone(),
            first[2].clone(),
            charge(4, a, key_a, "1", ("8.25", active)),
        ],
    )
    .await;
    assert_eq!(again.inserted.into_iter().collect::<Vec<_>>(), vec![4]);
    assert_eq!(again.usage_rows, 1);
    assert_eq!(stored(&pool, a).await.0, d("8.25"));
    let charges: Vec<(Decimal, Option<i32>)> = sqlx::query_as(
        "SELECT amount, calls FROM data.balance_ledger WHERE kind = 'charge' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(charges, [(d("-0.75"), Some(2)), (d("-1"), Some(1))]);
    let spent: Decimal =
        sqlx::query_scalar("SELECT spent_total FROM data.virtual_key WHERE id = $1")
            .bind(key_a)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spent, d("1.75"), "each call's spend once");
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_written_twice_moves_nothing_the_second_time(pool: PgPool) {
    let a = user(&pool, "a@x.io").await;
    let active = AccountStatus::Active;
    let batch = [
        entry(1, a, "10", ("10", active)),
        entry(2, a, "2", ("12", active)),
    ];
    write(&pool, &batch).await;
    // A retried batch (its first commit's answer was lost), plus one new entry.
    let again = write(
        &pool,
        &[
            batch[0].clone(),
            batch[1].clone(),
            entry(3, a, "1", ("13", active)),
        ],
    )
    .await;
    assert_eq!(again.inserted.into_iter().collect::<Vec<_>>(), vec![3]);
    assert_eq!(stored(&pool, a).await.0, d("13"));
    // All duplicates: nothing moves, and the actor is told the committed balance.
    let dup = write(&pool, &batch).await;
    assert!(dup.inserted.is_empty());
    assert_eq!(stored(&pool, a).await, (d("13"), active, 2));
    let told = dup.balances.iter().find(|x| x.user_id == a);
    assert_eq!(told.map(|x| (x.balance, x.up_to_seq)), Some((d("13"), 2)));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM data.balance_ledger").await,
        3
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn the_global_balance_has_the_last_word_on_crossing_zero(pool: PgPool) {
    let (a, b) = (user(&pool, "a@x.io").await, user(&pool, "b@x.io").await);
    let (key_a, _) = key(&pool, a, Role::User).await;
    let (key_b, _) = key(&pool, b, Role::User).await;
    let (active, overdue) = (AccountStatus::Active, AccountStatus::Overdue);
    write(
        &pool,
        &[
            entry(1, a, "1", ("1", active)),
            entry(2, b, "1", ("1", active)),
        ],
    )
    .await;
    // a's actor missed another instance's charges: it thinks a is still above zero.
    write(&pool, &[charge(3, a, key_a, "1.5", ("0.5", active))]).await;
    assert_eq!(
        stored(&pool, a).await.1,
        overdue,
        "active at or below zero is overdue"
    );
    // b's actor saw b at zero and made it overdue, but another instance's top-up (already
    // committed) keeps the global balance positive.
    write(&pool, &[entry(4, b, "5", ("6", active))]).await;
    write(&pool, &[charge(5, b, key_b, "1", ("0", overdue))]).await;
    assert_eq!(
        stored(&pool, b).await,
        (d("5"), active, 3),
        "still positive: stays active"
    );
}

#[sqlx::test(migrations = "./migrations")]
async fn users_are_unique_by_normalised_email_and_a_new_password_ends_old_tokens(pool: PgPool) {
    let id = user(&pool, "Someone@Example.com").await;
    let taken = users::create_user(
        &pool,
        NewUser {
            email: "  someone@example.COM ",
            hashed_password: "x",
            username: "twin",
            tenant_id: DEFAULT_TENANT,
            role: Role::User,
        },
    )
    .await;
    assert!(
        matches!(taken, Err(CreateUserError::EmailTaken)),
        "{taken:?}"
    );
    let login = users::find_login(&pool, "SOMEONE@example.com")
        .await
        .ok()
        .flatten();
    assert_eq!(login.map(|l| l.id), Some(id));
    let (balance, status, _) = stored(&pool, id).await;
    assert_eq!((balance, status), (Decimal::ZERO, AccountStatus::Pending));

    let before = users::token_state(&pool, id)
        .await
        .ok()
        .flatten()
        .map(|t| t.token_version);
    users::set_password(&pool, id, "new-hash")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let after = users::token_state(&pool, id)
        .await
        .ok()
        .flatten()
        .map(|t| t.token_version);
    assert_eq!(after, before.map(|v| v + 1));
}

#[sqlx::test(migrations = "./migrations")]
async fn keys_keep_what_a_higher_role_decided(pool: PgPool) {
    let owner = user(&pool, "owner@x.io").await;
    let (id, plaintext) = key(&pool, owner, Role::TenantAdmin).await;
    let found = keys::find_by_hash(&pool, &KeyHash::of(&plaintext))
        .await
        .ok()
        .flatten();
    assert_eq!(found.map(|k| (k.id, k.rpm)), Some((id, Some(100))));

    let loosen = KeyChanges {
        rpm: Some(Some(500)),
        ..KeyChanges::default()
    };
    let refused = keys::update(&pool, id, &loosen, Role::User).await;
    assert!(
        matches!(refused, Err(KeyChangeError::Locked(_))),
        "{refused:?}"
    );
    let tighten = KeyChanges {
        rpm: Some(Some(50)),
        ..KeyChanges::default()
    };
    keys::update(&pool, id, &tighten, Role::User)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    keys::update(&pool, id, &loosen, Role::TenantAdmin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let now = keys::find_by_id(&pool, id).await.ok().flatten();
    assert_eq!(now.map(|k| k.rpm), Some(Some(500)));

    keys::set_active(&pool, id, false, Some("abuse"), Role::TenantAdmin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reactivate = keys::set_active(&pool, id, true, None, Role::User).await;
    assert!(
        matches!(reactivate, Err(KeyChangeError::Locked(_))),
        "{reactivate:?}"
    );

    let missing = keys::update(&pool, Uuid::new_v4(), &tighten, Role::TenantAdmin).await;
    assert!(
        matches!(missing, Err(KeyChangeError::Db(DbError::NotFound))),
        "{missing:?}"
    );
    let missing = keys::rotate(&pool, Uuid::new_v4(), None).await;
    assert!(matches!(missing, Err(DbError::NotFound)), "{missing:?}");

    let fresh = keys::rotate(&pool, id, Some("leaked"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let old = keys::find_by_hash(&pool, &KeyHash::of(&plaintext))
        .await
        .ok()
        .flatten();
    assert!(old.is_none(), "the old secret no longer works");
    let new = keys::find_by_hash(&pool, &KeyHash::of(&fresh))
        .await
        .ok()
        .flatten();
    assert_eq!(new.map(|k| k.id), Some(id));
}

#[sqlx::test(migrations = "./migrations")]
async fn the_key_change_check_starts_from_the_database_clock(pool: PgPool) {
    // The first check (no checkpoint yet) reads only the clock: it used to ask for keys
    // changed since the year -262144, which PostgreSQL refuses, so no check ever succeeded.
    let (changed, first) = keys::changed_since(&pool, None)
        .await
        .expect("the first check succeeds");
    assert!(changed.is_empty());
    let owner = user(&pool, "changes@example.com").await;
    let (_, plaintext) = key(&pool, owner, Role::User).await;
    let (changed, next) = keys::changed_since(&pool, Some(first))
        .await
        .expect("a later check succeeds");
    assert_eq!(
        changed.iter().map(|c| c.hash).collect::<Vec<_>>(),
        [KeyHash::of(&plaintext)]
    );
    assert!(next >= first);
}

#[sqlx::test(migrations = "./migrations")]
async fn a_batch_charging_a_missing_user_fails_whole(pool: PgPool) {
    // `usage_log` has no foreign key (migration 0017): the per-user charge row's does.
    let a = user(&pool, "a@x.io").await;
    let (key_a, _) = key(&pool, a, Role::User).await;
    let active = AccountStatus::Active;
    write(&pool, &[entry(1, a, "10", ("10", active))]).await;
    let ghost = Uuid::new_v4();
    let batch = [
        charge(2, a, key_a, "0.25", ("9.75", active)),
        charge(3, ghost, key_a, "0.5", ("-0.5", active)),
    ];
    let failed = ledger::prepare_batch(&pool, &batch, None).await;
    assert!(failed.is_err(), "a charge for a user that does not exist");
    drop(failed);
    assert_eq!(count(&pool, "SELECT count(*) FROM data.usage_log").await, 0);
    assert_eq!(stored(&pool, a).await.0, d("10"));
    // Without the missing user the same batch goes through.
    write(&pool, &batch[..1]).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM data.usage_log").await, 1);
    assert_eq!(stored(&pool, a).await.0, d("9.75"));
}

#[sqlx::test(migrations = "./migrations")]
async fn copied_usage_rows_hold_what_the_calls_were(pool: PgPool) {
    let a = user(&pool, "a@x.io").await;
    let (key_a, _) = key(&pool, a, Role::User).await;
    let active = AccountStatus::Active;
    let plain = charge(1, a, key_a, "0.25", ("9.75", active));
    let mut odd = (*charge(2, a, key_a, "0.5", ("9.25", active))).clone();
    if let EntryKind::Charge(u) = &mut odd.kind {
        // Every character `COPY`'s text format gives a meaning to.
        u.model = "tab\there \\ new\nline\r\\N".into();
        u.usage = Usage {
            input_tokens: 7,
            output_tokens: 3,
            cached_input_tokens: 2,
            cache_write_tokens: 1,
            reasoning_tokens: 2,
        };
        u.cached_input_rate = Some(d("0.0005"));
        u.reasoning_output_rate = Some(d("0.004"));
        u.markup_percent = d("12.5");
        u.usage_source = "estimated";
    }
    let odd = Arc::new(odd);
    let outcome = write(&pool, &[plain, odd.clone()]).await;
    assert_eq!(outcome.usage_rows, 2);
    type Row = (
        String,
        i32,
        i32,
        i32,
        i32,
        i32,
        i32,
        Decimal,
        Decimal,
        Option<Decimal>,
        Option<Decimal>,
        Option<Decimal>,
        String,
        chrono::DateTime<Utc>,
    );
    let row: Row = sqlx::query_as(
        "SELECT model, input_tokens, output_tokens, tokens, cached_input_tokens,
                cache_write_tokens, reasoning_tokens, markup_percent, cost, cached_input_rate,
                cache_write_rate, reasoning_output_rate, usage_source, created_at
         FROM data.usage_log WHERE request_id = $1",
    )
    .bind(&odd.request_id)
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.0, "tab\there \\ new\nline\r\\N");
    assert_eq!(
        (row.1, row.2, row.3, row.4, row.5, row.6),
        (7, 3, 10, 2, 1, 2)
    );
    assert_eq!((row.7, row.8), (d("12.5"), d("0.5")));
    assert_eq!(
        (row.9, row.10, row.11),
        (Some(d("0.0005")), None, Some(d("0.004")))
    );
    assert_eq!(row.12, "estimated");
    assert_eq!(row.13.timestamp_micros(), odd.created_at.timestamp_micros());
}
