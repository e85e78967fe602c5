//! Smooth weighted round robin, lock-free.
//!
//! The schedule is computed once per table rebuild: stride scheduling over the
//! weights (reduced by their gcd), each backend placed at the midpoints of its
//! stride, yields a period in which every backend appears `weight` times,
//! spread as evenly as possible: 3:1 gives `a a b a`, the same interleaving as
//! NGINX's smooth weighted round robin. A request then costs one `fetch_add`
//! and one index.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{first_untried, mix, Build, PickContext, Policy};
use crate::backend::{now_millis, Backend};

/// Longest schedule kept; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;

/// How many times a pick may turn down a backend still ramping up
/// (`slow_start`) before it takes what it drew.
const RAMP_DRAWS: usize = 4;

#[derive(Debug)]
pub struct RoundRobin {
    /// Indices into the ready slice; empty when all weights are equal (plain rotation).
    schedule: Box<[u32]>,
    /// Shared with the next rebuild's balancer, so the rotation continues.
    next: Arc<AtomicUsize>,
    /// `slow_start` in ms (0 = off).
    slow_start_ms: u64,
}

impl RoundRobin {
    pub fn new(ready: &[Arc<Backend>], next: Arc<AtomicUsize>) -> RoundRobin {
        let weights: Vec<u64> = ready.iter().map(|b| u64::from(b.weight())).collect();
        RoundRobin {
            schedule: schedule(&weights).into_boxed_slice(),
            next,
            slow_start_ms: 0,
        }
    }

    /// The scheduled backend at position `n`.
    fn slot(&self, n: usize, len: usize) -> usize {
        if self.schedule.is_empty() {
            n % len
        } else {
            self.schedule[n % self.schedule.len()] as usize
        }
    }

    /// Slow start: a ramping backend keeps a draw with the probability of
    /// its ramp share; otherwise another scheduled slot is drawn at random,
    /// so the share it gives up spreads over the others by weight.
    fn ramped(&self, n: usize, mut choice: usize, ready: &[Arc<Backend>]) -> usize {
        let now = now_millis();
        let mut x = mix(n as u64);
        for _ in 0..RAMP_DRAWS {
            let Some(backend) = ready.get(choice) else {
                return choice;
            };
            let share = backend.ramp_permille(self.slow_start_ms, now);
            if share >= 1000 || x % 1000 < share {
                return choice;
            }
            x = mix(x);
            choice = self.slot((x >> 16) as usize, ready.len());
        }
        choice
    }
}

impl Policy for RoundRobin {
    fn build(build: &Build<'_>) -> RoundRobin {
        RoundRobin {
            slow_start_ms: build.slow_start_ms(),
            ..RoundRobin::new(build.ready, Arc::clone(build.cursor))
        }
    }

    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        let ready = cx.ready;
        if ready.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut choice = self.slot(n, ready.len());
        if self.slow_start_ms > 0 {
            choice = self.ramped(n, choice, ready);
        }
        if !cx.is_tried(choice) && choice < ready.len() {
            return Some(choice);
        }
        first_untried(ready.len(), choice + 1, cx.tried)
    }
}

/// The stride schedule for `weights`; empty means "all equal, rotate".
fn schedule(weights: &[u64]) -> Vec<u32> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return Vec::new();
    }
    let weights = fit_weights(weights);
    let total: u64 = weights.iter().sum();
    // Each entry's key is the midpoint of its next stride, (picks + ½) / weight;
    // the smallest goes next, ties to the lower index.
    let mut heap: BinaryHeap<Slot> = weights
        .iter()
        .enumerate()
        .map(|(index, &weight)| Slot {
            picks: 0,
            weight,
            index,
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while let Some(mut slot) = heap.pop() {
        if out.len() as u64 == total {
            break;
        }
        out.push(slot.index as u32);
        slot.picks += 1;
        heap.push(slot);
    }
    out
}

/// Divide by the gcd, then scale down (keeping every weight ≥ 1) so the
/// schedule stays within `MAX_SCHEDULE` entries.
fn fit_weights(weights: &[u64]) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    reduced
        .iter()
        .map(|w| (w * MAX_SCHEDULE / total).max(1))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Slot {
    picks: u64,
    weight: u64,
    index: usize,
}

impl Ord for Slot {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the earliest finish time.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        let mine = u128::from(2 * self.picks + 1) * u128::from(other.weight);
        let theirs = u128::from(2 * other.picks + 1) * u128::from(self.weight);
        theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::backend;
    use crate::balance::testing;

    fn picks(ready: &[Arc<Backend>], n: usize) -> Vec<usize> {
        let rr = RoundRobin::new(ready, Arc::default());
        (0..n)
            .map(|_| rr.pick(&PickContext::new(ready, &[])).unwrap_or(99))
            .collect()
    }

    #[test]
    fn equal_weights_rotate_evenly() {
        let ready: Vec<_> = (1..=3)
            .map(|i| backend(&format!("127.0.0.1:900{i}"), 1))
            .collect();
        assert_eq!(picks(&ready, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn three_to_one_is_interleaved_not_bursty() {
        let ready = vec![backend("127.0.0.1:9001", 3), backend("127.0.0.1:9002", 1)];
        let seq = picks(&ready, 400);
        for window in seq.windows(4) {
            assert_eq!(window.iter().filter(|&&i| i == 0).count(), 3, "{window:?}");
        }
    }

    #[test]
    fn weights_hold_their_ratio() {
        let ready = vec![
            backend("127.0.0.1:9001", 5),
            backend("127.0.0.1:9002", 3),
            backend("127.0.0.1:9003", 2),
        ];
        let seq = picks(&ready, 1000);
        let count = |i| seq.iter().filter(|&&x| x == i).count();
        assert_eq!((count(0), count(1), count(2)), (500, 300, 200));
        // Smooth: the heavy one never runs more than twice in a row here.
        assert!(seq
            .windows(3)
            .all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0)));
    }

    #[test]
    fn tried_backends_are_skipped() {
        let ready = vec![backend("127.0.0.1:9001", 1), backend("127.0.0.1:9002", 1)];
        let rr = RoundRobin::new(&ready, Arc::default());
        for _ in 0..5 {
            assert_eq!(rr.pick(&PickContext::new(&ready, &[0])), Some(1));
        }
        assert_eq!(rr.pick(&PickContext::new(&ready, &[0, 1])), None);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_fit() {
        let w = fit_weights(&[1000, 999, 1]);
        assert!(w.iter().sum::<u64>() <= 2000);
        let big: Vec<u64> = (0..70_000).map(|i| 1 + (i % 2)).collect();
        assert!(schedule(&big).len() as u64 <= MAX_SCHEDULE + 70_000);
    }

    #[test]
    fn empty_ready_picks_nothing() {
        let rr = RoundRobin::new(&[], Arc::default());
        assert_eq!(rr.pick(&PickContext::new(&[], &[])), None);
    }

    #[test]
    fn a_ramping_backend_gets_its_share_and_the_rest_spread() {
        // Seeded: the cursor starts at 7; the draws follow from it.
        let ready: Vec<_> = (1..=3)
            .map(|i| backend(&format!("127.0.0.1:900{i}"), 1))
            .collect();
        let settings = testing::settings("slow_start = \"100s\"");
        let rr: RoundRobin = testing::build(&ready, &settings, 7);
        // Two have been up for the whole window; the third just joined.
        ready[0].skip_ramp();
        ready[1].skip_ramp();
        let mut count = [0usize; 3];
        for _ in 0..30_000 {
            count[rr.pick(&PickContext::new(&ready, &[])).unwrap_or(0)] += 1;
        }
        // ~10 % of its weight: about 1/21 of the picks, far below 1/3.
        let share = count[2] as f64 / 30_000.0;
        assert!((0.02..0.09).contains(&share), "{count:?}");
        assert!(count[0].abs_diff(count[1]) < 1_500, "{count:?}");
    }
}
