//! Request ids: the `X-Request-Id` a request keeps from the client or gets here.
//!
//! A generated id is 32 lowercase hex digits: a random 64-bit prefix drawn
//! once per thread, then that thread's counter. No lock and no shared atomic
//! is touched, so workers never contend; two ids collide only if two threads
//! (of any process, anywhere) drew the same 64-bit prefix. The digits carry no
//! meaning a client may rely on (opaque).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

thread_local! {
    /// (this thread's random prefix, its next counter value)
    static NEXT: Cell<(u64, u64)> = Cell::new((random_prefix(), 0));
}

/// A random 64-bit value: std's `RandomState` keys come from the operating
/// system's generator; the thread id and the clock make each thread's draw
/// distinct even where those keys are shared.
fn random_prefix() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::hash::Hash::hash(&std::thread::current().id(), &mut hasher);
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A fresh id.
pub fn generate() -> HeaderValue {
    let (prefix, counter) = NEXT.with(|next| {
        let (prefix, counter) = next.get();
        next.set((prefix, counter.wrapping_add(1)));
        (prefix, counter)
    });
    let mut digits = [0u8; 32];
    hex(prefix, &mut digits[..16]);
    hex(counter, &mut digits[16..]);
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// The request's id: the client's (first) `X-Request-Id` when it sent a
/// non-empty one, else a generated one, inserted into `headers` so that the
/// backend sees it.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(HEADER).filter(|v| !v.is_empty()) {
        return id.clone();
    }
    let id = generate();
    headers.insert(HEADER, id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn threads_get_different_prefixes() {
        let here = generate();
        let there = std::thread::spawn(generate).join().expect("thread");
        assert_ne!(here.as_bytes()[..16], there.as_bytes()[..16]);
    }

    #[test]
    fn a_client_id_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure(&mut headers), "abc-123");
        let mut empty = HeaderMap::new();
        empty.insert(HEADER, HeaderValue::from_static(""));
        let id = ensure(&mut empty);
        assert_eq!(id.len(), 32);
        assert_eq!(empty.get(HEADER), Some(&id));
    }
}
