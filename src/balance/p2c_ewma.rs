//! Power of two choices over peak-EWMA latency (Finagle, Linkerd).
//!
//! Each pick draws two distinct ready backends at random and takes the one
//! with the lower cost: its peak-EWMA latency (recorded by the request path
//! where each attempt ends, a failed attempt counting as at least
//! [`FAILURE_LATENCY`](crate::backend::FAILURE_LATENCY)) times its requests
//! in flight plus one, per unit of weight (and of slow-start share). The
//! estimate decays with [`EWMA_DECAY`](crate::backend::EWMA_DECAY), so a
//! backend that was slow is tried again once it has had time to recover.
//! O(1) per pick whatever the service's size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{first_untried, mix, two_choices, Build, PickContext, Policy};
use crate::backend::{now_millis, Backend};

/// The latency a backend is assumed to have at least (ns): one never
/// measured, or measured very fast, still has its load count.
const LATENCY_FLOOR_NS: f64 = 100_000.0;

#[derive(Debug)]
pub struct P2cEwma {
    /// The sampler's sequence, shared across rebuilds.
    next: Arc<AtomicUsize>,
    /// `slow_start` in ms (0 = off).
    slow_start_ms: u64,
}

impl Policy for P2cEwma {
    fn build(build: &Build<'_>) -> P2cEwma {
        P2cEwma {
            next: Arc::clone(build.cursor),
            slow_start_ms: build.slow_start_ms(),
        }
    }

    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        let len = cx.ready.len();
        if len < 2 {
            return first_untried(len, 0, cx.tried);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (a, b) = two_choices(mix(n as u64), len);
        match (cx.is_tried(a), cx.is_tried(b)) {
            (false, false) => {
                let now = now_millis();
                let cheaper = self.cost(&cx.ready[b], now) < self.cost(&cx.ready[a], now);
                Some(if cheaper { b } else { a })
            }
            (false, true) => Some(a),
            (true, false) => Some(b),
            (true, true) => first_untried(len, a, cx.tried),
        }
    }
}

impl P2cEwma {
    /// Latency × (in flight + 1) / effective weight.
    fn cost(&self, backend: &Backend, now: u64) -> f64 {
        let latency = backend.latency_ns(now).max(LATENCY_FLOOR_NS);
        let load = f64::from(backend.active_requests()) + 1.0;
        let weight = u64::from(backend.weight()).max(1)
            * backend.ramp_permille(self.slow_start_ms, now);
        latency * load / weight as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::testing::backend;
    use crate::balance::testing;

    fn four() -> Vec<Arc<Backend>> {
        (1..=4)
            .map(|i| backend(&format!("127.0.0.1:900{i}"), 1))
            .collect()
    }

    fn shares(p: &P2cEwma, ready: &[Arc<Backend>], picks: usize) -> Vec<usize> {
        let mut count = vec![0; ready.len()];
        for _ in 0..picks {
            if let Some(i) = p.pick(&PickContext::new(ready, &[])) {
                count[i] += 1;
            }
        }
        count
    }

    #[test]
    fn a_slow_backend_gets_a_small_share() {
        let ready = four();
        for (i, b) in ready.iter().enumerate() {
            let ms = if i == 2 { 100 } else { 1 };
            b.record_latency(Duration::from_millis(ms), false);
        }
        let p: P2cEwma = testing::build(&ready, &testing::settings(""), 11);
        let count = shares(&p, &ready, 4_000);
        assert!(count[2] < 40, "{count:?}");
        assert!(count.iter().enumerate().all(|(i, &c)| i == 2 || c > 900));
    }

    #[test]
    fn a_failed_attempt_counts_as_slow() {
        let ready = four();
        for b in &ready {
            b.record_latency(Duration::from_millis(2), false);
        }
        ready[0].record_latency(Duration::from_millis(1), true);
        let p: P2cEwma = testing::build(&ready, &testing::settings(""), 5);
        let count = shares(&p, &ready, 2_000);
        assert!(count[0] < 20, "{count:?}");
    }

    #[test]
    fn load_counts_when_latencies_are_equal() {
        let ready = four();
        for b in &ready {
            b.record_latency(Duration::from_millis(5), false);
        }
        let _busy: Vec<_> = (0..10).map(|_| ready[1].start_request()).collect();
        let p: P2cEwma = testing::build(&ready, &testing::settings(""), 1);
        let count = shares(&p, &ready, 2_000);
        assert_eq!(count[1], 0, "{count:?}");
    }

    #[test]
    fn tried_backends_are_never_picked() {
        let ready = four();
        let p: P2cEwma = testing::build(&ready, &testing::settings(""), 0);
        for _ in 0..200 {
            let pick = p.pick(&PickContext::new(&ready, &[0, 2, 3]));
            assert_eq!(pick, Some(1));
        }
        assert_eq!(p.pick(&PickContext::new(&ready, &[0, 1, 2, 3])), None);
    }
}
