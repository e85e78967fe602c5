//! How the HTTP and gRPC probes reach a backend: a fresh TCP connection,
//! TLS on it for `https` services (the service's trust roots and verified
//! name, ALPN per probe), then HTTP/1.1 or HTTP/2 (prior knowledge on `h2c`)
//! with hyper's connection API, the connection driven by a task of its own
//! that dropping the [`Conn`] aborts (closing the socket).
//!
//! Checks never use the proxy's pool, so they never compete with requests
//! for connections.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ProbeError;
use crate::config::UpstreamTls;
use crate::tls::TlsError;

/// hyper's read buffer limit for HTTP/1.1 (its minimum is 8 KiB), and the
/// HTTP/2 header list limit: a response head larger than this fails the
/// check instead of growing memory.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Which HTTP a probe speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Http {
    Http1,
    /// Prior knowledge on plain TCP (`h2c`); negotiated by ALPN over TLS.
    Http2,
}

/// How the checks of an `https` service's backend speak TLS.
#[derive(Clone)]
pub struct ProbeTls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTls")
            .field("name", &self.name)
            .finish()
    }
}

impl ProbeTls {
    /// Checks verified against `client` (see [`client_config`]) for the
    /// backend named `host` (its host as written), or for the service's
    /// `tls_server_name` when set.
    pub fn new(
        client: Arc<ClientConfig>,
        settings: &UpstreamTls,
        host: &str,
    ) -> Result<ProbeTls, ProbeError> {
        let name = settings.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| ProbeError::ServerName(name.to_owned()))?;
        Ok(ProbeTls {
            connector: TlsConnector::from(client),
            name,
        })
    }
}

/// The TLS client settings for the checks of an `https` service: its trust
/// roots, ALPN offering only the HTTP the probe speaks. Built once per
/// distinct setting and shared by that service's probes.
pub fn client_config(settings: &UpstreamTls, http: Http) -> Result<Arc<ClientConfig>, TlsError> {
    let extra_roots = settings.ca.as_ref().map_or(&[][..], |ca| &ca.certs[..]);
    let mut config = crate::tls::client_config(extra_roots)?;
    config.alpn_protocols = match http {
        Http::Http1 => vec![b"http/1.1".to_vec()],
        Http::Http2 => vec![b"h2".to_vec()],
    };
    Ok(Arc::new(config))
}

/// The request side of an open check connection.
#[derive(Debug)]
pub enum Sender<B> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>),
}

impl<B> Sender<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    pub async fn send(&mut self, req: Request<B>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// An open check connection; dropping it aborts its driver, closing the socket.
#[derive(Debug)]
pub struct Conn<B> {
    pub sender: Sender<B>,
    driver: tokio::task::JoinHandle<()>,
}

impl<B> Drop for Conn<B> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A fresh connection to `addr` (TLS when `tls` is set) speaking `http`.
pub async fn connect<B>(
    addr: SocketAddr,
    tls: Option<&ProbeTls>,
    http: Http,
) -> Result<Conn<B>, ProbeError>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return handshake(stream, http).await;
    };
    let stream = tls
        .connector
        .connect(tls.name.clone(), stream)
        .await
        .map_err(ProbeError::Tls)?;
    handshake(stream, http).await
}

/// HTTP on `stream`, its connection driven by a task of its own.
async fn handshake<S, B>(stream: S, http: Http) -> Result<Conn<B>, ProbeError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(stream);
    let (sender, driver) = match http {
        Http::Http1 => {
            let (sender, conn) = http1::Builder::new()
                .max_buf_size(MAX_HEAD_BYTES)
                .handshake(io)
                .await
                .map_err(ProbeError::Http)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::Http1(sender), driver)
        }
        Http::Http2 => {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .handshake(io)
                .await
                .map_err(ProbeError::Http)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::Http2(sender), driver)
        }
    };
    Ok(Conn { sender, driver })
}

/// A kept connection that ended before any answer: the backend closed it
/// while idle (the keep-alive race, or an HTTP/2 GOAWAY), which says nothing
/// about its health.
pub fn is_stale(e: &hyper::Error) -> bool {
    e.is_canceled() || e.is_closed() || e.is_incomplete_message()
}
