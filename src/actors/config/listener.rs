//! The LISTEN connection: one dedicated connection (`application_name =
//! neuropia-listener`) that forwards every notification to the ConfigActor, in order.
//!
//! sqlx's `PgListener` loses the notifications sent while it reconnects. So every
//! (re)connection is announced ([`ConfigMsg::ListenerUp`]) and the actor reloads
//! everything; any error drops the connection and a fresh one is made with backoff.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::{ConfigMsg, ConfigRef};
use crate::config::Secret;

pub const CHANNELS: [&str; 4] = [
    "virtual_key_update",
    "config_update",
    "neuropia_config",
    "balance_update",
];
pub const APPLICATION_NAME: &str = "neuropia-listener";

async fn connect(url: &Secret) -> Result<PgListener, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose())?.application_name(APPLICATION_NAME);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen_all(CHANNELS).await?;
    Ok(listener)
}

/// Runs until the actor is gone.
pub async fn run(url: Secret, actor: ConfigRef) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                if actor.cast(ConfigMsg::ListenerDown(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if actor.cast(ConfigMsg::ListenerUp).is_err() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let msg = ConfigMsg::Notified {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    };
                    if actor.cast(msg).is_err() {
                        return;
                    }
                }
                // The connection was lost and re-made: notifications in between are gone.
                Ok(None) => {
                    if actor.cast(ConfigMsg::ListenerUp).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if actor.cast(ConfigMsg::ListenerDown(e.to_string())).is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}
