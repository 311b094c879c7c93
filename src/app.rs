//! Assembling the gateway: config -> pool (created, migrated) -> Redis -> snapshot ->
//! actor tree -> [`AppState`]; and [`serve`], which runs the HTTP server on a listener it
//! is given until a shutdown future resolves, then drains the charge journal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::RedisConn;
use tokio::net::TcpListener;

use crate::actors::Probe;
use crate::actors::balances::{Balances, BalancesArgs};
use crate::actors::breaker::{BreakerDirectory, BreakerSettings, UpstreamsArgs};
use crate::actors::keys::{Keys, KeysArgs};
use crate::actors::ledger::{LedgerArgs, WriteFault};
use crate::actors::root::{ConfigBase, Root, RootArgs};
use crate::auth::{self, Jwt, Role};
use crate::cache::Cache;
use crate::clientip::TrustedProxies;
use crate::config::Config;
use crate::db;
use crate::journal::Journal;
use crate::state::{AppInner, AppState};
use crate::throttle::{LoginThrottle, RegisterThrottle};
use crate::upstream::Upstreams;

/// Connects to everything and starts the actor tree.
pub async fn build(config: Config) -> Result<AppState, String> {
    let config = config.normalised();
    config.validate()?;
    let config = Arc::new(config);
    let pool = db::connect_and_migrate(config.database_url.expose(), config.db_pool)
        .await
        .map_err(|e| format!("database: {e}"))?;
    crate::metrics::install();
    if let Some(otel) = config.otel()? {
        tracing::info!(service = %otel.service, "exporting OpenTelemetry traces over OTLP");
        crate::trace::init(otel)?;
    }
    let redis = connect_redis(&config).await;
    let instance = uuid::Uuid::new_v4();
    let limiter =
        (config.rate_limit_backend() == crate::config::RateLimitBackend::Redis).then(|| {
            crate::ratelimit::GlobalLimiter::start(
                config.redis_url.clone(),
                config.redis_cluster,
                redis.clone(),
                config.instances,
            )
        });

    let jwt_secret = match &config.jwt_secret {
        Some(s) => s.expose().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "JWT_SECRET is not set: using the secret generated and kept in the database; \
                 set JWT_SECRET in production"
            );
            let fresh = auth::random_hex32()?;
            db::users::persisted_jwt_secret(&pool, &fresh)
                .await
                .map_err(|e| format!("JWT secret: {e}"))?
                .into_bytes()
        }
    };
    let jwt = Jwt::new(&jwt_secret, config.jwt_ttl_secs);

    let snapshot = db::config::load_snapshot(&pool)
        .await
        .map_err(|e| format!("loading configuration: {e}"))?
        .handle();
    let journal = Arc::new(Journal::with_lanes(config.ledger_lanes));
    let breakers: BreakerDirectory = Arc::default();
    tokio::task::spawn_blocking(crate::tokens::warm_up);
    let key_directory = Arc::default();
    let balance_directory: crate::actors::balances::BalanceDirectory = Arc::default();

    // With REDIS_URL set the cache exists even if Redis is unreachable now: it connects
    // (and sweeps) when Redis answers.
    let cache = if config.redis_url.is_empty() {
        Cache::disabled()
    } else {
        Cache::new(
            redis.clone(),
            config.redis_url.clone(),
            config.redis_cluster,
            pool.clone(),
        )
    };
    // With several instances (NEUROPIA_INSTANCES > 1) the shared reservations ride on the
    // limiter's connection; an entry lives 60 s past its instance's last refresh.
    let shared = limiter
        .as_ref()
        .filter(|_| config.instances > 1)
        .map(|l| crate::reservations::GlobalReservations::new(l.clone(), Duration::from_secs(60)));
    let ledger_fault = Arc::new(WriteFault::default());
    let passivate_after =
        (config.passivate_secs > 0).then(|| Duration::from_secs(config.passivate_secs));
    let (root, tree) = Root::start(RootArgs {
        config: ConfigBase {
            pool: pool.clone(),
            snapshot: snapshot.clone(),
            cache: cache.clone(),
            database_url: config.database_url.clone(),
            resync_every: Duration::from_secs(config.config_resync_secs),
            balances: balance_directory.clone(),
            instance: (config.instances > 1).then_some(instance),
        },
        keys: KeysArgs {
            pool: pool.clone(),
            directory: Arc::clone(&key_directory),
            cache: cache.clone(),
            probe: Probe::new(),
            passivate_after,
        },
        balances: BalancesArgs {
            pool: pool.clone(),
            directory: balance_directory.clone(),
            journal: journal.clone(),
            snapshot: snapshot.clone(),
            journal_max: config.journal_max,
            probe: Probe::new(),
            passivate_after,
            recheck_after_load: config.instances > 1,
        },
        upstreams: UpstreamsArgs {
            directory: breakers.clone(),
            settings: BreakerSettings {
                failures_to_open: config.breaker_failures,
                cooldown: Duration::from_millis(config.breaker_cooldown_ms),
            },
            probe: Probe::new(),
        },
        ledger: LedgerArgs {
            pool: pool.clone(),
            journal: journal.clone(),
            balances: balance_directory.clone(),
            flush_every: match config.billing_durability {
                crate::config::Durability::Strict => Duration::ZERO,
                crate::config::Durability::Batched => Duration::from_millis(config.ledger_flush_ms),
            },
            batch_rows: config.ledger_batch_rows,
            probe: Probe::new(),
            write_fault: ledger_fault.clone(),
            notify_as: (config.instances > 1).then_some(instance),
            shared: shared.clone(),
        },
    })
    .await?;

    let timeout = config.actor_timeout();
    // Every instance delivers the alerts due (the outbox hands each to one of them).
    crate::alerts::start(pool.clone(), config.allow_private_upstreams);
    let state = AppState::new(AppInner {
        instance,
        started: std::time::Instant::now(),
        ledger_fault,
        upstreams: Upstreams::new(&config, breakers, tree.upstreams.clone())?,
        throttle: LoginThrottle::new(
            config.login_max_failures,
            config.login_max_failures_per_addr,
            Duration::from_secs(config.login_window_secs),
        ),
        registrations: RegisterThrottle::new(
            config.register_max_per_addr,
            Duration::from_secs(config.register_window_secs),
        ),
        trusted_proxies: TrustedProxies::parse(&config.trusted_proxies)?,
        keys: Keys::new(tree.keys.clone(), key_directory, timeout, limiter),
        balances: Balances::new(tree.balances.clone(), balance_directory, timeout, shared),
        failures: crate::db::failures::Failures::start(pool.clone()),
        config,
        pool,
        cache,
        jwt,
        snapshot,
        journal,
        tree,
        root,
    });
    bootstrap_admin(&state).await?;
    Ok(state)
}

async fn connect_redis(config: &Config) -> Option<RedisConn> {
    if config.redis_url.is_empty() {
        return None;
    }
    match RedisConn::connect(&config.redis_url, config.redis_cluster).await {
        Ok(conn) => {
            if conn.is_cluster() {
                tracing::info!("connected to a Redis Cluster");
            }
            Some(conn)
        }
        Err(e) => {
            tracing::warn!(error = %e, "Redis unreachable; the cache connects once it answers");
            None
        }
    }
}

/// Creates the platform admin named by `NEUROPIA_ADMIN_EMAIL` if it does not exist.
async fn bootstrap_admin(state: &AppState) -> Result<(), String> {
    let (Some(email), Some(password)) = (&state.config.admin_email, &state.config.admin_password)
    else {
        return Ok(());
    };
    if db::users::email_exists(&state.pool, email)
        .await
        .map_err(|e| format!("bootstrap admin: {e}"))?
    {
        return Ok(());
    }
    let password = password.expose().to_owned();
    let hashed = auth::hash_password_bounded(password)
        .await
        .map_err(|e| e.to_string())?;
    let created = db::users::create_user(
        &state.pool,
        db::users::NewUser {
            email,
            hashed_password: &hashed,
            username: "admin",
            tenant_id: db::users::PLATFORM_TENANT,
            role: Role::PlatformAdmin,
        },
    )
    .await;
    match created {
        Ok(id) => {
            tracing::info!(user_id = %id, "bootstrapped the platform admin");
            Ok(())
        }
        // Another instance created it at the same moment.
        Err(db::users::CreateUserError::EmailTaken) => Ok(()),
        Err(e) => Err(format!("bootstrap admin: {e}")),
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves, then stops taking requests, waits
/// for the ones in flight, writes every journaled charge and stops the actor tree.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = crate::http::server::Limits {
        max_connections: state.config.max_connections,
        header_timeout: Duration::from_millis(state.config.header_timeout_ms),
        write_stall: Duration::from_millis(state.config.write_timeout_ms),
    };
    crate::http::server::run(
        listener,
        crate::http::router(state.clone()),
        limits,
        shutdown,
    )
    .await?;
    state.shutdown().await;
    Ok(())
}
