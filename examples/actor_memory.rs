//! What one ractor actor costs before any state of ours: spawns `N` (default 100,000)
//! actors with an empty state and prints the resident memory they added, per actor. Run
//! with the gateway's allocator, as `neuropia` does:
//!
//! ```text
//! cargo run --release --example actor_memory
//! ```
//!
//! Compare with `scripts/bench-memory`, which prints the cost of a live key actor.

use ractor::{Actor, ActorProcessingErr, ActorRef};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Empty;

impl Actor for Empty {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let before = rss_kib();
    let mut actors = Vec::with_capacity(n);
    for _ in 0..n {
        actors.push(Actor::spawn(None, Empty, ()).await?.0);
    }
    let after = rss_kib();
    println!(
        "{n} empty ractor actors: RSS {} -> {} MiB, {} bytes per actor",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) * 1024 / n as u64
    );
    for a in actors {
        a.stop(None);
    }
    Ok(())
}
