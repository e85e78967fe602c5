//! A scripted raw-TCP HTTP/1.1 backend for the resilience tests
//! (`resilience_faults.rs`, `resilience_keepalive.rs`): it hangs, resets,
//! answers bytes hyper would refuse to send, or drops keep-alive connections
//! without a word. Plus the small config helpers those files share.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::support::{full, request, ReqBody, WAIT};

// ===== a scripted raw HTTP/1.1 backend =====

/// What a [`RawBackend`] does with each connection it accepts.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// Reads the request, never answers, keeps the connection open.
    Hang,
    /// Reads the head and the whole body, then resets (RST) without answering.
    ResetAfterBody,
    /// Reads the request, writes these bytes, closes.
    Reply(&'static [u8]),
    /// Reads the request, writes these bytes, waits a moment, resets (RST).
    ReplyThenReset(&'static [u8]),
    /// Keep-alive server that closes a connection idle for this long, without
    /// `Connection: close` (Node.js / Apache keep-alive timeouts).
    IdleClose(Duration),
    /// Keep-alive server that answers the first request of each connection
    /// and, on the next one, closes right after reading its head: the worst
    /// case of the stale keep-alive race, made deterministic.
    CloseOnReuse,
    /// Keep-alive server that notes bodies which end before their declared
    /// length (the peer closed mid-body).
    WatchBody,
}

/// What a [`RawBackend`] saw.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    /// Methods of the requests it took (not those dropped by `CloseOnReuse`).
    pub methods: Mutex<Vec<String>>,
    pub body_bytes: AtomicU64,
    /// Bodies that ended (EOF or error) before their `Content-Length`.
    pub cut_bodies: AtomicUsize,
    /// `IdleClose`: connections closed for being idle.
    pub idle_closes: AtomicUsize,
    /// `CloseOnReuse`: requests dropped unanswered on a reused connection.
    pub dropped_on_reuse: AtomicUsize,
}

/// A raw TCP backend on `127.0.0.1:0` that runs a [`Script`] per connection.
/// Request bodies must carry `Content-Length` (all these tests send).
pub struct RawBackend {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(script: Script) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, script, Arc::clone(&stats)));
        RawBackend { addr, stats, task }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn methods(&self) -> Vec<String> {
        self.stats.methods.lock().expect("methods lock").clone()
    }

    /// Requests taken (heads read and not dropped).
    pub fn requests(&self) -> usize {
        self.methods().len()
    }

    pub fn count(&self, method: &str) -> usize {
        self.methods().iter().filter(|m| *m == method).count()
    }

    pub fn get(&self, counter: fn(&Stats) -> &AtomicUsize) -> usize {
        counter(&self.stats).load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, script: Script, stats: Arc<Stats>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                stats.connections.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(Conn::new(stream), script, Arc::clone(&stats)));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One accepted connection and the bytes read but not yet used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

/// A request head, reduced to what the scripts need.
struct Head {
    method: String,
    content_length: u64,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Reads once before `deadline`; false on EOF, error or timeout.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next request head, if one arrives whole within `limit`.
    async fn head(&mut self, limit: Duration) -> Option<Head> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let method = text.split_whitespace().next().unwrap_or("").to_string();
                let content_length = text
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                return Some(Head {
                    method,
                    content_length,
                });
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// Reads up to `len` body bytes (bounded by `WAIT`); returns how many came.
    async fn body(&mut self, len: u64, stats: &Stats) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut got = 0u64;
        loop {
            let take = self.buf.len().min((len - got) as usize);
            self.buf.drain(..take);
            got += take as u64;
            stats.body_bytes.fetch_add(take as u64, Ordering::SeqCst);
            if got == len || !self.fill(deadline).await {
                return got;
            }
        }
    }

    /// A 200 whose body is `text`.
    async fn answer(&mut self, text: &str) -> bool {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: raw\r\n\r\n{text}",
            text.len()
        );
        self.stream.write_all(resp.as_bytes()).await.is_ok()
    }

    fn reset(self) {
        let _ = self.stream.set_zero_linger();
    }
}

fn record(stats: &Stats, head: &Head) {
    stats
        .methods
        .lock()
        .expect("methods lock")
        .push(head.method.clone());
}

async fn serve(mut conn: Conn, script: Script, stats: Arc<Stats>) {
    match script {
        Script::Hang => {
            if let Some(head) = conn.head(WAIT).await {
                record(&stats, &head);
            }
            // Silent until the peer leaves (or the backend is dropped).
            let mut sink = [0u8; 4096];
            while matches!(conn.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Script::ResetAfterBody => {
            let Some(head) = conn.head(WAIT).await else {
                return;
            };
            record(&stats, &head);
            conn.body(head.content_length, &stats).await;
            conn.reset();
        }
        Script::Reply(bytes) | Script::ReplyThenReset(bytes) => {
            let Some(head) = conn.head(WAIT).await else {
                return;
            };
            record(&stats, &head);
            conn.body(head.content_length, &stats).await;
            let _ = conn.stream.write_all(bytes).await;
            let _ = conn.stream.flush().await;
            if matches!(script, Script::ReplyThenReset(_)) {
                // The fault under test: an answer, then a reset 200 ms later
                // (time for the proxy to read and forward what was sent).
                tokio::time::sleep(Duration::from_millis(200)).await;
                conn.reset();
            } else {
                let _ = conn.stream.shutdown().await;
            }
        }
        Script::IdleClose(idle) => {
            let mut limit = WAIT;
            loop {
                let Some(head) = conn.head(limit).await else {
                    if !conn.eof {
                        stats.idle_closes.fetch_add(1, Ordering::SeqCst);
                    }
                    return; // dropped: FIN, or RST if a request just arrived
                };
                record(&stats, &head);
                let got = conn.body(head.content_length, &stats).await;
                if got < head.content_length || !conn.answer(&got.to_string()).await {
                    return;
                }
                limit = idle;
            }
        }
        Script::CloseOnReuse => {
            let mut served = 0;
            while let Some(head) = conn.head(WAIT).await {
                if served > 0 {
                    stats.dropped_on_reuse.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                record(&stats, &head);
                let got = conn.body(head.content_length, &stats).await;
                if got < head.content_length || !conn.answer(&got.to_string()).await {
                    return;
                }
                served += 1;
            }
        }
        Script::WatchBody => {
            while let Some(head) = conn.head(WAIT).await {
                record(&stats, &head);
                let got = conn.body(head.content_length, &stats).await;
                if got < head.content_length {
                    stats.cut_bodies.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if !conn.answer(&got.to_string()).await {
                    return;
                }
            }
        }
    }
}

// ===== config and small helpers =====

pub fn addresses(backends: &[&RawBackend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// `[services.NAME]` over `backends` (already a TOML array) plus `extra` lines.
pub fn service(name: &str, backends: &str, extra: &str) -> String {
    format!("[services.{name}]\nbackends = {backends}\n{extra}\n")
}

pub fn post(addr: SocketAddr, path: &str, body: &'static [u8]) -> http::Request<ReqBody> {
    request(Method::POST, addr, path)
        .body(full(body))
        .expect("request")
}
