//! What one actor round trip costs the request path: `CALLERS` tasks (default 64, as the
//! benchmarks' connections) each ask one of `ACTORS` actors (default 64) for an answer in a
//! loop, with a timeout as the gateway's calls have, on a runtime like the gateway's (two
//! worker threads unless `NEUROPIA_WORKER_THREADS` says otherwise). Prints the process's CPU
//! time per round trip (user + system, from /proc/self/stat). Run with the gateway's
//! allocator, as `neuropia` does:
//!
//! ```text
//! cargo run --release --example actor_call
//! CALLERS=1 ACTORS=1 cargo run --release --example actor_call
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, rpc::CallResult};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Counter;

impl Actor for Counter {
    type Msg = RpcReplyPort<u64>;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        reply: Self::Msg,
        count: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        *count += 1;
        let _ = reply.send(*count);
        Ok(())
    }
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's CPU time (user + system) so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split(' ').collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let hz = 100; // CLK_TCK on Linux
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

fn main() {
    let workers = setting("NEUROPIA_WORKER_THREADS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(workers));
}

async fn run(workers: usize) {
    let callers = setting("CALLERS", 64);
    let actors = setting("ACTORS", 64);
    let seconds = setting("SECONDS", 5) as u64;
    let mut refs = Vec::new();
    for _ in 0..actors {
        let (actor, _) = Actor::spawn(None, Counter, ()).await.expect("an actor");
        refs.push(actor);
    }
    let refs = Arc::new(refs);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (cpu0, t0) = (cpu(), Instant::now());
    let mut tasks = Vec::new();
    for i in 0..callers {
        let (refs, done) = (refs.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let actor = &refs[i % refs.len()];
            while Instant::now() < deadline {
                match actor
                    .call(|reply| reply, Some(Duration::from_secs(5)))
                    .await
                {
                    Ok(CallResult::Success(_)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => panic!("the actor did not answer"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a caller");
    }
    let (spent, elapsed) = (cpu() - cpu0, t0.elapsed());
    let n = done.load(Ordering::Relaxed).max(1);
    println!(
        "{workers} worker thread(s), {callers} callers, {actors} actors: {n} round trips in {:.1} s, {:.0}/s; CPU {:.2} µs per round trip",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        spent.as_secs_f64() * 1e6 / n as f64
    );
}
