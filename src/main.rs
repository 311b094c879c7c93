use clap::Parser;
use neuropia::config::{Cli, Command, Config};
use neuropia::{app, db, demo, http, upstream};
use tracing_subscriber::EnvFilter;

// The request path allocates many small, short-lived buffers; glibc's malloc spent a fifth
// of the gateway's CPU on them (docs/benchmarks.md, profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Without a command: serve, with the settings from the environment.
    let command = Cli::parse()
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(Config::defaults())));
    let workers = match &command {
        Command::Serve(config) => config.worker_threads,
        Command::PlainProxy { worker_threads, .. } => *worker_threads,
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n.max(1));
    }
    runtime.on_thread_park(release_memory_after_passivation);
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(run(command)),
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// ractor opens an `info` span around every actor's life (its id formatted, kept by the
/// subscriber for as long as the actor lives, entered on each message): with 100k key actors
/// that is memory and CPU for spans nothing reads. Off unless `RUST_LOG` names `ractor`.
fn quiet_actor_spans(filter: EnvFilter) -> EnvFilter {
    let named = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("ractor"));
    match "ractor=warn".parse() {
        Ok(directive) if !named => filter.add_directive(directive),
        _ => filter,
    }
}

unsafe extern "C" {
    /// mimalloc's own: frees what this thread's heap no longer uses, other threads' frees
    /// of its blocks included, and returns empty pages to the operating system.
    fn mi_collect(force: bool);
}

/// Called each time a runtime thread runs out of work. After actors passivated (their
/// memory freed, often by other threads than the one that allocated it), the thread's
/// allocator heap is collected once, at most once a second: otherwise the process keeps the
/// peak's memory (docs/benchmarks.md, "Memory: passivation").
fn release_memory_after_passivation() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static SEEN: Cell<(u64, Option<Instant>)> = const { Cell::new((0, None)) };
    }
    let passivations = neuropia::actors::passivations();
    let (seen, last) = SEEN.get();
    if passivations == seen || last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return;
    }
    SEEN.set((passivations, Some(Instant::now())));
    // SAFETY: mi_collect takes no pointers and may be called on any thread at any time.
    unsafe { mi_collect(true) };
}

async fn run(command: Command) -> std::process::ExitCode {
    use std::io::IsTerminal;
    // Colours only for a terminal, and never with NO_COLOR set.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(quiet_actor_spans(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        ))
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    let result = match command {
        Command::Serve(config) => serve(*config).await,
        Command::Migrate { database_url } => db::connect_and_migrate(database_url.expose(), 2)
            .await
            .map(|_| tracing::info!("migrations applied"))
            .map_err(|e| e.to_string()),
        Command::Openapi => {
            println!("{}", neuropia::http::openapi_json());
            Ok(())
        }
        Command::Actors(args) => neuropia::cli::actors(args).await,
        Command::MockUpstream { bind } => match http::server::listen(bind) {
            Ok(listener) => upstream::mock::serve(listener)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("binding {bind}: {e}")),
        },
        Command::PlainProxy { bind, upstream, .. } => match http::server::listen(bind) {
            Ok(listener) => http::plain_proxy::serve(listener, &upstream)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("binding {bind}: {e}")),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    if config.faults {
        neuropia::actors::quiet_injected_panics();
    }
    let bind = config.bind;
    let seed_demo = config.demo;
    let state = app::build(config).await?;
    let listener = http::server::listen(bind).map_err(|e| format!("binding {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "neuropia listening");
    if seed_demo {
        let seeded = demo::seed(&state, addr).await?;
        println!("{}", seeded.instructions(addr));
    }
    app::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests and writing the journal");
}
