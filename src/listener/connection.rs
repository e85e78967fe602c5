//! One client connection: the TLS handshake if any, hyper's connection, and
//! the one timer that closes it when [`ConnClock::due`] says so.
//!
//! The task polls hyper's connection and, right after each poll, asks the
//! clock for its deadline: a request head that just started (seen by the IO
//! wrapper inside that poll) moves the timer earlier at once. Deadlines that
//! move later (a response ended, a head completed) are left to the timer: it
//! fires, looks again and re-arms. So there is no ticker and no wake-up per
//! request, and a busy connection costs one timer firing per `idle_timeout`.
//!
//! An HTTP/1 connection (plain or TLS) is *parked* once it has rested
//! `PARK_AFTER_MS` with hyper holding nothing of it (see `tracked_io`):
//! hyper's connection and its buffers are dropped, the
//! task waits for the socket to become readable, and then serves it with a
//! fresh HTTP/1 connection. A new connection starts parked, so a client that
//! connects and says nothing costs no hyper state either.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use super::clock::{millis, CloseReason, ConnClock, ConnTimeouts};
use super::in_flight::Counted;
use super::tracked_io::{ClientStream, IoCore, Parking, TrackedIo};
use super::HttpBuilders;
use crate::metrics::ListenerMetrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an HTTP/1 connection rests after its last response before it is
/// parked. Parking is not free: the next request needs a fresh hyper
/// connection (about 2,000 instructions, 4–5 % of a proxied request). A
/// client that keeps a connection busy never pays it, since its next request
/// comes sooner, and the timer that parks it moves at most once per this
/// interval; a connection that rests longer gives its buffers back.
const PARK_AFTER_MS: u64 = 100;

/// A client connection and what serving it needs.
pub(super) struct Connection<S> {
    pub service: S,
    pub builders: Arc<HttpBuilders>,
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

/// Counts the connection in `switchyard_connections_parked` while parked.
struct ParkedGauge {
    metrics: Arc<ListenerMetrics>,
    parked: bool,
}

impl ParkedGauge {
    fn new(metrics: &Arc<ListenerMetrics>) -> ParkedGauge {
        ParkedGauge {
            metrics: Arc::clone(metrics),
            parked: false,
        }
    }

    fn enter(&mut self) {
        if !self.parked {
            self.parked = true;
            self.metrics.parked.inc();
        }
    }

    fn leave(&mut self) {
        if self.parked {
            self.parked = false;
            self.metrics.parked.dec();
        }
    }
}

impl Drop for ParkedGauge {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What woke the connection task.
enum Event {
    /// hyper's connection finished (the client closed, an error, or an upgrade
    /// took the stream over).
    Ended(Result<(), BoxError>),
    /// A parked connection's socket has something to read (or failed).
    Readable(io::Result<()>),
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

type ClientIo<I> = TokioIo<TrackedIo<I>>;

/// hyper's connection, whichever builder made it.
trait HyperConnection: Send {
    fn poll_connection(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> HyperConnection
    for auto::UpgradeableConnection<'_, ClientIo<I>, Counted<S>, TokioExecutor>
where
    I: ClientStream,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn poll_connection(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll(cx)
    }

    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> HyperConnection for http1::UpgradeableConnection<ClientIo<I>, Counted<S>>
where
    I: ClientStream,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn poll_connection(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll(cx).map_err(BoxError::from)
    }

    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// hyper's connection, boxed so that parking frees it.
type Session<'a> = Pin<Box<dyn HyperConnection + 'a>>;

/// Served by hyper, or parked on the bare socket.
enum Stage<'a, I> {
    Serving(Session<'a>),
    Parked(IoCore<I>),
    /// Only between the two, while the socket comes back from hyper.
    Moving,
}

impl<S, B> Connection<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
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

    pub async fn serve<I: ClientStream>(self, io: I) {
        let clock = ConnClock::new();
        let core = IoCore::new(io, Arc::clone(&clock), Arc::clone(&self.metrics));
        let parking: Arc<Parking<I>> = Parking::new();
        let service = Counted::new(self.service.clone(), Arc::clone(&clock));
        let builders = Arc::clone(&self.builders);
        let mut parked_gauge = ParkedGauge::new(&self.metrics);
        let mut stage = if I::STARTS_PARKED {
            parked_gauge.enter();
            Stage::Parked(core)
        } else {
            Stage::Serving(session(
                &builders,
                core,
                Arc::clone(&parking),
                &service,
                true,
            ))
        };
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
                event = poll_fn(|cx| {
                    if let Poll::Ready(event) = stage.poll(cx) {
                        return Poll::Ready(event);
                    }
                    timer.poll(cx, phase, stage.park_due(phase, &parking, &clock))
                }) => event,
                _ = shutdown.changed(), if phase == Phase::Open => Event::Shutdown,
            };
            let parked = matches!(stage, Stage::Parked(_));
            match event {
                Event::Ended(Err(e)) => {
                    tracing::debug!(error = %e, "client connection ended with an error");
                    break;
                }
                Event::Ended(Ok(())) => break,
                Event::Readable(Err(e)) => {
                    tracing::debug!(error = %e, "client connection failed while idle");
                    break;
                }
                Event::Readable(Ok(())) => {
                    parked_gauge.leave();
                    let Stage::Parked(core) = std::mem::replace(&mut stage, Stage::Moving) else {
                        break;
                    };
                    // Parked before its first byte (readiness can be
                    // spurious), a connection may still turn out to be h2c.
                    let first = !clock.any_byte();
                    stage = Stage::Serving(session(
                        &builders,
                        core,
                        Arc::clone(&parking),
                        &service,
                        first,
                    ));
                }
                Event::Shutdown if parked => break,
                Event::Shutdown => {
                    stage.graceful_shutdown();
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
                Event::Timer
                    if stage
                        .park_due(phase, &parking, &clock)
                        .is_some_and(|at| at <= clock.now_ms()) =>
                {
                    if !stage.park(&parking) {
                        break;
                    }
                    parked_gauge.enter();
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
                        if parked {
                            break;
                        }
                        stage.graceful_shutdown();
                        phase = Phase::Closing;
                        timer.arm_after(self.timeouts.header_read);
                    }
                },
            }
        }
        drop(stage);
        cut_watch.disarm();
        drop(self.permit);
        drop(self.open);
    }
}

/// A hyper connection over the socket: the auto builder the first time
/// (HTTP/1.1 or h2c), HTTP/1.1 after a park.
fn session<'a, I, S, B>(
    builders: &'a HttpBuilders,
    core: IoCore<I>,
    parking: Arc<Parking<I>>,
    service: &Counted<S>,
    first: bool,
) -> Session<'a>
where
    I: ClientStream,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(TrackedIo::new(core, parking));
    if first {
        Box::pin(
            builders
                .auto
                .serve_connection_with_upgrades(io, service.clone()),
        )
    } else {
        Box::pin(
            builders
                .http1
                .serve_connection(io, service.clone())
                .with_upgrades(),
        )
    }
}

impl<I: ClientStream> Stage<'_, I> {
    /// Poll hyper, or, parked, the socket's readiness.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        match self {
            Stage::Serving(session) => session.as_mut().poll_connection(cx).map(Event::Ended),
            Stage::Parked(core) => core.inner.poll_read_ready(cx).map(Event::Readable),
            Stage::Moving => Poll::Pending,
        }
    }

    /// When the connection may be parked, in ms after accept: `PARK_AFTER`
    /// after its last response, while hyper holds nothing of it (see
    /// `tracked_io`); `None` while that is not so.
    fn park_due(&self, phase: Phase, parking: &Parking<I>, clock: &ConnClock) -> Option<u64> {
        let serving = matches!(self, Stage::Serving(_));
        let idle = serving && phase == Phase::Open && parking.idle() && clock.in_flight() == 0;
        idle.then(|| clock.idle_since_ms().saturating_add(PARK_AFTER_MS))
    }

    /// Drop hyper's connection (which hands the socket back) and keep the
    /// socket alone; false if it did not come back.
    fn park(&mut self, parking: &Parking<I>) -> bool {
        drop(std::mem::replace(self, Stage::Moving));
        match parking.take() {
            Some(core) => {
                *self = Stage::Parked(core);
                true
            }
            None => false,
        }
    }

    fn graceful_shutdown(&mut self) {
        if let Stage::Serving(session) = self {
            session.as_mut().graceful_shutdown();
        }
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

    /// Move the timer earlier if what hyper just did calls for it (a head
    /// that started, a connection that may park at `park_due`), then poll it.
    fn poll(&mut self, cx: &mut Context<'_>, phase: Phase, park_due: Option<u64>) -> Poll<Event> {
        let close_due = match phase {
            Phase::Open => self.clock.due(&self.timeouts).map(|(due, _)| due),
            Phase::Closing => None,
        };
        let earliest = match (close_due, park_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(due) = earliest {
            if due < self.armed_ms {
                self.arm_at(due);
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
