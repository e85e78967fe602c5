//! Errors of the request path and the one place they become responses.
//!
//! Every answer Switchyard makes itself comes from [`ProxyError::into_response`]:
//! a status, a short plain-text body, `x-switchyard-error: <reason>`, and
//! `Retry-After` on 503s. The match is exhaustive on purpose: a new error
//! kind must decide its status here.

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ProxyBody;

/// The header naming why Switchyard answered by itself.
pub const ERROR_HEADER: &str = "x-switchyard-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route")]
    NoRoute,
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request header section too large")]
    HeadersTooLarge,
    #[error("request body timeout")]
    BodyTimeout,
    #[error("client body failed")]
    ClientGone,
    #[error("every backend is at its request limit")]
    LimitReached,
    #[error("backend connect failed")]
    Connect(#[source] crate::pool::DialError),
    #[error("backend reset")]
    Reset(#[source] hyper::Error),
    /// `None`: every connection tried closed before the request went out.
    #[error("backend closed a reused connection before answering")]
    Stale(#[source] Option<hyper::Error>),
    #[error("backend sent a bad response")]
    BadResponse(#[source] hyper::Error),
    #[error("backend response framing is ambiguous: {0}")]
    BadFraming(&'static str),
    #[error("backend timeout")]
    Timeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyBackend | ProxyError::LimitReached => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BadRequest(_) | ProxyError::ClientGone => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Connect(_)
            | ProxyError::Reset(_)
            | ProxyError::Stale(_)
            | ProxyError::BadResponse(_)
            | ProxyError::BadFraming(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `x-switchyard-error` value: short, fixed, greppable.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route",
            ProxyError::NoHealthyBackend => "no healthy backend",
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::BodyTooLarge => "request body too large",
            ProxyError::HeadersTooLarge => "request header fields too large",
            ProxyError::BodyTimeout => "request body timeout",
            ProxyError::ClientGone => "client body failed",
            ProxyError::LimitReached => "backend limit reached",
            ProxyError::Connect(_) => "backend connect failed",
            ProxyError::Reset(_) | ProxyError::Stale(_) => "backend reset",
            ProxyError::BadResponse(_) | ProxyError::BadFraming(_) => "backend bad response",
            ProxyError::Timeout => "backend timeout",
        }
    }

    fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "404 no route for this host and path\n",
            ProxyError::NoHealthyBackend => "503 no healthy backend\n",
            ProxyError::BadRequest(_) => "400 bad request\n",
            ProxyError::BodyTooLarge => "413 request body too large\n",
            ProxyError::HeadersTooLarge => "431 request header fields too large\n",
            ProxyError::BodyTimeout => "408 request body timeout\n",
            ProxyError::ClientGone => "400 client body failed\n",
            ProxyError::LimitReached => "503 every backend is at its request limit\n",
            ProxyError::Connect(_) => "502 backend connect failed\n",
            ProxyError::Reset(_) | ProxyError::Stale(_) => "502 backend reset the connection\n",
            ProxyError::BadResponse(_) | ProxyError::BadFraming(_) => {
                "502 backend sent a bad response\n"
            }
            ProxyError::Timeout => "504 backend timeout\n",
        }
    }

    /// Whether nothing reached a backend (connection refused, or a reused
    /// keep-alive connection that failed before any response byte), so that
    /// any method may be retried.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, ProxyError::Connect(_) | ProxyError::Stale(_))
    }

    /// Whether this failure says something about the backend's health
    /// (client-side failures and the stale keep-alive race do not).
    pub fn blames_backend(&self) -> bool {
        match self {
            ProxyError::Connect(_)
            | ProxyError::Reset(_)
            | ProxyError::BadResponse(_)
            | ProxyError::BadFraming(_)
            | ProxyError::Timeout => true,
            ProxyError::NoRoute
            | ProxyError::NoHealthyBackend
            | ProxyError::LimitReached
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge
            | ProxyError::HeadersTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::ClientGone
            | ProxyError::Stale(_) => false,
        }
    }

    /// Build the local answer. `close` asks the client connection to close
    /// after it (set when the request body was left unread).
    pub fn into_response(self, close: bool) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::local(self.body()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if close {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_healthy_backend_is_503_with_retry_after() {
        let resp = ProxyError::NoHealthyBackend.into_response(false);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[ERROR_HEADER], "no healthy backend");
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        assert!(resp.headers().get(CONNECTION).is_none());
    }

    #[test]
    fn close_is_requested_when_asked() {
        let resp = ProxyError::NoRoute.into_response(true);
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()[CONNECTION], "close");
        assert_eq!(resp.headers()[ERROR_HEADER], "no route");
    }

    #[test]
    fn timeout_is_504() {
        assert_eq!(ProxyError::Timeout.status(), 504);
        assert_eq!(ProxyError::Timeout.reason(), "backend timeout");
    }
}
