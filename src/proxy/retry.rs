//! Whether a failed attempt may be tried again (pure; no I/O).
//!
//! A retry needs: attempts left, a request body that can be sent again, a
//! failure the service's `retry.on` lists, and a safe method — any method
//! when nothing reached the backend (connection refused), otherwise only
//! idempotent ones while `idempotent_only` holds.

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
    fn idempotency_table() {
        assert!(is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::PATCH));
        assert!(!is_idempotent(&Method::POST));
    }
}
