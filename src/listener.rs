//! Accept loops and client connections, for any hyper service.
//!
//! A listener takes a connection permit *before* accepting, so at
//! `max_connections` new connections wait in the kernel's backlog rather than
//! being accepted and starved. Each connection is served by hyper-util's auto
//! builder (HTTP/1.1 with upgrades, or h2c by prior knowledge) inside a task
//! that also enforces the idle timeout and graceful shutdown. Accept errors
//! (EMFILE...) back off and never end the loop. This module knows no route.
//!
//! On TLS listeners the handshake runs inside the connection's own task,
//! bounded by the first-byte timeout (`header_read_timeout`), so a slow or
//! silent client never holds up the accept loop; the decrypted stream is
//! then served exactly like a plain one (ALPN `h2` or an h2 preface → HTTP/2).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ProxyConfig;
use crate::proxy::framing::RequestFraming;

/// The hyper connection builder for client connections, from `[proxy]`.
pub fn http_builder(cfg: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(cfg.header_read_timeout)
        // hyper's floor is 8 KiB; the head must fit in this buffer, else 431.
        .max_buf_size(cfg.max_header_bytes.max(crate::proxy::HYPER_MIN_BUF))
        .max_headers(cfg.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Timeouts a connection task enforces around hyper.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// No byte at all within this after accept: close.
    pub first_byte: Duration,
    /// No byte either way for this long: close gracefully.
    pub idle: Duration,
}

/// Everything an accept loop needs besides the socket.
pub struct Listener<M> {
    pub socket: TcpListener,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    /// Makes the service of one connection from the peer's address.
    pub make_service: M,
    pub permits: Arc<Semaphore>,
    pub connections_open: IntGauge,
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
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            service: (self.make_service)(peer),
            builder: Arc::clone(&self.builder),
            timeouts: self.timeouts,
            shutdown: self.shutdown.clone(),
            gauge: OpenGauge::new(self.connections_open.clone()),
            _permit: permit,
        };
        match &self.tls {
            None => tokio::spawn(conn.serve(stream)),
            Some(acceptor) => tokio::spawn(conn.serve_tls(acceptor.clone(), stream)),
        };
    }
}

/// Counts an open connection for as long as it lives.
struct OpenGauge(IntGauge);

impl OpenGauge {
    fn new(gauge: IntGauge) -> OpenGauge {
        gauge.inc();
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Connection<S> {
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: ConnTimeouts,
    shutdown: watch::Receiver<bool>,
    gauge: OpenGauge,
    /// Returned to the listener's semaphore when the connection ends.
    _permit: OwnedSemaphorePermit,
}

impl<S, B> Connection<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Handshake (bounded by the first-byte timeout, abandoned at shutdown),
    /// then serve the decrypted stream.
    async fn serve_tls(mut self, acceptor: TlsAcceptor, stream: TcpStream) {
        let handshake = tokio::time::timeout(self.timeouts.first_byte, acceptor.accept(stream));
        let tls = tokio::select! {
            done = handshake => done,
            _ = self.shutdown.changed() => return,
        };
        match tls {
            Ok(Ok(tls)) => self.serve(tls).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        }
    }

    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(TrackedIo {
            inner: io,
            activity: Arc::clone(&activity),
            framing: RequestFraming::new(),
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(io, self.service.clone());
        tokio::pin!(conn);
        let period = (self.timeouts.idle / 2).max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let first_byte = tokio::time::sleep(self.timeouts.first_byte);
        tokio::pin!(first_byte);
        let mut closing = false;
        let mut quiet_ticks = 0u32;
        loop {
            tokio::select! {
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    break;
                }
                _ = self.shutdown.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = &mut first_byte, if !activity.ever.load(Ordering::Relaxed) => {
                    // Nothing sent at all (not even a request line): a
                    // slowloris that never starts, or a stray TCP probe.
                    break;
                }
                _ = ticker.tick() => {
                    if activity.recent.swap(false, Ordering::Relaxed) {
                        quiet_ticks = 0;
                        continue;
                    }
                    quiet_ticks += 1;
                    if quiet_ticks >= 4 && closing {
                        break; // asked to close twice over, still silent: drop it
                    }
                    if quiet_ticks >= 2 && !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
        drop(self.gauge);
    }
}

/// Activity flags shared by the IO wrapper and the connection task.
#[derive(Debug, Default)]
struct Activity {
    /// Set on every read or write that moved bytes; cleared by each idle tick.
    recent: AtomicBool,
    /// Set once the client has sent anything.
    ever: AtomicBool,
}

/// A client stream that records activity and, on HTTP/1, runs the framing
/// guard over every byte before hyper parses it (hyper silently drops a
/// Content-Length sent beside Transfer-Encoding; the guard makes such a head
/// unparseable so hyper answers 400 and closes).
struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
    framing: RequestFraming,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.recent.store(true, Ordering::Relaxed);
            this.activity.ever.store(true, Ordering::Relaxed);
            if !this.framing.is_done() && this.framing.scan(&mut buf.filled_mut()[before..]) {
                tracing::debug!("request with both Content-Length and Transfer-Encoding refused");
            }
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.recent.store(true, Ordering::Relaxed);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.recent.store(true, Ordering::Relaxed);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
