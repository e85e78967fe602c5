//! A service's retry budget: how many retries the proxy may still add.
//!
//! Kept by the publisher per service across table rebuilds (reloads keep
//! it), read and counted by the request path with relaxed atomics. It lives
//! beside the table rather than in the proxy so that the table does not
//! depend on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Seconds in the budget's sliding window.
const WINDOW_SECS: u64 = 10;
/// Retries always allowed per second of window, however few requests came.
const MIN_RETRIES_PER_SEC: u64 = 10;

/// A service's retry budget (Envoy's and linkerd's idea): over a sliding
/// 10 s window, retries may be at most `budget_percent` of the requests plus
/// a floor of 10 per second, so that when everything fails, retries cannot
/// multiply the load. One-second buckets of atomics: recording a request is a
/// single increment; the rare reset of a stale bucket may race and lose a
/// count, which a budget can afford.
#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECS as usize],
}

#[derive(Debug, Default)]
struct Bucket {
    /// The second this bucket counts (`now_secs`); stale buckets are reset.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl RetryBudget {
    pub fn new() -> RetryBudget {
        RetryBudget::default()
    }

    fn bucket(&self, now_secs: u64) -> &Bucket {
        let bucket = &self.buckets[(now_secs % WINDOW_SECS) as usize];
        if bucket.second.load(Ordering::Relaxed) != now_secs {
            bucket.second.store(now_secs, Ordering::Relaxed);
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Count one original request.
    pub fn record_request(&self, now_secs: u64) {
        self.bucket(now_secs)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Take one retry from the budget if there is room.
    pub fn try_retry(&self, now_secs: u64, budget_percent: u32) -> bool {
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let second = b.second.load(Ordering::Relaxed);
            if second + WINDOW_SECS > now_secs && second <= now_secs {
                requests += u64::from(b.requests.load(Ordering::Relaxed));
                retries += u64::from(b.retries.load(Ordering::Relaxed));
            }
        }
        let allowed =
            requests * u64::from(budget_percent) / 100 + MIN_RETRIES_PER_SEC * WINDOW_SECS;
        if retries >= allowed {
            return false;
        }
        self.bucket(now_secs)
            .retries
            .fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_caps_retries_at_the_percentage_plus_the_floor() {
        let budget = RetryBudget::new();
        for _ in 0..1000 {
            budget.record_request(100);
        }
        let granted = (0..1000).filter(|_| budget.try_retry(100, 20)).count();
        assert_eq!(granted, 200 + 100);
    }

    #[test]
    fn budget_window_slides() {
        let budget = RetryBudget::new();
        let granted = (0..500).filter(|_| budget.try_retry(5, 0)).count();
        assert_eq!(granted, 100, "the floor alone");
        assert!(!budget.try_retry(14, 0), "still inside the window");
        assert!(budget.try_retry(15, 0), "the spent second left the window");
    }
}
