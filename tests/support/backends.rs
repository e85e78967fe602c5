//! Fake backends. [`FakeBackend::start`] runs a hyper 1 HTTP/1.1 server
//! that answers every request with status 200, header `x-backend: NAME`
//! and body `NAME`, and records what it received ([`Seen`]). The query
//! string scripts it:
//! [`FakeBackend::start`] runs a hyper 1 HTTP/1.1 server that answers every
//! request with status 200, header `x-backend: NAME` and body `NAME`, and
//! records what it received ([`Seen`]). The query string scripts it:
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
//! [`ResetBackend`] resets every connection without answering;
//! [`refused_addr`] is an address nothing listens on.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

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

struct BackendState {
    name: String,
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    gate: Semaphore,
    held: AtomicUsize,
    body_bytes: AtomicU64,
}

/// An in-process HTTP/1.1 backend on `127.0.0.1:0`; see the module docs.
pub struct FakeBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl FakeBackend {
    pub async fn start(name: &str) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            held: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve_backend(listener, state.clone()));
        FakeBackend {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    /// `127.0.0.1:PORT`, as written in configs and metric labels.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far (counted when the head arrives).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
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
                let state = state.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| handle_backend(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
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

async fn handle_backend(
    state: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<ReqBody>, Infallible> {
    let query = query_map(req.uri().query());
    let seen = Seen {
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
    };
    state.seen.lock().unwrap().push(seen.clone());
    state.hits.fetch_add(1, Ordering::SeqCst);

    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if query.contains_key("hold") {
        pass_gate(&state).await;
    }

    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                    state
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            Err(_) => break,
        }
    }

    let status = query
        .get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
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
        full(state.name.clone())
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
