//! Waiting on observable events: poll a check until it holds, with a
//! bounded deadline. Every wait in the tests goes through these (or a
//! helper built on them), never a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Upper bound for any single wait (a request, a start-up, an exit).
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it returns true; panics naming `what`
/// after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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
