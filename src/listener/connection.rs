//! One client connection: the TLS handshake if any, hyper's connection, and
//! the one timer that closes it when [`ConnClock::due`] says so.
//!
//! The task polls hyper's connection and, right after each poll, asks the
//! clock for its deadline: a request head that just started (seen by the IO
//! wrapper inside that poll) moves the timer earlier at once. Deadlines that
//! move later (a response ended, a head completed) are left to the timer: it
//! fires, looks again and re-arms. So there is no ticker and no wake-up per
//! request, and a busy connection costs one timer firing per `idle_timeout`.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use super::clock::{millis, CloseReason, ConnClock, ConnTimeouts};
use super::h2_flood::ControlFloodGuard;
use super::in_flight::Counted;
use crate::metrics::ListenerMetrics;
use crate::proxy::framing::RequestFraming;

/// A client connection and what serving it needs.
pub(super) struct Connection<S> {
    pub service: S,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub timeouts: ConnTimeouts,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<ListenerMetrics>,
    /// Returned to the listener's semaphore when the connection ends.
    pub permit: OwnedSemaphorePermit,
    /// Counts the connection in `switchyard_connections_open` while it lives.
    pub open: OpenGauge,
}

/// Counts an open connection for as long as it lives.
pub(super) struct OpenGauge(Arc<ListenerMetrics>);

impl OpenGauge {
    pub fn new(metrics: &Arc<ListenerMetrics>) -> OpenGauge {
        metrics.open.inc();
        OpenGauge(Arc::clone(metrics))
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// What woke the connection task.
enum Event<T> {
    /// hyper's connection finished (the client closed, an error, or an upgrade
    /// took the stream over).
    Ended(T),
    /// The timer fired: look at the clock.
    Timer,
    /// Graceful shutdown began.
    Shutdown,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// hyper was asked to close once its requests are done.
    Closing,
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
    /// Handshake (bounded by `header_read_timeout`, abandoned at shutdown),
    /// then serve the decrypted stream.
    pub async fn serve_tls(mut self, acceptor: TlsAcceptor, stream: TcpStream) {
        let handshake = tokio::time::timeout(self.timeouts.header_read, acceptor.accept(stream));
        let tls = tokio::select! {
            done = handshake => done,
            _ = self.shutdown.changed() => return,
        };
        match tls {
            Ok(Ok(tls)) => self.serve(tls).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => {
                self.metrics.closed_handshake.inc();
                tracing::debug!("TLS handshake timed out (header_read_timeout); connection closed");
            }
        }
    }

    pub async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let clock = ConnClock::new();
        let io = TokioIo::new(TrackedIo {
            inner: io,
            clock: Arc::clone(&clock),
            framing: RequestFraming::new(),
            flood: ControlFloodGuard::new(),
            metrics: Arc::clone(&self.metrics),
        });
        let service = Counted::new(self.service.clone(), Arc::clone(&clock));
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let mut shutdown = self.shutdown.clone();
        let mut timer = Timer::new(&clock, &self.timeouts);
        let mut phase = Phase::Open;
        let cut_watch = CutWatch {
            clock: Arc::clone(&clock),
            metrics: Arc::clone(&self.metrics),
            armed: true,
        };
        loop {
            let event = tokio::select! {
                biased;
                event = poll_fn(|cx| timer.poll_with(cx, conn.as_mut(), phase)) => event,
                _ = shutdown.changed(), if phase == Phase::Open => Event::Shutdown,
            };
            match event {
                Event::Ended(Err(e)) => {
                    tracing::debug!(error = %e, "client connection ended with an error");
                    break;
                }
                Event::Ended(Ok(())) => break,
                Event::Shutdown => {
                    conn.as_mut().graceful_shutdown();
                    phase = Phase::Closing;
                    timer.arm_after(self.timeouts.header_read);
                }
                Event::Timer if phase == Phase::Closing => {
                    // Asked to close and still open: drop it once nothing is
                    // in flight (an HTTP/2 peer that never acknowledges GOAWAY).
                    if clock.in_flight() == 0 {
                        break;
                    }
                    timer.arm_after(self.timeouts.idle);
                }
                Event::Timer => match timer.expired() {
                    None => {}
                    Some(CloseReason::HeaderRead) => {
                        self.metrics.closed_header_read.inc();
                        tracing::debug!("no complete request head within header_read_timeout; connection closed");
                        break;
                    }
                    Some(CloseReason::Idle) => {
                        self.metrics.closed_idle.inc();
                        tracing::debug!("connection idle for idle_timeout; closing");
                        conn.as_mut().graceful_shutdown();
                        phase = Phase::Closing;
                        timer.arm_after(self.timeouts.header_read);
                    }
                },
            }
        }
        cut_watch.disarm();
        drop(self.permit);
        drop(self.open);
    }
}

/// Counts and logs a connection dropped under unanswered requests: by the
/// rules above Switchyard never closes one, so this fires only when the task
/// itself is dropped (the process leaves after `drain_timeout`), and it can
/// never again happen silently.
struct CutWatch {
    clock: Arc<ConnClock>,
    metrics: Arc<ListenerMetrics>,
    armed: bool,
}

impl CutWatch {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CutWatch {
    fn drop(&mut self) {
        let in_flight = self.clock.in_flight();
        if self.armed && in_flight > 0 {
            self.metrics.cut.inc();
            tracing::debug!(
                in_flight,
                "client connection closed under unanswered requests"
            );
        }
    }
}

/// The connection's one timer, armed at the clock's next deadline.
struct Timer {
    clock: Arc<ConnClock>,
    timeouts: ConnTimeouts,
    sleep: Pin<Box<Sleep>>,
    /// Where `sleep` is armed, in ms after accept.
    armed_ms: u64,
}

impl Timer {
    fn new(clock: &Arc<ConnClock>, timeouts: &ConnTimeouts) -> Timer {
        let (due, _) = clock.due(timeouts).unwrap_or((0, CloseReason::Idle));
        Timer {
            clock: Arc::clone(clock),
            timeouts: *timeouts,
            sleep: Box::pin(tokio::time::sleep_until(clock.instant(due))),
            armed_ms: due,
        }
    }

    /// Poll hyper's connection, then move the timer earlier if what hyper
    /// just did calls for it, then poll the timer.
    fn poll_with<C, T>(
        &mut self,
        cx: &mut Context<'_>,
        conn: Pin<&mut C>,
        phase: Phase,
    ) -> Poll<Event<T>>
    where
        C: Future<Output = T>,
    {
        if let Poll::Ready(result) = conn.poll(cx) {
            return Poll::Ready(Event::Ended(result));
        }
        if phase == Phase::Open {
            if let Some((due, _)) = self.clock.due(&self.timeouts) {
                if due < self.armed_ms {
                    self.arm_at(due);
                }
            }
        }
        self.sleep.as_mut().poll(cx).map(|()| Event::Timer)
    }

    /// The timer fired while open: the reason to close now, or `None` after
    /// re-arming at the next deadline.
    fn expired(&mut self) -> Option<CloseReason> {
        let now = self.clock.now_ms();
        match self.clock.due(&self.timeouts) {
            Some((due, why)) if due <= now => Some(why),
            Some((due, _)) => {
                self.arm_at(due);
                None
            }
            None => {
                // Busy: nothing can be due before the request ends plus
                // idle_timeout, or a new head starts (which re-arms at once).
                self.arm_at(now.saturating_add(millis(self.timeouts.idle)));
                None
            }
        }
    }

    fn arm_after(&mut self, after: std::time::Duration) {
        let at = self.clock.now_ms().saturating_add(millis(after));
        self.arm_at(at);
    }

    fn arm_at(&mut self, ms: u64) {
        self.armed_ms = ms;
        self.sleep.as_mut().reset(self.clock.instant(ms));
    }
}

/// A client stream that tells the clock about bytes and request heads and,
/// on HTTP/1, runs the framing guard over every byte before hyper parses it
/// (hyper silently drops a Content-Length sent beside Transfer-Encoding; the
/// guard makes such a head unparseable so hyper answers 400 and closes); on
/// HTTP/2, the control-frame flood guard, whose verdict fails the read so
/// hyper drops the connection.
struct TrackedIo<I> {
    inner: I,
    clock: Arc<ConnClock>,
    framing: RequestFraming,
    flood: ControlFloodGuard,
    metrics: Arc<ListenerMetrics>,
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
            if !this.framing.is_done() && this.framing.scan(&mut buf.filled_mut()[before..]) {
                tracing::debug!("request with both Content-Length and Transfer-Encoding refused");
            }
            this.clock.on_read(this.framing.in_head());
            if this.flood.scan(&buf.filled()[before..]) {
                this.metrics.closed_flood.inc();
                tracing::debug!("HTTP/2 control-frame flood (PING/SETTINGS); connection closed");
                return Poll::Ready(Err(io::Error::other("HTTP/2 control-frame flood")));
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
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
