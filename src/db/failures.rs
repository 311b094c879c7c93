//! Failed calls, written in the background in batches (`data.call_failure`): a call that
//! was refused or failed after its key was known, with its status and error code, so a
//! customer can see why. Best effort and bounded: past [`QUEUE`] waiting records, new ones
//! are dropped and counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Records waiting to be written, at most.
const QUEUE: usize = 10_000;
/// Records per insert, at most.
const BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct Failure {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub model: String,
    pub status: u16,
    pub error_code: String,
    pub at: DateTime<Utc>,
}

/// The handle calls record failures with; cheap to clone.
#[derive(Clone)]
pub struct Failures(mpsc::Sender<Failure>);

impl Failures {
    /// Starts the writer on `pool`.
    pub fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(pool, rx));
        Self(tx)
    }

    /// Queues a failure; never waits (a full queue drops it, and the metric counts it).
    pub fn record(&self, f: Failure) {
        if self.0.try_send(f).is_err() {
            crate::metrics::failure_dropped();
        }
    }
}

async fn write(pool: PgPool, mut rx: mpsc::Receiver<Failure>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = insert(&pool, &batch).await {
            tracing::warn!(error = %e, lost = batch.len(), "failed calls were not recorded");
            // The database is away: wait a little rather than spin on the queue.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        batch.clear();
    }
}

async fn insert(pool: &PgPool, batch: &[Failure]) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = batch.iter().map(|f| f.request_id.to_string()).collect();
    let users: Vec<Uuid> = batch.iter().map(|f| f.user_id).collect();
    let tenants: Vec<Uuid> = batch.iter().map(|f| f.tenant_id).collect();
    let keys: Vec<Uuid> = batch.iter().map(|f| f.key_id).collect();
    let models: Vec<&str> = batch.iter().map(|f| f.model.as_str()).collect();
    let statuses: Vec<i32> = batch.iter().map(|f| i32::from(f.status)).collect();
    let codes: Vec<&str> = batch.iter().map(|f| f.error_code.as_str()).collect();
    let times: Vec<DateTime<Utc>> = batch.iter().map(|f| f.at).collect();
    sqlx::query(
        "INSERT INTO data.call_failure
             (request_id, user_id, tenant_id, virtual_key_id, model, status, error_code, created_at)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::int4[], $7::text[], $8::timestamptz[])",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&tenants)
    .bind(&keys)
    .bind(&models)
    .bind(&statuses)
    .bind(&codes)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(())
}
