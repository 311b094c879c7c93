//! Measures how long a key revoked straight in PostgreSQL (`data.deactivate_virtual_key`,
//! no HTTP involved) keeps working on a running gateway, while other traffic flows.
//!
//! Run by `scripts/bench-propagation`, which starts the gateway and passes:
//! `propagation <gateway url> <database url> <traffic key> <target key> [rounds]`.
//!
//! For each round: the target key is warmed (its actor is live), deactivated in SQL, and
//! called back to back until it is refused; the time from the commit returning to the
//! first refusal is the propagation latency (an upper bound: it includes one request).

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
    let (gateway, database, traffic_key, key) = (&args[1], &args[2], &args[3], &args[4]);
    let rounds: usize = args.get(5).map(|r| r.parse()).transpose()?.unwrap_or(200);
    let url = format!("{gateway}/v1/chat/completions");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let pool = sqlx::PgPool::connect(database).await?;

    // Background traffic on another key: 4 concurrent callers.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = vec![];
    for _ in 0..4 {
        let (client, url, k) = (client.clone(), url.clone(), traffic_key.clone());
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

    let mut latencies = Vec::with_capacity(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        while call(&client, &url, key).await? != 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sqlx::query("SELECT data.deactivate_virtual_key($1, 'propagation benchmark')")
            .bind(key)
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        loop {
            let status = call(&client, &url, key).await?;
            if status == 401 {
                break;
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
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("rounds: {rounds} (in {:.1} s)", elapsed.as_secs_f64());
    println!(
        "deactivation in SQL -> first refusal: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(&latencies, 0.5)),
        ms(pct(&latencies, 0.9)),
        ms(pct(&latencies, 0.99)),
        ms(pct(&latencies, 1.0)),
    );
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
