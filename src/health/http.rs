//! The HTTP probe (`kind = "http"`, the default): `GET path` over HTTP/1.1,
//! or over HTTP/2 with prior knowledge for a `protocol = "h2c"` service
//! (whose backends may speak nothing else); a status inside `expect_status`
//! passes. For a `protocol = "https"` service the check speaks TLS as the
//! service's requests do: the same trust roots (`tls_ca` plus the webpki
//! roots), the same verified name and SNI (the backend's host, or
//! `tls_server_name`), with ALPN offering only `http/1.1`. The connections
//! themselves are [`super::transport`]'s.
//!
//! The connection of a passing check is kept for the next one
//! (as Envoy's health checker does by default): a check is then one request
//! and one answer instead of a TCP handshake and teardown, several times
//! cheaper, which is what lets a thousand backends be checked every second
//! for a few percent of a core. Any failure drops the connection, so a
//! backend that is down or recovering is always judged on a fresh one; a
//! kept connection that the backend closed while idle is replaced at once,
//! within the same check, and is not a failure.
//!
//! The check timeout bounds the whole exchange — connect, response head and
//! body — and dropping the connection aborts its driver task, so a hung
//! backend costs nothing once the timeout fires. Redirects are never followed:
//! a 3xx passes only when `expect_status` includes it. The body is read and
//! thrown away up to [`BODY_CAP`] bytes; a larger one is cut off (the status
//! already decided; that connection is not kept), and a body that breaks off
//! mid-way fails the check.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::transport::{self, is_stale, Http, ProbeTls};
use super::{Probe, ProbeError};
use crate::config::HealthCheckConfig;

/// At most this many body bytes are read per check.
pub const BODY_CAP: usize = 64 * 1024;

pub(super) const AGENT: &str = concat!("switchyard-health-check/", env!("CARGO_PKG_VERSION"));

type Conn = transport::Conn<Empty<Bytes>>;

/// One backend's HTTP check, with its request parts built once.
#[derive(Debug)]
pub struct HttpProbe {
    uri: Uri,
    host: HeaderValue,
    timeout: Duration,
    /// Inclusive status range that passes.
    expect: (u16, u16),
    /// The connection the last passing check left open. Only the probe's one
    /// checker uses it, one check at a time; the lock is never held across
    /// an await.
    kept: Mutex<Option<Conn>>,
    /// Set for the backends of an `https` service (boxed: most probes are
    /// plain, and every checker holds its probe).
    tls: Option<Box<ProbeTls>>,
    /// HTTP/2 for `h2c` services, else HTTP/1.1.
    http: Http,
}

impl HttpProbe {
    /// A probe for `config`, sending `Host: config.host` or, when unset,
    /// `Host: backend_address` (the backend's `host:port` as declared; on
    /// HTTP/2 it is the `:authority`); over TLS when `tls` is set.
    pub fn new(
        config: &HealthCheckConfig,
        backend_address: &str,
        tls: Option<ProbeTls>,
        http: Http,
    ) -> Result<HttpProbe, ProbeError> {
        let host = config.host.as_deref().unwrap_or(backend_address);
        let path = encode_path(&config.path);
        let uri = match http {
            Http::Http1 => Uri::try_from(path),
            // HTTP/2 carries scheme and authority as pseudo-headers.
            Http::Http2 => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Uri::try_from(format!("{scheme}://{host}{path}"))
            }
        };
        let uri = uri.map_err(ProbeError::Uri)?;
        let host = HeaderValue::from_str(host).map_err(ProbeError::Host)?;
        Ok(HttpProbe {
            uri,
            host,
            timeout: config.timeout,
            expect: config.expect_status,
            kept: Mutex::new(None),
            tls: tls.map(Box::new),
            http,
        })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        if self.http == Http::Http1 {
            headers.insert(HOST, self.host.clone());
        }
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        req
    }

    /// The kept connection, unless the backend has closed it meanwhile.
    fn take_kept(&self) -> Option<Conn> {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.take().filter(|c| !c.sender.is_closed())
    }

    fn keep(&self, conn: Option<Conn>) {
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }

    /// One check: on the kept connection when there is one, else (or when the
    /// backend closed it before answering) on a fresh one. Returns the
    /// connection when it can carry the next check.
    async fn check(
        &self,
        addr: SocketAddr,
        kept: Option<Conn>,
    ) -> Result<Option<Conn>, ProbeError> {
        if let Some(conn) = kept {
            match self.exchange(conn).await {
                Err(ProbeError::Http(e)) if is_stale(&e) => {}
                other => return other,
            }
        }
        let conn = transport::connect(addr, self.tls.as_deref(), self.http).await?;
        self.exchange(conn).await
    }

    async fn exchange(&self, mut conn: Conn) -> Result<Option<Conn>, ProbeError> {
        let resp = conn
            .sender
            .send(self.request())
            .await
            .map_err(ProbeError::Http)?;
        self.judge(resp.status().as_u16())?;
        let complete = drain(resp.into_body()).await?;
        Ok(complete.then_some(conn))
    }

    fn judge(&self, status: u16) -> Result<(), ProbeError> {
        let (lo, hi) = self.expect;
        if (lo..=hi).contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status {
                status,
                expected: self.expect,
            })
        }
    }
}

impl Probe for HttpProbe {
    async fn probe(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        let kept = self.take_kept();
        match tokio::time::timeout(self.timeout, self.check(addr, kept)).await {
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(conn)) => {
                self.keep(conn);
                Ok(())
            }
        }
    }
}

/// Reads and discards up to [`BODY_CAP`] bytes of body; true when the body
/// ended within the cap (the connection can be used again).
async fn drain(mut body: Incoming) -> Result<bool, ProbeError> {
    let mut read = 0usize;
    while read < BODY_CAP {
        match body.frame().await {
            None => return Ok(true),
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(ProbeError::Http(e)),
        }
    }
    Ok(false)
}

/// Percent-encodes the bytes a URI path or query cannot carry as they are,
/// so any path the config accepts (non-empty, starts with `/`, no spaces)
/// can be sent.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/?-._~!$&'()*+,;=:@%".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthCheckKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn config(expect: (u16, u16)) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            path: "/healthz".into(),
            host: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            expect_status: expect,
        }
    }

    /// A one-shot server: reads a request head, answers `reply` (or nothing
    /// when `reply` is `None`, holding the connection open), returns the head.
    async fn serve_once(
        reply: Option<&'static [u8]>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return String::new();
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            match reply {
                Some(bytes) => {
                    let _ = stream.write_all(bytes).await;
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, task)
    }

    async fn probe(reply: Option<&'static [u8]>, expect: (u16, u16)) -> Result<(), ProbeError> {
        let (addr, _task) = serve_once(reply).await;
        let probe = HttpProbe::new(&config(expect), &addr.to_string(), None, Http::Http1)
            .expect("valid probe");
        probe.probe(addr).await
    }

    #[tokio::test]
    async fn a_status_in_range_passes_and_the_request_is_a_plain_get() {
        let (addr, task) = serve_once(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
        let probe = HttpProbe::new(&config((200, 299)), "backend.test:81", None, Http::Http1)
            .expect("probe");
        probe.probe(addr).await.expect("passes");
        let head = task.await.expect("server");
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("host: backend.test:81\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_redirect_outside_the_range_fails_and_is_not_followed() {
        let reply = b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n";
        let err = probe(Some(reply), (200, 299)).await.expect_err("3xx");
        assert!(
            matches!(err, ProbeError::Status { status: 302, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn garbage_fails() {
        let err = probe(Some(b"SSH-2.0-OpenSSH\r\n\r\n"), (200, 399))
            .await
            .expect_err("garbage");
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_closed_connection_fails() {
        let err = probe(Some(b""), (200, 399)).await.expect_err("closed");
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_hang_times_out() {
        let err = probe(None, (200, 399)).await.expect_err("hang");
        assert!(matches!(err, ProbeError::Timeout(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_truncated_body_fails() {
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort";
        let err = probe(Some(reply), (200, 399)).await.expect_err("truncated");
        assert!(matches!(err, ProbeError::Http(_)), "{err:?}");
    }

    /// A keep-alive server answering 200 to every request; counts accepts.
    /// With `close_after`, it closes each connection that long after its
    /// first answer (as a backend's idle timeout would).
    async fn serve_keepalive(close_after: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepts);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer_all(stream, close_after));
            }
        });
        (addr, accepts)
    }

    async fn answer_all(mut stream: TcpStream, close_after: Option<Duration>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(reply).await.is_err() {
                    return;
                }
                if let Some(after) = close_after {
                    tokio::time::sleep(after).await;
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[tokio::test]
    async fn a_passing_check_keeps_its_connection_for_the_next() {
        let (addr, accepts) = serve_keepalive(None).await;
        let probe = HttpProbe::new(&config((200, 299)), "b:1", None, Http::Http1).expect("probe");
        for _ in 0..3 {
            probe.probe(addr).await.expect("passes");
        }
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_backend_closed_is_replaced_not_failed() {
        let (addr, accepts) = serve_keepalive(Some(Duration::from_millis(20))).await;
        let probe = HttpProbe::new(&config((200, 299)), "b:1", None, Http::Http1).expect("probe");
        probe.probe(addr).await.expect("first passes");
        tokio::time::sleep(Duration::from_millis(100)).await;
        probe
            .probe(addr)
            .await
            .expect("second passes on a new connection");
        assert_eq!(accepts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_check_drops_its_connection() {
        let (addr, accepts) = serve_keepalive(None).await;
        // 200 is outside 500-599 here: every check fails.
        let probe = HttpProbe::new(&config((500, 599)), "b:1", None, Http::Http1).expect("probe");
        for _ in 0..2 {
            assert!(probe.probe(addr).await.is_err());
        }
        assert_eq!(accepts.load(Ordering::SeqCst), 2);
    }

    /// An HTTP/2-only server (prior knowledge, as an h2c backend may be)
    /// answering 200 and recording each request's `:authority` and path.
    async fn serve_h2c_only() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        use hyper::service::service_fn;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let service = service_fn(move |req: Request<Incoming>| {
                    let line = format!(
                        "{} {}",
                        req.uri().authority().map_or("", |a| a.as_str()),
                        req.uri().path()
                    );
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                    async {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::new(Empty::<Bytes>::new()),
                        )
                    }
                });
                let builder =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                tokio::spawn(async move {
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn h2c_checks_speak_http2_with_prior_knowledge() {
        let (addr, seen) = serve_h2c_only().await;
        let h2 =
            HttpProbe::new(&config((200, 299)), "api.test:80", None, Http::Http2).expect("probe");
        for _ in 0..2 {
            h2.probe(addr).await.expect("passes over HTTP/2");
        }
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(seen, ["api.test:80 /healthz", "api.test:80 /healthz"]);
        let h1 =
            HttpProbe::new(&config((200, 299)), "api.test:80", None, Http::Http1).expect("probe");
        assert!(
            h1.probe(addr).await.is_err(),
            "HTTP/1.1 to an h2c-only server fails"
        );
    }

    #[test]
    fn odd_paths_are_encoded_not_refused() {
        assert_eq!(encode_path("/healthz?full=1"), "/healthz?full=1");
        assert_eq!(encode_path("/a{b}\"é"), "/a%7Bb%7D%22%C3%A9");
        let mut c = config((200, 399));
        c.path = "/ré{x}".into();
        assert!(HttpProbe::new(&c, "127.0.0.1:1", None, Http::Http1).is_ok());
    }
}
