//! A plain-HTTP/1.1 upstream client whose connections are driven by the calling task.
//!
//! reqwest (and hyper-util's pooled client under it) gives every connection a task of its
//! own: a call hands its request to that task and is woken with the answer, and again for
//! each piece of the body: two to four cross-task wake-ups per call, a fifth of the
//! gateway's CPU with the client's own layers (docs/benchmarks.md, issue 19). Here a call
//! takes an idle connection from the pool (or opens one), polls hyper's connection future
//! itself while it waits for the answer and reads the body, and puts the connection back
//! once the body has ended. Used for `http://` upstreams (a Portkey gateway, self-hosted
//! models, loopback in the tests and benchmarks); `https://` goes through reqwest's TLS.
//!
//! A pooled connection is checked before reuse (closed by the server while idle: dropped),
//! and a request the connection refused before sending it is sent again on a new one; a
//! request that may have reached the upstream is never sent twice.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, Stream};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::address::is_private;

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// A connection between calls: its request half and the future that drives it (boxed once
/// per connection: calls move it in and out of the pool).
struct Idle {
    send: SendRequest<Full<Bytes>>,
    conn: Conn,
    since: Instant,
}

/// `host:port` of an upstream.
type Origin = (Arc<str>, u16);

struct Idles {
    // Boxed so that a call moves a pointer, not the connection, in and out.
    #[allow(clippy::vec_box)]
    by_origin: HashMap<Origin, Vec<Box<Idle>>>,
    /// When connections past the idle timeout were last closed, for every origin.
    swept: Instant,
}

/// Idle connections per origin.
pub struct Pool {
    idle: Mutex<Idles>,
    /// Only public addresses are called unless private upstreams are allowed.
    allow_private: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// Why a call failed before an answer (the detail is for the gateway's log only).
#[derive(Debug)]
pub enum Error {
    Connect(String),
    Transport(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connecting: {e}"),
            Self::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// An answer whose head has arrived; the body is read from the same connection.
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Body,
}

impl Pool {
    pub fn new(allow_private: bool, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Idles {
                by_origin: HashMap::new(),
                swept: Instant::now(),
            }),
            allow_private,
            connect_timeout,
            idle_timeout,
            max_idle: 512,
        }
    }

    /// POSTs `payload` to `url` (`http://host[:port]/path`) with `headers`.
    pub async fn post(
        self: &Arc<Self>,
        url: &str,
        headers: &[(&'static str, &str)],
        payload: Vec<u8>,
    ) -> Result<Response, Error> {
        let uri: hyper::Uri = url.parse().map_err(|_| Error::Connect("bad URL".into()))?;
        let host = uri.host().ok_or_else(|| Error::Connect("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let origin: Origin = (Arc::from(host), uri.port_u16().unwrap_or(80));
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        // `host[:port]`, without any `user:password@`.
        let authority = uri
            .authority()
            .and_then(|a| a.as_str().rsplit('@').next())
            .unwrap_or(host);
        let payload = Bytes::from(payload);
        let request = || {
            let mut b = Request::post(path).header("host", authority);
            for (name, value) in headers {
                b = b.header(*name, *value);
            }
            b.body(Full::new(payload.clone()))
                .map_err(|e| Error::Transport(e.to_string()))
        };
        // A pooled connection first; one that refuses the request unsent is dropped and the
        // request goes out again (on the next pooled one, or a new one).
        loop {
            let (idle, fresh) = match self.take(&origin) {
                Some(idle) => (idle, false),
                None => (self.connect(&origin).await?, true),
            };
            match exchange(idle, request()?).await {
                Ok((status, headers, body, idle)) => {
                    return Ok(Response {
                        status,
                        headers,
                        body: Body {
                            body,
                            idle,
                            pool: Arc::clone(self),
                            origin,
                        },
                    });
                }
                Err(Refused::Unsent) if !fresh => continue,
                Err(Refused::Unsent) => {
                    return Err(Error::Transport("the connection closed".into()));
                }
                Err(Refused::Failed(e)) => return Err(Error::Transport(e)),
            }
        }
    }

    /// An idle connection to `origin` that is still open.
    fn take(&self, origin: &Origin) -> Option<Box<Idle>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_origin.get_mut(origin)?;
        while let Some(mut c) = list.pop() {
            if c.since.elapsed() > self.idle_timeout {
                continue;
            }
            // Polled once without a waker: a connection the server closed is finished.
            if (&mut c.conn).now_or_never().is_some() {
                continue;
            }
            if c.send.is_ready() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, origin: Origin, c: Box<Idle>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Origins no call goes to any more: their connections close once past the idle
        // timeout (looked at once a second at most).
        if idle.swept.elapsed() > Duration::from_secs(1) {
            let timeout = self.idle_timeout;
            idle.by_origin.retain(|_, list| {
                list.retain(|c| c.since.elapsed() <= timeout);
                !list.is_empty()
            });
            idle.swept = Instant::now();
        }
        let list = idle.by_origin.entry(origin).or_default();
        if list.len() < self.max_idle {
            list.push(c);
        }
    }

    async fn connect(&self, (host, port): &Origin) -> Result<Box<Idle>, Error> {
        let connect = async {
            let found = tokio::net::lookup_host((host.as_ref(), *port))
                .await
                .map_err(|_| Error::Connect(format!("{host} does not resolve")))?;
            let addrs: Vec<SocketAddr> = found
                .filter(|a| self.allow_private || !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Error::Connect(format!(
                    "{host} resolves only to private addresses"
                )));
            }
            let mut last = Error::Connect("no address".into());
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(tcp) => {
                        let _ = tcp.set_nodelay(true);
                        let (send, conn) = http1::handshake(TokioIo::new(tcp))
                            .await
                            .map_err(|e| Error::Connect(e.to_string()))?;
                        return Ok(Box::new(Idle {
                            send,
                            conn,
                            since: Instant::now(),
                        }));
                    }
                    Err(e) => last = Error::Connect(e.to_string()),
                }
            }
            Err(last)
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| Error::Connect("connecting timed out".into()))?
    }
}

enum Refused {
    /// The connection took nothing: the request can go out on another.
    Unsent,
    Failed(String),
}

/// Sends `request` on `idle`, driving the connection here until the answer's head arrives;
/// the connection comes back unless it ended.
async fn exchange(
    mut idle: Box<Idle>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, hyper::HeaderMap, Incoming, Option<Box<Idle>>), Refused> {
    let mut answer = std::pin::pin!(idle.send.send_request(request));
    let mut ended = false;
    let answer = std::future::poll_fn(|cx| {
        // When the connection ends without an answer, the answer's future fails.
        if !ended && Pin::new(&mut idle.conn).poll(cx).is_ready() {
            ended = true;
        }
        answer.as_mut().poll(cx)
    })
    .await;
    match answer {
        Ok(response) => {
            let (head, body) = response.into_parts();
            Ok((head.status, head.headers, body, (!ended).then_some(idle)))
        }
        Err(e) if e.is_canceled() => Err(Refused::Unsent),
        Err(e) => Err(Refused::Failed(e.to_string())),
    }
}

/// An answer's body, read while driving its connection; the connection goes back to the
/// pool when the body has been read to its end.
pub struct Body {
    body: Incoming,
    idle: Option<Box<Idle>>,
    pool: Arc<Pool>,
    origin: Origin,
}

impl Body {
    /// The whole body (one piece is returned as it came, without a copy).
    pub async fn bytes(mut self) -> Result<Bytes, String> {
        use futures::StreamExt;
        let Some(first) = self.next().await.transpose()? else {
            return Ok(Bytes::new());
        };
        let Some(second) = self.next().await.transpose()? else {
            return Ok(first);
        };
        let mut out = Vec::from(first);
        out.extend_from_slice(&second);
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }

    fn release(&mut self) {
        if let Some(mut idle) = self.idle.take() {
            // One more turn lets the connection settle into waiting for the next request.
            if (&mut idle.conn).now_or_never().is_some() || !idle.send.is_ready() {
                return;
            }
            idle.since = Instant::now();
            self.pool.put(self.origin.clone(), idle);
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(idle) = &mut this.idle
            && Pin::new(&mut idle.conn).poll(cx).is_ready()
        {
            // The connection is finished (the body may still hold its last bytes).
            this.idle = None;
        }
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.idle = None;
                    return Poll::Ready(Some(Err(e.to_string())));
                }
                Poll::Ready(None) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.body.is_end_stream() {
                        this.release();
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server answering each request on a connection with `answer`, closing the
    /// connection after `per_conn` answers; counts the connections it accepted and those it
    /// has closed.
    async fn server(
        answer: &'static [u8],
        per_conn: usize,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, count_closed) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let closed = count_closed.clone();
                tokio::spawn(async move {
                    serve(&mut tcp, answer, per_conn).await;
                    drop(tcp);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (
            format!("http://{addr}/v1/chat/completions"),
            accepted,
            closed,
        )
    }

    /// Answers up to `per_conn` requests (each read whole: head, then its declared body).
    async fn serve(tcp: &mut TcpStream, answer: &[u8], per_conn: usize) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..per_conn {
            let mut got = Vec::new();
            let body_len = loop {
                let Ok(n) = tcp.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    break end + 4 + len;
                }
            };
            while got.len() < body_len {
                let Ok(n) = tcp.read(&mut buf).await else {
                    return;
                };
                got.extend_from_slice(&buf[..n]);
            }
            if tcp.write_all(answer).await.is_err() {
                return;
            }
        }
    }

    const WHOLE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
        content-length: 11\r\n\r\n{\"ok\":true}";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        6\r\ndata: \r\n3\r\none\r\n0\r\n\r\n";

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(
            true,
            Duration::from_secs(1),
            Duration::from_secs(90),
        ))
    }

    #[tokio::test]
    async fn calls_reuse_one_connection_and_read_whole_and_chunked_bodies() {
        let (url, accepted, _) = server(WHOLE, usize::MAX).await;
        let pool = pool();
        for _ in 0..5 {
            let r = pool
                .post(&url, &[("x-request-id", "r1")], b"{}".to_vec())
                .await
                .expect("answer");
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body.bytes().await.expect("body"), &b"{\"ok\":true}"[..]);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five calls"
        );

        let (url, accepted, _) = server(CHUNKED, usize::MAX).await;
        for _ in 0..3 {
            let r = pool.post(&url, &[], b"{}".to_vec()).await.expect("answer");
            let chunks: Vec<Bytes> = r.body.map(|c| c.expect("chunk")).collect().await;
            assert_eq!(chunks.concat(), b"data: one");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        // One answer per connection, then the server closes it.
        let (url, accepted, closed) = server(WHOLE, 1).await;
        let pool = pool();
        for i in 1..=3 {
            let r = pool.post(&url, &[], b"{}".to_vec()).await.expect("answer");
            assert_eq!(r.body.bytes().await.expect("body"), &b"{\"ok\":true}"[..]);
            // Until the server has closed the connection (on loopback its end is then
            // waiting at the client).
            while closed.load(Ordering::SeqCst) < i {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_left_unread_does_not_return_its_connection() {
        let (url, accepted, _) = server(CHUNKED, usize::MAX).await;
        let pool = pool();
        let r = pool.post(&url, &[], b"{}".to_vec()).await.expect("answer");
        drop(r);
        let r = pool.post(&url, &[], b"{}".to_vec()).await.expect("answer");
        assert_eq!(r.body.bytes().await.expect("body"), &b"data: one"[..]);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        let (url, accepted, _) = server(WHOLE, usize::MAX).await;
        let public_only = Arc::new(Pool::new(
            false,
            Duration::from_secs(1),
            Duration::from_secs(90),
        ));
        let refused = public_only.post(&url, &[], b"{}".to_vec()).await;
        assert!(matches!(refused, Err(Error::Connect(_))));
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }
}
