//! The HTTP probe (`kind = "http"`, the default): `GET path` over a fresh
//! HTTP/1.1 connection; a status inside `expect_status` passes.
//!
//! A fresh connection per check (never the proxy's pool) so that the check
//! proves the backend still accepts connections, and so that a check never
//! competes with requests for pooled connections. The check timeout bounds the
//! whole exchange — connect, response head and the body drain — and the
//! connection is driven inside the probe's own future, so a hung backend costs
//! nothing once the timeout drops it. Redirects are never followed: a 3xx
//! passes only when `expect_status` includes it. The body is read and thrown
//! away up to [`BODY_CAP`] bytes so that well-behaved servers see a complete
//! exchange; a larger body is cut off (the status already decided), and a
//! body that breaks off mid-way fails the check.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Probe, ProbeError};
use crate::config::HealthCheckConfig;

/// At most this many body bytes are read per check.
pub const BODY_CAP: usize = 64 * 1024;

/// hyper's read buffer limit (its minimum is 8 KiB): a response head larger
/// than this fails the check instead of growing memory.
const MAX_HEAD_BYTES: usize = 16 * 1024;

const AGENT: &str = concat!("switchyard-health-check/", env!("CARGO_PKG_VERSION"));

/// One backend's HTTP check, with its request parts built once.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    uri: Uri,
    host: HeaderValue,
    timeout: Duration,
    /// Inclusive status range that passes.
    expect: (u16, u16),
}

impl HttpProbe {
    /// A probe for `config`, sending `Host: config.host` or, when unset,
    /// `Host: backend_address` (the backend's `host:port` as declared).
    pub fn new(config: &HealthCheckConfig, backend_address: &str) -> Result<HttpProbe, ProbeError> {
        let uri = Uri::try_from(encode_path(&config.path)).map_err(ProbeError::Uri)?;
        let host = config.host.as_deref().unwrap_or(backend_address);
        let host = HeaderValue::from_str(host).map_err(ProbeError::Host)?;
        Ok(HttpProbe {
            uri,
            host,
            timeout: config.timeout,
            expect: config.expect_status,
        })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        // The connection is used once; saying so lets the server close first
        // (its TIME_WAIT, not ours) and skip keep-alive bookkeeping.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        req
    }

    async fn exchange(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        let exchange = async {
            let resp = sender
                .send_request(self.request())
                .await
                .map_err(ProbeError::Http)?;
            self.judge(resp.status().as_u16())?;
            drain(resp.into_body()).await
        };
        with_connection(conn, exchange).await
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
        tokio::time::timeout(self.timeout, self.exchange(addr))
            .await
            .map_err(|_| ProbeError::Timeout(self.timeout))?
    }
}

/// Runs `exchange` while driving `conn`. When the connection ends first
/// (closed, garbage), hyper hands the error to the pending request, so
/// `exchange` always decides; dropping both closes the socket.
async fn with_connection<C, F>(conn: C, exchange: F) -> Result<(), ProbeError>
where
    C: Future,
    F: Future<Output = Result<(), ProbeError>>,
{
    let drive = async {
        let _ = conn.await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = exchange => result,
        () = drive => Ok(()),
    }
}

/// Reads and discards up to [`BODY_CAP`] bytes of body.
async fn drain(mut body: Incoming) -> Result<(), ProbeError> {
    let mut read = 0usize;
    while read < BODY_CAP {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(ProbeError::Http(e)),
        }
    }
    Ok(())
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        let probe = HttpProbe::new(&config(expect), &addr.to_string()).expect("valid probe");
        probe.probe(addr).await
    }

    #[tokio::test]
    async fn a_status_in_range_passes_and_the_request_is_a_plain_get() {
        let (addr, task) = serve_once(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
        let probe = HttpProbe::new(&config((200, 299)), "backend.test:81").expect("probe");
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

    #[test]
    fn odd_paths_are_encoded_not_refused() {
        assert_eq!(encode_path("/healthz?full=1"), "/healthz?full=1");
        assert_eq!(encode_path("/a{b}\"é"), "/a%7Bb%7D%22%C3%A9");
        let mut c = config((200, 399));
        c.path = "/ré{x}".into();
        assert!(HttpProbe::new(&c, "127.0.0.1:1").is_ok());
    }
}
