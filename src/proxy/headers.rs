//! Header rules of the request path (pure; no I/O).
//!
//! Hop-by-hop headers go first: `Connection` and every header it names,
//! `Keep-Alive`, `Proxy-Connection`, `TE` (unless it is exactly `trailers`),
//! `Transfer-Encoding`, and `Upgrade` unless the request is an upgrade. Then
//! `X-Forwarded-For` is replaced by the peer's address, or appended to when
//! the peer is a trusted proxy; `X-Forwarded-Proto` and `X-Forwarded-Host` are
//! set (kept as sent by a trusted proxy). `Host` passes through untouched.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::Version;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Everything the forwarding headers need to know about the client side.
#[derive(Debug, Clone)]
pub struct Forwarded<'a> {
    /// The peer's IP, pre-rendered once per connection.
    pub peer_ip: &'a HeaderValue,
    /// Whether the peer is in `trusted_proxies`.
    pub trusted: bool,
    /// `http` or `https`.
    pub proto: &'static HeaderValue,
    /// The request's authority when it came without a `Host` header (HTTP/2).
    pub authority: Option<&'a str>,
}

/// Refuse what HTTP/1.1 forbids (RFC 9112 §6.3, §3.2): both Content-Length
/// and Transfer-Encoding, a Transfer-Encoding other than exactly `chunked`,
/// differing Content-Lengths, a missing (HTTP/1.1) or doubled Host. HTTP/2
/// frames its own bodies and carries `:authority`, so only HTTP/1 is checked.
pub fn check_framing(version: Version, headers: &HeaderMap) -> Result<(), &'static str> {
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return Ok(());
    }
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("more than one Host header"),
        (None, _) if version == Version::HTTP_11 => return Err("missing Host header"),
        _ => {}
    }
    let found = Names::scan(headers);
    if found.has(Names::TRANSFER_ENCODING) {
        let mut te = headers.get_all(TRANSFER_ENCODING).iter();
        if let Some(first) = te.next() {
            if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err("Transfer-Encoding other than chunked");
            }
            if found.has(Names::CONTENT_LENGTH) {
                return Err("both Content-Length and Transfer-Encoding");
            }
        }
    }
    if found.has(Names::CONTENT_LENGTH) {
        let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            if lengths.any(|v| v != first) {
                return Err("differing Content-Length headers");
            }
        }
    }
    Ok(())
}

/// Refuse a backend answer whose length is ambiguous: both Content-Length
/// and Transfer-Encoding (hyper's client decodes it as chunked; forwarding it
/// would let the two ends disagree on where the body stops).
pub fn check_response_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let found = Names::scan(headers);
    if found.has(Names::TRANSFER_ENCODING) && found.has(Names::CONTENT_LENGTH) {
        return Err("both Content-Length and Transfer-Encoding");
    }
    Ok(())
}

/// The size of a request head as sent (request line and header lines), for
/// `max_header_bytes` below hyper's own 8 KiB floor.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// Whether this HTTP/1.1 request asks for a protocol upgrade (WebSocket...).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

/// Rewrite request headers for the backend.
pub fn prepare_request(headers: &mut HeaderMap, fwd: &Forwarded<'_>, upgrade: bool) {
    let found = Names::scan(headers);
    let te_trailers = found.has(Names::TE)
        && headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade_value = if upgrade {
        headers.remove(UPGRADE)
    } else {
        None
    };
    strip_hop_by_hop(headers, found);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(value) = upgrade_value {
        headers.insert(UPGRADE, value);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(authority) = fwd.authority {
        if !headers.contains_key(HOST) {
            if let Ok(value) = HeaderValue::from_str(authority) {
                headers.insert(HOST, value);
            }
        }
    }
    set_forwarded(headers, fwd);
}

/// Rewrite response headers for the client. `upgrade`: a 101 keeps its
/// `Upgrade` and `Connection: upgrade`.
pub fn prepare_response(headers: &mut HeaderMap, upgrade: bool) {
    let found = Names::scan(headers);
    let upgrade_value = if upgrade && found.has(Names::UPGRADE) {
        headers.remove(UPGRADE)
    } else {
        None
    };
    strip_hop_by_hop(headers, found);
    if let Some(value) = upgrade_value {
        headers.insert(UPGRADE, value);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Which of the names these rules look at a header map holds, found in one
/// walk over its names. A request or a response carries a handful of
/// fields, and comparing each name with a few constants costs less than
/// hashing every name the rules ask about (a dozen lookups per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Names(u8);

impl Names {
    const CONNECTION: u8 = 1;
    const KEEP_ALIVE: u8 = 1 << 1;
    const PROXY_CONNECTION: u8 = 1 << 2;
    const TE: u8 = 1 << 3;
    const TRANSFER_ENCODING: u8 = 1 << 4;
    const UPGRADE: u8 = 1 << 5;
    const CONTENT_LENGTH: u8 = 1 << 6;
    /// The hop-by-hop ones, removed whenever present.
    const HOP_BY_HOP: [(u8, &'static HeaderName); 5] = [
        (Names::KEEP_ALIVE, &KEEP_ALIVE),
        (Names::PROXY_CONNECTION, &PROXY_CONNECTION),
        (Names::TE, &TE),
        (Names::TRANSFER_ENCODING, &TRANSFER_ENCODING),
        (Names::UPGRADE, &UPGRADE),
    ];
    /// Every name looked for: the hop-by-hop ones, `Connection` and
    /// `Content-Length`.
    const LOOKED_FOR: [(u8, &'static HeaderName); 7] = [
        (Names::CONNECTION, &CONNECTION),
        (Names::CONTENT_LENGTH, &CONTENT_LENGTH),
        Names::HOP_BY_HOP[0],
        Names::HOP_BY_HOP[1],
        Names::HOP_BY_HOP[2],
        Names::HOP_BY_HOP[3],
        Names::HOP_BY_HOP[4],
    ];

    fn scan(headers: &HeaderMap) -> Names {
        let found = headers.keys().fold(0, |found, name| {
            let bit = Names::LOOKED_FOR
                .iter()
                .find(|(_, known)| name == *known)
                .map_or(0, |&(bit, _)| bit);
            found | bit
        });
        Names(found)
    }

    fn has(self, name: u8) -> bool {
        self.0 & name != 0
    }
}

/// Remove the hop-by-hop headers `found` says are there, and every header
/// `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap, found: Names) {
    if found.has(Names::CONNECTION) {
        // Collect first: the names live in values of the map being changed.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for (bit, name) in Names::HOP_BY_HOP {
        if found.has(bit) {
            headers.remove(name);
        }
    }
}

fn set_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let existing_xff = if fwd.trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let xff = match existing_xff {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(fwd.peer_ip.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or_else(|_| fwd.peer_ip.clone())
        }
        None => fwd.peer_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !(fwd.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), fwd.proto.clone());
    }
    if !(fwd.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        let host = headers
            .get(HOST)
            .cloned()
            .or_else(|| fwd.authority.and_then(|a| HeaderValue::from_str(a).ok()));
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
}

/// All values of `name` joined with ", " (a header may be sent several times).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let mut out = values.next()?.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

/// Whether a comma-separated header value contains `token` (any case).
pub fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    static HTTP: HeaderValue = HeaderValue::from_static("http");

    fn fwd(peer: &HeaderValue, trusted: bool) -> Forwarded<'_> {
        Forwarded {
            peer_ip: peer,
            trusted,
            proto: &HTTP,
            authority: None,
        }
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[
            ("host", "example.com"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        prepare_request(&mut h, &fwd(&peer, false), false);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be gone");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["host"], "example.com");
    }

    #[test]
    fn te_trailers_is_kept() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[("te", "trailers")]);
        prepare_request(&mut h, &fwd(&peer, false), false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn untrusted_xff_is_replaced() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[
            ("host", "a.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        prepare_request(&mut h, &fwd(&peer, false), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn trusted_xff_is_appended_to() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
        ]);
        prepare_request(&mut h, &fwd(&peer, true), false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn upgrade_requests_keep_upgrade() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        prepare_request(&mut h, &fwd(&peer, false), true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let mut f = fwd(&peer, false);
        f.authority = Some("h2.example:8443");
        let mut h = HeaderMap::new();
        prepare_request(&mut h, &f, false);
        assert_eq!(h["host"], "h2.example:8443");
        assert_eq!(h["x-forwarded-host"], "h2.example:8443");
    }

    #[test]
    fn ambiguous_response_framing_is_refused() {
        let both = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        assert!(check_response_framing(&both).is_err());
        assert!(check_response_framing(&map(&[("content-length", "5")])).is_ok());
        assert!(check_response_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
    }

    #[test]
    fn framing_rules() {
        let v11 = Version::HTTP_11;
        assert!(check_framing(v11, &map(&[("host", "a")])).is_ok());
        assert!(check_framing(v11, &map(&[])).is_err());
        assert!(check_framing(Version::HTTP_10, &map(&[])).is_ok());
        assert!(check_framing(Version::HTTP_2, &map(&[])).is_ok());
        assert!(check_framing(v11, &map(&[("host", "a"), ("host", "b")])).is_err());
        let te = |v| map(&[("host", "a"), ("transfer-encoding", v)]);
        assert!(check_framing(v11, &te("chunked")).is_ok());
        assert!(check_framing(v11, &te("Chunked")).is_ok());
        assert!(check_framing(v11, &te("gzip, chunked")).is_err());
        let both = map(&[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
        ]);
        assert!(check_framing(v11, &both).is_err());
        let cls = map(&[
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "4"),
        ]);
        assert!(check_framing(v11, &cls).is_err());
    }

    #[test]
    fn response_hop_by_hop_is_removed() {
        let mut h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]);
        prepare_response(&mut h, false);
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h["content-type"], "text/plain");
    }
}
