//! [`Children`]: the request path's way to a supervisor's children (a key's actor, a
//! user's balance actor), one algorithm for both. The directory first (a child in use
//! costs no message); else its supervisor resolves it (loading it if need be) within the
//! timeout. A call to a child that died under it (it crashed and is being restarted, or
//! it passivated) evicts it from the directory and resolves it again.

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Message, RpcReplyPort};

use super::{Handle, Live, ResolveError};

/// Builds a supervisor's "resolve this child" message.
pub type ResolveMsg<K, M, S> = fn(K, RpcReplyPort<Result<Handle<M>, ResolveError>>) -> S;

pub struct Children<K, M: Message, S: Message> {
    /// `key`, `balance`: how errors name the children.
    kind: &'static str,
    supervisor: Live<S>,
    pub directory: Arc<DashMap<K, Handle<M>>>,
    timeout: Duration,
    resolve_msg: ResolveMsg<K, M, S>,
}

impl<K, M: Message, S: Message> Clone for Children<K, M, S> {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            supervisor: self.supervisor.clone(),
            directory: self.directory.clone(),
            timeout: self.timeout,
            resolve_msg: self.resolve_msg,
        }
    }
}

impl<K, M, S> Children<K, M, S>
where
    K: Copy + Eq + Hash + Send + Sync + std::fmt::Debug + 'static,
    M: Message,
    S: Message,
{
    pub fn new(
        kind: &'static str,
        supervisor: Live<S>,
        directory: Arc<DashMap<K, Handle<M>>>,
        timeout: Duration,
        resolve_msg: ResolveMsg<K, M, S>,
    ) -> Self {
        Self {
            kind,
            supervisor,
            directory,
            timeout,
            resolve_msg,
        }
    }

    pub fn supervisor(&self) -> Handle<S> {
        self.supervisor.get()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The child's live actor, spawned (after loading its state) if need be. Errors are
    /// the supervisor's own: no such child, or unavailable (also when the supervisor or the
    /// child does not answer in time, or the child keeps stopping under a call).
    pub async fn resolve(&self, key: K) -> Result<Handle<M>, ResolveError> {
        if let Some(child) = self.directory.get(&key) {
            return Ok(child.clone());
        }
        let make = self.resolve_msg;
        match self
            .supervisor
            .get()
            .call(|reply| make(key, reply), Some(self.timeout))
            .await
        {
            Ok(CallResult::Success(answer)) => answer,
            Ok(CallResult::Timeout) => Err(ResolveError::Unavailable(format!(
                "{}s supervisor timed out",
                self.kind
            ))),
            Ok(CallResult::SenderError) | Err(_) => Err(ResolveError::Unavailable(format!(
                "{}s supervisor is restarting",
                self.kind
            ))),
        }
    }

    /// Calls the child, up to `attempts` times while it dies under the call (each time
    /// resolved again). `make` builds the message for each attempt. A child that does not
    /// answer in time is not asked again: it may still act on the message.
    pub async fn call<T: Send + 'static>(
        &self,
        key: K,
        attempts: u32,
        mut make: impl FnMut(RpcReplyPort<T>) -> M,
    ) -> Result<(T, Handle<M>), ResolveError> {
        for attempt in 0..attempts {
            let child = self.resolve(key).await?;
            match child.call(&mut make, Some(self.timeout)).await {
                Ok(CallResult::Success(answer)) => return Ok((answer, child)),
                Ok(CallResult::Timeout) => {
                    return Err(ResolveError::Unavailable(format!(
                        "{} actor timed out",
                        self.kind
                    )));
                }
                Ok(CallResult::SenderError) | Err(_) => {
                    // The actor is gone: drop it from the directory and resolve again.
                    self.directory
                        .remove_if(&key, |_, c| c.get_id() == child.get_id());
                    let backoff = Duration::from_millis(2u64 << attempt.min(8));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        Err(ResolveError::Unavailable(format!(
            "{}:{key:?} kept stopping under the call",
            self.kind
        )))
    }
}
