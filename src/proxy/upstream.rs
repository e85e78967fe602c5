//! Pooled HTTP clients to backends, one per (protocol, connect timeout).
//!
//! Clients are kept by the publisher across table rebuilds, so a reload never
//! throws away warm keep-alive connections. The pool's idle timeout stays
//! below common backend keep-alive timeouts (Node.js and Apache close idle
//! connections after 5 s), which keeps the stale-connection race rare; the
//! client itself retries a request that a reused connection dropped before
//! any byte of it was written. For the rest of the race — the backend closed
//! the connection just after the request went out — every connection carries
//! its birth time ([`Born`]), so the request path can tell a reused
//! connection from a fresh one and retry any method on the former.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Extensions, Request, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use crate::config::UpstreamProtocol;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A pooled client; cloning shares the pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub protocol: UpstreamProtocol,
    client: Client<Connector, UpstreamBody>,
}

impl Upstream {
    pub fn new(protocol: UpstreamProtocol, connect_timeout: Duration) -> Upstream {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .retry_canceled_requests(true)
            .set_host(false);
        if protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        Upstream {
            protocol,
            client: builder.build(Connector { http }),
        }
    }

    pub fn client(&self) -> &Client<Connector, UpstreamBody> {
        &self.client
    }
}

/// When a backend connection was made; attached to every connection's
/// metadata.
#[derive(Debug, Clone, Copy)]
pub struct Born(pub Instant);

/// Ask the client to report which connection serves `req`.
pub fn watch_connection(req: &mut Request<UpstreamBody>) -> CaptureConnection {
    capture_connection(req)
}

/// Whether the connection that served (or failed) a request existed before `since`.
pub fn was_reused(captured: &CaptureConnection, since: Instant) -> bool {
    let metadata = captured.connection_metadata();
    let Some(connected) = metadata.as_ref() else {
        return false;
    };
    let mut extensions = Extensions::new();
    connected.get_extras(&mut extensions);
    extensions.get::<Born>().is_some_and(|born| born.0 < since)
}

/// `HttpConnector`, with each connection stamped with its birth time.
#[derive(Debug, Clone)]
pub struct Connector {
    http: HttpConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = BornStream;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<BornStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(BornStream {
                io,
                born: Instant::now(),
            })
        })
    }
}

/// A backend connection and its birth time.
#[derive(Debug)]
pub struct BornStream {
    io: TokioIo<TcpStream>,
    born: Instant,
}

impl Connection for BornStream {
    fn connected(&self) -> Connected {
        self.io.connected().extra(Born(self.born))
    }
}

impl Read for BornStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for BornStream {
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
