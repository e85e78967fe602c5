//! Whether a failed attempt may be tried again (pure; no I/O).
//!
//! A retry needs: attempts left, a request body that can be sent again, a
//! failure the service's `retry.on` lists, and a safe method — any method
//! when nothing reached the backend (connection refused), otherwise only
//! idempotent ones while `idempotent_only` holds.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use http::Method;

use super::error::ProxyError;
use crate::config::{RetryConfig, RetryOn};

/// What the last attempt produced.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    Error(&'a ProxyError),
    Status(u16),
}

/// The request-level facts a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub method: &'a Method,
    /// Retries already made.
    pub retries: u32,
    /// The body is empty (or buffered) and can be sent again.
    pub replayable: bool,
    /// Per-try timeouts are configured (a 504 we made is retryable only then).
    pub try_timeout: bool,
}

pub fn should_retry(config: &RetryConfig, attempt: Attempt<'_>, failure: Failure<'_>) -> bool {
    if attempt.retries >= config.attempts || !attempt.replayable {
        return false;
    }
    let (listed, nothing_sent) = match failure {
        Failure::Error(e) => (
            listed_error(config, e, attempt.try_timeout),
            e.nothing_sent(),
        ),
        Failure::Status(code) => (config.on.contains(&RetryOn::Status(code)), false),
    };
    listed && (nothing_sent || !config.idempotent_only || is_idempotent(attempt.method))
}

fn listed_error(config: &RetryConfig, error: &ProxyError, try_timeout: bool) -> bool {
    let condition = match error {
        ProxyError::Connect(_) => RetryOn::ConnectError,
        ProxyError::Reset(_) | ProxyError::Stale(_) => RetryOn::Reset,
        // Our own 504 counts as "504" too (SPEC: it is retried when
        // try_timeout is set and time remains).
        ProxyError::Timeout if try_timeout => {
            return config.on.contains(&RetryOn::Timeout)
                || config.on.contains(&RetryOn::Status(504));
        }
        _ => return false,
    };
    config.on.contains(&condition)
}

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

/// RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(attempts: u32) -> RetryConfig {
        RetryConfig {
            attempts,
            on: vec![RetryOn::ConnectError, RetryOn::Reset, RetryOn::Status(503)],
            idempotent_only: true,
            budget_percent: 20,
            buffer_bytes: 65536,
        }
    }

    fn attempt(method: &Method, retries: u32) -> Attempt<'_> {
        Attempt {
            method,
            retries,
            replayable: true,
            try_timeout: false,
        }
    }

    #[test]
    fn listed_status_is_retried_for_idempotent_methods_only() {
        let c = config(1);
        assert!(should_retry(
            &c,
            attempt(&Method::GET, 0),
            Failure::Status(503)
        ));
        assert!(!should_retry(
            &c,
            attempt(&Method::POST, 0),
            Failure::Status(503)
        ));
        assert!(!should_retry(
            &c,
            attempt(&Method::GET, 0),
            Failure::Status(500)
        ));
    }

    #[test]
    fn attempts_are_bounded() {
        let c = config(2);
        assert!(should_retry(
            &c,
            attempt(&Method::GET, 1),
            Failure::Status(503)
        ));
        assert!(!should_retry(
            &c,
            attempt(&Method::GET, 2),
            Failure::Status(503)
        ));
    }

    #[test]
    fn unreplayable_bodies_are_never_retried() {
        let c = config(3);
        let mut a = attempt(&Method::PUT, 0);
        a.replayable = false;
        assert!(!should_retry(&c, a, Failure::Status(503)));
    }

    #[test]
    fn timeouts_need_a_try_timeout() {
        let mut c = config(1);
        c.on.push(RetryOn::Timeout);
        let e = ProxyError::Timeout;
        assert!(!should_retry(
            &c,
            attempt(&Method::GET, 0),
            Failure::Error(&e)
        ));
        let mut a = attempt(&Method::GET, 0);
        a.try_timeout = true;
        assert!(should_retry(&c, a, Failure::Error(&e)));
    }

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

    #[test]
    fn idempotency_table() {
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::PATCH));
        assert!(!is_idempotent(&Method::POST));
    }
}
