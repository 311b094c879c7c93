//! Measures how long a key revoked straight in PostgreSQL (`data.deactivate_virtual_key`,
//! no HTTP involved) keeps working on a running gateway, while other traffic flows.
//!
//! Run by `scripts/bench-propagation`, which starts the gateway(s) and passes:
//! `propagation <gateway url[,url...]> <database url> <traffic key> <target key> [rounds]`.
//!
//! For each round: the target key is warmed on every instance (its actors are live),
//! deactivated in SQL, and called back to back on each instance in turn until every one has
//! refused it; the time from the commit returning to an instance's first refusal is that
//! instance's propagation latency (an upper bound: it includes one request).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn call(client: &reqwest::Client, url: &str, key: &str) -> Result<u16, Error> {
    let body = json!({"model": "bench", "max_tokens": 8,
        "messages": [{"role": "user", "content": "ping"}]});
    let r = client
        .post(url)
        .header("x-virtual-key", key)
        .json(&body)
        .send()
        .await?;
    Ok(r.status().as_u16())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err(
            "usage: propagation <gateway> <database url> <traffic key> <target key> [rounds]"
                .into(),
        );
    }
    let (gateways, database, traffic_key, key) = (&args[1], &args[2], &args[3], &args[4]);
    let rounds: usize = args.get(5).map(|r| r.parse()).transpose()?.unwrap_or(200);
    let urls: Vec<String> = gateways
        .split(',')
        .map(|g| format!("{g}/v1/chat/completions"))
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let pool = sqlx::PgPool::connect(database).await?;

    // Background traffic on another key: 4 concurrent callers.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = vec![];
    for w in 0..4 {
        let (client, url, k) = (
            client.clone(),
            urls[w % urls.len()].clone(),
            traffic_key.clone(),
        );
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(&client, &url, &k).await {
                    Ok(200) => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // Per round: the latest instance's refusal; and every instance's refusal.
    let mut latencies = Vec::with_capacity(rounds);
    let mut each = Vec::with_capacity(rounds * urls.len());
    let started = Instant::now();
    for _ in 0..rounds {
        for u in &urls {
            while call(&client, u, key).await? != 200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sqlx::query("SELECT data.deactivate_virtual_key($1, 'propagation benchmark')")
            .bind(key)
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        let mut refused = vec![false; urls.len()];
        while refused.contains(&false) {
            for (i, u) in urls.iter().enumerate() {
                if !refused[i] && call(&client, u, key).await? == 401 {
                    refused[i] = true;
                    each.push(committed.elapsed());
                }
            }
            if committed.elapsed() > Duration::from_secs(5) {
                return Err("the key was still served 5 s after its deactivation".into());
            }
        }
        latencies.push(committed.elapsed());
        sqlx::query("SELECT data.activate_virtual_key($1, 'propagation benchmark')")
            .bind(key)
            .execute(&pool)
            .await?;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }

    latencies.sort();
    each.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "rounds: {rounds} (in {:.1} s), instances: {}",
        elapsed.as_secs_f64(),
        urls.len()
    );
    let line = |what: &str, l: &[Duration]| {
        println!(
            "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(pct(l, 0.5)),
            ms(pct(l, 0.9)),
            ms(pct(l, 0.99)),
            ms(pct(l, 1.0)),
        )
    };
    if urls.len() > 1 {
        line("deactivation in SQL -> refusal, each instance", &each);
        line(
            "deactivation in SQL -> refused by every instance",
            &latencies,
        );
    } else {
        line("deactivation in SQL -> first refusal", &latencies);
    }
    let over = latencies
        .iter()
        .filter(|d| **d > Duration::from_millis(100))
        .count();
    println!("rounds over 100 ms: {over}");
    println!(
        "background traffic on another key: {} served, {} failed",
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}
