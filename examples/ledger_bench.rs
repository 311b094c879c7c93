//! The ledger alone: how many charges per second the batched writer commits to PostgreSQL
//! (a `balance_ledger` row, a `usage_log` row and the balance delta each) and whether the
//! journal's backlog stays flat at a given arrival rate.
//!
//! `scripts/bench-ledger` runs it (release build, fresh database):
//!
//! ```text
//! RATE=20000 SECS=20 scripts/bench-ledger     # charges offered per second, for SECS
//! RATE=0 scripts/bench-ledger                 # as fast as the journal takes them
//! ```
//!
//! Every second it prints the charges offered, the rows committed and the journal depth;
//! then the sustained commit rate, the deepest backlog, and checks that PostgreSQL holds
//! exactly one usage row per charge and that every balance moved by the sum of its charges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use dashmap::DashMap;
use neuropia::actors::Probe;
use neuropia::actors::ledger::{LedgerArgs, LedgerWriter, WriteFault};
use neuropia::billing::{AccountStatus, Decimal, Usage};
use neuropia::journal::{EntryKind, Journal, NewEntry, UsageRecord};
use ractor::Actor;
use uuid::Uuid;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn charge(user_id: Uuid, tenant_id: Uuid, key_id: Uuid) -> NewEntry {
    let amount = Decimal::new(35, 6);
    NewEntry {
        request_id: Uuid::new_v4().to_string(),
        user_id,
        delta: -amount,
        status_after: AccountStatus::Active,
        balance_after: Decimal::from(1_000_000),
        kind: EntryKind::Charge(Box::new(UsageRecord {
            tenant_id,
            virtual_key_id: key_id,
            provider: "openai".into(),
            model: "bench".into(),
            usage: Usage::new(12, 8),
            input_rate: Decimal::new(1, 6),
            output_rate: Decimal::new(2, 6),
            markup_percent: Decimal::ZERO,
            cached_input_rate: None,
            cache_write_rate: None,
            reasoning_output_rate: None,
            platform_cost: amount,
            usage_source: "upstream",
            budget_held: false,
            trace: None,
        })),
        ack: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url: String = env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/neuropia_bench_ledger".to_owned(),
    );
    let rate: u64 = env("RATE", 20_000);
    let secs: u64 = env("SECS", 20);
    let users: usize = env("USERS", 1_000);
    let flush_ms: u64 = env("NEUROPIA_LEDGER_FLUSH_MS", 5);
    let batch_rows: usize = env("NEUROPIA_LEDGER_BATCH_ROWS", 500);
    let lanes: usize = env("NEUROPIA_LEDGER_LANES", 4);

    neuropia::db::ensure_database(&url).await?;
    let pool = neuropia::db::connect_and_migrate(&url, 8).await?;
    let tenant_id: Uuid = "00000000-0000-0000-0000-000000000001".parse()?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "WITH l AS (
             INSERT INTO auth.login (email, hashed_password, tenant_id)
             SELECT 'ledger' || g || '-' || gen_random_uuid() || '@bench.local', 'x', $2
             FROM generate_series(1, $1) g RETURNING id, tenant_id)
         INSERT INTO data.user_profile (user_id, username, tenant_id, status, balance)
         SELECT id, 'ledger', tenant_id, 'active', 1000000 FROM l RETURNING user_id",
    )
    .bind(i32::try_from(users)?)
    .bind(tenant_id)
    .fetch_all(&pool)
    .await?;
    let key_id = Uuid::new_v4();

    let journal = Arc::new(Journal::with_lanes(lanes));
    let (ledger, _) = Actor::spawn(
        None,
        LedgerWriter,
        LedgerArgs {
            pool: pool.clone(),
            journal: journal.clone(),
            balances: Arc::new(DashMap::new()),
            flush_every: Duration::from_millis(flush_ms),
            batch_rows,
            probe: Probe::new(),
            write_fault: Arc::new(WriteFault::default()),
            notify_as: None,
            shared: None,
        },
    )
    .await?;
    println!(
        "{} users; offering {} charges/s for {secs} s; flush every {flush_ms} ms, up to {batch_rows} rows per batch, {lanes} lanes",
        ids.len(),
        if rate == 0 {
            "as many".to_owned()
        } else {
            rate.to_string()
        }
    );
    println!(
        "{:>4} {:>10} {:>10} {:>8}",
        "s", "offered", "committed", "depth"
    );

    let started = Instant::now();
    let (mut offered, mut max_depth, mut next_report) = (0u64, 0usize, 1u64);
    let mut committed_at_report = 0u64;
    let mut rates = Vec::new();
    let tick = Duration::from_millis(1);
    while started.elapsed() < Duration::from_secs(secs) {
        let due = if rate == 0 {
            // As fast as the writer goes: keep about a second of work queued.
            offered + 20_000usize.saturating_sub(journal.depth()) as u64
        } else {
            (started.elapsed().as_secs_f64() * rate as f64) as u64
        };
        while offered < due {
            let user = ids[offered as usize % ids.len()];
            if journal.append(charge(user, tenant_id, key_id)).is_ok() {
                offered += 1;
            }
        }
        journal.wake();
        max_depth = max_depth.max(journal.depth());
        if started.elapsed() >= Duration::from_secs(next_report) {
            let committed = offered - journal.depth() as u64;
            rates.push(committed - committed_at_report);
            println!(
                "{next_report:>4} {offered:>10} {committed:>10} {:>8}",
                journal.depth()
            );
            committed_at_report = committed;
            next_report += 1;
        }
        tokio::time::sleep(tick).await;
    }
    let drain_started = Instant::now();
    while journal.depth() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained_in = drain_started.elapsed();
    let total = started.elapsed();
    ledger.stop(None);

    // The middle seconds: the first one warms up, the last may be cut short.
    let steady: Vec<u64> = rates.iter().skip(1).copied().collect();
    let sustained = steady.iter().sum::<u64>() as f64 / steady.len().max(1) as f64;
    println!(
        "sustained commit rate {sustained:.0} rows/s (seconds 2..{secs}); deepest backlog {max_depth} charges; drained {:.0} ms after the last charge; overall {:.0} rows/s",
        drained_in.as_secs_f64() * 1000.0,
        offered as f64 / total.as_secs_f64()
    );

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM data.usage_log")
        .fetch_one(&pool)
        .await?;
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM data.user_profile p
         WHERE p.username = 'ledger' AND p.balance <> 1000000 + COALESCE(
             (SELECT sum(amount) FROM data.balance_ledger l WHERE l.user_id = p.user_id), 0)",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "usage rows {rows} for {offered} charges; balances off their ledger sum: {wrong} (at {})",
        Utc::now().format("%H:%M:%S")
    );
    if rows != i64::try_from(offered)? || wrong != 0 {
        return Err("the ledger lost or doubled charges".into());
    }
    Ok(())
}
