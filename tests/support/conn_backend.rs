//! A keep-alive HTTP/1.1 backend that accounts for its connections, for the
//! upstream pool tests: how many were accepted, how many are open now, how
//! many the proxy closed, and (optionally) closing its own idle ones after a
//! keep-alive timeout, as Node.js and Apache do. Each answer's body names
//! the connection that served it (`conn-N`).
//!
//! Deliberately raw (tokio sockets, a minimal request reader): it must see
//! exactly what the proxy does with connections, with no pool of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What a [`ConnBackend`] does besides answering 200.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnScript {
    /// Hold every answer until this many requests are in flight at once
    /// (each waits at most 10 s): forces that many connections.
    pub hold_until: usize,
    /// Close a connection idle this long (the backend's keep-alive timeout).
    pub close_idle_after: Option<Duration>,
}

/// The backend's counters.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub accepted: AtomicUsize,
    pub open: AtomicUsize,
    /// Connections the peer (the proxy) closed.
    pub closed_by_peer: AtomicUsize,
    /// Connections the backend closed for being idle.
    pub idle_closes: AtomicUsize,
    pub requests: AtomicUsize,
    in_flight: AtomicUsize,
    arrived: Notify,
    /// When the peer last closed a connection.
    last_peer_close: std::sync::Mutex<Option<Instant>>,
}

pub struct ConnBackend {
    pub addr: SocketAddr,
    pub stats: Arc<ConnStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnBackend {
    pub async fn start(script: ConnScript) -> ConnBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(ConnStats::default());
        let shared = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                shared.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, id, script, Arc::clone(&shared)));
            }
        });
        ConnBackend { addr, stats, task }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }

    pub fn closed_by_peer(&self) -> usize {
        self.stats.closed_by_peer.load(Ordering::SeqCst)
    }

    pub fn idle_closes(&self) -> usize {
        self.stats.idle_closes.load(Ordering::SeqCst)
    }

    pub fn last_peer_close(&self) -> Option<Instant> {
        *self
            .stats
            .last_peer_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// How one connection ended.
enum End {
    Peer,
    Idle,
    Error,
}

async fn serve(mut stream: TcpStream, id: usize, script: ConnScript, stats: Arc<ConnStats>) {
    let end = serve_requests(&mut stream, id, script, &stats).await;
    match end {
        End::Peer => {
            stats.closed_by_peer.fetch_add(1, Ordering::SeqCst);
            *stats
                .last_peer_close
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        End::Idle => {
            stats.idle_closes.fetch_add(1, Ordering::SeqCst);
        }
        End::Error => {}
    }
    drop(stream);
    stats.open.fetch_sub(1, Ordering::SeqCst);
}

async fn serve_requests(
    stream: &mut TcpStream,
    id: usize,
    script: ConnScript,
    stats: &ConnStats,
) -> End {
    let mut buf = Vec::new();
    loop {
        let head = match read_head(stream, &mut buf, script.close_idle_after).await {
            Ok(Some(head)) => head,
            Ok(None) => return End::Peer,
            Err(Timeout) => return End::Idle,
        };
        let body_len = content_length(&head);
        while buf.len() < body_len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return End::Error,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        stats.requests.fetch_add(1, Ordering::SeqCst);
        hold(script.hold_until, stats).await;
        let body = format!("conn-{id}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return End::Error;
        }
    }
}

/// Wait (at most 10 s) until `until` requests are in flight together.
async fn hold(until: usize, stats: &ConnStats) {
    if until <= 1 {
        return;
    }
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    if now >= until {
        stats.arrived.notify_waiters();
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let arrived = stats.arrived.notified();
                if stats.in_flight.load(Ordering::SeqCst) >= until {
                    return;
                }
                arrived.await;
            }
        })
        .await;
    }
}

struct Timeout;

/// The next request head (`None`: the peer closed between requests).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    idle: Option<Duration>,
) -> Result<Option<String>, Timeout> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk);
        let n = match idle.filter(|_| buf.is_empty()) {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(r) => r,
                Err(_) => return Err(Timeout),
            },
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}
