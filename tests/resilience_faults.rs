//! Resilience end to end, part 2: backends that misbehave on the wire — they
//! hang, reset, answer garbage, or drop idle keep-alive connections without a
//! word — and clients that walk away mid-body. Real sockets on 127.0.0.1 and
//! the real app in-process; the misbehaving backends are raw TCP scripts
//! ([`RawBackend`]) because hyper would refuse to misbehave. Every wait is
//! bounded and the only time checks are generous liveness bounds.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use support::*;

// ===== a scripted raw HTTP/1.1 backend =====

/// What a [`RawBackend`] does with each connection it accepts.
#[derive(Debug, Clone, Copy)]
enum Script {
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
struct Stats {
    connections: AtomicUsize,
    /// Methods of the requests it took (not those dropped by `CloseOnReuse`).
    methods: Mutex<Vec<String>>,
    body_bytes: AtomicU64,
    /// Bodies that ended (EOF or error) before their `Content-Length`.
    cut_bodies: AtomicUsize,
    /// `IdleClose`: connections closed for being idle.
    idle_closes: AtomicUsize,
    /// `CloseOnReuse`: requests dropped unanswered on a reused connection.
    dropped_on_reuse: AtomicUsize,
}

/// A raw TCP backend on `127.0.0.1:0` that runs a [`Script`] per connection.
/// Request bodies must carry `Content-Length` (all these tests send).
struct RawBackend {
    addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl RawBackend {
    async fn start(script: Script) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, script, Arc::clone(&stats)));
        RawBackend { addr, stats, task }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn methods(&self) -> Vec<String> {
        self.stats.methods.lock().expect("methods lock").clone()
    }

    /// Requests taken (heads read and not dropped).
    fn requests(&self) -> usize {
        self.methods().len()
    }

    fn count(&self, method: &str) -> usize {
        self.methods().iter().filter(|m| *m == method).count()
    }

    fn get(&self, counter: fn(&Stats) -> &AtomicUsize) -> usize {
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
                // Let the proxy read and forward what was sent, then reset.
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

fn addresses(backends: &[&RawBackend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    format!("[{}]", items.join(", "))
}

/// `[services.NAME]` over `backends` (already a TOML array) plus `extra` lines.
fn service(name: &str, backends: &str, extra: &str) -> String {
    format!("[services.{name}]\nbackends = {backends}\n{extra}\n")
}

fn post(addr: SocketAddr, path: &str, body: &'static [u8]) -> http::Request<ReqBody> {
    request(Method::POST, addr, path)
        .body(full(body))
        .expect("request")
}

fn retries(metrics: &str, svc: &str) -> f64 {
    metric(metrics, "switchyard_retries_total", &[("service", svc)]).unwrap_or(0.0)
}

/// `"ejected"` of the instance at `address` per `GET /v1/services/{svc}`.
async fn ejected(admin: SocketAddr, svc: &str, address: &str) -> Option<bool> {
    let resp = Http::new()
        .try_get(admin, &format!("/v1/services/{svc}"))
        .await
        .ok()?;
    let json: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
    json["instances"]
        .as_array()?
        .iter()
        .find(|i| i["address"] == address)?["ejected"]
        .as_bool()
}

// ===== hanging backend: 504, ejection, return =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_times_out_with_504_then_is_ejected_and_returns() {
    let hang = RawBackend::start(Script::Hang).await;
    let good = FakeBackend::start("good").await;
    let backends = format!("[\"{}\", \"{}\"]", hang.address(), good.address());
    let extra = "request_timeout = \"300ms\"\n\
                 [services.svc.outlier]\nconsecutive_failures = 2\nbase_ejection = \"2s\"\n";
    let app = start_app(&(base_toml() + &service("svc", &backends, extra))).await;
    let http = Http::new();

    // Round robin over two: within a few requests the hanging one is hit twice.
    let mut timeouts = 0;
    for i in 0..8 {
        let started = Instant::now();
        let resp = http.get(app.proxy, &format!("/svc/r{i}")).await;
        let took = started.elapsed();
        if resp.status == 504 {
            assert_eq!(resp.reason(), Some("backend timeout"));
            assert!(took < Duration::from_secs(5), "504 took {took:?}");
            timeouts += 1;
            if timeouts == 2 {
                break;
            }
        } else {
            assert_eq!(resp.status, 200, "body {:?}", resp.text());
            assert_eq!(resp.backend(), Some("good"));
        }
    }
    assert_eq!(
        timeouts, 2,
        "the hanging backend should have timed out twice"
    );
    assert_eq!(
        ejected(app.admin, "svc", &hang.address()).await,
        Some(true),
        "two consecutive timeouts should eject the hanging backend"
    );
    assert_eq!(
        ejected(app.admin, "svc", &good.address()).await,
        Some(false)
    );

    // The ready list follows at the next coalesced rebuild (tens of ms).
    tokio::time::sleep(Duration::from_millis(250)).await;
    let seen_before = hang.requests();
    for i in 0..6 {
        let resp = http.get(app.proxy, &format!("/svc/ejected{i}")).await;
        assert_eq!(resp.status, 200, "while ejected: {:?}", resp.text());
        assert_eq!(resp.backend(), Some("good"));
    }
    assert_eq!(
        hang.requests(),
        seen_before,
        "an ejected backend got traffic"
    );
    assert_eq!(
        ejected(app.admin, "svc", &hang.address()).await,
        Some(true),
        "the ejection (2 s) should still hold"
    );

    // After base_ejection it is back: listed as not ejected, and picked again.
    eventually(WAIT, "the ejection to end", || async {
        ejected(app.admin, "svc", &hang.address()).await == Some(false)
    })
    .await;
    eventually(
        WAIT,
        "traffic to reach the hanging backend again",
        || async {
            let resp = http.get(app.proxy, "/svc/back").await;
            assert!(matches!(resp.status.as_u16(), 200 | 504), "{resp:?}");
            hang.requests() > seen_before
        },
    )
    .await;
}

// ===== the stale keep-alive race =====

/// GET and POST (small body) through a backend that closes idle connections
/// after 1 s without saying so, at intervals jittered around that second:
/// no client may see an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_by_the_backend_never_reach_the_client() {
    let backend = RawBackend::start(Script::IdleClose(Duration::from_secs(1))).await;
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), ""))).await;
    let http = Http::new();
    // Offsets around the backend's 1 s idle close, in ms.
    let jitter: [i64; 12] = [-40, 30, -15, 10, -5, 0, 5, 150, -2, 2, 60, -60];
    let mut errors = Vec::new();
    for (i, offset) in jitter.iter().enumerate() {
        match http.try_get(app.proxy, &format!("/svc/get{i}")).await {
            Ok(r) if r.status == 200 && r.text() == "0" => {}
            other => errors.push(format!("GET #{i}: {other:?}")),
        }
        match http
            .send(post(
                app.proxy,
                &format!("/svc/post{i}"),
                b"0123456789abcdef",
            ))
            .await
        {
            Ok(r) if r.status == 200 && r.text() == "16" => {}
            other => errors.push(format!("POST #{i}: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis((1000 + offset) as u64)).await;
    }
    assert!(errors.is_empty(), "client errors: {errors:#?}");
    assert_eq!(backend.count("GET"), 12);
    assert_eq!(backend.count("POST"), 12, "a POST was lost or duplicated");
    // Proof that the backend really dropped connections under the proxy.
    assert!(
        backend.get(|s| &s.idle_closes) >= 1 && backend.get(|s| &s.connections) >= 2,
        "the backend never closed an idle connection (closes {}, connections {})",
        backend.get(|s| &s.idle_closes),
        backend.get(|s| &s.connections)
    );
}

/// Sends `rounds` × (GET, POST) one after another; returns the failures.
async fn stale_rounds(proxy: SocketAddr, rounds: usize) -> Vec<String> {
    let http = Http::new();
    let mut failures = Vec::new();
    for i in 0..rounds {
        match http.try_get(proxy, &format!("/svc/get{i}")).await {
            Ok(r) if r.status == 200 && r.text() == "0" => {}
            Ok(r) => failures.push(format!("GET #{i}: {} {:?}", r.status, r.reason())),
            Err(e) => failures.push(format!("GET #{i}: {e}")),
        }
        match http
            .send(post(proxy, &format!("/svc/post{i}"), b"payload"))
            .await
        {
            Ok(r) if r.status == 200 && r.text() == "7" => {}
            Ok(r) => failures.push(format!("POST #{i}: {} {:?}", r.status, r.reason())),
            Err(e) => failures.push(format!("POST #{i}: {e}")),
        }
    }
    failures
}

/// The race's worst case on every reused connection: the backend reads the
/// next request head, then closes. Nothing was processed, so any method is
/// retried, on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_before_the_answer_is_retried_for_get_and_post() {
    let backend = RawBackend::start(Script::CloseOnReuse).await;
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), ""))).await;
    let failures = stale_rounds(app.proxy, 5).await;
    assert!(failures.is_empty(), "client errors: {failures:#?}");
    let dropped = backend.get(|s| &s.dropped_on_reuse);
    assert!(dropped >= 5, "the race was not exercised: {dropped} drops");
    assert_eq!(backend.count("GET"), 5);
    assert_eq!(backend.count("POST"), 5, "a POST was lost or duplicated");
    let metrics = metrics_text(app.admin).await;
    assert!(retries(&metrics, "svc") >= dropped as f64, "{metrics}");
}

/// The same backend with retries switched off: the race reaches the client,
/// which proves the tests above catch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_stale_connection_race_reaches_the_client() {
    let backend = RawBackend::start(Script::CloseOnReuse).await;
    let extra = "[services.svc.retry]\nattempts = 0\n";
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), extra))).await;
    let failures = stale_rounds(app.proxy, 3).await;
    assert!(
        !failures.is_empty(),
        "with attempts = 0 a request on a dropped reused connection must fail"
    );
    assert!(
        failures.iter().all(|f| f.contains("502")),
        "failures should be 502s: {failures:#?}"
    );
}

// ===== POST is never sent twice =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_after_its_body_is_a_502_and_reaches_one_backend_once() {
    let resetters = [
        RawBackend::start(Script::ResetAfterBody).await,
        RawBackend::start(Script::ResetAfterBody).await,
        RawBackend::start(Script::ResetAfterBody).await,
    ];
    let good = FakeBackend::start("good").await;
    let all: Vec<&RawBackend> = resetters.iter().collect();
    let mixed = format!("[\"{}\", \"{}\"]", resetters[0].address(), good.address());
    let retry = |svc: &str| format!("[services.{svc}.retry]\nattempts = 2\n");
    let toml = base_toml()
        + &service("svc", &addresses(&all), &retry("svc"))
        + &service("mixed", &mixed, &retry("mixed"));
    let app = start_app(&toml).await;
    let http = Http::new();
    let total = |method: &str| resetters.iter().map(|b| b.count(method)).sum::<usize>();

    let resp = http
        .send(post(app.proxy, "/svc/order", b"one order"))
        .await
        .expect("POST");
    assert_eq!(resp.status, 502, "body {:?}", resp.text());
    assert_eq!(resp.reason(), Some("backend reset"));
    assert_eq!(
        total("POST"),
        1,
        "the POST must reach exactly one backend once"
    );

    // A GET in the same situation is retried, each time on another backend.
    let resp = http.get(app.proxy, "/svc/item").await;
    assert_eq!(resp.status, 502);
    assert_eq!(total("GET"), 3, "GET: first try + 2 retries");
    for b in &resetters {
        assert_eq!(b.count("GET"), 1, "retries should go to other backends");
    }
    assert_eq!(total("POST"), 1);

    // One resetting and one good backend: each POST lands once, on one of them.
    let mut answers = Vec::new();
    for i in 0..4 {
        let resp = http
            .send(post(app.proxy, &format!("/mixed/order{i}"), b"order"))
            .await
            .expect("POST");
        answers.push(resp.status.as_u16());
    }
    let failed = answers.iter().filter(|s| **s == 502).count();
    let ok = answers.iter().filter(|s| **s == 200).count();
    assert_eq!(failed + ok, 4, "answers {answers:?}");
    assert!(
        failed >= 1,
        "round robin should have hit the resetter: {answers:?}"
    );
    assert_eq!(
        resetters[0].count("POST"),
        1 + failed,
        "answers {answers:?}"
    );
    assert_eq!(
        good.hits(),
        ok,
        "a reset POST was replayed on the good backend"
    );
}

// ===== a reset in the middle of the response body =====

const CUT_LENGTH: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nx-backend: cut\r\n\r\nonly the first bytes";
const CUT_CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-backend: cut\r\n\r\n5\r\nfirst\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_response_ends_the_client_body_in_error_without_retry() {
    for (svc, bytes) in [("length", CUT_LENGTH), ("chunked", CUT_CHUNKED)] {
        let a = RawBackend::start(Script::ReplyThenReset(bytes)).await;
        let b = RawBackend::start(Script::ReplyThenReset(bytes)).await;
        let extra = "[services.svc.retry]\nattempts = 2\n";
        let app = start_app(&(base_toml() + &service("svc", &addresses(&[&a, &b]), extra))).await;
        let started = Instant::now();
        let resp = Http::new()
            .send_streaming(
                request(Method::GET, app.proxy, "/svc/file")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("{svc}: no response head: {e}"));
        assert_eq!(resp.status(), 200, "{svc}: the head was already sent");
        let body = tokio::time::timeout(WAIT, resp.into_body().collect()).await;
        let took = started.elapsed();
        match body {
            Err(_) => panic!("{svc}: the truncated body hung"),
            Ok(Ok(whole)) => panic!(
                "{svc}: a truncated body ended cleanly: {:?}",
                whole.to_bytes()
            ),
            Ok(Err(_)) => {}
        }
        assert!(took < Duration::from_secs(5), "{svc}: took {took:?}");
        assert_eq!(
            a.requests() + b.requests(),
            1,
            "{svc}: no retry once response bytes went to the client"
        );
    }
}

// ===== malformed answers =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_answers_are_502_before_any_header_is_forwarded() {
    let cases: [(&str, &'static [u8]); 3] = [
        (
            "length_and_chunked",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\
              x-leak: yes\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "bad_status_line",
            b"HTTP/1.1 2x0 OK\r\nx-leak: yes\r\ncontent-length: 2\r\n\r\nok",
        ),
        ("not_http", b"SSH-2.0-OpenSSH_9.6\r\nx-leak: yes\r\n\r\n"),
    ];
    let mut problems = Vec::new();
    for (svc, bytes) in cases {
        let backend = RawBackend::start(Script::Reply(bytes)).await;
        let app = start_app(&(base_toml() + &service(svc, &addresses(&[&backend]), ""))).await;
        match Http::new().try_get(app.proxy, &format!("/{svc}/x")).await {
            Ok(r) if r.status == 502 && r.header("x-leak").is_none() => {
                assert_eq!(r.reason(), Some("backend bad response"), "{svc}");
            }
            Ok(r) => problems.push(format!(
                "{svc}: got {} (x-switchyard-error {:?}, x-leak {:?}, body {:?}), want 502",
                r.status,
                r.reason(),
                r.header("x-leak"),
                r.text()
            )),
            Err(e) => problems.push(format!("{svc}: client error {e}, want a 502")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// ===== a client that aborts mid-body =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_mid_body_cancels_the_upstream_request() {
    let backend = RawBackend::start(Script::WatchBody).await;
    let app = start_app(&(base_toml() + &service("svc", &addresses(&[&backend]), ""))).await;

    let mut client = RawConn::connect(app.proxy).await;
    let head = format!(
        "POST /svc/upload HTTP/1.1\r\nhost: {}\r\ncontent-length: 100000\r\n\r\n",
        app.proxy
    );
    client.send(head.as_bytes()).await.expect("send head");
    client.send(&[b'a'; 1000]).await.expect("send part");
    eventually(
        WAIT,
        "the first body bytes to reach the backend",
        || async { backend.stats.body_bytes.load(Ordering::SeqCst) >= 1000 },
    )
    .await;
    drop(client);

    let started = Instant::now();
    eventually(WAIT, "the upstream request to be cancelled", || async {
        backend.get(|s| &s.cut_bodies) == 1
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");

    // The proxy is fine afterwards, and the cut connection was not reused.
    let http = Http::new();
    for i in 0..3 {
        let resp = http.get(app.proxy, &format!("/svc/after{i}")).await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "0".to_string()));
        let resp = http
            .send(post(app.proxy, &format!("/svc/post{i}"), b"12345"))
            .await
            .expect("POST after the abort");
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "5".to_string()));
    }
    assert_eq!(backend.get(|s| &s.cut_bodies), 1);
    assert_eq!(backend.requests(), 7);
}
