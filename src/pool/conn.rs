//! One upstream connection: its hyper handshake, the task that drives it,
//! and the small shared state the reaper and the worker lists agree through.
//!
//! A connection's [`ConnState`] is one atomic — busy, closed, or the
//! millisecond it went idle — so a worker taking it from its idle list and
//! the reaper closing it race on a single compare-and-swap, and whoever wins
//! also settles the endpoint's idle count. The task driving the connection
//! ends when hyper's connection ends (the backend closed it, an error, the
//! last handle dropped) or when the reaper asks it to; either way it marks
//! the state closed, so no worker hands out a connection known to be dead.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

use super::connector::{DialError, UpstreamIo};
use crate::backend::now_millis;

/// `idle_since` of a connection carrying a request.
const BUSY: u64 = 0;
/// `idle_since` of a connection that is closed or closing.
const CLOSED: u64 = u64::MAX;

/// What the worker lists, the request path and the reaper know of one connection.
#[derive(Debug)]
pub struct ConnState {
    /// [`BUSY`], [`CLOSED`], or the [`now_millis`] it was put on an idle list.
    idle_since: AtomicU64,
    /// Tells the driving task to drop the connection (taken once).
    close: Mutex<Option<oneshot::Sender<()>>>,
}

impl ConnState {
    fn new() -> (Arc<ConnState>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let state = ConnState {
            idle_since: AtomicU64::new(BUSY),
            close: Mutex::new(Some(tx)),
        };
        (Arc::new(state), rx)
    }

    /// Put on an idle list now; false if the connection closed meanwhile.
    pub fn set_idle(&self) -> bool {
        let now = now_millis().clamp(1, CLOSED - 1);
        self.idle_since
            .compare_exchange(BUSY, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Take an idle connection for a request; false if it closed meanwhile.
    pub fn claim(&self) -> bool {
        let since = self.idle_since.load(Ordering::Acquire);
        since != BUSY
            && since != CLOSED
            && self
                .idle_since
                .compare_exchange(since, BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.idle_since.load(Ordering::Acquire) == CLOSED
    }

    /// How long it has been idle at `now` (`None`: busy or closed).
    pub fn idle_for(&self, now: u64) -> Option<u64> {
        match self.idle_since.load(Ordering::Acquire) {
            BUSY | CLOSED => None,
            since => Some(now.saturating_sub(since)),
        }
    }

    /// Close it if it is idle (the reaper's side of the race with `claim`).
    /// True when this call took it off the idle count.
    pub fn close_if_idle(&self) -> bool {
        let since = self.idle_since.load(Ordering::Acquire);
        if since == BUSY || since == CLOSED {
            return false;
        }
        let won = self
            .idle_since
            .compare_exchange(since, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.signal_close();
        }
        won
    }

    /// Ask the driving task to drop the connection, whatever it carries
    /// (HTTP/2: the caller checked that no request is in flight).
    pub fn signal_close(&self) {
        let sender = self
            .close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// The connection ended; true if it was idle (counted) when it did.
    fn mark_closed(&self) -> bool {
        let before = self.idle_since.swap(CLOSED, Ordering::AcqRel);
        before != BUSY && before != CLOSED
    }
}

/// HTTP/1.1 over a fresh connection; the driving task is spawned (with
/// upgrades, for WebSocket and other `101` switches). `on_idle_close` runs
/// when the connection ends while it sat idle.
pub async fn http1<B>(
    io: UpstreamIo,
    on_idle_close: impl FnOnce() + Send + 'static,
) -> Result<(http1::SendRequest<B>, Arc<ConnState>), DialError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(DialError::Http)?;
    let (state, closing) = ConnState::new();
    tokio::spawn(drive(
        conn.with_upgrades(),
        Arc::clone(&state),
        closing,
        on_idle_close,
    ));
    Ok((send, state))
}

/// HTTP/2 over a fresh connection (h2c, or TLS where ALPN chose `h2`).
pub async fn http2<B>(io: UpstreamIo) -> Result<(http2::SendRequest<B>, Arc<ConnState>), DialError>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(DialError::Http)?;
    let (state, closing) = ConnState::new();
    tokio::spawn(drive(conn, Arc::clone(&state), closing, || {}));
    // The server's SETTINGS are in once the connection is ready.
    send.ready().await.map_err(DialError::Http)?;
    Ok((send, state))
}

/// Run a connection until it ends or the reaper closes it.
async fn drive<C>(
    conn: C,
    state: Arc<ConnState>,
    closing: oneshot::Receiver<()>,
    on_idle_close: impl FnOnce(),
) where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::select! {
        biased;
        ended = conn => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        }
        _ = closing => {}
    }
    if state.mark_closed() {
        on_idle_close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_and_the_reaper_cannot_both_take_an_idle_connection() {
        let (state, mut closing) = ConnState::new();
        assert!(!state.claim(), "busy at birth");
        assert!(state.set_idle());
        assert!(state.claim());
        assert!(!state.close_if_idle(), "busy again: the reaper keeps off");
        assert!(state.set_idle());
        assert!(state.close_if_idle());
        assert!(!state.claim(), "closed by the reaper");
        assert!(closing.try_recv().is_ok(), "the driving task was told");
        assert!(!state.mark_closed(), "already off the idle count");
        assert!(
            !state.set_idle(),
            "a closed connection never goes idle again"
        );
    }

    #[test]
    fn a_connection_ending_while_idle_leaves_the_idle_count() {
        let (state, _closing) = ConnState::new();
        assert!(state.set_idle());
        assert_eq!(
            state.idle_for(now_millis() + 10).map(|d| d >= 10),
            Some(true)
        );
        assert!(state.mark_closed());
        assert!(state.is_closed());
        assert_eq!(state.idle_for(now_millis()), None);
    }
}
