//! Cookie session affinity (`[services.NAME.sticky]`), with any policy.
//!
//! The cookie's value is a token derived from the backend's identity (its
//! source and id) by a stable hash, written as 16 hex digits: it names the
//! backend opaquely — never its address — and every node of a cluster
//! derives the same token. A [`StickyIndex`] is built beside the balancer at
//! every rebuild and maps a token back to an index into the ready slice, so
//! a draining, unready or removed backend is simply not found and the
//! request is balanced normally (the cookie is then set again).

use std::sync::Arc;

use http::HeaderValue;

use super::hash::hash_bytes;
use crate::backend::Backend;
use crate::config::StickyConfig;

/// Tokens of the ready backends, sorted, for a binary search.
#[derive(Debug, Default)]
pub struct StickyIndex {
    tokens: Box<[(u64, u32)]>,
}

impl StickyIndex {
    pub fn new(ready: &[Arc<Backend>]) -> StickyIndex {
        let mut tokens: Vec<(u64, u32)> = ready
            .iter()
            .enumerate()
            .map(|(i, b)| (token(b), i as u32))
            .collect();
        tokens.sort_unstable();
        StickyIndex {
            tokens: tokens.into_boxed_slice(),
        }
    }

    /// The ready index a cookie value names, if it names a ready backend.
    pub fn find(&self, cookie: &str) -> Option<usize> {
        self.find_token(parse_token(cookie)?)
    }

    /// The ready index of the backend whose token is `token`.
    pub fn find_token(&self, token: u64) -> Option<usize> {
        let at = self.tokens.binary_search_by_key(&token, |&(t, _)| t).ok()?;
        Some(self.tokens[at].1 as usize)
    }
}

/// The opaque token of `backend`.
pub fn token(backend: &Backend) -> u64 {
    hash_bytes(&[
        b"sticky\0",
        backend.source.as_str().as_bytes(),
        b"\0",
        backend.id.as_bytes(),
    ])
}

/// The token a cookie value carries (16 hex digits), if it is one.
pub fn parse_token(cookie: &str) -> Option<u64> {
    if cookie.len() != 16 {
        return None;
    }
    u64::from_str_radix(cookie, 16).ok()
}

/// Whether the cookie's token already names `backend`.
pub fn names(cookie: Option<u64>, backend: &Backend) -> bool {
    cookie == Some(token(backend))
}

/// The `Set-Cookie` header that sticks the client to `backend`.
pub fn set_cookie(config: &StickyConfig, backend: &Backend) -> HeaderValue {
    let mut value = format!(
        "{}={:016x}; Path={}",
        config.cookie,
        token(backend),
        config.path
    );
    if !config.ttl.is_zero() {
        value.push_str(&format!("; Max-Age={}", config.ttl.as_secs().max(1)));
    }
    if config.secure {
        value.push_str("; Secure");
    }
    if config.http_only {
        value.push_str("; HttpOnly");
    }
    // Name, path and token are checked tokens; this cannot fail, but a
    // missing cookie is better than a panic.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::backend;

    #[test]
    fn a_cookie_finds_its_backend_and_hides_the_address() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let index = StickyIndex::new(&ready);
        let config = StickyConfig {
            cookie: "sy".into(),
            ttl: std::time::Duration::from_secs(60),
            path: "/".into(),
            secure: true,
            http_only: true,
        };
        let header = set_cookie(&config, &ready[1]);
        let text = header.to_str().unwrap_or("");
        assert!(
            !text.contains("9002") && !text.contains("127.0.0.1"),
            "{text}"
        );
        assert!(
            text.ends_with("; Path=/; Max-Age=60; Secure; HttpOnly"),
            "{text}"
        );
        let value = text
            .strip_prefix("sy=")
            .and_then(|t| t.split(';').next())
            .unwrap_or("");
        assert_eq!(index.find(value), Some(1));
        assert!(names(parse_token(value), &ready[1]));
        assert_eq!(index.find("0123456789abcdef"), None);
        assert_eq!(index.find("garbage"), None);
        // Gone from the ready set: not found.
        assert_eq!(StickyIndex::new(&ready[..1]).find(value), None);
    }
}
