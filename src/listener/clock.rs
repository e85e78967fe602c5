//! When Switchyard may close a client connection on its own, and why.
//!
//! Each timeout bounds one thing (README § Timeouts):
//! - `header_read_timeout` bounds reading one request head, timed from the
//!   head's first byte (so the second request on a keep-alive connection gets
//!   the same bound as the first), and a connection that sends nothing at all;
//! - `idle_timeout` bounds a connection with no request in flight, timed from
//!   the end of the last response (or from accept);
//! - nothing here bounds a request in flight: waiting for the backend and
//!   moving bodies are the proxy's `request_timeout` / `body_idle_timeout`.
//!
//! A [`ConnClock`] is shared by the connection task, its IO wrapper (which
//! sees a head start) and every request on the connection (an [`InFlight`]
//! guard, dropped when the response body ends). Writers only store a few
//! atomics; the connection task alone reads the clock, when its single timer
//! fires or after hyper made progress, and moves its timer lazily: earlier at
//! once, later only when the old deadline comes (see [`ConnClock::due`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Timeouts the connection task enforces around hyper.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    /// Reading one request head, from its first byte; also a connection
    /// that sends nothing at all.
    pub header_read: Duration,
    /// No request in flight for this long: close between requests.
    pub idle: Duration,
}

/// Why Switchyard closes a connection (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A request head (or the first byte) did not arrive in time.
    HeaderRead,
    /// No request in flight for `idle_timeout`.
    Idle,
}

/// Live timing state of one client connection; see the module docs.
#[derive(Debug)]
pub struct ConnClock {
    /// The origin of every `*_ms` value below.
    opened: Instant,
    /// Whether the client has sent any byte.
    any_byte: AtomicBool,
    /// When the head being read started, ms after `opened` plus one; 0 = no
    /// head is being read.
    head_since: AtomicU64,
    /// Requests whose response has not ended (HTTP/2: open streams).
    in_flight: AtomicU32,
    /// When the last response ended, ms after `opened`.
    idle_since: AtomicU64,
}

impl ConnClock {
    pub fn new() -> Arc<ConnClock> {
        Arc::new(ConnClock {
            opened: Instant::now(),
            any_byte: AtomicBool::new(false),
            head_since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
        })
    }

    /// Milliseconds since the connection was accepted.
    pub fn now_ms(&self) -> u64 {
        millis(self.opened.elapsed())
    }

    /// The instant `ms` after accept.
    pub fn instant(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// The client sent bytes; `in_head` = the framing guard is inside a
    /// request head after them. Called on every read, so it only loads
    /// unless something changes.
    pub fn on_read(&self, in_head: bool) {
        if !self.any_byte.load(Ordering::Relaxed) {
            self.any_byte.store(true, Ordering::Relaxed);
        }
        let timing_head = self.head_since.load(Ordering::Relaxed) != 0;
        if !in_head {
            // Past the head (a body, or no longer HTTP/1: an h2 preface).
            if timing_head {
                self.head_since.store(0, Ordering::Relaxed);
            }
            return;
        }
        // A head read while a response is still going (pipelining) is not
        // timed: hyper will not read it until that response ends.
        if !timing_head && self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Whether the client has sent any byte yet.
    pub fn any_byte(&self) -> bool {
        self.any_byte.load(Ordering::Relaxed)
    }

    /// When the last response ended (or the connection opened), ms after accept.
    pub fn idle_since_ms(&self) -> u64 {
        self.idle_since.load(Ordering::Relaxed)
    }

    /// Requests whose response has not ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When Switchyard may close the connection, in ms after accept, and
    /// why; `None` while a request is in flight (nothing here bounds it).
    ///
    /// Every value this returns is no later than the true deadline at any
    /// later moment, unless an event moved it later (a byte, a request, a
    /// response end); so a timer armed at it may fire early, look again and
    /// re-arm, but never fires late.
    pub fn due(&self, timeouts: &ConnTimeouts) -> Option<(u64, CloseReason)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let header_read = millis(timeouts.header_read);
        let idle = millis(timeouts.idle);
        if !self.any_byte.load(Ordering::Relaxed) {
            // Silent since accept: both bounds apply, the shorter wins.
            return Some(if header_read <= idle {
                (header_read, CloseReason::HeaderRead)
            } else {
                (idle, CloseReason::Idle)
            });
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => Some((
                self.idle_since.load(Ordering::Relaxed) + idle,
                CloseReason::Idle,
            )),
            since => Some((since - 1 + header_read, CloseReason::HeaderRead)),
        }
    }
}

/// One request on the connection, from the call of the service until its
/// response body ends (or is dropped). The connection is not idle meanwhile.
#[derive(Debug)]
pub struct InFlight(Arc<ConnClock>);

impl InFlight {
    pub fn start(clock: &Arc<ConnClock>) -> InFlight {
        clock.in_flight.fetch_add(1, Ordering::Relaxed);
        // Its head is complete: the next head is timed from its own first byte.
        clock.head_since.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(clock))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let clock = &self.0;
        // Idle from now; stored before the count falls so a reader that sees
        // no request in flight also sees when the last one ended.
        clock.idle_since.store(clock.now_ms(), Ordering::Relaxed);
        clock.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// A duration in whole milliseconds (saturating far beyond any timeout).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ConnTimeouts = ConnTimeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_due_at_header_read() {
        let clock = ConnClock::new();
        assert_eq!(clock.due(&T), Some((10_000, CloseReason::HeaderRead)));
        let short_idle = ConnTimeouts {
            idle: Duration::from_secs(2),
            ..T
        };
        assert_eq!(clock.due(&short_idle), Some((2_000, CloseReason::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_timed_from_its_first_byte() {
        let clock = ConnClock::new();
        tokio::time::advance(Duration::from_secs(3)).await;
        clock.on_read(true);
        assert_eq!(clock.due(&T), Some((13_000, CloseReason::HeaderRead)));
        tokio::time::advance(Duration::from_secs(5)).await;
        clock.on_read(true);
        assert_eq!(clock.due(&T), Some((13_000, CloseReason::HeaderRead)));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_due_while_a_request_is_in_flight() {
        let clock = ConnClock::new();
        clock.on_read(true);
        let request = InFlight::start(&clock);
        assert_eq!(clock.due(&T), None);
        // Bytes of a pipelined head meanwhile start no timer.
        clock.on_read(true);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(clock.due(&T), None);
        drop(request);
        assert_eq!(clock.due(&T), Some((160_000, CloseReason::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_second_head_gets_its_own_header_read_bound() {
        let clock = ConnClock::new();
        clock.on_read(true);
        drop(InFlight::start(&clock));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.due(&T), Some((60_000, CloseReason::Idle)));
        clock.on_read(true);
        assert_eq!(clock.due(&T), Some((40_000, CloseReason::HeaderRead)));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_outside_a_head_keep_the_idle_bound() {
        // HTTP/2 frames between streams, or empty lines: not a head.
        let clock = ConnClock::new();
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.on_read(false);
        assert_eq!(clock.due(&T), Some((60_000, CloseReason::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_the_head_stops_its_timer() {
        // An h2 preface starts like a request line, then stops being HTTP/1.
        let clock = ConnClock::new();
        clock.on_read(true);
        clock.on_read(false);
        assert_eq!(clock.due(&T), Some((60_000, CloseReason::Idle)));
    }
}
