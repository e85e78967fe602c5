//! The client stream as hyper sees it, and how it is handed back for parking.
//!
//! [`TrackedIo`] tells the clock about bytes and request heads and, on
//! HTTP/1, runs the framing guard over every byte before hyper parses it
//! (hyper silently drops a Content-Length sent beside Transfer-Encoding; the
//! guard makes such a head unparseable so hyper answers 400 and closes); on
//! HTTP/2, the control-frame flood guard, whose verdict fails the read so
//! hyper drops the connection.
//!
//! Parking: an idle HTTP/1 keep-alive connection inside hyper holds an 8 KiB
//! read buffer, an 8 KiB write buffer and the connection state, for as long
//! as the client keeps it open. HAProxy and NGINX hold about 1 KiB. So
//! between requests the connection task drops hyper's connection and keeps
//! only the socket ([`IoCore`]), which waits for readability without a
//! buffer; the next request gets a fresh hyper connection. Dropping hyper's
//! connection is safe only when it holds nothing: no request or response in
//! progress (the clock's in-flight count), nothing left to write, and no byte
//! read that hyper has not consumed. The last is known without looking inside
//! hyper: hyper reads from the socket only when its buffer cannot make
//! progress, and the framing guard knows whether the bytes so far end on a
//! message boundary. So "the last read found the socket empty, at a message
//! boundary, and no write is waiting" ([`Parking::idle`]) means hyper's
//! buffers hold no byte of the client's.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::clock::ConnClock;
use super::h2_flood::ControlFloodGuard;
use crate::metrics::ListenerMetrics;
use crate::proxy::framing::RequestFraming;

/// A client stream the listener can serve.
pub(super) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether a new connection may wait for its first bytes parked: only
    /// if nothing can be buffered above the socket yet.
    const STARTS_PARKED: bool;

    /// Ready when the socket has bytes (or EOF) to read.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientStream for TcpStream {
    const STARTS_PARKED: bool = true;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// TLS parks like plain TCP: hyper's last read was answered "nothing" only after rustls
/// had no plaintext left and the socket would block, and its last flush
/// left rustls nothing to send (else `WRITE_WAITING`), so the TCP socket's
/// readability is exactly when the session has something new. rustls keeps
/// its own (smaller) state meanwhile. Not at the start: the handshake may
/// have read the first request's bytes already.
impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    const STARTS_PARKED: bool = false;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The client socket and the per-connection state that outlives any one
/// hyper connection.
pub(super) struct IoCore<I> {
    pub inner: I,
    pub clock: Arc<ConnClock>,
    framing: RequestFraming,
    flood: ControlFloodGuard,
    metrics: Arc<ListenerMetrics>,
}

impl<I> IoCore<I> {
    pub fn new(inner: I, clock: Arc<ConnClock>, metrics: Arc<ListenerMetrics>) -> IoCore<I> {
        IoCore {
            inner,
            clock,
            framing: RequestFraming::new(),
            flood: ControlFloodGuard::new(),
            metrics,
        }
    }
}

/// The last read found the socket empty with the bytes so far ending on a
/// message boundary.
const READ_IDLE: u8 = 1;
/// The last write or flush could not complete.
const WRITE_WAITING: u8 = 2;

/// Shared by the connection task and the [`TrackedIo`] inside hyper: the
/// signals that say hyper holds nothing, and the slot the socket comes back
/// through when hyper's connection is dropped.
pub(super) struct Parking<I> {
    signals: AtomicU8,
    returned: Mutex<Option<IoCore<I>>>,
}

impl<I> Parking<I> {
    pub fn new() -> Arc<Parking<I>> {
        Arc::new(Parking {
            signals: AtomicU8::new(0),
            returned: Mutex::new(None),
        })
    }

    /// Whether hyper's connection holds no byte of the client's and nothing
    /// to write (see the module docs); the caller also checks that no request
    /// is in flight.
    pub fn idle(&self) -> bool {
        self.signals.load(Ordering::Relaxed) == READ_IDLE
    }

    /// The socket, once the hyper connection that held it was dropped.
    pub fn take(&self) -> Option<IoCore<I>> {
        self.returned.lock().ok()?.take()
    }

    fn set(&self, flag: u8, on: bool) {
        let now = self.signals.load(Ordering::Relaxed);
        let next = if on { now | flag } else { now & !flag };
        if next != now {
            self.signals.store(next, Ordering::Relaxed);
        }
    }
}

/// The stream handed to hyper.
pub(super) struct TrackedIo<I> {
    /// `None` only inside `drop`.
    core: Option<IoCore<I>>,
    /// Where the socket goes when hyper drops this, and the signals kept up
    /// to date on the way.
    parking: Arc<Parking<I>>,
}

impl<I> TrackedIo<I> {
    pub fn new(core: IoCore<I>, parking: Arc<Parking<I>>) -> TrackedIo<I> {
        parking.signals.store(0, Ordering::Relaxed);
        TrackedIo {
            core: Some(core),
            parking,
        }
    }

    fn signal(&self, flag: u8, on: bool) {
        self.parking.set(flag, on);
    }
}

impl<I> Drop for TrackedIo<I> {
    fn drop(&mut self) {
        if let Some(core) = self.core.take() {
            if let Ok(mut slot) = self.parking.returned.lock() {
                *slot = Some(core);
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("client stream already handed back")
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(core) = this.core.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let before = buf.filled().len();
        let result = Pin::new(&mut core.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if !core.framing.is_done() && core.framing.scan(&mut buf.filled_mut()[before..]) {
                tracing::debug!("request with both Content-Length and Transfer-Encoding refused");
            }
            core.clock.on_read(core.framing.in_head());
            if core.flood.scan(&buf.filled()[before..]) {
                core.metrics.closed_flood.inc();
                tracing::debug!("HTTP/2 control-frame flood (PING/SETTINGS); connection closed");
                return Poll::Ready(Err(io::Error::other("HTTP/2 control-frame flood")));
            }
        }
        let read_idle = result.is_pending() && core.framing.at_message_boundary();
        this.signal(READ_IDLE, read_idle);
        result
    }
}

impl<I: AsyncWrite + Unpin> TrackedIo<I> {
    /// One write-side call on the socket, noting whether it had to wait.
    fn write_with<T>(
        &mut self,
        call: impl FnOnce(Pin<&mut I>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(core) = self.core.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let result = call(Pin::new(&mut core.inner));
        self.signal(WRITE_WAITING, result.is_pending());
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_with(|io| io.poll_write(cx, data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write_with(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.core
            .as_ref()
            .is_some_and(|core| core.inner.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_with(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_with(|io| io.poll_shutdown(cx))
    }
}
