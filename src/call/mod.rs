//! One paid call: the request path of DESIGN.md section 2, in one place.
//!
//! ```text
//! http: the key is known (before the body is read) -> the body parses into an Operation
//!   admit   snapshot: model, plan, price         (admit.rs)
//!           prompt counted (large ones off the async workers, after the key and the
//!             account are known to be able to pay)
//!           key actor: active, allow-list, rpm/tpm  | balance actor: reserve the worst
//!           Redis: global rpm/tpm (several instances) | case (and in Redis, shared)
//!   run     the plan over upstreams: direct router or Portkey            (run.rs)
//!   settle  exact charge into the journal, tpm corrected, strict wait    (settle.rs)
//! http: the reply, whole or streamed, mapped to the client's format
//! ```
//!
//! What a call holds (its reservation and its token estimate) lives in one [`hold::Hold`],
//! released exactly once however the call ends. From admission on, the call runs to its
//! end and is billed even if the client hangs up ([`Detached`]).
//!
//! A call is generic over its [`Operation`] ([`Chat`], [`Embeddings`]): the API it speaks
//! upstream and what it reads from the request and the answer. Everything else is shared.

mod admit;
pub mod chat;
pub mod embeddings;
mod hold;
pub mod messages;
pub mod responses;
mod run;
mod settle;
mod streamed;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use uuid::Uuid;

pub use admit::Admitted;
pub use chat::Chat;
pub use embeddings::Embeddings;
pub use messages::Messages;
pub use responses::Responses;
pub use streamed::Streamed;

use crate::actors::balances::BalanceError;
use crate::actors::keys::AdmitError;
use crate::auth::KeyHash;
use crate::db::key_controls::OverBudget;
use crate::state::AppState;
use crate::trace::SpanContext;
use crate::upstream::{AnthropicHeaders, Endpoint, UpstreamError};

/// An endpoint the gateway sells: what a call needs to know of its request and its answer.
pub trait Operation: Send + Sync + 'static {
    /// The API the call speaks upstream.
    fn endpoint(&self) -> Endpoint;
    /// The public model asked for.
    fn model(&self) -> &str;
    /// Whether the answer is streamed.
    fn stream(&self) -> bool;
    /// The size of the prompt's text: a large one is counted off the async workers, and
    /// only for a key and an account that may spend.
    fn prompt_bytes(&self) -> usize;
    /// The prompt's tokens, `image_tokens` for each image or other non-text part.
    fn prompt_tokens(&self, image_tokens: u32) -> impl Future<Output = u32> + Send;
    /// The most output tokens the call may produce, each answer at most `limits.cap`; when
    /// the client left the ceiling open, sets `limits.default` on the request so that the
    /// upstream cannot exceed what was reserved.
    fn max_output(&mut self, limits: OutputLimits) -> Result<u32, CallError>;
    /// The request to send upstream.
    fn body(&self) -> &Map<String, Value>;
    /// The text of a whole answer, counted when the upstream reports no usage.
    fn answer_text(&self, answer: &[u8]) -> String;
    /// Whether a streamed answer ends with the client's usage chunk.
    fn wants_stream_usage(&self) -> bool;
    /// Headers an Anthropic client sent, passed on to Anthropic targets.
    fn anthropic_headers(&self) -> &AnthropicHeaders {
        static NONE: AnthropicHeaders = AnthropicHeaders {
            version: None,
            beta: None,
        };
        &NONE
    }
}

/// The model's bounds on one answer.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimits {
    /// The most one answer may ask for.
    pub cap: u32,
    /// The ceiling set when the client asks for none.
    pub default: u32,
}

/// What the caller learns of a call as it goes (metrics, `server-timing`).
pub trait Observe: Send + Sync {
    /// The call's model exists (a label for metrics; unknown models are never labels).
    fn model(&self, model: &str);
    /// Time spent waiting for upstreams.
    fn upstream(&self, spent: Duration);
    /// The call was admitted with this key.
    fn key(&self, key_id: Uuid);
    /// The span the call's stages are traced under (`None`: not traced).
    fn trace(&self) -> Option<SpanContext>;
}

/// Why a call was refused or failed.
#[derive(Debug)]
pub enum CallError {
    /// The request is malformed or asks for more than the model allows.
    BadRequest(String),
    /// No such model.
    UnknownModel(String),
    /// The model has no rate yet.
    NotPriced(String),
    Key(AdmitError),
    /// The call does not fit what is left of the key's budget (402).
    OverBudget(OverBudget),
    /// The key's budget could not be checked (the database failed): 503.
    Budget(String),
    /// The key's owner is suspended.
    Suspended,
    Balance(BalanceError),
    Upstream(UpstreamError),
    /// Strict durability: the call was served but its charge is not confirmed.
    NotConfirmed(String),
}

/// What goes back to the client.
pub enum Reply {
    /// A whole OpenAI-shaped answer.
    Whole(Bytes),
    /// Server-sent events, ending with `[DONE]` (with strict durability, only once the
    /// charge is committed), pumped from the upstream as the client reads them.
    Stream(Streamed),
}

/// Admits, runs and settles one call of `op` with the key whose hash is `key` (already
/// known to exist), made from `client`. `request_id` goes upstream and into the usage log.
pub async fn call<O: Operation>(
    app: &AppState,
    key: KeyHash,
    op: O,
    client: Option<IpAddr>,
    request_id: Uuid,
    seen: Arc<dyn Observe>,
) -> Result<Reply, CallError> {
    let admitted = admit::admit(app, (key, client), op, request_id, seen).await?;
    // Polled here while the client waits (no task hop); moved to a task of its own if the
    // client hangs up.
    Detached::new(admitted.run()).await
}

/// A future that finishes on its own task if it is dropped before it is done (a call whose
/// client hung up, a stream's pump: either is still billed).
struct Detached<T: Send + 'static>(Option<Pin<Box<dyn Future<Output = T> + Send>>>);

impl<T: Send + 'static> Detached<T> {
    fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = T;

    /// Once done, `Pending` for ever (and the future is dropped at once).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(call) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let done = call.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            // Its client left: finish (and bill) it without anyone waiting.
            tokio::spawn(async move {
                let _ = call.await;
            });
        }
    }
}
