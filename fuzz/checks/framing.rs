//! The `framing` oracle: `RequestFraming` (src/proxy/framing.rs), the
//! request-smuggling guard, checked two ways on one input.
//!
//! 1. Split invariance: the bytes after scanning, the "rewrote" answer and
//!    the final state are the same whether the stream arrives whole, one
//!    byte at a time, or cut where the input says.
//! 2. Differential against the parser hyper runs: each request head is
//!    parsed with httparse 1.10 (hyper's default `ParserConfig`), its framing
//!    decided by a transcription of hyper 1.x `proto/h1/role.rs`
//!    (`Server::parse`), and a chunked body walked by a transcription of
//!    `proto/h1/decode.rs` (`ChunkedState`). Where that reference accepts a
//!    head, the guard must:
//!    - leave it untouched unless it carries both a `Content-Length` and a
//!      `Transfer-Encoding` line; with both, change it so that httparse
//!      rejects it (hyper then answers 400 and closes);
//!    - stop for good (`is_done`) where hyper upgrades (CONNECT, `Upgrade`
//!      on HTTP/1.1), since what follows is no longer HTTP/1, and
//!      `RequestFraming::stops_after` (which makes the proxy close such a
//!      connection unless it switched) must name exactly those heads;
//!    - leave the body untouched and be back between messages exactly where
//!      hyper's decoder ends the message.
//!
//!    Where hyper would reject the stream (a head httparse refuses, framing
//!    hyper refuses, a malformed chunk) it closes the connection, so nothing
//!    after that point is compared.
//!
//! Input layout: byte 0 = number of cuts (low 3 bits), then one byte per cut
//! (the distance from the previous cut), then the stream.
//!
//! Shared by `fuzz/fuzz_targets/framing.rs` and `tests/fuzz_regressions.rs`.

use switchyard::proxy::framing::RequestFraming;

/// hyper's default `max_headers`; a head with more is refused.
const MAX_HEADERS: usize = 100;
/// hyper's `MAX_URI_LEN`.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// hyper's `DecodedLength::MAX_LEN`.
const MAX_LEN: u64 = u64::MAX - 2;

/// Panics when the guard breaks one of its properties on `data`.
pub fn check(data: &[u8]) {
    let Some((&ncuts, rest)) = data.split_first() else {
        return;
    };
    let ncuts = usize::from(ncuts & 7).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(ncuts);
    let mut cuts = Vec::with_capacity(ncuts);
    let mut at = 0usize;
    for &step in cut_bytes {
        at = (at + usize::from(step)).min(stream.len());
        cuts.push(at);
    }

    let whole = scan(stream, &[]);
    let split = scan(stream, &cuts);
    let ones: Vec<usize> = (1..stream.len()).collect();
    let bytewise = scan(stream, &ones);
    assert_eq!(
        whole, split,
        "result depends on the read boundaries {cuts:?}"
    );
    assert_eq!(
        whole, bytewise,
        "result differs when fed one byte at a time"
    );

    differential(stream, &whole.bytes);
}

/// What scanning a stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    bytes: Vec<u8>,
    rewrote: bool,
    done: bool,
    in_head: bool,
    between: bool,
}

/// Scan `stream` in pieces ending at each of `cuts` (non-decreasing), then
/// the rest.
fn scan(stream: &[u8], cuts: &[usize]) -> Scanned {
    let mut bytes = stream.to_vec();
    let mut guard = RequestFraming::new();
    let mut rewrote = false;
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        let end = end.max(start);
        rewrote |= guard.scan(&mut bytes[start..end]);
        start = end;
    }
    Scanned {
        bytes,
        rewrote,
        done: guard.is_done(),
        in_head: guard.in_head(),
        between: guard.at_message_boundary(),
    }
}

/// How hyper frames the body of an accepted head.
#[derive(Debug)]
enum Framing {
    /// Hyper upgrades the connection (or tunnels, for CONNECT).
    Upgrade,
    Length(u64),
    Chunked,
}

/// Walk the messages of `stream` as hyper would and compare with `out`,
/// what the guard made of it.
pub fn differential(stream: &[u8], out: &[u8]) {
    assert_eq!(stream.len(), out.len());
    let mut guard = RequestFraming::new();
    let mut pos = 0;
    while pos < stream.len() {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&stream[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            // Incomplete: nothing more to compare. Refused: hyper closes.
            Ok(httparse::Status::Partial) | Err(_) => return,
        };
        let head_end = pos + head_len;
        let conflict = has(req.headers, "content-length") && has(req.headers, "transfer-encoding");
        if conflict {
            assert_ne!(
                &out[pos..head_end],
                &stream[pos..head_end],
                "a head with both Content-Length and Transfer-Encoding at {pos} was not broken"
            );
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut broken = httparse::Request::new(&mut headers);
            let parsed = broken.parse(&out[pos..]);
            assert!(
                parsed.is_err(),
                "httparse still accepts the broken head at {pos}: {parsed:?}"
            );
            return;
        }
        assert_eq!(
            String::from_utf8_lossy(&out[pos..head_end]),
            String::from_utf8_lossy(&stream[pos..head_end]),
            "a valid head without a framing conflict at {pos} was changed"
        );
        let Some(framing) = hyper_framing(&req) else {
            return;
        };
        // The proxy closes the connection after the answer to exactly the
        // heads the guard stops at (unless the protocol switches).
        assert_eq!(
            stops_after(&req),
            matches!(framing, Framing::Upgrade),
            "RequestFraming::stops_after disagrees with hyper on the head at {pos}"
        );
        let end = match framing {
            Framing::Upgrade => {
                feed(&mut guard, &stream[pos..head_end]);
                assert!(
                    guard.is_done(),
                    "the guard goes on past an upgrade at {pos}"
                );
                return;
            }
            Framing::Length(n) => match usize::try_from(n)
                .ok()
                .and_then(|n| head_end.checked_add(n))
            {
                Some(end) if end <= stream.len() => end,
                _ => stream.len(),
            },
            Framing::Chunked => match chunked_end(&stream[head_end..]) {
                Chunked::End(n) => head_end + n,
                Chunked::Incomplete => stream.len(),
                // hyper's decoder fails: the connection closes.
                Chunked::Invalid(n) => {
                    let bad = head_end + n;
                    assert_eq!(
                        &out[head_end..bad],
                        &stream[head_end..bad],
                        "a chunked body was changed before its first error at {bad}"
                    );
                    return;
                }
            },
        };
        assert_eq!(
            &out[head_end..end],
            &stream[head_end..end],
            "the body of the message at {pos} was changed"
        );
        feed(&mut guard, &stream[pos..end]);
        if end == stream.len() && !guard.at_message_boundary() {
            // The body is still arriving.
            assert!(!guard.is_done(), "the guard stopped inside a body at {pos}");
            return;
        }
        assert!(
            !guard.is_done(),
            "the guard stopped after the message at {pos}..{end}, which hyper accepts"
        );
        assert!(
            guard.at_message_boundary(),
            "the guard does not end the message at {pos} where hyper does ({end})"
        );
        pos = end;
    }
}

/// `RequestFraming::stops_after` on the head as hyper hands it to the
/// service (names only; values do not matter to it).
fn stops_after(req: &httparse::Request<'_, '_>) -> bool {
    let method = req
        .method
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(http::Method::GET);
    let version = match req.version {
        Some(1) => http::Version::HTTP_11,
        _ => http::Version::HTTP_10,
    };
    let mut headers = http::HeaderMap::new();
    for h in req.headers.iter() {
        if let Ok(name) = http::HeaderName::from_bytes(h.name.as_bytes()) {
            headers.append(name, http::HeaderValue::from_static(""));
        }
    }
    RequestFraming::stops_after(&method, version, &headers)
}

fn feed(guard: &mut RequestFraming, bytes: &[u8]) {
    let mut copy = bytes.to_vec();
    guard.scan(&mut copy);
}

fn has(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// hyper 1.x `Server::parse` after httparse: `None` when hyper refuses
/// the head (400) — only for heads without a CL/TE conflict.
fn hyper_framing(req: &httparse::Request<'_, '_>) -> Option<Framing> {
    let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
    let path = req.path?;
    if path.len() > MAX_URI_LEN {
        return None;
    }
    http::Uri::try_from(path.as_bytes()).ok()?;
    let http11 = req.version? == 1;
    let mut upgrade = method == http::Method::CONNECT;
    let mut te = None::<bool>;
    let mut cl = None::<u64>;
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == http::header::TRANSFER_ENCODING {
            if !http11 {
                return None;
            }
            te = Some(is_chunked(h.value));
        } else if name == http::header::CONTENT_LENGTH {
            let len = from_digits(h.value)?;
            match cl {
                Some(prev) if prev != len => return None,
                Some(_) => {}
                None if len > MAX_LEN => return None,
                None => cl = Some(len),
            }
        } else if name == http::header::UPGRADE {
            upgrade = http11;
        }
    }
    if te == Some(false) {
        return None;
    }
    Some(if upgrade {
        Framing::Upgrade
    } else if te == Some(true) {
        Framing::Chunked
    } else {
        Framing::Length(cl.unwrap_or(0))
    })
}

/// hyper's `headers::is_chunked_`: visible ASCII only, last coding `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    let Ok(value) = http::HeaderValue::from_bytes(value) else {
        return false;
    };
    match value.to_str() {
        Ok(s) => s
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")),
        Err(_) => false,
    }
}

/// hyper's `headers::from_digits`: digits only, no sign, no overflow.
fn from_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| match b {
        b'0'..=b'9' => acc.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Where hyper's chunked decoder ends a body.
enum Chunked {
    /// Length of the whole body, final CRLF included.
    End(usize),
    Incomplete,
    /// hyper fails at this offset.
    Invalid(usize),
}

/// hyper 1.x `ChunkedState`, byte for byte (its size limits on extensions
/// and trailers close the connection and are left out).
fn chunked_end(body: &[u8]) -> Chunked {
    #[derive(Clone, Copy)]
    enum S {
        Start,
        Size,
        SizeLws,
        Extension,
        SizeLf,
        Body(u64),
        BodyCr,
        BodyLf,
        EndCr,
        Trailer,
        TrailerLf,
        EndLf,
    }
    let mut state = S::Start;
    let mut size = 0u64;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        state = match state {
            S::Body(rem) => {
                let avail = (body.len() - i) as u64;
                if rem > avail {
                    return Chunked::Incomplete;
                }
                // rem <= avail, so it fits in usize.
                i += rem as usize;
                size = 0;
                state = S::BodyCr;
                continue;
            }
            S::Start | S::Size => {
                let digit = (b as char).to_digit(16).map(u64::from);
                match (state, digit, b) {
                    (_, Some(d), _) => match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                        Some(s) => {
                            size = s;
                            S::Size
                        }
                        None => return Chunked::Invalid(i),
                    },
                    (S::Size, None, b'\t' | b' ') => S::SizeLws,
                    (S::Size, None, b';') => S::Extension,
                    (S::Size, None, b'\r') => S::SizeLf,
                    _ => return Chunked::Invalid(i),
                }
            }
            S::SizeLws => match b {
                b'\t' | b' ' => S::SizeLws,
                b';' => S::Extension,
                b'\r' => S::SizeLf,
                _ => return Chunked::Invalid(i),
            },
            S::Extension => match b {
                b'\r' => S::SizeLf,
                b'\n' => return Chunked::Invalid(i),
                _ => S::Extension,
            },
            S::SizeLf => match (b, size) {
                (b'\n', 0) => S::EndCr,
                (b'\n', n) => S::Body(n),
                _ => return Chunked::Invalid(i),
            },
            S::BodyCr if b == b'\r' => S::BodyLf,
            S::BodyLf if b == b'\n' => S::Start,
            S::BodyCr | S::BodyLf => return Chunked::Invalid(i),
            S::EndCr => match b {
                b'\r' => S::EndLf,
                _ => S::Trailer,
            },
            S::Trailer => match b {
                b'\r' => S::TrailerLf,
                _ => S::Trailer,
            },
            S::TrailerLf => match b {
                b'\n' => S::EndCr,
                _ => return Chunked::Invalid(i),
            },
            S::EndLf => match b {
                b'\n' => return Chunked::End(i + 1),
                _ => return Chunked::Invalid(i),
            },
        };
        i += 1;
    }
    Chunked::Incomplete
}
