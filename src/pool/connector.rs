//! How backend connections are made: TCP through hyper-util's
//! `HttpConnector` (no delay, 30 s TCP keep-alive, the service's connect
//! timeout), plus TLS (tokio-rustls, ALPN `h2` then `http/1.1`) for
//! `protocol = "https"` services.
//!
//! A connection is always dialed at the address the backend resolved to at
//! load — the one the health checks probe. A TLS backend is named as written
//! in the config (`api.internal:8443`): that name is the SNI and the name
//! verified, unless the service sets `tls_server_name`. The caller learns
//! from [`UpstreamIo::is_h2`] whether ALPN chose HTTP/2, before it builds a
//! request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tower_service::Service as _;

use crate::config::UpstreamTls;
use crate::tls::TlsError;

/// Why a backend connection could not be made (always a connect error to
/// the request path: 502, retryable on another backend): nothing of the
/// request was sent.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Tcp(<HttpConnector as tower_service::Service<Uri>>::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("{0} is no valid TLS server name")]
    ServerName(String),
    #[error(transparent)]
    Settings(Arc<TlsError>),
    #[error("HTTP handshake failed: {0}")]
    Http(#[source] hyper::Error),
}

/// `HttpConnector`, plus TLS for https services. Cloning shares the TLS
/// settings (a rustls client config is costly to build: one per service).
#[derive(Debug, Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<TlsDial>>,
}

impl Connector {
    /// `tls`: the service's settings for an https service, `None` for plain TCP.
    pub fn new(connect_timeout: Duration, tls: Option<&UpstreamTls>) -> Connector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let tls = tls.map(|settings| Arc::new(TlsDial::new(settings, connect_timeout)));
        Connector { http, tls }
    }

    /// Open a connection to `addr`; over TLS, `name` (as written in the
    /// config) is the SNI and the name verified.
    pub async fn dial(&self, addr: SocketAddr, name: &Authority) -> Result<UpstreamIo, DialError> {
        let uri = Uri::try_from(format!("http://{addr}")).unwrap_or_default();
        let connecting = self.http.clone().call(uri);
        let Some(tls) = &self.tls else {
            let io = connecting.await.map_err(DialError::Tcp)?;
            return Ok(UpstreamIo::new(Stream::Plain(io.into_inner())));
        };
        let deadline = tokio::time::Instant::now() + tls.connect_timeout;
        let dial = async {
            let tcp = connecting.await.map_err(DialError::Tcp)?.into_inner();
            let server_name = tls.server_name(name)?;
            let connector = tls
                .connector
                .as_ref()
                .map_err(|e| DialError::Settings(Arc::clone(e)))?;
            let stream = connector
                .connect(server_name, tcp)
                .await
                .map_err(DialError::Handshake)?;
            Ok(UpstreamIo::new(Stream::Tls(Box::new(stream))))
        };
        tokio::time::timeout_at(deadline, dial)
            .await
            .map_err(|_| DialError::Timeout)?
    }
}

// === TLS ===

/// How an https service reaches its backends.
struct TlsDial {
    connector: Result<TlsConnector, Arc<TlsError>>,
    /// `tls_server_name`; else each backend's own host.
    server_name: Option<ServerName<'static>>,
    /// Bounds TCP connect and TLS handshake together.
    connect_timeout: Duration,
}

impl std::fmt::Debug for TlsDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDial")
            .field("server_name", &self.server_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsDial {
    fn new(settings: &UpstreamTls, connect_timeout: Duration) -> TlsDial {
        let extra = settings.ca.as_ref().map_or(&[][..], |ca| &ca.certs[..]);
        // Only a provider without any safe protocol version could fail here;
        // should it, every connection of the pool fails with the reason.
        let connector = crate::tls::client_config(extra)
            .map(|config| TlsConnector::from(Arc::new(config)))
            .map_err(|e| {
                tracing::error!(error = %e, "TLS client settings failed");
                Arc::new(e)
            });
        // Validated at load; a name that still fails falls back to each host.
        let server_name = settings.server_name.as_ref().and_then(|name| {
            ServerName::try_from(name.clone())
                .map_err(|_| tracing::error!(%name, "tls_server_name is not a valid name"))
                .ok()
        });
        TlsDial {
            connector,
            server_name,
            connect_timeout,
        }
    }

    /// The SNI and verification name for `authority`.
    fn server_name(&self, authority: &Authority) -> Result<ServerName<'static>, DialError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        // `[::1]` → `::1`: an IP is verified against the certificate's IP SANs.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|_| DialError::ServerName(host.to_owned()))
    }
}

// === the connection ===

/// A backend connection: plain TCP or TLS over TCP.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A backend connection, as hyper's client connections read and write it.
#[derive(Debug)]
pub struct UpstreamIo {
    io: TokioIo<Stream>,
}

impl UpstreamIo {
    fn new(stream: Stream) -> UpstreamIo {
        UpstreamIo {
            io: TokioIo::new(stream),
        }
    }

    /// Whether TLS ALPN chose HTTP/2 (never for plain TCP: h2c is a
    /// service setting, not a negotiation).
    pub fn is_h2(&self) -> bool {
        match self.io.inner() {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CaFile;
    use rustls::pki_types::CertificateDer;

    fn settings(ca: Option<CertificateDer<'static>>, server_name: Option<&str>) -> UpstreamTls {
        UpstreamTls {
            ca: ca.map(|cert| CaFile {
                path: "ca.pem".into(),
                certs: vec![cert],
            }),
            server_name: server_name.map(str::to_owned),
        }
    }

    #[test]
    fn names_are_the_server_name() {
        let dial = TlsDial::new(&UpstreamTls::default(), Duration::from_secs(1));
        let named = Authority::from_static("api.internal:8443");
        let name = dial.server_name(&named).expect("name");
        assert_eq!(name.to_str(), "api.internal");
        let ip = dial
            .server_name(&Authority::from_static("[::1]:443"))
            .expect("ip");
        assert_eq!(ip.to_str(), "::1");
    }

    #[test]
    fn tls_server_name_overrides_every_host() {
        let dial = TlsDial::new(
            &settings(None, Some("backend.internal")),
            Duration::from_secs(1),
        );
        let name = dial
            .server_name(&Authority::from_static("10.0.0.1:443"))
            .expect("name");
        assert_eq!(name.to_str(), "backend.internal");
    }

    /// A TLS server on 127.0.0.1:0 offering ALPN h2, with a self-signed
    /// certificate for `localhost`; returns its address and certificate.
    async fn h2_tls_server() -> (SocketAddr, CertificateDer<'static>) {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        let cert = generated.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    // Hold the connection open until the client drops it.
                    let (mut read, _write) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
                }
            }
        });
        (addr, cert)
    }

    #[tokio::test]
    async fn tls_connections_dial_the_address_verify_the_name_and_report_alpn_h2() {
        let (addr, cert) = h2_tls_server().await;
        let connector = Connector::new(Duration::from_secs(2), Some(&settings(Some(cert), None)));
        let name = Authority::try_from(format!("localhost:{}", addr.port())).expect("name");
        let stream = connector.dial(addr, &name).await.expect("TLS connect");
        assert!(stream.is_h2());
    }

    #[tokio::test]
    async fn an_untrusted_certificate_fails_the_connect() {
        let (addr, _cert) = h2_tls_server().await;
        let connector = Connector::new(Duration::from_secs(2), Some(&settings(None, None)));
        let name = Authority::try_from(format!("localhost:{}", addr.port())).expect("name");
        let err = connector.dial(addr, &name).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, DialError::Handshake(_)), "{err}");
    }
}
