//! Command line and environment: one typed [`Config`], validated at start.
//!
//! Every setting is a flag and an environment variable (`.env.example` lists them all).
//! Secrets are held in [`Secret`], whose `Debug` and `Display` never show the value.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Args, Parser};

mod command;
pub use command::{ActorsArgs, Cli, Command};

pub use crate::secret::Secret;

/// `neuropia` without a command: `serve` with its settings from the environment.
#[derive(Debug, Parser)]
#[command(name = "neuropia")]
struct ServeFromEnv {
    #[command(flatten)]
    config: Config,
}

/// When a response may leave relative to its charge's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    Batched,
    Strict,
}

/// `UPSTREAM_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamMode {
    /// The built-in router executes the plan.
    Direct,
    /// A Portkey gateway executes the plan (sent in `x-portkey-config`).
    Portkey,
}

/// Where rate limits are counted (`RATE_LIMIT_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateLimitBackend {
    Local,
    Redis,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/neuropia";

/// Everything `neuropia serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL URL; the database is created if missing and migrated at start.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: Secret,

    /// Key and balance actors idle this many seconds stop, and come back with their state on
    /// their next use (0: never). Bounds memory by the active keys and users.
    #[arg(long, env = "NEUROPIA_PASSIVATE_SECS", default_value_t = 300)]
    pub passivate_secs: u64,

    /// Threads of the async runtime (default: one per core).
    #[arg(long, env = "NEUROPIA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "NEUROPIA_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    /// Redis URL (a cache, never the only copy of anything). Empty disables Redis.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: Secret,

    /// Treat REDIS_URL as a Redis Cluster seed even when it names one node (a list of
    /// comma-separated URLs always names a cluster).
    #[arg(long, env = "REDIS_CLUSTER", value_parser = FalseyValueParser::new())]
    pub redis_cluster: bool,

    /// Where rpm and tpm limits are counted. `local`: in each key actor (right for one
    /// instance). `redis`: in Redis, by an atomic script shared by every instance, so limits
    /// hold across instances; if Redis is unreachable each instance falls back to its local
    /// limiter with the limits divided by NEUROPIA_INSTANCES. Default: `redis` when
    /// NEUROPIA_INSTANCES is above 1, else `local`.
    #[arg(long, env = "RATE_LIMIT_BACKEND", value_enum)]
    pub rate_limit_backend: Option<RateLimitBackend>,

    /// How many gateway instances share this database and Redis (the divisor of the
    /// per-instance fallback limits when Redis is unreachable).
    #[arg(long, env = "NEUROPIA_INSTANCES", default_value_t = 1)]
    pub instances: u32,

    /// Address the HTTP server listens on.
    #[arg(long, env = "NEUROPIA_BIND", default_value = "127.0.0.1:3001")]
    pub bind: SocketAddr,

    /// HS256 secret for platform JWTs (at least 16 bytes). When unset, one is generated at
    /// the first start and kept in the database (every instance on that database shares it).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Lifetime of a platform JWT, in seconds.
    #[arg(long, env = "NEUROPIA_JWT_TTL_SECS", default_value_t = 12 * 3600)]
    pub jwt_ttl_secs: u64,

    /// Sign-in attempts per email from one client address within the login window;
    /// further attempts from that address are refused (429) without being evaluated. The
    /// same email from another address is not affected.
    #[arg(long, env = "NEUROPIA_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: u32,

    /// Sign-in attempts per client address (whatever the email) within the login window
    /// before that address is refused.
    #[arg(
        long,
        env = "NEUROPIA_LOGIN_MAX_FAILURES_PER_ADDR",
        default_value_t = 30
    )]
    pub login_max_failures_per_addr: u32,

    /// The login throttling window, in seconds.
    #[arg(long, env = "NEUROPIA_LOGIN_WINDOW_SECS", default_value_t = 900)]
    pub login_window_secs: u64,

    /// Registrations per client address within the registration window (429 beyond).
    #[arg(long, env = "NEUROPIA_REGISTER_MAX_PER_ADDR", default_value_t = 10)]
    pub register_max_per_addr: u32,

    /// The registration throttling window, in seconds.
    #[arg(long, env = "NEUROPIA_REGISTER_WINDOW_SECS", default_value_t = 3_600)]
    pub register_window_secs: u64,

    /// Proxies whose `X-Forwarded-For` names the client (comma-separated addresses or
    /// blocks, e.g. `127.0.0.1,10.0.0.0/8`). Empty: the TCP peer is the client, and the
    /// header is ignored. Login and registration throttles count per client address.
    #[arg(long, env = "NEUROPIA_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Bootstrap a platform admin with this email at start if it does not exist.
    #[arg(long, env = "NEUROPIA_ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// Password of the bootstrapped platform admin.
    #[arg(long, env = "NEUROPIA_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    /// Platform key for DashScope (Alibaba Cloud Bailian), compatible mode.
    #[arg(long, env = "DASHSCOPE_API_KEY", hide_env_values = true)]
    pub dashscope_api_key: Option<Secret>,

    /// Platform key for OpenAI.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,

    /// Platform key for Anthropic (Messages API).
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<Secret>,

    /// `direct`: the built-in router executes routing plans. `portkey`: a Portkey gateway
    /// at PORTKEY_GATEWAY_URL does, given the plan in `x-portkey-config`.
    #[arg(long, env = "UPSTREAM_MODE", value_enum, default_value = "direct")]
    pub upstream_mode: UpstreamMode,

    /// The Portkey gateway used with UPSTREAM_MODE=portkey.
    #[arg(
        long,
        env = "PORTKEY_GATEWAY_URL",
        default_value = "http://127.0.0.1:8787"
    )]
    pub portkey_gateway_url: String,

    /// Consecutive failures (transport errors, timeouts, 5xx) that open a target's circuit.
    #[arg(long, env = "NEUROPIA_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// How long an open circuit refuses calls before one probe is let through, in ms.
    #[arg(long, env = "NEUROPIA_BREAKER_COOLDOWN_MS", default_value_t = 10_000)]
    pub breaker_cooldown_ms: u64,

    /// Pause between the chunks of the built-in mock provider's streams, in ms.
    #[arg(long, env = "NEUROPIA_MOCK_STREAM_PACE_MS", default_value_t = 0)]
    pub mock_stream_pace_ms: u64,

    /// `batched`: a response does not wait for its charge to be committed (a crash of the
    /// whole process loses at most the last flush window). `strict`: it waits for its
    /// charge's group commit, so a crash loses nothing any client received.
    #[arg(
        long,
        env = "BILLING_DURABILITY",
        value_enum,
        default_value = "batched"
    )]
    pub billing_durability: Durability,

    /// Show `/health`'s details (database, Redis, upstreams, actor tree) to anyone, not only
    /// to platform admins: for a gateway reachable only from a private network.
    #[arg(long, env = "NEUROPIA_HEALTH_DETAILS", value_parser = FalseyValueParser::new())]
    pub health_details: bool,

    /// Let routing plans call upstreams on loopback, link-local and private networks
    /// (`custom_host`). Off by default: whoever edits a plan could otherwise reach the
    /// gateway's own network. The tests, benchmarks and the demo's mock upstream set it.
    #[arg(long, env = "NEUROPIA_ALLOW_PRIVATE_UPSTREAMS", value_parser = FalseyValueParser::new())]
    pub allow_private_upstreams: bool,

    /// Enable fault injection (`POST /api/admin/faults`). Never in production.
    #[arg(long, env = "NEUROPIA_FAULTS", value_parser = FalseyValueParser::new())]
    pub faults: bool,

    /// Seed a demo tenant, user, model and key on the built-in mock provider and print
    /// a ready `curl`.
    #[arg(long, env = "NEUROPIA_DEMO", value_parser = FalseyValueParser::new())]
    pub demo: bool,

    /// Most client connections open at once; more wait in the accept queue until one ends.
    #[arg(long, env = "NEUROPIA_MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,

    /// A request's headers must arrive within this many milliseconds of the server
    /// starting to wait for them, else the connection is closed. On a kept-alive
    /// connection the wait starts when the previous response ends: this is also the idle
    /// keep-alive timeout.
    #[arg(long, env = "NEUROPIA_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// A request body must have arrived this many milliseconds after its handler started
    /// reading it, else 408 and the connection is closed.
    #[arg(long, env = "NEUROPIA_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// A response write that makes no progress for this many milliseconds (the client
    /// stopped reading) closes the connection.
    #[arg(long, env = "NEUROPIA_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_timeout_ms: u64,

    /// Largest accepted request body, in bytes (larger bodies get 413).
    #[arg(long, env = "NEUROPIA_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long an HTTP handler waits for an actor's reply before answering 503.
    #[arg(long, env = "NEUROPIA_ACTOR_TIMEOUT_MS", default_value_t = 2_000)]
    pub actor_timeout_ms: u64,

    /// Default per-target upstream timeout (a plan's `request_timeout` overrides it).
    #[arg(long, env = "NEUROPIA_UPSTREAM_TIMEOUT_MS", default_value_t = 60_000)]
    pub upstream_timeout_ms: u64,

    /// Output tokens reserved for a request that sets no `max_tokens` (and sent upstream
    /// as its `max_tokens`), unless its model sets its own `default_max_tokens`.
    #[arg(long, env = "NEUROPIA_DEFAULT_MAX_TOKENS", default_value_t = 4_096)]
    pub default_max_tokens: u32,

    /// The most output tokens a call may ask for per choice,
    /// unless its model sets its own `max_output_tokens`; more is refused with 400.
    #[arg(long, env = "NEUROPIA_MAX_OUTPUT_TOKENS", default_value_t = 131_072)]
    pub max_output_tokens: u32,

    /// Prompt tokens reserved per image (or other non-text part) of a message, unless its
    /// model sets its own `image_tokens`.
    #[arg(long, env = "NEUROPIA_IMAGE_TOKENS", default_value_t = 2_000)]
    pub image_tokens: u32,

    /// The ledger flushes the charge journal at least this often, in milliseconds.
    #[arg(long, env = "NEUROPIA_LEDGER_FLUSH_MS", default_value_t = 5)]
    pub ledger_flush_ms: u64,

    /// Most journal entries written in one ledger transaction.
    #[arg(long, env = "NEUROPIA_LEDGER_BATCH_ROWS", default_value_t = 500)]
    pub ledger_batch_rows: usize,

    /// Ledger lanes: users are split over this many transaction streams written side by
    /// side (a user's charges stay in one lane, in order). More lanes let PostgreSQL use
    /// more cores for the ledger.
    #[arg(long, env = "NEUROPIA_LEDGER_LANES", default_value_t = 4)]
    pub ledger_lanes: usize,

    /// Safety net of the configuration flow: reload everything this often, in seconds
    /// (on top of every NOTIFY and every listener reconnect).
    #[arg(long, env = "NEUROPIA_CONFIG_RESYNC_SECS", default_value_t = 60)]
    pub config_resync_secs: u64,

    /// Journal depth above which new paid requests are refused with 503 (the database
    /// is not keeping up and charges must not pile up in memory without bound).
    #[arg(long, env = "NEUROPIA_JOURNAL_MAX", default_value_t = 200_000)]
    pub journal_max: usize,

    /// OpenTelemetry: the OTLP/HTTP collector's base address; spans are posted (as JSON)
    /// to `<endpoint>/v1/traces`. Unset (and no traces endpoint): no tracing at all.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_endpoint: Option<String>,

    /// OpenTelemetry: the full address spans are posted to (overrides the base endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_traces_endpoint: Option<String>,

    /// OpenTelemetry: headers sent with every export, `name=value` pairs separated by
    /// commas (a collector's token, say).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    pub otel_headers: Option<Secret>,

    /// OpenTelemetry: the export protocol; only `http/json` is spoken.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/json")]
    pub otel_protocol: String,

    /// OpenTelemetry: the `service.name` of the spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "neuropia")]
    pub otel_service_name: String,

    /// OpenTelemetry: the longest a finished span waits before it is exported, in ms.
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 1_000)]
    pub otel_delay_ms: u64,
}

impl Config {
    /// Checks what clap cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), String> {
        if self.db_pool == 0 {
            return Err("NEUROPIA_DB_POOL must be at least 1".into());
        }
        if self.admin_email.is_some() != self.admin_password.is_some() {
            return Err(
                "NEUROPIA_ADMIN_EMAIL and NEUROPIA_ADMIN_PASSWORD must be set together".into(),
            );
        }
        if self.ledger_batch_rows == 0 || self.ledger_flush_ms == 0 {
            return Err("ledger batch rows and flush interval must be positive".into());
        }
        if self.instances == 0 {
            return Err("NEUROPIA_INSTANCES must be at least 1".into());
        }
        if self.rate_limit_backend() == RateLimitBackend::Redis && self.redis_url.is_empty() {
            return Err("RATE_LIMIT_BACKEND=redis needs REDIS_URL".into());
        }
        if !(1..=16).contains(&self.ledger_lanes) {
            return Err("NEUROPIA_LEDGER_LANES must be between 1 and 16".into());
        }
        if self.breaker_failures == 0 || self.breaker_cooldown_ms == 0 {
            return Err("breaker failures and cooldown must be positive".into());
        }
        if !(self.portkey_gateway_url.starts_with("http://")
            || self.portkey_gateway_url.starts_with("https://"))
        {
            return Err("PORTKEY_GATEWAY_URL must be an http(s) URL".into());
        }
        if self.config_resync_secs == 0 {
            return Err("NEUROPIA_CONFIG_RESYNC_SECS must be positive".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("NEUROPIA_MAX_CONNECTIONS must be between 1 and 1000000".into());
        }
        if self.header_timeout_ms == 0 || self.body_timeout_ms == 0 || self.write_timeout_ms == 0 {
            return Err("the header, body and write timeouts must be positive".into());
        }
        if self.actor_timeout_ms == 0 || self.upstream_timeout_ms == 0 {
            return Err("timeouts must be positive".into());
        }
        if self.default_max_tokens == 0 || self.max_output_tokens == 0 {
            return Err(
                "NEUROPIA_DEFAULT_MAX_TOKENS and NEUROPIA_MAX_OUTPUT_TOKENS must be positive"
                    .into(),
            );
        }
        if self.max_body_bytes < 1024 {
            return Err("NEUROPIA_MAX_BODY_BYTES must be at least 1024".into());
        }
        if let (Some(email), Some(password)) = (&self.admin_email, &self.admin_password) {
            crate::auth::check_password_strength(password.expose(), email, "admin")
                .map_err(|e| format!("NEUROPIA_ADMIN_PASSWORD: {e}"))?;
        }
        if self.login_max_failures == 0 || self.login_max_failures_per_addr == 0 {
            return Err("login failure limits must be positive".into());
        }
        if self.register_max_per_addr == 0
            || self.register_window_secs == 0
            || self.login_window_secs == 0
        {
            return Err("registration and login throttles must be positive".into());
        }
        crate::clientip::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| format!("NEUROPIA_TRUSTED_PROXIES: {e}"))?;
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 16
        {
            return Err("JWT_SECRET must be at least 16 bytes".into());
        }
        self.otel()?;
        Ok(())
    }

    /// Where traces are exported to; `None` when no OTLP endpoint is set.
    pub fn otel(&self) -> Result<Option<crate::trace::ExportConfig>, String> {
        crate::trace::ExportConfig::from_settings(crate::trace::Settings {
            endpoint: self.otel_endpoint.as_deref(),
            traces_endpoint: self.otel_traces_endpoint.as_deref(),
            headers: self.otel_headers.as_ref().map(Secret::expose),
            protocol: &self.otel_protocol,
            service: &self.otel_service_name,
            delay_ms: self.otel_delay_ms,
        })
    }

    /// Treats settings given as empty strings (`NEUROPIA_ADMIN_EMAIL=` as in `.env.example`)
    /// as not given.
    pub fn normalised(mut self) -> Self {
        self.admin_email = self.admin_email.filter(|v| !v.trim().is_empty());
        self.admin_password = self.admin_password.filter(|v| !v.is_empty());
        self.jwt_secret = self.jwt_secret.filter(|v| !v.is_empty());
        self
    }

    /// The rate-limit backend in force: as set, else `redis` for several instances.
    pub fn rate_limit_backend(&self) -> RateLimitBackend {
        self.rate_limit_backend.unwrap_or(if self.instances > 1 {
            RateLimitBackend::Redis
        } else {
            RateLimitBackend::Local
        })
    }

    pub fn actor_timeout(&self) -> Duration {
        Duration::from_millis(self.actor_timeout_ms)
    }

    /// The configuration from the environment alone (and defaults): what `neuropia` without
    /// a command serves with; also the base of tests and embedding.
    pub fn defaults() -> Self {
        ServeFromEnv::parse_from(["neuropia"]).config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.bind.port(), 3001);
        assert!(c.validate().is_ok());
        let mut bad = c.clone();
        bad.admin_email = Some("a@b.c".into());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn empty_settings_count_as_unset() {
        let mut c = Config::defaults();
        c.admin_email = Some(String::new());
        c.admin_password = Some(Secret::new(""));
        c.jwt_secret = Some(Secret::new(""));
        assert!(c.validate().is_err(), "empty values are values to clap");
        let c = c.normalised();
        assert_eq!(
            (c.admin_email.is_none(), c.admin_password.is_none()),
            (true, true)
        );
        assert!(c.jwt_secret.is_none());
        assert!(c.validate().is_ok());
    }
}
