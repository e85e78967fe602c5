//! Consistent hashing of a request key on a weighted ring, with bounded load.
//!
//! Why a ring (Karger et al.; Envoy's `RING_HASH`) rather than Maglev: a
//! backend's points on the ring depend on nothing but its own identity and
//! weight, so when one of N backends leaves, exactly the keys that were on
//! it move (about 1/N) and every other key keeps its backend — Maglev's
//! table is rebuilt as a whole and moves a few other keys too. Weights are
//! honoured by the number of points: [`POINTS_PER_WEIGHT`] per unit of
//! weight. A lookup goes to the key's bucket (the top bits of its hash
//! index the sorted points, about four per bucket) and binary-searches that
//! bucket: O(1) expected, O(log n) at worst, no allocation.
//!
//! `hash_balance_factor` (Mirrokni et al., "Consistent Hashing with Bounded
//! Loads"; HAProxy's `hash-balance-factor`): no backend may take a request
//! that would put it above `factor` % of its fair share of the service's
//! requests in flight (the fair share weighted, counting the new request);
//! the key walks on clockwise to the next backend with room. A request
//! without the key is balanced round robin (SPEC §7).

use super::{first_untried, Build, PickContext, Policy, RoundRobin};
use crate::backend::Backend;

/// Ring points per unit of weight: ~10 % spread between equal backends.
pub const POINTS_PER_WEIGHT: u64 = 100;

/// The most points a ring holds; beyond it every backend's count is scaled
/// down in proportion (then a departure may move a few other keys too).
pub const MAX_POINTS: u64 = 1 << 22;

/// Low bits of a ring entry that hold the backend's index in the ready
/// slice; the high bits are the point's hash.
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

#[derive(Debug)]
pub struct Hash {
    /// Sorted points, each `hash & !INDEX_MASK | index` in one word: half
    /// the memory of a (hash, index) pair, so the ring and its search stay
    /// cache-friendlier.
    ring: Box<[u64]>,
    /// `starts[b]`: the first point whose top `bucket_bits` bits are ≥ `b`
    /// (one more entry at the end): a lookup searches one bucket only.
    starts: Box<[u32]>,
    bucket_bits: u32,
    /// For requests without the key.
    fallback: RoundRobin,
    /// `hash_balance_factor` in percent; 0 = unbounded.
    factor: u64,
    /// The ready backends' total weight.
    total_weight: u64,
}

impl Policy for Hash {
    fn build(build: &Build<'_>) -> Hash {
        let ready = build.ready;
        let weights: Vec<u64> = ready.iter().map(|b| u64::from(b.weight())).collect();
        let ring = ring(ready, &weights);
        let (starts, bucket_bits) = buckets(&ring);
        Hash {
            ring,
            starts,
            bucket_bits,
            fallback: RoundRobin::build(build),
            factor: u64::from(build.settings.hash_balance_factor),
            total_weight: weights.iter().sum(),
        }
    }

    fn pick(&self, cx: &PickContext<'_>) -> Option<usize> {
        let Some(key) = cx.key else {
            return self.fallback.pick(cx);
        };
        if self.ring.is_empty() {
            return None;
        }
        let start = self.position(key);
        let service_load = match self.factor {
            0 => 0,
            _ => cx.ready.first().map_or(0, |b| u64::from(b.service_load())),
        };
        // Walk clockwise from the key's point: the first untried backend
        // with room is the key's backend (with no bound, the first untried).
        for step in 0..self.ring.len() {
            let index = (self.ring[(start + step) % self.ring.len()] & INDEX_MASK) as usize;
            if cx.is_tried(index) {
                continue;
            }
            let Some(backend) = cx.ready.get(index) else {
                continue;
            };
            if self.has_room(backend, service_load) {
                return Some(index);
            }
        }
        let first = (self.ring[start] & INDEX_MASK) as usize;
        first_untried(cx.ready.len(), first, cx.tried)
    }
}

impl Hash {
    /// The first point at or clockwise after `key`: its bucket, then a
    /// binary search within it (a few entries).
    fn position(&self, key: u64) -> usize {
        let key = key & !INDEX_MASK;
        let bucket = bucket_of(key, self.bucket_bits);
        let (lo, hi) = (self.starts[bucket] as usize, self.starts[bucket + 1] as usize);
        let at = lo + self.ring[lo..hi].partition_point(|&p| p < key);
        if at == self.ring.len() {
            0
        } else {
            at
        }
    }

    /// Under `factor` % of its weighted share of the requests in flight,
    /// counting the one being placed: active < ⌈c · (L + 1) · w / W⌉.
    fn has_room(&self, backend: &Backend, service_load: u64) -> bool {
        if self.factor == 0 || self.total_weight == 0 {
            return true;
        }
        let weight = u64::from(backend.weight());
        let numerator = self.factor * (service_load + 1) * weight;
        let denominator = 100 * self.total_weight;
        // active < ⌈n / d⌉ ⟺ active · d < n for integers: no division on
        // the pick path (two divisions were a fifth of a bounded pick).
        u64::from(backend.active_requests()).saturating_mul(denominator) < numerator
    }
}

/// Every backend's points, sorted.
fn ring(ready: &[std::sync::Arc<Backend>], weights: &[u64]) -> Box<[u64]> {
    let total: u64 = weights.iter().map(|w| w * POINTS_PER_WEIGHT).sum();
    let points_for = |w: u64| {
        let n = w * POINTS_PER_WEIGHT;
        if total <= MAX_POINTS || n == 0 {
            n
        } else {
            (n * MAX_POINTS / total).max(1)
        }
    };
    let mut ring = Vec::with_capacity(total.min(MAX_POINTS) as usize + ready.len());
    // An index must fit its bits (10,000 instances per service is the
    // registry's default limit; 16 million is far beyond any).
    let indexed = ready.iter().zip(weights).take(INDEX_MASK as usize + 1);
    for (index, (backend, &weight)) in indexed.enumerate() {
        let seed = backend_seed(backend);
        ring.extend(
            (0..points_for(weight))
                .map(|replica| point_hash(seed, replica) & !INDEX_MASK | index as u64),
        );
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// About four points per bucket, at most 2^20 buckets.
fn buckets(ring: &[u64]) -> (Box<[u32]>, u32) {
    let bits = (ring.len() / 4).max(1).ilog2().min(20);
    let count = 1usize << bits;
    let mut starts = Vec::with_capacity(count + 1);
    let mut at = 0usize;
    for bucket in 0..count {
        while at < ring.len() && bucket_of(ring[at], bits) < bucket {
            at += 1;
        }
        starts.push(at as u32);
    }
    starts.push(ring.len() as u32);
    (starts.into_boxed_slice(), bits)
}

fn bucket_of(hash: u64, bits: u32) -> usize {
    match bits {
        0 => 0,
        _ => (hash >> (64 - bits)) as usize,
    }
}

/// A backend's place on the ring depends only on who it is (its source and
/// id), so every node of a cluster builds the same ring.
fn backend_seed(backend: &Backend) -> u64 {
    let source = backend.source.as_str().as_bytes();
    hash_bytes(&[source, b"\0", backend.id.as_bytes()])
}

fn point_hash(seed: u64, replica: u64) -> u64 {
    super::mix(seed ^ super::mix(replica))
}

/// FNV-1a over `parts`, then a splitmix finalizer for avalanche: stable
/// across processes, versions and platforms (unlike `DefaultHasher`).
pub fn hash_bytes(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    super::mix(h)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::testing::backend;
    use crate::balance::testing;

    fn backends(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| backend(&format!("127.0.0.1:{}", 9000 + i), 1))
            .collect()
    }

    fn hash(ready: &[Arc<Backend>], extra: &str) -> Hash {
        let settings = testing::settings(&format!("balance = \"hash\"\nhash_key = \"path\"\n{extra}"));
        testing::build(ready, &settings, 0)
    }

    fn key(i: u64) -> u64 {
        hash_bytes(&[format!("/user/{i}").as_bytes()])
    }

    fn owner(h: &Hash, ready: &[Arc<Backend>], k: u64) -> String {
        let index = h.pick(&PickContext::new(ready, &[]).with_key(Some(k)));
        index.map_or_else(|| "none".to_owned(), |i| ready[i].id.to_string())
    }

    #[test]
    fn a_key_always_lands_on_the_same_backend() {
        let ready = backends(4);
        let h = hash(&ready, "");
        for i in 0..200 {
            let first = owner(&h, &ready, key(i));
            for _ in 0..3 {
                assert_eq!(owner(&h, &ready, key(i)), first);
            }
        }
    }

    #[test]
    fn the_bucket_index_finds_what_a_whole_search_finds() {
        for n in [1, 3, 40, 500] {
            let ready = backends(n);
            let h = hash(&ready, "");
            for i in 0..5_000u64 {
                let k = crate::balance::mix(i);
                let whole = h.ring.partition_point(|&p| p < k & !INDEX_MASK) % h.ring.len();
                assert_eq!(h.position(k), whole, "n {n}, key {k}");
            }
            assert_eq!(h.position(u64::MAX), 0, "past the last point: wrap");
        }
    }

    #[test]
    fn keys_spread_by_weight() {
        let mut ready = backends(3);
        ready.push(backend("127.0.0.1:9100", 3));
        let h = hash(&ready, "");
        let mut count = [0usize; 4];
        for i in 0..60_000 {
            let index = h.pick(&PickContext::new(&ready, &[]).with_key(Some(key(i))));
            count[index.unwrap_or(0)] += 1;
        }
        // Weight 3 of 6: about half; the others about a sixth each.
        assert!((25_000..35_000).contains(&count[3]), "{count:?}");
        for c in &count[..3] {
            assert!((7_000..13_000).contains(c), "{count:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 64,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Property: removing any one backend of any weighted ring moves
        /// exactly the keys it owned; every other key keeps its backend.
        #[test]
        fn removal_moves_only_the_removed_backends_keys(
            weights in proptest::collection::vec(1u32..=5, 2..12),
            gone in proptest::prelude::any::<proptest::sample::Index>(),
            keys in proptest::collection::vec(proptest::prelude::any::<u64>(), 300),
        ) {
            let ready: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| backend(&format!("127.0.0.1:{}", 10_000 + i), w))
                .collect();
            let gone = gone.index(ready.len());
            let mut rest = ready.clone();
            rest.remove(gone);
            let (before, after) = (hash(&ready, ""), hash(&rest, ""));
            for &k in &keys {
                let (was, now) = (owner(&before, &ready, k), owner(&after, &rest, k));
                if was == *ready[gone].id {
                    proptest::prop_assert_ne!(now, was);
                } else {
                    proptest::prop_assert_eq!(now, was, "key {} moved", k);
                }
            }
        }
    }

    #[test]
    fn a_hot_key_spills_to_the_next_backend_with_room() {
        let ready = backends(4);
        let h = hash(&ready, "hash_balance_factor = 125");
        let hot = key(7);
        let home = h.pick(&PickContext::new(&ready, &[]).with_key(Some(hot)));
        let home = home.unwrap_or(0);
        // 8 in flight on the service, all on the hot key's backend: its
        // bound is ⌈1.25 · 9 / 4⌉ = 3, so the next request goes elsewhere.
        let _held: Vec<_> = (0..8).map(|_| ready[home].start_request()).collect();
        let next = h.pick(&PickContext::new(&ready, &[]).with_key(Some(hot)));
        assert!(next.is_some_and(|i| i != home), "{next:?} vs {home}");
        // Unbounded, it stays home.
        let free = hash(&ready, "");
        let stay = free.pick(&PickContext::new(&ready, &[]).with_key(Some(hot)));
        assert_eq!(stay, Some(home));
    }

    #[test]
    fn no_key_is_round_robin_and_tried_is_skipped() {
        let ready = backends(3);
        let h = hash(&ready, "");
        let picks: Vec<_> = (0..6)
            .map(|_| h.pick(&PickContext::new(&ready, &[])))
            .collect();
        assert_eq!(picks.iter().flatten().count(), 6);
        assert_eq!(picks[0], picks[3]);
        let k = key(1);
        let home = h.pick(&PickContext::new(&ready, &[]).with_key(Some(k)));
        let tried = [home.unwrap_or(0)];
        let other = h.pick(&PickContext::new(&ready, &tried).with_key(Some(k)));
        assert!(other.is_some() && other != home);
        let all = [0, 1, 2];
        assert_eq!(
            h.pick(&PickContext::new(&ready, &all).with_key(Some(k))),
            None
        );
    }
}
