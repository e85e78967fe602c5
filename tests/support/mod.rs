//! Shared end-to-end test support: fake backends, an in-process app, the
//! spawned binary, HTTP clients (pooled, single-connection and raw TCP), and
//! a small Prometheus text parser.
//!
//! Everything listens on `127.0.0.1:0`; every wait is bounded by a timeout;
//! spawned processes are killed when their handle drops.
//!
//! # Fake backends
//!
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
#![allow(dead_code)]

pub mod conn_backend;
pub mod logs;
pub mod pki;
pub mod promtool;
pub mod registry_api;
pub mod slow;
#[allow(unused_imports)]
pub use logs::*;
#[allow(unused_imports)]
pub use registry_api::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use switchyard::app::App;
use switchyard::config::Config;

/// Upper bound for any single wait (a request, a start-up, an exit).
pub const WAIT: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every client helper sends.
pub type ReqBody = BoxBody<Bytes, BoxError>;

// ===== waiting =====

/// Polls `check` every 20 ms until it returns true; panics naming `what`
/// after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`], but returns whether `check` held within `limit`
/// instead of panicking (for tests that collect several problems).
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts occurrences of each string.
pub fn tally<S: AsRef<str>>(items: &[S]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item.as_ref().to_string()).or_insert(0) += 1;
    }
    counts
}

// ===== bodies =====

/// A body of `total` bytes made on the fly from one shared 64 KiB chunk
/// (each frame is a cheap `Bytes` slice, nothing is held whole). Byte `i` of
/// every chunk is `i % 251`.
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    pub fn new(total: u64) -> Self {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        PatternBody {
            remaining: total,
            chunk: Bytes::from(chunk),
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body fed chunk by chunk through a channel; it ends when every sender
/// is dropped. Its length is unknown, so HTTP/1.1 sends it chunked.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

pub fn boxed<B>(body: B) -> ReqBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

pub fn full(data: impl Into<Bytes>) -> ReqBody {
    boxed(Full::new(data.into()))
}

pub fn empty() -> ReqBody {
    boxed(Empty::<Bytes>::new())
}

/// Reads a body to its end, counting bytes without keeping them.
pub async fn count_body<B>(mut body: B) -> Result<u64, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body error after {n} bytes: {e}"))?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

// ===== fake backends =====

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

// ===== config text =====

/// `[proxy]` and `[admin]` on ephemeral loopback ports, plus `extra_proxy`
/// lines inside `[proxy]`.
pub fn base_toml_with(extra_proxy: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n{extra_proxy}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n"
    )
}

pub fn base_toml() -> String {
    base_toml_with("")
}

/// `["127.0.0.1:A", "127.0.0.1:B"]`
pub fn backend_list(backends: &[&FakeBackend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A `[services.NAME]` table with `backends` and any `extra` lines.
pub fn service_toml(name: &str, backends: &[&FakeBackend], extra: &str) -> String {
    format!(
        "[services.{name}]\nbackends = {}\n{extra}\n",
        backend_list(backends)
    )
}

/// One `[[routes]]` entry.
pub fn route_toml(host: Option<&str>, prefix: &str, service: &str, strip: bool) -> String {
    let mut out = String::from("[[routes]]\n");
    if let Some(host) = host {
        out.push_str(&format!("host = \"{host}\"\n"));
    }
    out.push_str(&format!(
        "path_prefix = \"{prefix}\"\nservice = \"{service}\"\n"
    ));
    if strip {
        out.push_str("strip_prefix = true\n");
    }
    out.push('\n');
    out
}

/// A config file in its own temporary folder.
pub struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Rewrites the file in place (truncate + write, same inode).
    pub fn write_in_place(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write config");
    }

    /// Replaces the file atomically: write a sibling, rename over it.
    pub fn replace(&self, text: &str) {
        let tmp = self.dir.path().join(".switchyard.toml.tmp");
        std::fs::write(&tmp, text).expect("write temp config");
        std::fs::rename(&tmp, &self.path).expect("rename config");
    }
}

// ===== the app in-process =====

/// A running in-process App; dropping it triggers shutdown.
pub struct TestApp {
    /// The first plain proxy listener.
    pub proxy: SocketAddr,
    pub proxies: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub config: ConfigFile,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

/// Writes `toml` to a temporary file, loads it with `Config::load` (so
/// reloads re-read that file), binds and runs the App.
pub async fn start_app(toml: &str) -> TestApp {
    let config = ConfigFile::new(toml);
    let loaded = Config::load(config.path())
        .unwrap_or_else(|e| panic!("test config rejected:\n{e}\n--- config ---\n{toml}"));
    let app = App::bind(loaded)
        .await
        .unwrap_or_else(|e| panic!("App::bind failed: {e}"));
    let proxies = app.proxy_addrs();
    let admin = app.admin_addr();
    assert!(!proxies.is_empty(), "App::proxy_addrs is empty");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run(async move {
            let _ = rx.await;
        })
        .await
        .map_err(|e| e.to_string())
    });
    TestApp {
        proxy: proxies[0],
        proxies,
        admin,
        config,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Starts shutdown without waiting for `run` to return.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded) for `run` to return after shutdown was triggered.
    pub async fn join(&mut self, limit: Duration) -> Result<(), String> {
        let handle = self.handle.take().expect("already joined");
        match tokio::time::timeout(limit, handle).await {
            Err(_) => Err(format!("App::run did not return within {limit:?}")),
            Ok(Err(join)) => Err(format!("App::run panicked: {join}")),
            Ok(Ok(result)) => result,
        }
    }

    /// Shutdown and wait for `run` to return.
    pub async fn stop(mut self) -> Result<(), String> {
        self.begin_shutdown();
        self.join(WAIT).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

// ===== the binary =====

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A spawned `switchyard` process; killed when dropped.
pub struct Proc {
    child: tokio::process::Child,
    pub pid: u32,
    pub proxies: Vec<SocketAddr>,
    pub admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The address after `marker` in a log line, e.g. `proxy listening on `.
pub fn parse_listen_line(line: &str, marker: &str) -> Option<SocketAddr> {
    let start = line.find(marker)? + marker.len();
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// Starts the binary with `args` (stderr captured, `RUST_LOG=info`), waits
/// for one `admin listening on` line and `proxies` `proxy listening on`
/// lines, then for `/readyz` to answer 200. Panics with the captured stderr
/// when it exits or takes too long.
pub async fn spawn_binary(args: &[&str], proxies: usize) -> Proc {
    spawn_binary_under(&[], args, proxies).await
}

/// [`spawn_binary`] run by a wrapper that execs it, e.g.
/// `["prlimit", "--nofile=256:256", "--"]` (the pid stays the binary's).
pub async fn spawn_binary_under(wrapper: &[&str], args: &[&str], proxies: usize) -> Proc {
    let (program, wrapper_args) = match wrapper.split_first() {
        Some((program, rest)) => (*program, rest),
        None => (BIN, &[][..]),
    };
    let bin: &[&str] = if wrapper.is_empty() { &[] } else { &[BIN] };
    let mut child = tokio::process::Command::new(program)
        .args(wrapper_args)
        .args(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let pid = child.id().expect("pid");
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });

    let mut proxy_addrs = Vec::new();
    let mut admin = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while admin.is_none() || proxy_addrs.len() < proxies {
        let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                panic!(
                    "switchyard {args:?} exited before listening; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            Err(_) => panic!(
                "switchyard {args:?} did not log its listeners in time; stderr:\n{}",
                lines.lock().unwrap().join("\n")
            ),
        };
        if let Some(addr) = parse_listen_line(&line, "proxy listening on ") {
            proxy_addrs.push(addr);
        }
        if let Some(addr) = parse_listen_line(&line, "admin listening on ") {
            admin = Some(addr);
        }
    }
    let proc = Proc {
        child,
        pid,
        proxies: proxy_addrs,
        admin: admin.unwrap(),
        lines,
    };
    // Fully started (signal handlers installed) once /readyz says so.
    wait_ready(proc.admin).await;
    proc
}

/// `switchyard serve --config FILE`.
pub async fn spawn_serve(config: &ConfigFile) -> Proc {
    spawn_binary(&["serve", "--config", &config.path_str()], 1).await
}

impl Proc {
    pub fn proxy(&self) -> SocketAddr {
        self.proxies[0]
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Waits for exit up to `limit`; `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait"))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stderr captured so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

/// Runs the binary to completion (bounded) and returns its output.
pub async fn run_binary(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("switchyard {args:?} did not exit in time"))
        .expect("wait")
}

// ===== HTTP clients =====

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-backend` header of a fake backend's answer.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    /// The `x-switchyard-error` header.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-switchyard-error")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A pooled keep-alive client (hyper-util legacy).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, ReqBody>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends and returns the head with a streaming body (bounded wait for the head).
    pub async fn send_streaming(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, String> {
        self.send_streaming_within(req, WAIT).await
    }

    /// Like `send_streaming`, waiting up to `limit` for the head.
    pub async fn send_streaming_within(
        &self,
        req: Request<ReqBody>,
        limit: Duration,
    ) -> Result<Response<Incoming>, String> {
        match tokio::time::timeout(limit, self.client.request(req)).await {
            Err(_) => Err("no response head within the time limit".into()),
            Ok(Err(e)) => Err(format!("request failed: {e:?}")),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Sends and reads the whole response (bounded).
    pub async fn send(&self, req: Request<ReqBody>) -> Result<Resp, String> {
        let resp = self.send_streaming(req).await?;
        let (parts, body) = resp.into_parts();
        let body = match tokio::time::timeout(WAIT, body.collect()).await {
            Err(_) => return Err("response body did not end within the time limit".into()),
            Ok(Err(e)) => return Err(format!("response body failed: {e}")),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn try_get(&self, addr: SocketAddr, path: &str) -> Result<Resp, String> {
        self.send(request(Method::GET, addr, path).body(empty()).unwrap())
            .await
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Resp {
        self.try_get(addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
    }

    pub async fn get_host(&self, addr: SocketAddr, host: &str, path: &str) -> Resp {
        let req = request(Method::GET, addr, path)
            .header("host", host)
            .body(empty())
            .unwrap();
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {path} (Host: {host}): {e}"))
    }

    pub async fn post(&self, addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Resp {
        let req = request(Method::POST, addr, path)
            .body(full(body.into()))
            .unwrap();
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
    }
}

/// A request builder for `http://ADDR/PATH`.
pub fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
}

/// A request builder in origin form (`/PATH` plus a Host header), for
/// single connections made with [`h1_connection`] or hyper's conn API.
pub fn origin_request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
}

/// One GET with a fresh client.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    Http::new().get(addr, path).await
}

/// One HTTP/1.1 connection (no pool, no transparent reconnects): a request
/// failing on it shows that the connection was dropped.
pub async fn h1_connection(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

// ===== admin =====

pub async fn metrics_text(admin: SocketAddr) -> String {
    let resp = get(admin, "/metrics").await;
    assert_eq!(resp.status, StatusCode::OK, "GET /metrics");
    resp.text()
}

/// Waits (≤ `WAIT`) until `/readyz` answers 200: readiness is set once
/// `run` has started, a moment after the listeners are bound.
pub async fn wait_ready(admin: SocketAddr) {
    eventually(WAIT, "/readyz to answer 200", || async {
        matches!(Http::new().try_get(admin, "/readyz").await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;
}

/// `POST /v1/reload` on the admin listener.
pub async fn admin_reload(admin: SocketAddr) -> Resp {
    Http::new().post(admin, "/v1/reload", Bytes::new()).await
}

/// A sample's labels, in the order printed.
pub type Labels = Vec<(String, String)>;

/// One Prometheus sample: name, labels, value.
pub fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    chars.next(); // opening quote
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, other)) => value.push(other),
                                None => {}
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The sum of every sample named `name` whose labels include all of
/// `labels` (any order); `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for (n, ls, v) in text.lines().filter_map(parse_sample) {
        if n != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, want)| ls.iter().any(|(lk, lv)| lk == k && lv == want));
        if all {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Every label set of samples named `name`.
pub fn metric_label_sets(text: &str, name: &str) -> Vec<Labels> {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, _, _)| n == name)
        .map(|(_, ls, _)| ls)
        .collect()
}

// ===== raw TCP =====

/// A response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find_crlf2(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses one response from the front of `buf`. `closed` says the peer has
/// closed, so a body without framing ends at the end of `buf`. Returns the
/// response and the bytes it used, or `None` if more bytes are needed.
pub fn parse_raw_response(buf: &[u8], closed: bool) -> Option<(RawResponse, usize)> {
    let head_end = find_crlf2(buf)?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let mut pos = head_end + 4;
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((resp, pos));
    }
    if chunked {
        loop {
            let line_end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                // trailers, then an empty line
                loop {
                    let end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Some((resp, pos));
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            resp.body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().ok()?;
        if buf.len() < pos + len {
            return None;
        }
        resp.body = buf[pos..pos + len].to_vec();
        Some((resp, pos + len))
    } else if closed {
        resp.body = buf[pos..].to_vec();
        Some((resp, buf.len()))
    } else {
        None
    }
}

/// A raw TCP connection for requests hyper's client would refuse to send.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The peer closed (EOF or reset).
    pub closed: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Writes bytes; a write error (the peer already closed) is returned,
    /// not fatal: the answer may still be readable.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads once, with a deadline; false when nothing more can come.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one whole response (bounded by `WAIT`); `None` if the
    /// connection ended or timed out first.
    pub async fn try_response(&mut self) -> Option<RawResponse> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((resp, used)) = parse_raw_response(&self.buf, self.closed) {
                self.buf.drain(..used);
                return Some(resp);
            }
            if !self.fill(deadline).await {
                if let Some((resp, used)) = parse_raw_response(&self.buf, self.closed) {
                    self.buf.drain(..used);
                    return Some(resp);
                }
                return None;
            }
        }
    }

    pub async fn response(&mut self) -> RawResponse {
        match self.try_response().await {
            Some(r) => r,
            None => panic!(
                "no complete response (closed: {}); got {:?}",
                self.closed,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// True if the peer closes the connection within `limit` (extra bytes
    /// that arrive meanwhile are kept in the buffer).
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.closed {
            if !self.fill(deadline).await && !self.closed {
                return false;
            }
        }
        true
    }

    /// Bytes read but not yet consumed as a response.
    pub fn leftover(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
