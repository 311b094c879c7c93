//! [`Streamed`]: a streamed answer whose pump (and then its charge) runs inside the
//! response body, on the connection's own task, while the client reads: each upstream read
//! wakes that one task, which parses it and writes it out, with no task between the
//! upstream and the client. If the client hangs up first, the rest moves to a task of its
//! own (the call's `Detached`) and the stream is still read to its end and billed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Detached;

/// The events of a streamed answer, produced as the body is polled.
pub struct Streamed {
    /// The pump and the charge after it; moved to a task of its own if dropped unfinished.
    pump: Detached<()>,
    /// What the pump has produced and the client not yet taken.
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Streamed {
    /// `pump` sends the events through the sender whose receiver is `rx`.
    pub(super) fn new(
        pump: impl Future<Output = ()> + Send + 'static,
        rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> Self {
        Self {
            pump: Detached::new(pump),
            rx,
        }
    }
}

impl futures::Stream for Streamed {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The pump runs until it has nothing to read or its buffer is full; what it sent is
        // then taken from the buffer (which wakes it again when it was full).
        let _ = Pin::new(&mut self.pump).poll(cx);
        // With the pump done its sender is gone: the buffer ends once emptied.
        self.rx.poll_recv(cx)
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // Before the pump is dropped (and, unfinished, moved to a task of its own): it then
        // sees at its next send that the client left, reads the upstream to its end and
        // bills it.
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::StreamExt;

    use super::*;

    fn counting(n: usize, done: Arc<AtomicBool>) -> Streamed {
        let (tx, rx) = mpsc::channel(2);
        Streamed::new(
            async move {
                for i in 0..n {
                    if tx.send(Ok(Bytes::from(i.to_string()))).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                done.store(true, Ordering::SeqCst);
            },
            rx,
        )
    }

    #[tokio::test]
    async fn everything_the_pump_sends_comes_out_in_order_then_the_stream_ends() {
        let done = Arc::new(AtomicBool::new(false));
        let out: Vec<String> = counting(10, done.clone())
            .map(|b| String::from_utf8(b.expect("ok").to_vec()).expect("utf8"))
            .collect()
            .await;
        assert_eq!(out, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_dropped_stream_finishes_its_pump_on_a_task_of_its_own() {
        let done = Arc::new(AtomicBool::new(false));
        let mut s = counting(1000, done.clone());
        assert!(s.next().await.is_some());
        drop(s);
        for _ in 0..1000 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the pump did not finish after its client left");
    }
}
