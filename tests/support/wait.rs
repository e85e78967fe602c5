//! Waiting on observable events: poll a check until it holds, with a
//! bounded deadline. Every wait in the tests goes through these (or a
//! helper built on them), never a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

/// Upper bound for any single wait (a request, a start-up, an exit).
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it returns true; panics naming `what`
/// after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !within(limit, check).await {
        panic!("timed out after {limit:?} waiting for: {what}");
    }
}

/// Like [`eventually`], but returns whether `check` held within `limit`
/// instead of panicking (for tests that collect several problems).
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the wall clock passes `when` (a lease's end, as the server
/// stated it), at most [`WAIT`] away: the event is the deadline itself.
pub async fn wait_until(when: SystemTime) {
    let left = when
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    assert!(left <= WAIT, "{left:?} is further than a test waits");
    tokio::time::sleep(left).await;
    // The clocks of tokio and of the wall may differ by a tick.
    while SystemTime::now() <= when {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// For a timer under test (a lease kept alive by heartbeats): checks
/// `check` every 20 ms until the wall clock passes `until` (at most
/// [`WAIT`] away), panicking naming `what` the first time it fails. The
/// span of time is the point; the invariant is watched all along rather
/// than looked at once after a sleep.
pub async fn holds_until<F, Fut>(until: SystemTime, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let left = until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    assert!(left <= WAIT, "{left:?} is further than a test waits");
    loop {
        assert!(check().await, "no longer true: {what}");
        if SystemTime::now() > until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
