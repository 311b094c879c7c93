//! Alert deliveries: every instance claims the events due in the outbox
//! ([`crate::db::alerts`]), posts each to its webhook signed with the webhook's secret, and
//! records the outcome; a failure is tried again with a growing delay (1 s, 2 s, 4 s, ...
//! at most an hour apart), forever until delivered or the webhook is removed.
//!
//! The request: `POST <url>` with `{"id", "event", "created_at", "data"}`, headers
//! `x-neuropia-event`, `x-neuropia-event-id`, `x-neuropia-timestamp` (Unix seconds) and
//! `x-neuropia-signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>`.
//! An event is made once per crossing; it may arrive more than once (an instance that dies
//! between the send and its record), so receivers deduplicate on its id.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use sqlx::PgPool;

use crate::db::alerts::{self, Due};

/// Events claimed at once, and how long a claim keeps other instances off them.
const CLAIM: i64 = 50;
const LEASE_SECS: i32 = 30;
const IDLE: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_secs(5);

/// `sha256=<hex>` of `<timestamp>.<body>` keyed with `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The delay in seconds after the `attempts`-th failed attempt: 1, 2, 4, ... at most an
/// hour.
fn backoff(attempts: i32) -> i32 {
    (1_i32 << (attempts - 1).clamp(0, 12)).min(3600)
}

/// Starts this instance's deliverer. Webhooks are called on public addresses only unless
/// `allow_private` (a name saved as public may resolve to a private address later).
pub fn start(pool: PgPool, allow_private: bool) {
    let mut client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if !allow_private {
        client = client.dns_resolver(std::sync::Arc::new(crate::address::PublicOnly));
    }
    let client = client.build().expect("an HTTP client");
    tokio::spawn(async move {
        // Until the gateway closes its pool (it stops).
        while !pool.is_closed() {
            match alerts::claim(&pool, CLAIM, LEASE_SECS).await {
                Ok(due) if !due.is_empty() => {
                    for d in due {
                        deliver(&pool, &client, d).await;
                    }
                }
                Ok(_) => tokio::time::sleep(IDLE).await,
                Err(_) if pool.is_closed() => break,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the alert outbox");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
}

async fn deliver(pool: &PgPool, client: &reqwest::Client, d: Due) {
    let body = json!({"id": d.event_id, "event": d.event, "created_at": d.created_at,
        "data": d.payload})
    .to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let sent = client
        .post(&d.url)
        .header("content-type", "application/json")
        .header("x-neuropia-event", &d.event)
        .header("x-neuropia-event-id", d.event_id.to_string())
        .header("x-neuropia-timestamp", timestamp.to_string())
        .header(
            "x-neuropia-signature",
            signature(&d.secret, timestamp, body.as_bytes()),
        )
        .body(body)
        .send()
        .await;
    let (status, error) = match sent {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
        Ok(r) => (
            Some(r.status().as_u16()),
            Some(format!("answered {}", r.status())),
        ),
        // The error's kind only: its text may carry the URL's secrets.
        Err(e) if e.is_timeout() => (None, Some("timed out".to_owned())),
        Err(e) if e.is_connect() => (None, Some("could not connect".to_owned())),
        Err(_) => (None, Some("request failed".to_owned())),
    };
    let retry = error.as_ref().map(|_| backoff(d.attempts));
    crate::metrics::alert_attempt(error.is_none());
    if let Err(e) = alerts::attempted(pool, d.id, status, error.as_deref(), retry).await {
        tracing::warn!(error = %e, event = %d.event_id, "could not record an alert delivery");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature("s3cret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(
            (1..=14).map(backoff).collect::<Vec<_>>(),
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600
            ]
        );
    }
}
