//! Accept loops and client connections, for any hyper service.
//!
//! A listener takes a connection permit *before* accepting, so at
//! `max_connections` new connections wait in the kernel's backlog rather than
//! being accepted and starved. Each connection is served by hyper-util's auto
//! builder (HTTP/1.1 with upgrades, or h2c by prior knowledge) inside a task
//! of its own (`connection`) that enforces `header_read_timeout` and
//! `idle_timeout` with one lazily moved timer (`clock`), counting requests in
//! flight from the service's call to the end of the response body
//! (`in_flight`). Accept errors (EMFILE...) back off and never end the loop.
//! This module knows no route.
//!
//! On TLS listeners the handshake runs inside the connection's own task,
//! bounded by `header_read_timeout`, so a slow or silent client never holds up
//! the accept loop; the decrypted stream is then served exactly like a plain
//! one (ALPN `h2` or an h2 preface → HTTP/2).

mod clock;
mod connection;
mod fd_budget;
mod h2_flood;
mod in_flight;
mod tracked_io;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use clock::ConnTimeouts;
use connection::Connection;
pub use fd_budget::{apply as budget_connections, ConnectionBudget};

use crate::config::ProxyConfig;
use crate::log_throttle::Throttle;
use crate::metrics::ListenerMetrics;
use crate::workers::Workers;

/// Accept failures repeat every 50 ms while they last: one line per interval.
static ACCEPT_FAILED: Throttle = Throttle::new();
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// hyper's connection builders for client connections, from `[proxy]`.
#[derive(Debug)]
pub struct HttpBuilders {
    /// A connection's first requests: HTTP/1.1 or h2c by prior knowledge.
    pub(crate) auto: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 again after a park (`connection`), configured alike.
    pub(crate) http1: http1::Builder,
}

/// The builders for client connections, from `[proxy]`.
pub fn http_builders(cfg: &ProxyConfig) -> HttpBuilders {
    let mut auto = auto::Builder::new(TokioExecutor::new());
    configure_http1(&mut auto.http1(), cfg);
    auto.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut http1 = http1::Builder::new();
    configure_http1(&mut http1, cfg);
    HttpBuilders { auto, http1 }
}

/// The one place the HTTP/1 settings live, so both builders agree.
fn configure_http1(builder: &mut impl Http1Settings, cfg: &ProxyConfig) {
    builder.set_timer(TokioTimer::new());
    builder.set_keep_alive(true);
    // Not hyper's: its timer starts when a connection goes idle, not at a
    // head's first byte, so it would close idle keep-alive connections
    // after header_read_timeout. The connection task times heads itself.
    builder.set_no_header_read_timeout();
    // hyper's floor is 8 KiB; the head must fit in this buffer, else 431.
    builder.set_max_buf_size(cfg.max_header_bytes.max(crate::proxy::HYPER_MIN_BUF));
    builder.set_max_headers(cfg.max_headers);
}

/// The HTTP/1 settings both hyper's builder and hyper-util's view of it take.
trait Http1Settings {
    fn set_timer(&mut self, timer: TokioTimer);
    fn set_keep_alive(&mut self, on: bool);
    fn set_no_header_read_timeout(&mut self);
    fn set_max_buf_size(&mut self, bytes: usize);
    fn set_max_headers(&mut self, count: usize);
}

macro_rules! http1_settings {
    ($ty:ty) => {
        impl Http1Settings for $ty {
            fn set_timer(&mut self, timer: TokioTimer) {
                self.timer(timer);
            }
            fn set_keep_alive(&mut self, on: bool) {
                self.keep_alive(on);
            }
            fn set_no_header_read_timeout(&mut self) {
                self.header_read_timeout(None);
            }
            fn set_max_buf_size(&mut self, bytes: usize) {
                self.max_buf_size(bytes);
            }
            fn set_max_headers(&mut self, count: usize) {
                self.max_headers(count);
            }
        }
    };
}

http1_settings!(http1::Builder);
http1_settings!(auto::Http1Builder<'_, TokioExecutor>);

/// Everything an accept loop needs besides the socket.
pub struct Listener<M> {
    pub socket: TcpListener,
    pub builders: Arc<HttpBuilders>,
    /// Makes the service of one connection from the peer's address.
    pub make_service: M,
    pub permits: Arc<Semaphore>,
    /// The listener's connection gauge and close counters.
    pub metrics: Arc<ListenerMetrics>,
    pub timeouts: ConnTimeouts,
    pub shutdown: watch::Receiver<bool>,
    /// `Some` on `[[proxy.tls]]` listeners: every connection is TLS.
    pub tls: Option<TlsAcceptor>,
}

impl<M, S, B> Listener<M>
where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Accept until shutdown; the socket closes when this returns.
    pub async fn run(mut self) {
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = self.shutdown.changed() => return,
            };
            let accepted = tokio::select! {
                accepted = self.socket.accept() => accepted,
                _ = self.shutdown.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_connection(stream, peer, permit),
                Err(e) => {
                    if let Some(more) = ACCEPT_FAILED.allow(LOG_INTERVAL) {
                        tracing::warn!(error = %e, more_since_last_line = more, "accept failed; backing off 50 ms at each failure");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Run this accept loop on every extra worker as well, each copy on a
    /// handle of its own on the same socket (registered with that worker's
    /// runtime), so whichever worker is free first accepts.
    pub fn spawn_on_workers(&self, workers: &Workers)
    where
        M: Clone + Sync,
    {
        workers.spawn_each(|| {
            let socket = duplicate(&self.socket);
            let twin = (
                Arc::clone(&self.builders),
                self.make_service.clone(),
                Arc::clone(&self.permits),
                Arc::clone(&self.metrics),
                self.timeouts,
                self.shutdown.clone(),
                self.tls.clone(),
            );
            async move {
                let (builders, make_service, permits, metrics, timeouts, shutdown, tls) = twin;
                let socket = match socket.and_then(TcpListener::from_std) {
                    Ok(socket) => socket,
                    Err(e) => {
                        tracing::error!(error = %e, "a worker cannot accept on a listener; the others still do");
                        return;
                    }
                };
                let listener = Listener {
                    socket,
                    builders,
                    make_service,
                    permits,
                    metrics,
                    timeouts,
                    shutdown,
                    tls,
                };
                listener.run().await;
            }
        });
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            service: (self.make_service)(peer),
            builders: Arc::clone(&self.builders),
            timeouts: self.timeouts,
            shutdown: self.shutdown.clone(),
            open: connection::OpenGauge::new(&self.metrics),
            metrics: Arc::clone(&self.metrics),
            permit,
        };
        match &self.tls {
            None => tokio::spawn(conn.serve(stream)),
            Some(acceptor) => tokio::spawn(conn.serve_tls(acceptor.clone(), stream)),
        };
    }
}

/// Wait until every connection of a listener group has returned its permit,
/// or `timeout` passes. Returns whether all drained.
pub async fn drained(permits: &Semaphore, total: usize, timeout: Duration) -> bool {
    let all = u32::try_from(total).unwrap_or(u32::MAX);
    tokio::time::timeout(timeout, permits.acquire_many(all))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// A second handle (a dup'd descriptor) on a bound socket, ready to be
/// registered with any runtime.
pub fn duplicate(socket: &TcpListener) -> io::Result<std::net::TcpListener> {
    let std_listener: std::net::TcpListener = socket2::SockRef::from(socket).try_clone()?.into();
    std_listener.set_nonblocking(true)?;
    Ok(std_listener)
}

/// Bind a TCP listener with a deep backlog and SO_REUSEADDR.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
