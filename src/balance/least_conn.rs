//! Least connections, weighted: fewest in-flight requests per unit of weight.
//!
//! Small services (up to `FULL_SCAN`) are scanned whole, starting at a rotating
//! offset so ties spread evenly; larger ones use the power of two choices
//! (Envoy's least_request), which is O(1) and nearly as good.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{first_untried, Pick};
use crate::backend::Backend;

const FULL_SCAN: usize = 16;

#[derive(Debug, Default)]
pub struct LeastConn {
    /// Rotating start for scans and the seed of the two-choice sampler;
    /// shared across rebuilds.
    next: Arc<AtomicUsize>,
}

impl LeastConn {
    pub fn new(next: Arc<AtomicUsize>) -> LeastConn {
        LeastConn { next }
    }

    /// The shared position, for the balancer that replaces this one.
    pub fn cursor(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.next)
    }
}

impl Pick for LeastConn {
    fn pick(&self, ready: &[Arc<Backend>], tried: &[usize]) -> Option<usize> {
        let len = ready.len();
        if len == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if len <= FULL_SCAN {
            return scan(ready, n % len, tried);
        }
        let (a, b) = two_choices(n, len);
        let best = match (tried.contains(&a), tried.contains(&b)) {
            (false, false) => Some(if less_loaded(&ready[b], &ready[a]) {
                b
            } else {
                a
            }),
            (false, true) => Some(a),
            (true, false) => Some(b),
            (true, true) => None,
        };
        best.or_else(|| first_untried(len, a, tried))
    }
}

/// Whole scan from `start`; the first of equally loaded backends wins.
fn scan(ready: &[Arc<Backend>], start: usize, tried: &[usize]) -> Option<usize> {
    let len = ready.len();
    let mut best: Option<usize> = None;
    for k in 0..len {
        let i = (start + k) % len;
        if tried.contains(&i) {
            continue;
        }
        best = match best {
            Some(j) if !less_loaded(&ready[i], &ready[j]) => Some(j),
            _ => Some(i),
        };
    }
    best
}

/// `a` carries less load per weight than `b` (cross-multiplied, no division).
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    u64::from(a.active_requests()) * u64::from(b.weight())
        < u64::from(b.active_requests()) * u64::from(a.weight())
}

/// Two distinct pseudo-random indices from a counter (splitmix64).
fn two_choices(n: usize, len: usize) -> (usize, usize) {
    let mut x = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let a = (x % len as u64) as usize;
    let b = (a + 1 + ((x >> 32) % (len as u64 - 1)) as usize) % len;
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::backend;

    #[test]
    fn prefers_the_idle_backend() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let lc = LeastConn::new(Arc::default());
        let _busy = ready[0].start_request();
        for _ in 0..10 {
            assert_eq!(lc.pick(&ready, &[]), Some(1));
        }
    }

    #[test]
    fn ties_rotate() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let lc = LeastConn::new(Arc::default());
        let a = lc.pick(&ready, &[]);
        let b = lc.pick(&ready, &[]);
        assert_ne!(a, b);
    }

    #[test]
    fn weight_scales_capacity() {
        let ready = vec![backend("127.0.0.1:9001", 3), backend("127.0.0.1:9002", 1)];
        let lc = LeastConn::new(Arc::default());
        let _g: Vec<_> = (0..2).map(|_| ready[0].start_request()).collect();
        let _h = ready[1].start_request();
        // 2/3 < 1/1: the heavy one still has room.
        assert_eq!(lc.pick(&ready, &[]), Some(0));
    }

    #[test]
    fn tried_is_excluded_even_if_idle() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let lc = LeastConn::new(Arc::default());
        let _busy = ready[1].start_request();
        assert_eq!(lc.pick(&ready, &[0]), Some(1));
        assert_eq!(lc.pick(&ready, &[0, 1]), None);
    }

    #[test]
    fn two_choices_are_distinct_and_in_range() {
        for n in 0..10_000 {
            let (a, b) = two_choices(n, 17);
            assert!(a < 17 && b < 17 && a != b);
        }
    }

    #[test]
    fn large_services_avoid_the_busiest() {
        let ready: Vec<_> = (0..40)
            .map(|i| backend(&format!("127.0.0.1:{}", 9000 + i), 1))
            .collect();
        let _busy: Vec<_> = (0..5).map(|_| ready[7].start_request()).collect();
        let lc = LeastConn::new(Arc::default());
        let hits = (0..2000)
            .filter(|_| lc.pick(&ready, &[]) == Some(7))
            .count();
        assert_eq!(hits, 0);
    }
}
