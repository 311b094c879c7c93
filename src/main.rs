use clap::Parser;
use neuropia::config::{Cli, Command, Config};
use neuropia::{app, db, demo, upstream};
use tracing_subscriber::EnvFilter;

// The request path allocates many small, short-lived buffers; glibc's malloc spent a fifth
// of the gateway's CPU on them (docs/benchmarks.md, profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.command {
        None => cli.serve.worker_threads,
        Some(Command::Serve(config)) => config.worker_threads,
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(n.max(1));
    }
    match runtime.enable_all().build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(config)) => serve(*config).await,
        Some(Command::Migrate { database_url }) => {
            db::connect_and_migrate(database_url.expose(), 2)
                .await
                .map(|_| tracing::info!("migrations applied"))
                .map_err(|e| e.to_string())
        }
        Some(Command::Openapi) => {
            println!("{}", neuropia::http::openapi_json());
            Ok(())
        }
        Some(Command::Actors(args)) => neuropia::cli::actors(args).await,
        Some(Command::MockUpstream { bind }) => {
            upstream::mock::serve(bind).await.map_err(|e| e.to_string())
        }
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
    let bind = config.bind;
    let seed_demo = config.demo;
    let state = app::build(config).await?;
    let listener = app::listen(bind).map_err(|e| format!("binding {bind}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, "neuropia listening");
    if seed_demo {
        let seeded = demo::seed(&state).await?;
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
