//! Client connection timers end to end, on the default timeouts
//! (`header_read_timeout` 10 s, `idle_timeout` 60 s, `request_timeout` 30 s,
//! `body_idle_timeout` 30 s).
//!
//! A connection that is working is never cut, however long it works: a
//! keep-alive client for 14 s, a backend that takes 12 s for its head (also
//! under HTTP/2 on a TLS listener, followed by a second request on the same
//! connection), a response and an upload each streamed for 14 s, two 7 s
//! requests on one h2c connection, a gRPC server stream of 14 s and a
//! WebSocket held 14 s (real python `grpcio` and `websockets` on both ends).
//! Switchyard closes a connection only for what its timers bound: a request
//! head not complete `header_read_timeout` after its first byte (slowloris,
//! also as the second request of a keep-alive connection), a connection that
//! sends nothing, and a connection idle for `idle_timeout` (HTTP/1.1 and h2c).
//! Each such close is counted in `switchyard_connections_closed_total{listener,
//! reason}`, and `switchyard_connections_cut_total` stays at 0 in every test.
//!
//! The tests take 2–15 s each and mostly wait, so they live in this one file
//! for cargo to run side by side. The WebSocket and gRPC tests need the python
//! packages `websockets` and `grpcio`; a missing one fails the test in CI and
//! skips it elsewhere, naming the package (`support::tools`).

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use support::python::Py;
use support::*;

/// The default `header_read_timeout`.
const HEADER_READ: Duration = Duration::from_secs(10);
/// Accepted window for a close at `header_read_timeout`.
const HEADER_READ_CUT: (Duration, Duration) = (Duration::from_secs(9), Duration::from_secs(13));
/// Accepted window for a close at `idle_timeout = "2s"`.
const IDLE_CUT: (Duration, Duration) = (Duration::from_millis(1900), Duration::from_millis(2500));
/// Upper bound for an answer that is meant to take 12–14 s.
const LONG: Duration = Duration::from_secs(30);
/// How long the long-lived exchanges below last.
const SPAN_SECS: u64 = 14;

// ===== the app and its counters =====

/// The app on the default timeouts plus `extra_proxy` lines, with `services`.
async fn app_with(extra_proxy: &str, services: &str) -> TestApp {
    let app = start_app(&(base_toml_with(extra_proxy) + services)).await;
    wait_ready(app.admin).await;
    app
}

/// The app on the default timeouts with service `svc` on `backend`.
async fn app_for(backend: &FakeBackend) -> TestApp {
    app_with("", &service_toml("svc", &[backend], "")).await
}

/// A listener's close counters, absent series read as 0.
#[derive(Debug, PartialEq)]
struct Closes {
    idle_timeout: f64,
    header_read_timeout: f64,
    handshake_timeout: f64,
    cut: f64,
}

/// The close counters of `listener`, read from the admin at `admin`.
async fn closes(admin: SocketAddr, listener: SocketAddr) -> (Closes, String) {
    let text = metrics_text(admin).await;
    let listener = listener.to_string();
    let closed = |reason: &str| {
        metric(
            &text,
            "switchyard_connections_closed_total",
            &[("listener", listener.as_str()), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    let found = Closes {
        idle_timeout: closed("idle_timeout"),
        header_read_timeout: closed("header_read_timeout"),
        handshake_timeout: closed("handshake_timeout"),
        cut: metric(
            &text,
            "switchyard_connections_cut_total",
            &[("listener", listener.as_str())],
        )
        .unwrap_or(0.0),
    };
    let lines = text
        .lines()
        .filter(|l| l.starts_with("switchyard_connections_"))
        .collect::<Vec<_>>()
        .join("\n");
    (found, lines)
}

/// Waits (≤ 5 s) until the proxy listener counts exactly these timer closes,
/// no handshake close and no cut connection.
async fn expect_closes(app: &TestApp, idle_timeout: f64, header_read_timeout: f64) {
    expect_listener_closes(app.admin, app.proxy, idle_timeout, header_read_timeout).await;
}

/// [`expect_closes`] for any `listener` (a TLS one too) of the app whose
/// admin is at `admin`.
async fn expect_listener_closes(
    admin: SocketAddr,
    listener: SocketAddr,
    idle_timeout: f64,
    header_read_timeout: f64,
) {
    let want = Closes {
        idle_timeout,
        header_read_timeout,
        handshake_timeout: 0.0,
        cut: 0.0,
    };
    let mut last = None;
    for _ in 0..100 {
        let (found, lines) = closes(admin, listener).await;
        if found == want {
            return;
        }
        last = Some((found, lines));
        // A bounded poll (100 looks): the metrics are the observable event.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (found, lines) = last.expect("polled at least once");
    panic!("listener {listener}: expected {want:?}, found {found:?}; metrics:\n{lines}");
}

fn assert_within(what: &str, elapsed: Duration, (low, high): (Duration, Duration)) {
    assert!(
        elapsed >= low && elapsed <= high,
        "{what} after {elapsed:.2?}; expected between {low:?} and {high:?}"
    );
}

/// A ticker firing at once, then every second (late ticks are not bunched).
fn every_second() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

// ===== raw sockets =====

/// How a raw connection ended while the test trickled bytes into it.
#[derive(Debug)]
struct Trickled {
    /// When the proxy closed it (a read gave 0 or failed, or a write
    /// failed), from the start of the trickle; `None`: still open at the limit.
    closed_after: Option<Duration>,
    /// Bytes written.
    sent: usize,
    /// Bytes read meanwhile.
    received: Vec<u8>,
}

/// Writes `bytes` one a second (the first at once) while reading, until the
/// proxy closes the connection or `limit` passes.
async fn trickle(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> Trickled {
    let start = Instant::now();
    let deadline = start + limit;
    let (mut rd, mut wr) = stream.split();
    let mut tick = every_second();
    let mut sent = 0;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed_after = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break None,
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Some(start.elapsed()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick(), if sent < bytes.len() => {
                let written = async {
                    wr.write_all(&bytes[sent..sent + 1]).await?;
                    wr.flush().await
                };
                if written.await.is_err() {
                    break Some(start.elapsed());
                }
                sent += 1;
            }
        }
    };
    Trickled {
        closed_after,
        sent,
        received,
    }
}

/// A request head far longer than can be trickled before
/// `header_read_timeout`, at one byte a second.
fn long_head(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET /svc/slow HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(40)
    )
    .into_bytes()
}

/// The proxy closed the trickled connection about `header_read_timeout`
/// after its first byte, before the head was complete, answering nothing
/// (or a 408).
fn assert_cut_at_header_read(what: &str, t: &Trickled, head_len: usize) {
    let Some(after) = t.closed_after else {
        panic!(
            "{what}: still open {:?} after its first byte ({} bytes sent); \
             header_read_timeout is {HEADER_READ:?}",
            LONG / 2,
            t.sent
        );
    };
    assert_within(&format!("{what}: closed"), after, HEADER_READ_CUT);
    assert!(
        t.sent < head_len,
        "{what}: the whole head was sent ({} bytes)",
        t.sent
    );
    let text = String::from_utf8_lossy(&t.received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{what}: unexpected bytes from the proxy: {text:?}"
    );
}

/// Reads one whole response from `stream` (bounded by `WAIT`).
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((resp, used)) = parse_raw_response(&buf, false) {
            assert_eq!(
                used,
                buf.len(),
                "bytes after the response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            return resp;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "no whole response in time: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection closed before a whole response: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ===== h2c =====

/// One h2c (prior knowledge) client connection; its task ends when the
/// connection does.
async fn h2c_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<ReqBody>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect h2c");
    let (sender, conn) = tokio::time::timeout(
        WAIT,
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream)),
    )
    .await
    .expect("h2c handshake in time")
    .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

// ===== TLS =====

/// The app on the default timeouts with a plain listener and one TLS
/// listener (`[[proxy.tls]]`: a `localhost` certificate signed by a fresh
/// test CA); dropping it triggers shutdown.
struct TlsApp {
    tls: SocketAddr,
    admin: SocketAddr,
    /// The test CA, for clients to trust.
    ca: CertificateDer<'static>,
    _app: TestApp,
    _files: tempfile::TempDir,
}

async fn tls_app_with(services: &str) -> TlsApp {
    let pki = support::pki::Pki::new();
    let leaf = pki.leaf_for("localhost", &["localhost"]);
    let files = tempfile::tempdir().expect("tempdir");
    let cert = files.path().join("localhost.pem");
    let key = files.path().join("localhost-key.pem");
    std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    let toml = format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n\
         [[proxy.tls]]\nlisten = \"127.0.0.1:0\"\n\
         certs = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{services}",
        cert.display(),
        key.display()
    );
    let app = start_app(&toml).await;
    wait_ready(app.admin).await;
    TlsApp {
        tls: *app.tls.first().expect("no TLS listener"),
        admin: app.admin,
        ca: pki.ca_der(),
        _app: app,
        _files: files,
    }
}

/// One HTTP/2 connection over TLS to `addr` (SNI `localhost`, ALPN `h2`
/// only, trusting `ca`); its task ends when the connection does.
async fn tls_h2_connection(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> (
    hyper::client::conn::http2::SendRequest<ReqBody>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("add the test CA");
    let mut config = rustls::ClientConfig::builder_with_provider(switchyard::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect tls");
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake in time")
    .expect("TLS handshake verifying the localhost certificate");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the TLS listener did not select ALPN h2"
    );
    let (sender, conn) = tokio::time::timeout(
        WAIT,
        hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls)),
    )
    .await
    .expect("h2 handshake in time")
    .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

// ===== working connections are never cut =====

/// Fifteen requests, one a second for 14 s, on one raw keep-alive
/// connection: every one answered 200, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_is_served_for_14s_on_one_connection() {
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let mut conn = RawConn::connect(app.proxy).await;
    let started = Instant::now();
    let mut tick = every_second();
    for i in 0..=SPAN_SECS {
        tick.tick().await;
        let head = format!("GET /svc/tick{i} HTTP/1.1\r\nHost: {}\r\n\r\n", app.proxy);
        if let Err(e) = conn.send(head.as_bytes()).await {
            panic!(
                "request {i}, {:.1?} after connecting: write failed ({e}): the proxy closed the connection",
                started.elapsed()
            );
        }
        let Some(resp) = conn.try_response().await else {
            panic!(
                "request {i}, {:.1?} after connecting: no response (closed by the proxy: {}); got {:?}",
                started.elapsed(),
                conn.closed,
                conn.leftover()
            );
        };
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert_eq!(resp.text(), "svc", "request {i}");
        assert_ne!(
            resp.header("connection").map(str::to_ascii_lowercase),
            Some("close".to_string()),
            "request {i}: the proxy announced a close"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(SPAN_SECS));
    assert_eq!(backend.hits(), 15);
    assert!(
        !conn.closed,
        "the proxy closed the connection after the last answer"
    );
    let text = metrics_text(app.admin).await;
    let listener = app.proxy.to_string();
    assert_eq!(
        metric(
            &text,
            "switchyard_connections_open",
            &[("listener", listener.as_str())]
        ),
        Some(1.0),
        "the client's one connection is still open"
    );
    expect_closes(&app, 0.0, 0.0).await;
}

/// A backend that sends its response head after 12 s: the client (one
/// HTTP/1.1 connection, no reconnects) gets the 200 and the whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_taking_12s_for_its_head_is_answered() {
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let mut sender = h1_connection(app.proxy).await.expect("connect");
    let started = Instant::now();
    let req = origin_request(Method::GET, app.proxy, "/svc/slow?delay_ms=12000")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(LONG, sender.send_request(req))
        .await
        .expect("a response head within 30 s")
        .unwrap_or_else(|e| panic!("request failed after {:.1?}: {e}", started.elapsed()));
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(12));
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the body in time")
        .expect("a whole body")
        .to_bytes();
    assert_eq!(&body[..], b"svc");
    expect_closes(&app, 0.0, 0.0).await;
}

/// A response streamed for 14 s (a chunk a second): every chunk arrives, in
/// order and paced, and the body ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_streamed_for_14s_arrives_whole() {
    let chunks = SPAN_SECS as usize + 1;
    // Chunk I at I seconds: the backend paces its body on purpose.
    let backend = FakeBackend::builder("drip")
        .drip(chunks, Duration::from_secs(1))
        .start()
        .await;
    let services = format!("[services.drip]\nbackends = [\"{}\"]\n", backend.addr);
    let app = app_with("", &services).await;
    let mut sender = h1_connection(app.proxy).await.expect("connect");
    let started = Instant::now();
    let req = origin_request(Method::GET, app.proxy, "/drip/feed")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("the response head in time")
        .expect("the response head");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut ended = false;
    // Each chunk is a second apart; hyper may split or join them.
    for _ in 0..10 * chunks {
        let frame = match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => panic!(
                "no chunk for 5 s, {:.1?} in; got {text:?}",
                started.elapsed()
            ),
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(Err(e))) => panic!(
                "the body failed {:.1?} in ({e}); got {text:?}",
                started.elapsed()
            ),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(ended, "the body did not end; got {text:?}");
    let want: String = (0..chunks).map(drip_chunk).collect();
    assert_eq!(text, want);
    assert!(
        started.elapsed() >= Duration::from_secs(SPAN_SECS - 1),
        "the body came faster than the backend dripped it ({:.1?})",
        started.elapsed()
    );
    expect_closes(&app, 0.0, 0.0).await;
}

/// A chunked upload streamed for 14 s (1000 bytes a second) to a backend that
/// reads it all, then answers with the byte count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_streamed_for_14s_is_counted() {
    let chunks = SPAN_SECS as usize + 1;
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let mut sender = h1_connection(app.proxy).await.expect("connect");
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        let mut tick = every_second();
        for i in 0..chunks {
            tick.tick().await;
            if tx.send(Bytes::from(vec![b'u'; 1000])).await.is_err() {
                return Err(format!("the body was dropped before chunk {i}"));
            }
        }
        Ok(())
    });
    let started = Instant::now();
    let req = origin_request(Method::POST, app.proxy, "/svc/upload?count=1")
        .body(boxed(body))
        .unwrap();
    let resp = tokio::time::timeout(LONG, sender.send_request(req))
        .await
        .expect("a response head within 30 s")
        .unwrap_or_else(|e| panic!("upload failed after {:.1?}: {e}", started.elapsed()));
    assert_eq!(resp.status(), StatusCode::OK);
    let text = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the body in time")
        .expect("a whole body")
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&text),
        (chunks * 1000).to_string(),
        "byte count seen by the backend"
    );
    assert!(started.elapsed() >= Duration::from_secs(SPAN_SECS - 1));
    feeder
        .await
        .expect("feeder task")
        .expect("every chunk sent");
    expect_closes(&app, 0.0, 0.0).await;
}

/// Two requests of 7 s each, one after the other, on one h2c connection:
/// both answered 200, and the connection is still open after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_7s_requests_share_one_h2c_connection() {
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let (mut sender, conn) = h2c_connection(app.proxy).await;
    let started = Instant::now();
    for i in 0..2 {
        tokio::time::timeout(WAIT, sender.ready())
            .await
            .expect("the h2c connection ready in time")
            .unwrap_or_else(|e| {
                panic!(
                    "request {i}: connection unusable {:.1?} in: {e}",
                    started.elapsed()
                )
            });
        let req = request(
            Method::GET,
            app.proxy,
            &format!("/svc/slow{i}?delay_ms=7000"),
        )
        .body(empty())
        .unwrap();
        let resp = tokio::time::timeout(LONG, sender.send_request(req))
            .await
            .expect("a response head within 30 s")
            .unwrap_or_else(|e| {
                panic!(
                    "request {i} failed {:.1?} after connecting: {e}",
                    started.elapsed()
                )
            });
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .expect("the body in time")
            .expect("a whole body")
            .to_bytes();
        assert_eq!(&body[..], b"svc", "request {i}");
    }
    assert!(started.elapsed() >= Duration::from_secs(SPAN_SECS));
    if conn.is_finished() {
        panic!("the h2c connection ended: {:?}", conn.await);
    }
    assert_eq!(backend.hits(), 2);
    expect_closes(&app, 0.0, 0.0).await;
}

/// Over TLS (ALPN h2, one connection, default timeouts): a request whose
/// backend takes 12 s for its head, then a second request on the same
/// connection. Both are answered 200 in full, the connection is still open
/// after them, and the TLS listener counts no timer close and no cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_request_waiting_12s_for_its_head_is_answered() {
    let backend = FakeBackend::start("svc").await;
    let app = tls_app_with(&service_toml("svc", &[&backend], "")).await;
    let (mut sender, conn) = tls_h2_connection(app.tls, &app.ca).await;
    let started = Instant::now();
    for (i, path) in ["/svc/slow?delay_ms=12000", "/svc/after"]
        .into_iter()
        .enumerate()
    {
        tokio::time::timeout(WAIT, sender.ready())
            .await
            .expect("the h2 connection ready in time")
            .unwrap_or_else(|e| {
                panic!(
                    "request {i}: connection unusable {:.1?} in: {e}",
                    started.elapsed()
                )
            });
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("https://localhost:{}{path}", app.tls.port()))
            .body(empty())
            .unwrap();
        let sent = Instant::now();
        let resp = tokio::time::timeout(LONG, sender.send_request(req))
            .await
            .expect("a response head within 30 s")
            .unwrap_or_else(|e| {
                panic!(
                    "request {i} failed {:.1?} after connecting: {e}",
                    started.elapsed()
                )
            });
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_eq!(resp.version(), Version::HTTP_2, "request {i}");
        if i == 0 {
            assert!(
                sent.elapsed() >= Duration::from_secs(12),
                "the head came before the backend sent it ({:.1?})",
                sent.elapsed()
            );
        }
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .expect("the body in time")
            .expect("a whole body")
            .to_bytes();
        assert_eq!(&body[..], b"svc", "request {i}");
    }
    if conn.is_finished() {
        panic!("the TLS h2 connection ended: {:?}", conn.await);
    }
    assert_eq!(backend.hits(), 2);
    let text = metrics_text(app.admin).await;
    let listener = app.tls.to_string();
    assert_eq!(
        metric(
            &text,
            "switchyard_connections_open",
            &[("listener", listener.as_str())]
        ),
        Some(1.0),
        "the client's one TLS connection is still open (and counted under {listener})"
    );
    expect_listener_closes(app.admin, app.tls, 0.0, 0.0).await;
}

// ===== WebSocket (python websockets) =====

/// Echoes every message as `echo:MESSAGE`; prints its port first.
const WS_ECHO_SERVER: &str = r#"
import asyncio
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send("echo:" + message)

async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// Sends `m0`..`m{COUNT-1}`, one a second, each awaiting its echo; closes;
/// prints one JSON line (what came back, how long it took, how it ended).
const WS_PACED_CLIENT: &str = r#"
import asyncio, json, sys, time
from websockets.asyncio.client import connect

async def main():
    url, count = sys.argv[1], int(sys.argv[2])
    out = {"replies": []}
    start = time.monotonic()
    try:
        async with connect(url, open_timeout=10, close_timeout=5) as ws:
            for i in range(count):
                if i:
                    await asyncio.sleep(1)
                await ws.send(f"m{i}")
                out["replies"].append(await asyncio.wait_for(ws.recv(), 5))
            out["elapsed"] = time.monotonic() - start
        out["close_code"] = ws.close_code
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["failed_after"] = time.monotonic() - start
    print(json.dumps(out), flush=True)

asyncio.run(main())
"#;

/// The echo server, killed when dropped, and its address.
async fn ws_echo_server() -> (Py, SocketAddr) {
    Py::server(WS_ECHO_SERVER, &[]).await
}

/// A WebSocket through the proxy, held 14 s with a message a second each
/// way (python `websockets` client and server): every echo arrives and the
/// socket closes cleanly (1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_held_14s_with_a_message_a_second() {
    if !tools::require_python(
        "websockets.asyncio.client, websockets.asyncio.server",
        "websockets>=13",
    ) {
        return;
    }
    let (_server, server_addr) = ws_echo_server().await;
    let app = app_with(
        "",
        &format!("[services.ws]\nbackends = [\"{server_addr}\"]\n"),
    )
    .await;
    let count = SPAN_SECS as usize + 1;
    let client = Command::new("python3")
        .args(["-c", WS_PACED_CLIENT])
        .arg(format!("ws://{}/ws/chat", app.proxy))
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed");
    let out = tokio::time::timeout(LONG, client.wait_with_output())
        .await
        .expect("the websockets client finished within 30 s")
        .expect("websockets client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "websockets client failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    assert!(report.get("error").is_none(), "websocket failed: {report}");
    let want: Vec<String> = (0..count).map(|i| format!("echo:m{i}")).collect();
    assert_eq!(report["replies"], serde_json::json!(want), "{report}");
    let elapsed = report["elapsed"].as_f64().unwrap_or(0.0);
    assert!(
        elapsed >= (SPAN_SECS - 1) as f64,
        "the exchange was not paced over 14 s: {report}"
    );
    assert_eq!(report["close_code"], 1000, "not a clean close: {report}");
    expect_closes(&app, 0.0, 0.0).await;
}

// ===== gRPC (python grpcio) =====

/// `/test.Timeouts/Ticks`: a server stream of COUNT messages (`0`, `1`, …),
/// the first at once and one a second after it; raw bytes, no protobuf.
/// Prints its port first.
const GRPC_TICK_SERVER: &str = r#"
import time
from concurrent import futures
import grpc

def ticks(request, context):
    for i in range(int(request.decode())):
        if i:
            time.sleep(1)
        yield str(i).encode()

handler = grpc.method_handlers_generic_handler("test.Timeouts", {
    "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"#;

/// Calls `Ticks` with COUNT on TARGET (h2c prior knowledge); prints one JSON
/// line: the messages, when each arrived, the status, how long it took.
const GRPC_TICK_CLIENT: &str = r#"
import json, sys, time
import grpc

target, count = sys.argv[1], sys.argv[2]
out = {"messages": [], "at": []}
start = time.monotonic()
try:
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_stream("/test.Timeouts/Ticks")(count.encode(), timeout=25)
        for message in call:
            out["messages"].append(message.decode())
            out["at"].append(time.monotonic() - start)
        out["code"] = call.code().name
except grpc.RpcError as e:
    out["code"] = e.code().name
    out["details"] = e.details()
out["elapsed"] = time.monotonic() - start
print(json.dumps(out), flush=True)
"#;

/// A gRPC server stream of 15 messages, one a second for 14 s (python
/// grpcio server behind `protocol = "h2c"`, python grpcio client on the plain
/// listener by h2c prior knowledge): every message arrives, paced, and the
/// call ends with status OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_stream_for_14s_is_not_cut() {
    if !tools::require_python("grpc", "grpcio") {
        return;
    }
    let (_server, server_addr) = Py::server(GRPC_TICK_SERVER, &[]).await;
    let services = format!(
        "[services.grpc]\nbackends = [\"{server_addr}\"]\nprotocol = \"h2c\"\n\n{}",
        route_toml(None, "/", "grpc", false)
    );
    let app = app_with("", &services).await;
    let count = SPAN_SECS as usize + 1;
    let client = Command::new("python3")
        .args(["-c", GRPC_TICK_CLIENT])
        .arg(app.proxy.to_string())
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed");
    let out = tokio::time::timeout(LONG, client.wait_with_output())
        .await
        .expect("the grpcio client finished within 30 s")
        .expect("grpcio client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client output is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    let want: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    assert_eq!(report["messages"], serde_json::json!(want), "{report}");
    assert_eq!(report["code"], "OK", "{report}");
    let elapsed = report["elapsed"].as_f64().unwrap_or(0.0);
    assert!(
        elapsed >= (SPAN_SECS - 1) as f64,
        "the stream was not paced over 14 s: {report}"
    );
    // Paced through the proxy, not held back and delivered in a burst.
    let at: Vec<f64> = report["at"]
        .as_array()
        .expect("arrival times")
        .iter()
        .map(|t| t.as_f64().unwrap_or(f64::MAX))
        .collect();
    let mut previous = 0.0;
    for (i, t) in at.iter().enumerate() {
        assert!(
            t - previous < 5.0,
            "message {i} came {:.1} s after the one before: {report}",
            t - previous
        );
        previous = *t;
    }
    expect_closes(&app, 0.0, 0.0).await;
}

// ===== header_read_timeout: slow and silent clients =====

/// A client that trickles a request head one byte a second is cut about
/// `header_read_timeout` after its first byte, before the head completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_cut_at_header_read_timeout() {
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let head = long_head(app.proxy);
    let mut stream = TcpStream::connect(app.proxy).await.expect("connect");
    let t = trickle(&mut stream, &head, LONG / 2).await;
    assert_cut_at_header_read("a trickled first head", &t, head.len());
    assert_eq!(
        backend.hits(),
        0,
        "the incomplete request reached the backend"
    );
    expect_closes(&app, 0.0, 1.0).await;
}

/// The same as the second request of a keep-alive connection: the first is
/// answered, the connection rests 3 s, then the second head is trickled and
/// cut about `header_read_timeout` after its own first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_second_head_on_keep_alive_is_cut_at_header_read_timeout() {
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let mut stream = TcpStream::connect(app.proxy).await.expect("connect");
    let first = format!("GET /svc/first HTTP/1.1\r\nHost: {}\r\n\r\n", app.proxy);
    stream
        .write_all(first.as_bytes())
        .await
        .expect("write the first request");
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "svc");
    // A pause between requests, so a head timed from anything but its own
    // first byte (the accept, the last answer) would be cut too early.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let head = long_head(app.proxy);
    let t = trickle(&mut stream, &head, LONG / 2).await;
    assert_cut_at_header_read("a trickled second head", &t, head.len());
    assert_eq!(
        backend.hits(),
        1,
        "the incomplete request reached the backend"
    );
    expect_closes(&app, 0.0, 1.0).await;
}

/// A client that connects and sends nothing is closed at about
/// `header_read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_at_header_read_timeout() {
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let mut stream = TcpStream::connect(app.proxy).await.expect("connect");
    let t = trickle(&mut stream, b"", LONG / 2).await;
    let Some(after) = t.closed_after else {
        panic!("a silent connection still open after {:?}", LONG / 2);
    };
    assert_within("a silent connection closed", after, HEADER_READ_CUT);
    let text = String::from_utf8_lossy(&t.received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected bytes from the proxy: {text:?}"
    );
    expect_closes(&app, 0.0, 1.0).await;
}

// ===== idle_timeout =====

/// With `idle_timeout = "2s"`, a keep-alive HTTP/1.1 connection left idle
/// after one answered request is closed by the proxy about 2 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_keep_alive_is_closed_at_idle_timeout() {
    let backend = FakeBackend::start("svc").await;
    let app = app_with(
        "idle_timeout = \"2s\"",
        &service_toml("svc", &[&backend], ""),
    )
    .await;
    let mut conn = RawConn::connect(app.proxy).await;
    let head = format!("GET /svc/once HTTP/1.1\r\nHost: {}\r\n\r\n", app.proxy);
    conn.send(head.as_bytes()).await.expect("write the request");
    let resp = conn.response().await;
    let answered = Instant::now();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(!conn.closed, "closed right after the answer");
    assert!(
        conn.closes_within(Duration::from_secs(5)).await,
        "the idle connection is still open 5 s after the answer"
    );
    assert_within(
        "the idle HTTP/1.1 connection closed",
        answered.elapsed(),
        IDLE_CUT,
    );
    assert_eq!(conn.leftover(), "", "bytes after the answer");
    expect_closes(&app, 1.0, 0.0).await;
}

/// On the default config (`idle_timeout` 60 s), keep-alive connections that
/// rest park after 100 ms: one that rests 50 s is still served on the same
/// connection, and one left idle is closed about 60 s after its answer, not
/// before (a parked connection keeps the connection's clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_keep_the_default_idle_timeout() {
    const DEFAULT_IDLE_CUT: (Duration, Duration) =
        (Duration::from_secs(59), Duration::from_secs(64));
    let backend = FakeBackend::start("svc").await;
    let app = app_for(&backend).await;
    let head = |path: &str| format!("GET /svc/{path} HTTP/1.1\r\nHost: {}\r\n\r\n", app.proxy);
    let mut resting = RawConn::connect(app.proxy).await;
    let mut idle = RawConn::connect(app.proxy).await;
    for (conn, path) in [(&mut resting, "rest-1"), (&mut idle, "idle")] {
        conn.send(head(path).as_bytes())
            .await
            .expect("write the request");
        assert_eq!(conn.response().await.status, 200);
    }
    let answered = Instant::now();
    let listener = app.proxy.to_string();
    eventually(WAIT, "both connections parked", || async {
        let text = metrics_text(app.admin).await;
        metric(
            &text,
            "switchyard_connections_parked",
            &[("listener", listener.as_str())],
        ) == Some(2.0)
    })
    .await;
    // The resting client waits 50 s (what is tested: a long rest) and asks again.
    tokio::time::sleep(Duration::from_secs(50)).await;
    resting
        .send(head("rest-2").as_bytes())
        .await
        .expect("a parked connection takes a request after 50 s");
    let resp = resting.response().await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        idle.closes_within(Duration::from_secs(20)).await,
        "the idle connection is still open 70 s after its answer"
    );
    assert_within(
        "the idle parked connection closed",
        answered.elapsed(),
        DEFAULT_IDLE_CUT,
    );
    assert!(
        !resting.closed,
        "the connection that asked again was closed"
    );
    assert_eq!(backend.hits(), 3);
    expect_closes(&app, 1.0, 0.0).await;
}

/// With `idle_timeout = "2s"`, an h2c connection left idle after one stream
/// completed is closed by the proxy about 2 s later (the client's connection
/// ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connection_is_closed_at_idle_timeout() {
    let backend = FakeBackend::start("svc").await;
    let app = app_with(
        "idle_timeout = \"2s\"",
        &service_toml("svc", &[&backend], ""),
    )
    .await;
    let (mut sender, mut conn) = h2c_connection(app.proxy).await;
    let req = request(Method::GET, app.proxy, "/svc/once")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("the response head in time")
        .expect("the response head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("the body in time")
        .expect("a whole body")
        .to_bytes();
    let answered = Instant::now();
    assert_eq!(&body[..], b"svc");
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut conn).await;
    let elapsed = answered.elapsed();
    let Ok(result) = ended else {
        panic!("the idle h2c connection is still open 5 s after its stream ended");
    };
    assert_within(
        &format!("the idle h2c connection ended ({result:?})"),
        elapsed,
        IDLE_CUT,
    );
    drop(sender);
    expect_closes(&app, 1.0, 0.0).await;
}
