//! The request path's handle on the key actors.

use std::net::IpAddr;
use std::time::Duration;

use ractor::RpcReplyPort;

use super::{Admission, Denied, KeyDirectory, KeyHandle, KeyMsg, KeyView, KeysMsg};
use crate::actors::client::{Children, ResolveMsg};
use crate::actors::{Live, ResolveError, SupervisorStats};
use crate::auth::KeyHash;
use crate::db::keys::KeyRecord;
use crate::ratelimit::{GlobalLimiter, Verdict};

/// Why a key refused a call, or why the call could not be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitError {
    UnknownKey,
    Denied(Denied),
    Unavailable(String),
}

/// An admitted call's hold on its key: who the key belongs to, and the way to tell the key
/// how many tokens the call really used.
pub struct Admitted {
    pub admission: Admission,
    key: KeyHandle,
    estimated_tokens: u64,
    /// The limiter that counted the call's tokens, when Redis did.
    global: Option<GlobalLimiter>,
}

impl Admitted {
    /// Replaces the call's tpm estimate with `actual_tokens` (0: nothing was produced).
    /// Keys without a tpm limit have nothing to correct and get no message.
    pub fn record(&self, actual_tokens: u64) {
        if !self.admission.counts_tokens {
            return;
        }
        match &self.global {
            Some(limiter) => {
                limiter.correct(self.admission.key_id, self.estimated_tokens, actual_tokens);
            }
            None => record_here(&self.key, self.estimated_tokens, actual_tokens),
        }
    }
}

/// Replaces an estimate the key actor counted with the tokens actually used.
fn record_here(key: &KeyHandle, estimated_tokens: u64, actual_tokens: u64) {
    let _ = key.cast(KeyMsg::Record {
        estimated_tokens,
        actual_tokens,
    });
}

/// A call the key actor admitted; with the Redis backend its rpm and tpm are still to be
/// checked ([`Keys::confirm`]), which the request path does while the balance is reserved.
pub struct Checked {
    pub admission: Admission,
    key: KeyHandle,
    hash: KeyHash,
    estimated_tokens: u64,
    client: Option<IpAddr>,
}

impl Checked {
    /// Gives back what the key actor counted, for a call that goes no further (nothing was
    /// counted in Redis yet).
    pub fn forget(&self) {
        if self.admission.counts_tokens && !self.admission.global {
            record_here(&self.key, self.estimated_tokens, 0);
        }
    }
}

/// The request path's handle on the key actors.
#[derive(Clone)]
pub struct Keys {
    children: Children<KeyHash, KeyMsg, KeysMsg>,
    /// With `RATE_LIMIT_BACKEND=redis`: where rpm and tpm are counted.
    pub limiter: Option<GlobalLimiter>,
}

/// How many times a call follows a key actor that stops under it.
const ATTEMPTS: u32 = 3;

fn admit_error(e: ResolveError) -> AdmitError {
    match e {
        ResolveError::NotFound => AdmitError::UnknownKey,
        ResolveError::Unavailable(e) => AdmitError::Unavailable(e),
    }
}

impl Keys {
    pub fn new(
        supervisor: Live<KeysMsg>,
        directory: KeyDirectory,
        timeout: Duration,
        limiter: Option<GlobalLimiter>,
    ) -> Self {
        let resolve: ResolveMsg<KeyHash, KeyMsg, KeysMsg> =
            |hash, reply| KeysMsg::Resolve { hash, reply };
        Self {
            children: Children::new("key", supervisor, directory, timeout, resolve),
            limiter,
        }
    }

    /// The live key actors, by key hash.
    pub fn directory(&self) -> &KeyDirectory {
        &self.children.directory
    }

    async fn resolve(&self, hash: KeyHash) -> Result<KeyHandle, AdmitError> {
        self.children.resolve(hash).await.map_err(admit_error)
    }

    async fn call<T: Send + 'static>(
        &self,
        hash: KeyHash,
        make: impl FnMut(RpcReplyPort<T>) -> KeyMsg,
    ) -> Result<(T, KeyHandle), AdmitError> {
        self.children
            .call(hash, ATTEMPTS, make)
            .await
            .map_err(admit_error)
    }

    /// Succeeds when a key with this hash exists (active or not): the first check of a
    /// call, made before its body is read. Costs no message for a key in use.
    pub async fn known(&self, hash: KeyHash) -> Result<(), AdmitError> {
        self.resolve(hash).await.map(|_| ())
    }

    /// The key actor's part of an admission: the active flag, the allow-list, and (unless
    /// Redis counts them) rpm and tpm. Tells who the key belongs to.
    pub async fn check(
        &self,
        hash: KeyHash,
        model: &str,
        estimated_tokens: u64,
        client: Option<IpAddr>,
    ) -> Result<Checked, AdmitError> {
        let share = self.limiter.as_ref().map_or(1, GlobalLimiter::share);
        let (admission, key) = self
            .admit_with(hash, model, estimated_tokens, share, client)
            .await?;
        Ok(Checked {
            admission,
            key,
            hash,
            estimated_tokens,
            client,
        })
    }

    /// The rest of an admission of `model`: with the Redis backend, rpm and tpm in Redis
    /// (if Redis fails, the actor is asked again to count them locally at this instance's
    /// share); otherwise nothing left to do.
    pub async fn confirm(&self, checked: Checked, model: &str) -> Result<Admitted, AdmitError> {
        let Checked {
            admission,
            key,
            hash,
            estimated_tokens,
            client,
        } = checked;
        let Some(limiter) = self.limiter.as_ref().filter(|_| admission.global) else {
            return Ok(Admitted {
                admission,
                key,
                estimated_tokens,
                global: None,
            });
        };
        let verdict = limiter
            .admit(
                admission.key_id,
                admission.rpm,
                admission.tpm,
                estimated_tokens,
            )
            .await;
        match verdict {
            Ok(Verdict::Allowed) => Ok(Admitted {
                admission,
                key,
                estimated_tokens,
                global: Some(limiter.clone()),
            }),
            Ok(Verdict::Rpm(retry_after)) => Err(AdmitError::Denied(Denied::Rpm { retry_after })),
            Ok(Verdict::Tpm(retry_after)) => Err(AdmitError::Denied(Denied::Tpm { retry_after })),
            Err(()) => {
                // Redis failed: this instance enforces its share of the limits itself.
                let share = limiter.instances();
                let (admission, key) = self
                    .admit_with(hash, model, estimated_tokens, share, client)
                    .await?;
                Ok(Admitted {
                    admission,
                    key,
                    estimated_tokens,
                    global: None,
                })
            }
        }
    }

    async fn admit_with(
        &self,
        hash: KeyHash,
        model: &str,
        estimated_tokens: u64,
        share: u32,
        client: Option<IpAddr>,
    ) -> Result<(Admission, KeyHandle), AdmitError> {
        let (answer, key) = self
            .call(hash, |reply| KeyMsg::Admit {
                model: model.to_owned(),
                estimated_tokens,
                share,
                client,
                reply,
            })
            .await?;
        Ok((answer.map_err(AdmitError::Denied)?, key))
    }

    pub async fn stats(&self) -> Option<SupervisorStats> {
        let supervisor = self.children.supervisor();
        ractor::call_t!(supervisor, KeysMsg::Stats, 1_000).ok()
    }

    /// Pushes a key's new state to its live actor, if any. Returns once later calls are
    /// sure to see it.
    pub async fn changed(
        &self,
        old_hash: Option<KeyHash>,
        record: Option<KeyRecord>,
    ) -> Result<(), String> {
        let supervisor = self.children.supervisor();
        ractor::call_t!(
            supervisor,
            |reply| KeysMsg::Changed {
                old_hash,
                record,
                reply: Some(reply)
            },
            self.children.timeout().as_millis() as u64
        )
        .map_err(|e| format!("keys supervisor: {e}"))
    }

    /// The key's current view (for `/v1/models`), or why it cannot be had.
    pub async fn describe(&self, hash: KeyHash) -> Result<KeyView, AdmitError> {
        let (view, _) = self.call(hash, |reply| KeyMsg::Describe { reply }).await?;
        Ok(view)
    }
}
