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
use crate::backend::{now_millis, Backend, EWMA_DECAY};

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
                let b_wins = self.cheaper(&cx.ready[b], &cx.ready[a]);
                Some(if b_wins { b } else { a })
            }
            (false, true) => Some(a),
            (true, false) => Some(b),
            (true, true) => first_untried(len, a, cx.tried),
        }
    }
}

impl P2cEwma {
    /// Whether `x` costs less than `y`, cost being the decayed peak-EWMA
    /// latency × (in flight + 1) / effective weight. Both estimates decay by
    /// `exp(-(now - t) / τ)`, so `now` cancels out of the comparison: one
    /// `exp` of the two samples' age difference, and no clock read (unless
    /// slow start needs one). A backend never measured is probed when it has
    /// nothing in flight, and waits for that probe's answer otherwise.
    fn cheaper(&self, x: &Backend, y: &Backend) -> bool {
        let (load_x, load_y) = self.loads(x, y);
        match (x.latency_sample(), y.latency_sample()) {
            (Some((ex, tx)), Some((ey, ty))) => {
                // ex·e^(tx/τ)·Lx < ey·e^(ty/τ)·Ly
                let age = f64::from(ty.wrapping_sub(tx) as i32);
                let shift = (age / EWMA_DECAY.as_millis() as f64).clamp(-600.0, 600.0);
                ex * load_x < ey * load_y * shift.exp()
            }
            (None, Some(_)) => x.active_requests() == 0,
            (Some(_), None) => y.active_requests() != 0,
            (None, None) => load_x < load_y,
        }
    }

    /// (in flight + 1) per unit of effective weight, for both.
    fn loads(&self, x: &Backend, y: &Backend) -> (f64, f64) {
        let now = if self.slow_start_ms > 0 { now_millis() } else { 0 };
        let load = |b: &Backend| {
            let weight =
                u64::from(b.weight()).max(1) * b.ramp_permille(self.slow_start_ms, now);
            (f64::from(b.active_requests()) + 1.0) / weight as f64
        };
        (load(x), load(y))
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
    fn an_unmeasured_backend_is_probed_one_request_at_a_time() {
        let ready = four();
        for b in &ready[1..] {
            b.record_latency(Duration::from_millis(5), false);
        }
        let p: P2cEwma = testing::build(&ready, &testing::settings(""), 9);
        // Idle and unmeasured: it wins every draw it is in (half of them).
        let count = shares(&p, &ready, 1_000);
        assert!((400..600).contains(&count[0]), "{count:?}");
        // A probe in flight: it waits for the answer.
        let _probe = ready[0].start_request();
        assert_eq!(shares(&p, &ready, 1_000)[0], 0);
    }

    #[test]
    fn an_old_peak_decays_against_a_fresh_sample() {
        let ready = four();
        let p: P2cEwma = testing::build(&ready, &testing::settings(""), 2);
        // 100 ms recorded 60 s before 2 ms: e^-6 · 100 ≈ 0.25 ms < 2 ms.
        ready[0].record_latency_at(Duration::from_millis(100), 1_000);
        ready[1].record_latency_at(Duration::from_millis(2), 61_000);
        assert!(p.cheaper(&ready[0], &ready[1]));
        // The same peak 5 s before: e^-0.5 · 100 ≈ 61 ms > 2 ms.
        ready[2].record_latency_at(Duration::from_millis(100), 56_000);
        assert!(!p.cheaper(&ready[2], &ready[1]));
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
