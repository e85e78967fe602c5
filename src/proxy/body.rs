//! Body wrappers for both directions of a proxied request.
//!
//! Bodies stream frame by frame; nothing here buffers a body whole.
//! [`UpstreamBody`] carries the client's body to a backend, enforcing
//! `max_body_bytes` and `body_idle_timeout`. [`ProxyBody`] carries the answer
//! to the client: a backend's body (with the same idle timeout and the
//! [`RequestGuard`] that counts the request in flight until the last frame or
//! the client's abort) or a short local one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::upstream::{self, ConnLease};
use crate::access_log::Pending;
use crate::backend::ActiveGuard;
use crate::metrics::ServiceMetrics;

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("no body bytes moved for {0:?}")]
    Idle(Duration),
    #[error("request body exceeds the {0}-byte limit")]
    TooLarge(u64),
    #[error("body stream failed")]
    Stream(#[source] hyper::Error),
}

/// Fires when a body makes no progress for `timeout`. The timer is armed only
/// when a poll returns `Pending`, so bodies that arrive in one read never
/// touch the timer wheel; its box is allocated on the first stall only.
#[derive(Debug)]
pub struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> IdleTimer {
        IdleTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// Call after the inner body made progress.
    fn progressed(&mut self) {
        self.armed = false;
    }

    /// Call when the inner body is pending; `Ready` means the time is up.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        if !self.armed {
            self.armed = true;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match &mut self.sleep {
            Some(sleep) => {
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(BodyError::Idle(self.timeout))
            }
            None => Poll::Pending,
        }
    }
}

/// Poll `inner` once under `idle`, mapping its frame or error.
fn poll_with_idle(
    inner: Pin<&mut Incoming>,
    idle: &mut IdleTimer,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match inner.poll_frame(cx) {
        Poll::Ready(frame) => {
            idle.progressed();
            Poll::Ready(frame.map(|r| r.map_err(BodyError::Stream)))
        }
        Poll::Pending => idle.poll_stalled(cx).map(|e| Some(Err(e))),
    }
}

/// The request body as sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    Empty,
    /// A body that a retry can send again (see [`ReplayBody`]).
    Replay(ReplayBody),
    Stream {
        inner: Incoming,
        idle: IdleTimer,
        /// 0 = unlimited.
        limit: u64,
        seen: u64,
        /// The access log's count of bytes received (only while it is on).
        tally: Option<Arc<AtomicU64>>,
    },
}

impl UpstreamBody {
    /// The client's body, limited to `limit` bytes (0 = unlimited), aborted
    /// after `idle_timeout` without progress; kept replayable up to `replay`
    /// bytes; the bytes read are added to `tally` when given.
    pub fn from_client(
        inner: Incoming,
        idle_timeout: Duration,
        limit: u64,
        replay: u64,
        tally: Option<Arc<AtomicU64>>,
    ) -> UpstreamBody {
        match UpstreamBody::stream(inner, idle_timeout, limit, tally) {
            UpstreamBody::Empty => UpstreamBody::Empty,
            stream => UpstreamBody::Replay(ReplayBody::new(stream, replay)),
        }
    }

    /// A body for one more attempt, if this one can be sent again.
    pub fn again(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Empty => Some(UpstreamBody::Empty),
            UpstreamBody::Replay(body) => body.again().map(UpstreamBody::Replay),
            UpstreamBody::Stream { .. } => None,
        }
    }

    fn stream(
        inner: Incoming,
        idle_timeout: Duration,
        limit: u64,
        tally: Option<Arc<AtomicU64>>,
    ) -> UpstreamBody {
        if inner.is_end_stream() {
            return UpstreamBody::Empty;
        }
        UpstreamBody::Stream {
            inner,
            idle: IdleTimer::new(idle_timeout),
            limit,
            seen: 0,
            tally,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Every field is Unpin (Incoming and the boxed Sleep), so plain access is fine.
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Replay(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Stream {
                inner,
                idle,
                limit,
                seen,
                tally,
            } => {
                let frame = ready!(poll_with_idle(Pin::new(inner), idle, cx));
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    let len = data.map_or(0, |d| d.len() as u64);
                    *seen += len;
                    if let Some(tally) = tally {
                        tally.fetch_add(len, Ordering::Relaxed);
                    }
                    if *limit > 0 && *seen > *limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Replay(body) => body.is_end_stream(),
            UpstreamBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Replay(body) => body.size_hint(),
            UpstreamBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// A request body shared by the attempts of one request, so that a retry can
/// send it again (linkerd's ReplayBody idea). The client's body stays in the
/// shared state until an attempt polls it, so an attempt that failed before
/// sending anything (connection refused) leaves it whole for the next one;
/// the bytes an attempt does send are kept, up to `limit`, and replayed first
/// by the next attempt. Past the limit the copy is dropped and the request is
/// no longer replayable. The lock is per request, never shared between
/// requests, and only one attempt polls at a time.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Replay>>,
    /// Frames of the shared buffer this attempt has already sent.
    replayed: usize,
}

#[derive(Debug)]
struct Replay {
    source: UpstreamBody,
    buffer: Vec<Bytes>,
    buffered: u64,
    limit: u64,
    /// Something was sent that is not in the buffer: no further attempt.
    spoiled: bool,
    /// The source ended; trailers, if any, are kept for replays.
    finished: bool,
    trailers: Option<http::HeaderMap>,
}

impl ReplayBody {
    /// Wrap `source`, keeping up to `limit` bytes for replays.
    pub fn new(source: UpstreamBody, limit: u64) -> ReplayBody {
        let replay = Replay {
            source,
            buffer: Vec::new(),
            buffered: 0,
            limit,
            spoiled: false,
            finished: false,
            trailers: None,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(replay)),
            replayed: 0,
        }
    }

    /// A fresh body for the next attempt; `None` when the body can no longer
    /// be sent whole.
    pub fn again(&self) -> Option<ReplayBody> {
        let replay = self.lock();
        if replay.spoiled {
            return None;
        }
        Some(ReplayBody {
            shared: Arc::clone(&self.shared),
            replayed: 0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Replay> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Replay {
    /// Keep a copy of `data` for the next attempt, if it fits.
    fn keep(&mut self, data: &Bytes) {
        if self.spoiled {
            return;
        }
        let len = data.len() as u64;
        if self.buffered + len > self.limit {
            self.spoiled = true;
            self.buffer = Vec::new();
            return;
        }
        self.buffered += len;
        self.buffer.push(data.clone());
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let shared = Arc::clone(&this.shared);
        let mut replay = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(data) = replay.buffer.get(this.replayed) {
            this.replayed += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if replay.finished {
            return Poll::Ready(replay.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let frame = ready!(Pin::new(&mut replay.source).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    replay.keep(data);
                    this.replayed = replay.buffer.len();
                } else if let Some(trailers) = f.trailers_ref() {
                    replay.trailers = Some(trailers.clone());
                    replay.finished = true;
                }
            }
            None => replay.finished = true,
            Some(Err(_)) => replay.spoiled = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let replay = self.lock();
        replay.finished && self.replayed >= replay.buffer.len() && replay.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let replay = self.lock();
        let pending: u64 = replay.buffer[self.replayed.min(replay.buffer.len())..]
            .iter()
            .map(|b| b.len() as u64)
            .sum();
        let source = replay.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(source.lower() + pending);
        if let Some(upper) = source.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// Counts a request from its first attempt to the end of its response body:
/// in flight on the chosen backend (least-conn, active gauge) and in the
/// service's duration histogram.
#[derive(Debug)]
pub struct RequestGuard {
    pub active: ActiveGuard,
    pub metrics: Arc<ServiceMetrics>,
    pub started: Instant,
    /// The request's access-log line, written when the guard drops.
    pub log: Option<Pending>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.metrics
            .observe_duration(self.started.elapsed().as_secs_f64());
    }
}

/// The response body as sent to the client.
#[derive(Debug)]
pub enum ProxyBody {
    Local(Option<Bytes>),
    Upstream {
        inner: Incoming,
        idle: IdleTimer,
        /// Dropped with the body: at its end, or when the client goes away.
        guard: Option<RequestGuard>,
        /// The HTTP/1 connection it arrives on: back to the idle list when
        /// the body ends cleanly, closed if it ends any other way.
        conn: Option<ConnLease>,
    },
}

impl ProxyBody {
    pub fn local(text: &'static str) -> ProxyBody {
        ProxyBody::Local(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Local(None)
    }

    /// The request guard of a backend's body, to hand it the access-log line.
    pub fn guard_mut(&mut self) -> Option<&mut RequestGuard> {
        match self {
            ProxyBody::Upstream { guard, .. } => guard.as_mut(),
            ProxyBody::Local(_) => None,
        }
    }

    pub fn upstream(
        inner: Incoming,
        idle_timeout: Duration,
        guard: RequestGuard,
        mut conn: Option<ConnLease>,
    ) -> ProxyBody {
        if let Some(lease) = conn.take_if(|_| inner.is_end_stream()) {
            // hyper may never poll a body known to be empty.
            upstream::release(lease);
        }
        ProxyBody::Upstream {
            inner,
            idle: IdleTimer::new(idle_timeout),
            guard: Some(guard),
            conn,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream {
                inner,
                idle,
                guard,
                conn,
            } => {
                let frame = ready!(poll_with_idle(Pin::new(inner), idle, cx));
                // hyper stops polling a body once it reports its end, so
                // the last data frame may be the last poll.
                let ended = match &frame {
                    None => true,
                    Some(Ok(_)) => inner.is_end_stream(),
                    Some(Err(_)) => {
                        drop(conn.take());
                        false
                    }
                };
                if let Some(lease) = conn.take_if(|_| ended) {
                    upstream::release(lease);
                }
                if let (Some(Ok(f)), Some(log)) =
                    (&frame, guard.as_mut().and_then(|g| g.log.as_mut()))
                {
                    log.add_sent(f.data_ref().map_or(0, |d| d.len() as u64));
                }
                if !matches!(frame, Some(Ok(_))) {
                    // End of stream or failure: the request is over now, not
                    // whenever hyper drops the body.
                    guard.take();
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(data) => data.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
