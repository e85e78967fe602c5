//! The request key of `balance = "hash"` (`hash_key`), read from a request
//! and hashed for the ring. Nothing is allocated: header, cookie and query
//! values are hashed where they lie.

use http::header::COOKIE;
use http::{HeaderMap, Uri};

use super::hash::hash_bytes;
use crate::config::HashKey;

/// What a key can be read from.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    /// The connection's peer address, as text.
    pub client_ip: &'a [u8],
}

/// The hashed key of `spec` in the request; `None` when the request does
/// not carry it (or carries it empty): then it is balanced round robin.
pub fn request_key(spec: &HashKey, parts: &RequestParts<'_>) -> Option<u64> {
    let value: &[u8] = match spec {
        HashKey::Header(name) => parts.headers.get(name)?.as_bytes(),
        HashKey::Cookie(name) => cookie(parts.headers, name)?.as_bytes(),
        HashKey::Query(name) => query_param(parts.uri.query()?, name)?.as_bytes(),
        HashKey::ClientIp => parts.client_ip,
        HashKey::Path => parts.uri.path().as_bytes(),
    };
    (!value.is_empty()).then(|| hash_bytes(&[value]))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The first value of query parameter `name`, as sent.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parts<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> RequestParts<'a> {
        RequestParts {
            headers,
            uri,
            client_ip: b"10.0.0.1",
        }
    }

    #[test]
    fn each_kind_of_key_is_read() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("42"));
        headers.append(COOKIE, HeaderValue::from_static("a=1; sid=abc"));
        let uri: Uri = "/p/q?x=1&user=7&user=8".parse().unwrap_or_default();
        let p = parts(&headers, &uri);
        let h = |b: &str| Some(hash_bytes(&[b.as_bytes()]));
        let header = HashKey::Header(http::header::HeaderName::from_static("x-user-id"));
        assert_eq!(request_key(&header, &p), h("42"));
        assert_eq!(request_key(&HashKey::Cookie("sid".into()), &p), h("abc"));
        assert_eq!(request_key(&HashKey::Query("user".into()), &p), h("7"));
        assert_eq!(request_key(&HashKey::Path, &p), h("/p/q"));
        assert_eq!(request_key(&HashKey::ClientIp, &p), h("10.0.0.1"));
        assert_eq!(request_key(&HashKey::Cookie("none".into()), &p), None);
        assert_eq!(request_key(&HashKey::Query("y".into()), &p), None);
    }
}
