//! Fake backends. [`FakeBackend`] is the one configurable HTTP backend of
//! the tests: a hyper 1 server on `127.0.0.1:0` that answers every request
//! with status 200, header `x-backend: NAME` and body `NAME`, and records
//! what it received ([`Seen`]). [`FakeBackend::builder`] sets what every
//! request gets:
//!
//! | builder                  | what the backend does                                       |
//! | ------------------------ | ----------------------------------------------------------- |
//! | `.status(N)`             | answers with status N (changeable: `set_status`)            |
//! | `.delay(D)`              | waits D before answering (changeable: `set_delay`)          |
//! | `.health(PATH, N)`       | answers PATH with status N (`set_health`); such requests are counted in `health_hits`, not in `hits`/`seen` |
//! | `.echo_body()`           | body is the request body                                    |
//! | `.reply_version()`       | body is the request's HTTP version (`HTTP/1.1`, `HTTP/2.0`) |
//! | `.drip(N, EVERY)`        | streams [`drip_chunk`] 0..N, the first at once, then one per EVERY |
//! | `.h2c()`                 | speaks HTTP/2 with prior knowledge only (default HTTP/1.1)  |
//! | `.tls(CERT, KEY, ALPN)`  | speaks TLS offering ALPN, then HTTP/1.1 or HTTP/2 as agreed; records each handshake's SNI (`sni`) |
//! | `.close_after(N)`        | closes each connection after its N-th response (HTTP/1.1)   |
//!
//! and the query string scripts one request:
//!
//! | query            | what the backend does                                          |
//! | ---------------- | -------------------------------------------------------------- |
//! | `delay_ms=N`     | sleeps N ms before answering                                   |
//! | `hold=1`         | waits at the gate until the test calls [`FakeBackend::release`]|
//! | `echo=1`         | body is JSON: method, uri, headers (in order), body byte count |
//! | `count=1`        | body is the number of request body bytes received             |
//! | `stream_bytes=N` | streams an N-byte body generated on the fly                    |
//! | `stream_hold=1`  | sends `first\n`, waits at the gate, then sends `rest\n`         |
//! | `status=N`       | answers with status N                                          |
//!
//! The request body is always read to its end before answering; its bytes
//! are counted live in [`FakeBackend::body_bytes`].
//!
//! Backends that misbehave on the wire (garbage, resets, half answers) are
//! not HTTP servers and live beside their tests; [`ResetBackend`] resets
//! every connection without answering; [`refused_addr`] is an address
//! nothing listens on.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::{boxed, channel_body, full, PatternBody, ReqBody, WAIT};

/// One request as a fake backend received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// Header fields in received order, names lower-case.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the body of an unscripted answer is.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// The backend's name.
    Name,
    /// The request body.
    EchoBody,
    /// The request's HTTP version, as `{:?}` prints it.
    Version,
    /// `chunks` chunks, one per `every`.
    Drip { chunks: usize, every: Duration },
}

/// The wire protocol a fake backend speaks.
#[derive(Clone)]
enum Wire {
    Http1,
    H2c,
    /// TLS, then HTTP/1.1 or HTTP/2 by ALPN.
    Tls(tokio_rustls::TlsAcceptor),
}

/// Chunk `i` of a `.drip(..)` body: `chunk I\n`.
pub fn drip_chunk(i: usize) -> String {
    format!("chunk {i}\n")
}

/// Settings for a [`FakeBackend`]; see the module docs.
pub struct FakeBackendBuilder {
    name: String,
    status: u16,
    delay: Duration,
    health: Option<(String, u16)>,
    reply: Reply,
    wire: Wire,
    close_after: Option<usize>,
}

impl FakeBackendBuilder {
    /// Answer with `status` (unless the query says otherwise).
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Wait `delay` before every answer.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answer `path` with `status`, apart from the other requests (a health
    /// check endpoint).
    pub fn health(mut self, path: &str, status: u16) -> Self {
        self.health = Some((path.to_owned(), status));
        self
    }

    /// Answer with the request body.
    pub fn echo_body(mut self) -> Self {
        self.reply = Reply::EchoBody;
        self
    }

    /// Answer with the request's HTTP version.
    pub fn reply_version(mut self) -> Self {
        self.reply = Reply::Version;
        self
    }

    /// Stream `chunks` chunks ([`drip_chunk`]), the first at once, then one
    /// per `every`.
    pub fn drip(mut self, chunks: usize, every: Duration) -> Self {
        self.reply = Reply::Drip { chunks, every };
        self
    }

    /// Speak HTTP/2 with prior knowledge (h2c) only.
    pub fn h2c(mut self) -> Self {
        self.wire = Wire::H2c;
        self
    }

    /// Speak TLS with this certificate chain and key (PEM), offering
    /// `alpn` (`[b"h2", b"http/1.1"]`), then HTTP/1.1 or HTTP/2 as agreed.
    pub fn tls(mut self, cert_pem: &str, key_pem: &str, alpn: &[&[u8]]) -> Self {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("backend certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("backend key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(switchyard::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("backend TLS config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        self.wire = Wire::Tls(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
        self
    }

    /// Close each connection after its `n`-th response (HTTP/1.1).
    pub fn close_after(mut self, n: usize) -> Self {
        self.close_after = Some(n);
        self
    }

    pub async fn start(self) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let (health_path, health_status) = match self.health {
            Some((path, status)) => (Some(path), status),
            None => (None, 200),
        };
        let state = Arc::new(BackendState {
            name: self.name.clone(),
            status: AtomicU16::new(self.status),
            delay_ms: AtomicU64::new(self.delay.as_millis() as u64),
            health_path,
            health_status: AtomicU16::new(health_status),
            reply: self.reply,
            wire: self.wire,
            close_after: self.close_after,
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            sni: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            held: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve_backend(listener, state.clone()));
        FakeBackend {
            name: self.name,
            addr,
            state,
            task,
        }
    }
}

struct BackendState {
    name: String,
    status: AtomicU16,
    delay_ms: AtomicU64,
    health_path: Option<String>,
    health_status: AtomicU16,
    reply: Reply,
    wire: Wire,
    close_after: Option<usize>,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    connections: AtomicUsize,
    /// The SNI of each completed TLS handshake (`None`: the client sent none).
    sni: Mutex<Vec<Option<String>>>,
    seen: Mutex<Vec<Seen>>,
    gate: Semaphore,
    held: AtomicUsize,
    body_bytes: AtomicU64,
}

/// The one configurable fake HTTP backend; see the module docs.
pub struct FakeBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl FakeBackend {
    /// A backend with every setting at its default (HTTP/1.1, 200, `NAME`).
    pub async fn start(name: &str) -> FakeBackend {
        Self::builder(name).start().await
    }

    pub fn builder(name: &str) -> FakeBackendBuilder {
        FakeBackendBuilder {
            name: name.to_owned(),
            status: 200,
            delay: Duration::ZERO,
            health: None,
            reply: Reply::Name,
            wire: Wire::Http1,
            close_after: None,
        }
    }

    /// `127.0.0.1:PORT`, as written in configs and metric labels.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far (counted when the head arrives), health
    /// checks apart.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests to the `.health(..)` path so far.
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The SNI of each completed TLS handshake, in order (`.tls(..)`).
    pub fn sni(&self) -> Vec<Option<String>> {
        self.state.sni.lock().unwrap().clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn last_seen(&self) -> Option<Seen> {
        self.state.seen.lock().unwrap().last().cloned()
    }

    /// Requests (or streams) now waiting at the gate.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Lets `n` waiters through the gate (now or later).
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// Request body bytes received so far, over all requests.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// From the next request on, answer with `status`.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// From the next request on, answer after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// From the next check on, answer the `.health(..)` path with `status`.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_backend(listener: TcpListener, state: Arc<BackendState>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                state.connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve_connection(stream, state.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<BackendState>) {
    let io = TokioIo::new(stream);
    let wire = state.wire.clone();
    let sni_sink = state.clone();
    // Responses on this connection so far, for `close_after`.
    let answered = Arc::new(AtomicUsize::new(0));
    let service = service_fn(move |req| {
        let (state, answered) = (state.clone(), answered.clone());
        async move {
            let mut resp = handle_backend(state.clone(), req).await?;
            let n = answered.fetch_add(1, Ordering::SeqCst) + 1;
            if state.close_after.is_some_and(|limit| n >= limit) {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, "close".parse().unwrap());
            }
            Ok::<_, Infallible>(resp)
        }
    });
    match wire {
        Wire::Http1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }
        Wire::H2c => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        }
        Wire::Tls(acceptor) => {
            let Ok(tls) = acceptor.accept(io.into_inner()).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            sni_sink.sni.lock().unwrap().push(sni);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    }
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

async fn pass_gate(state: &BackendState) {
    state.held.fetch_add(1, Ordering::SeqCst);
    if let Ok(permit) = state.gate.acquire().await {
        permit.forget();
    }
    state.held.fetch_sub(1, Ordering::SeqCst);
}

/// The answer to a `.health(..)` path: its status, an empty body.
fn health_answer(state: &BackendState) -> Response<ReqBody> {
    state.health_hits.fetch_add(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(state.health_status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn seen_of(req: &Request<Incoming>) -> Seen {
    Seen {
        method: req.method().to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

/// Reads the request body to its end, counting its bytes live; keeps them
/// only when `keep` (for `.echo_body()`).
async fn read_body(state: &BackendState, mut body: Incoming, keep: bool) -> (u64, Vec<u8>) {
    let (mut received, mut kept) = (0u64, Vec::new());
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            state
                .body_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
            if keep {
                kept.extend_from_slice(data);
            }
        }
    }
    (received, kept)
}

/// A body of `chunks` [`drip_chunk`]s, the first at once, then one per `every`.
fn drip_body(chunks: usize, every: Duration) -> ReqBody {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for i in 0..chunks {
            tick.tick().await;
            if tx.send(Bytes::from(drip_chunk(i))).await.is_err() {
                return;
            }
        }
    });
    boxed(body)
}

async fn handle_backend(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<ReqBody>, Infallible> {
    if state.health_path.as_deref() == Some(req.uri().path()) {
        return Ok(health_answer(&state));
    }
    let query = query_map(req.uri().query());
    let seen = seen_of(&req);
    let version = req.version();
    state.seen.lock().unwrap().push(seen.clone());
    state.hits.fetch_add(1, Ordering::SeqCst);

    let delay = match query.get("delay_ms").and_then(|v| v.parse().ok()) {
        Some(ms) => ms,
        None => state.delay_ms.load(Ordering::SeqCst),
    };
    if delay > 0 {
        // The delay is what the test asks for (a slow backend), not a wait.
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if query.contains_key("hold") {
        pass_gate(&state).await;
    }

    let echo_body = matches!(state.reply, Reply::EchoBody);
    let (received, kept) = read_body(&state, req.into_body(), echo_body).await;

    let status = query
        .get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| state.status.load(Ordering::SeqCst));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if let Some(n) = query.get("stream_bytes").and_then(|v| v.parse().ok()) {
        boxed(PatternBody::new(n))
    } else if query.contains_key("stream_hold") {
        let (tx, body) = channel_body();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first\n")).await;
            pass_gate(&state).await;
            let _ = tx.send(Bytes::from_static(b"rest\n")).await;
        });
        boxed(body)
    } else if query.contains_key("echo") {
        let json = serde_json::json!({
            "backend": state.name,
            "method": seen.method,
            "uri": seen.uri,
            "headers": seen.headers,
            "body_bytes": received,
        });
        full(json.to_string())
    } else if query.contains_key("count") {
        full(received.to_string())
    } else {
        match state.reply {
            Reply::Name => full(state.name.clone()),
            Reply::EchoBody => full(kept),
            Reply::Version => full(format!("{version:?}")),
            Reply::Drip { chunks, every } => drip_body(chunks, every),
        }
    };
    let response = Response::builder()
        .status(status)
        .header("x-backend", state.name.as_str())
        .body(body)
        .unwrap();
    Ok(response)
}

/// A backend that accepts, reads the request head, then resets the
/// connection (RST, SO_LINGER 0) without answering.
pub struct ResetBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ResetBackend {
    pub async fn start() -> ResetBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind reset");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut stream, _)) = accepted else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(async move {
                            let mut buf = Vec::new();
                            let mut chunk = [0u8; 4096];
                            let read_head = async {
                                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                                    match stream.read(&mut chunk).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                    }
                                }
                            };
                            let _ = tokio::time::timeout(WAIT, read_head).await;
                            let _ = stream.set_zero_linger();
                            drop(stream);
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        ResetBackend {
            addr,
            accepted,
            task,
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ResetBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on (bound, then closed): connecting is refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
