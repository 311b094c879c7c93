//! The command line: `neuropia`'s subcommands and their arguments (the gateway's own
//! settings are [`Config`]).

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use super::{Config, DEFAULT_DATABASE_URL, Secret};

/// `neuropia`: serve (the default), or one of the other commands below.
#[derive(Debug, Parser)]
#[command(
    name = "neuropia",
    version,
    about,
    after_help = "Without a command, `neuropia` serves with its settings from the environment. \
        Every setting is an environment variable and a flag of `neuropia serve` \
        (`neuropia serve --help` lists them; `.env.example` too)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Serve(Box<Config>),
    /// Create the database if missing and apply migrations, then exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
        database_url: Secret,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Print a running gateway's live supervision tree, like `pstree`.
    Actors(ActorsArgs),
    /// Serve an OpenAI-compatible mock upstream (deterministic answers, real token
    /// counts) for demos and benchmarks.
    MockUpstream {
        #[arg(long, env = "NEUROPIA_MOCK_BIND", default_value = "127.0.0.1:9001")]
        bind: SocketAddr,
    },
    /// Benchmark reference: forward every request to one plain-HTTP upstream through the
    /// gateway's HTTP server and upstream client, with nothing between them (no key, no
    /// billing). Never expose it.
    PlainProxy {
        #[arg(long, default_value = "127.0.0.1:9002")]
        bind: SocketAddr,
        /// The upstream's `http://host:port`.
        #[arg(long)]
        upstream: String,
        /// Runtime threads, as for the gateway (default: one per core).
        #[arg(long, env = "NEUROPIA_WORKER_THREADS")]
        worker_threads: Option<usize>,
    },
}

/// `neuropia actors`: where the gateway is and how to sign in as a platform admin.
#[derive(Debug, Args)]
pub struct ActorsArgs {
    /// The gateway's base URL.
    #[arg(long, env = "NEUROPIA_URL", default_value = "http://127.0.0.1:3001")]
    pub url: String,
    /// A platform admin's JWT. Without it, the command signs in with
    /// NEUROPIA_ADMIN_EMAIL and NEUROPIA_ADMIN_PASSWORD.
    #[arg(long, env = "NEUROPIA_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    #[arg(long, env = "NEUROPIA_ADMIN_EMAIL", hide_env_values = true)]
    pub email: Option<String>,
    #[arg(long, env = "NEUROPIA_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<Secret>,
    /// Children shown per supervisor.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Children skipped per supervisor.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Only the children whose name contains this (a key id, a user id, a provider).
    #[arg(long)]
    pub find: Option<String>,
    /// Refresh every N seconds until interrupted (0: print once).
    #[arg(long, default_value_t = 0)]
    pub watch: u64,
    /// Print the JSON instead of the tree.
    #[arg(long)]
    pub json: bool,
}
