//! Least connections, weighted: fewest in-flight requests per unit of weight.
//!
//! Small services (up to `FULL_SCAN`) are scanned whole, starting at a rotating
//! offset so ties spread evenly; larger ones use the power of two choices
//! (Envoy's least_request), which is O(1) and nearly as good. With
//! `slow_start`, a ramping backend's weight counts at its ramp share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{first_untried, mix, two_choices, Build, PickContext, Policy};
use crate::backend::{now_millis, Backend};

const FULL_SCAN: usize = 16;

#[derive(Debug, Default)]
pub struct LeastConn {
    /// Rotating start for scans and the seed of the two-choice sampler;
    /// shared across rebuilds.
    next: Arc<AtomicUsize>,
    /// `slow_start` in ms (0 = off).
    slow_start_ms: u64,
}

impl Policy for LeastConn {
    fn build(build: &Build<'_>) -> LeastConn {
        LeastConn {
            next: Arc::clone(build.cursor),
            slow_start_ms: build.slow_start_ms(),
        }
    }

    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        let ready = cx.ready;
        let len = ready.len();
        if len == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let weigh = Weigh {
            slow_start_ms: self.slow_start_ms,
            now: if self.slow_start_ms > 0 {
                now_millis()
            } else {
                0
            },
        };
        if len <= FULL_SCAN {
            return scan(ready, n % len, cx.tried, weigh);
        }
        let (a, b) = two_choices(mix(n as u64), len);
        let best = match (cx.is_tried(a), cx.is_tried(b)) {
            (false, false) => Some(if weigh.less_loaded(&ready[b], &ready[a]) {
                b
            } else {
                a
            }),
            (false, true) => Some(a),
            (true, false) => Some(b),
            (true, true) => None,
        };
        best.or_else(|| first_untried(len, a, cx.tried))
    }
}

/// How a backend's weight counts now.
#[derive(Debug, Clone, Copy)]
struct Weigh {
    slow_start_ms: u64,
    now: u64,
}

impl Weigh {
    /// Weight in thousandths, scaled by the slow-start ramp.
    fn weight(self, b: &Backend) -> u64 {
        u64::from(b.weight()) * b.ramp_permille(self.slow_start_ms, self.now)
    }

    /// `a` carries less load per weight than `b` (cross-multiplied, no division).
    fn less_loaded(self, a: &Backend, b: &Backend) -> bool {
        u64::from(a.active_requests()) * self.weight(b)
            < u64::from(b.active_requests()) * self.weight(a)
    }
}

/// Whole scan from `start`; the first of equally loaded backends wins.
fn scan(ready: &[Arc<Backend>], start: usize, tried: &[usize], weigh: Weigh) -> Option<usize> {
    let len = ready.len();
    let mut best: Option<usize> = None;
    for k in 0..len {
        let i = (start + k) % len;
        if tried.contains(&i) {
            continue;
        }
        best = match best {
            Some(j) if !weigh.less_loaded(&ready[i], &ready[j]) => Some(j),
            _ => Some(i),
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::backend;
    use crate::balance::testing;

    fn lc(ready: &[Arc<Backend>]) -> LeastConn {
        testing::build(ready, &testing::settings(""), 0)
    }

    fn pick(p: &LeastConn, ready: &[Arc<Backend>], tried: &[usize]) -> Option<usize> {
        p.pick(&PickContext::new(ready, tried))
    }

    #[test]
    fn prefers_the_idle_backend() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let lc = lc(&ready);
        let _busy = ready[0].start_request();
        for _ in 0..10 {
            assert_eq!(pick(&lc, &ready, &[]), Some(1));
        }
    }

    #[test]
    fn ties_rotate() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let lc = lc(&ready);
        let a = pick(&lc, &ready, &[]);
        let b = pick(&lc, &ready, &[]);
        assert_ne!(a, b);
    }

    #[test]
    fn weight_scales_capacity() {
        let ready = vec![backend("127.0.0.1:9001", 3), backend("127.0.0.1:9002", 1)];
        let lc = lc(&ready);
        let _g: Vec<_> = (0..2).map(|_| ready[0].start_request()).collect();
        let _h = ready[1].start_request();
        // 2/3 < 1/1: the heavy one still has room.
        assert_eq!(pick(&lc, &ready, &[]), Some(0));
    }

    #[test]
    fn tried_is_excluded_even_if_idle() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let lc = lc(&ready);
        let _busy = ready[1].start_request();
        assert_eq!(pick(&lc, &ready, &[0]), Some(1));
        assert_eq!(pick(&lc, &ready, &[0, 1]), None);
    }

    #[test]
    fn large_services_avoid_the_busiest() {
        let ready: Vec<_> = (0..40)
            .map(|i| backend(&format!("127.0.0.1:{}", 9000 + i), 1))
            .collect();
        let _busy: Vec<_> = (0..5).map(|_| ready[7].start_request()).collect();
        let lc = lc(&ready);
        let hits = (0..2000)
            .filter(|_| pick(&lc, &ready, &[]) == Some(7))
            .count();
        assert_eq!(hits, 0);
    }

    #[test]
    fn a_ramping_backend_counts_at_its_share() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let settings = testing::settings("slow_start = \"100s\"");
        let lc: LeastConn = testing::build(&ready, &settings, 3);
        ready[0].skip_ramp();
        // 3 in flight on the warm one, 1 on the cold one (at ~10 % weight):
        // 3/1 < 1/0.1, so the warm one still takes the next request.
        let _warm: Vec<_> = (0..3).map(|_| ready[0].start_request()).collect();
        let _cold = ready[1].start_request();
        assert_eq!(pick(&lc, &ready, &[]), Some(0));
    }
}
